/** The task bar over the workspace: state, review level, assignee, lease holder, QA count, active time, actions. */

import { clear, h, toast } from '../dom'
import { sameItems } from '../store'
import { type ReviewController, readingOf } from './controller'
import { ACTION_LABELS, fmtDuration, stateBadge, who } from './labels'

export class TaskBar {
  readonly el: HTMLElement
  private readonly review: ReviewController

  constructor(review: ReviewController) {
    this.review = review
    this.el = h('div', { class: 'taskbar', 'data-testid': 'taskbar', hidden: true })
    review.state.watch((s) => [s.available, s.task, s.readerSet] as const, () => this.render(), { equals: sameItems })
  }

  render(): void {
    const r = this.review
    const bar = this.el
    clear(bar)
    const t = r.task
    bar.hidden = !r.available || !t
    if (!t) return
    const me = r.me
    const levels = t.review_levels ?? []
    const name = t.review_level_name ?? levels[t.review_level - 1] ?? null
    const level =
      t.state === 'in_review' || t.state === 'submitted'
        ? levels.length > 1
          ? `review ${Math.max(1, t.review_level)}/${levels.length}${name ? ` (${name})` : ''}`
          : 'review'
        : null
    const lease = t.lease && Date.parse(t.lease.expires_at) > Date.now() ? t.lease : null
    const actions = t.allowed_actions.filter((a) => a in ACTION_LABELS)
    const parts: (HTMLElement | null)[] = [
      h('span', { class: 'muted' }, 'Task'),
      stateBadge(t.state, 'task-state'),
      level ? h('span', { class: 'chip', 'data-testid': 'task-level' }, level) : null,
      h('span', { 'data-testid': 'task-assignee' }, 'assignee ', h('b', null, t.assignee ? who(t.assignee) : 'none')),
      h(
        'span',
        { 'data-testid': 'task-lease', class: lease && lease.user_id !== me ? 'warn' : '' },
        lease
          ? lease.user_id === me
            ? `you hold the edit lease (until ${new Date(lease.expires_at).toLocaleTimeString()})`
            : `locked by ${who(lease)} until ${new Date(lease.expires_at).toLocaleTimeString()}`
          : 'no edit lease',
      ),
      t.open_findings ? h('span', { class: 'chip warn', 'data-testid': 'task-findings' }, `${t.open_findings} QA finding${t.open_findings > 1 ? 's' : ''}`) : null,
      h('span', { class: 'muted', 'data-testid': 'task-active', title: 'active editing time on this scan' }, `active ${fmtDuration(t.active_seconds)}`),
      h('span', { class: 'spacer' }),
      readingOf(r.state.get().readerSet, me)
        ? h('button', { class: 'btn primary small', 'data-testid': 'submit-reading', onclick: () => r.submitReading() }, 'Submit reading')
        : null,
      ...actions.map((a) =>
        h(
          'button',
          {
            class: `btn small ${a === 'submit' || a === 'start_review' ? 'primary' : ''}`,
            'data-testid': `action-${a}`,
            onclick: () => r.transition(a).catch((err: unknown) => toast((err as Error).message, 'error')),
          },
          ACTION_LABELS[a],
        ),
      ),
      r.can('approve') || r.can('request_changes')
        ? h('button', { class: 'btn small', 'data-testid': 'open-review', onclick: () => r.host.showReviewTab() }, 'Review…')
        : null,
    ]
    bar.append(...parts.filter((p): p is HTMLElement => p !== null))
  }
}
