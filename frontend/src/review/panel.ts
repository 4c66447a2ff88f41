/**
 * The review tab of the workspace: the decision form (approve / request changes with comments pinned to the
 * crosshair voxel and the structure under it, or one chosen in the form) or a comment box, "show comments on
 * image", the comments with "go to", QA findings (resolve / dismiss) and the reviews so far. Redrawn when the
 * parts of the workflow state it shows change (not on lease renewals or activity reports, so a message being
 * written is kept); the comment form's structure follows the crosshair without a redraw.
 */

import { pretty } from '../core/structures'
import { clear, fmtTime, h, toast } from '../dom'
import { sameItems } from '../store'
import type { ReviewController, ReviewState } from './controller'
import { who } from './labels'

/** What the panel shows: it is redrawn when one of these changes. */
function shown(s: Readonly<ReviewState>): readonly unknown[] {
  const t = s.task
  return [
    s.available,
    t === null,
    t?.state,
    t?.allowed_actions.join(),
    t?.head_version_id,
    t?.submitted_version_id,
    t?.review_level,
    t?.review_levels?.length,
    s.comments,
    s.findings,
    s.reviews,
    s.pending,
    s.markers,
    s.currentComment,
  ]
}

export class ReviewPanel {
  readonly el: HTMLElement
  private readonly review: ReviewController
  /** The comment form's structure picker (kept in step with the crosshair without redrawing the form). */
  private pin: { select: HTMLSelectElement; mode: HTMLElement; auto: HTMLButtonElement } | null = null

  constructor(review: ReviewController) {
    this.review = review
    this.el = h('div', { class: 'tab-body', 'data-testid': 'panel-review', hidden: true })
    review.state.watch(shown, () => this.render(), { equals: sameItems })
    review.state.watch((s) => [s.pinUnder, s.pinChoice] as const, () => this.syncPin(), { equals: sameItems })
  }

  /** "About <structure>": the structure under the crosshair voxel, or the one the reviewer picks. */
  private pinField(): HTMLElement {
    const select = h(
      'select',
      {
        'data-testid': 'comment-structure',
        title: 'The structure the comment is about (by default the one under the crosshair)',
        onchange: (e: Event) => {
          const value = (e.target as HTMLSelectElement).value
          this.review.choosePin(value === '' ? null : value)
        },
      },
      h('option', { value: '' }, '— no structure —'),
      this.review.host.structures().map((s) => h('option', { value: s.name }, pretty(s.name))),
    )
    const mode = h('span', { class: 'muted', 'data-testid': 'comment-structure-mode' })
    const auto = h(
      'button',
      { class: 'btn plain small', 'data-testid': 'comment-structure-auto', title: 'Follow the structure under the crosshair again', onclick: () => this.review.choosePin('auto') },
      '↺',
    )
    this.pin = { select, mode, auto }
    this.syncPin()
    return h('div', { class: 'pin-structure' }, h('span', null, 'About'), select, mode, auto)
  }

  private syncPin(): void {
    const pin = this.pin
    if (!pin) return
    const { pinChoice, pinUnder } = this.review.state.get()
    const chosen = pinChoice.kind === 'chosen'
    pin.select.value = this.review.pinStructure ?? ''
    pin.select.dataset.mode = chosen ? 'chosen' : pinUnder.drawn ? 'voxel' : 'active'
    pin.mode.textContent = chosen ? 'chosen' : pinUnder.drawn ? 'under the crosshair' : 'active (nothing drawn here)'
    pin.auto.hidden = !chosen
  }

  render(): void {
    const r = this.review
    const body = this.el
    clear(body)
    this.pin = null
    if (!r.available || !r.task) {
      body.append(h('p', { class: 'muted' }, 'The review workflow is not available on this server.'))
      return
    }
    if (r.can('approve') || r.can('request_changes')) body.append(this.decisionForm())
    else if (r.can('comment')) body.append(this.commentForm())
    body.append(this.markerToggles(), this.commentList(), this.findingsList(), this.reviewList())
  }

  /** "Show comments on image" (unresolved only unless "include resolved" is ticked). */
  private markerToggles(): HTMLElement {
    const m = this.review.markers
    return h(
      'div',
      { class: 'marker-toggles' },
      h(
        'label',
        { class: 'check' },
        h('input', {
          type: 'checkbox',
          checked: m.show,
          'data-testid': 'comments-on-image',
          onchange: (e: Event) => this.review.showMarkers((e.target as HTMLInputElement).checked),
        }),
        ' Show comments on image',
      ),
      h(
        'label',
        { class: 'check' },
        h('input', {
          type: 'checkbox',
          checked: m.includeResolved,
          disabled: !m.show,
          'data-testid': 'comments-include-resolved',
          onchange: (e: Event) => this.review.showMarkers(m.show, (e.target as HTMLInputElement).checked),
        }),
        ' include resolved',
      ),
    )
  }

  private decisionForm(): HTMLElement {
    const msg = h('textarea', { rows: '2', placeholder: 'Review message (required to request changes)', 'data-testid': 'review-message' })
    const note = h('input', { type: 'text', placeholder: 'Comment at the crosshair…', 'data-testid': 'comment-text' }) as HTMLInputElement
    const t = this.review.task!
    const version = this.review.reviewedVersion()
    return h(
      'div',
      { class: 'review-form', 'data-testid': 'review-form' },
      h('div', { class: 'tb-title' }, `Review of version #${version ?? '?'}${t.review_levels?.length > 1 ? ` · level ${t.review_level}` : ''}`),
      h(
        'div',
        { class: 'pin-bar' },
        note,
        h(
          'button',
          {
            class: 'btn small',
            'data-testid': 'comment-pin',
            title: 'Pin this comment to the crosshair voxel and the structure chosen below',
            onclick: () => {
              if (this.review.pin(note.value)) note.value = ''
            },
          },
          'Pin here',
        ),
      ),
      this.pinField(),
      this.review.state.get().pending.length
        ? h(
            'ul',
            { class: 'pending', 'data-testid': 'pending-comments' },
            this.review.state.get().pending.map((c, i) =>
              h(
                'li',
                null,
                h('span', null, c.text),
                h('span', { class: 'muted' }, ` · ${c.structure?.replace(/_/g, ' ') ?? '—'} @ ${c.voxel?.join(',')}`),
                h(
                  'button',
                  {
                    class: 'btn plain small',
                    onclick: () => this.review.unpin(i),
                  },
                  '✕',
                ),
              ),
            ),
          )
        : null,
      msg,
      h(
        'div',
        { class: 'decision-bar' },
        h(
          'button',
          {
            class: 'btn danger',
            'data-testid': 'review-request-changes',
            disabled: !this.review.can('request_changes'),
            onclick: () => this.review.decide('request_changes', (msg as HTMLTextAreaElement).value),
          },
          'Request changes',
        ),
        h(
          'button',
          {
            class: 'btn primary',
            'data-testid': 'review-approve',
            disabled: !this.review.can('approve'),
            onclick: () => this.review.decide('approve', (msg as HTMLTextAreaElement).value),
          },
          'Approve',
        ),
      ),
    )
  }

  private commentForm(): HTMLElement {
    const note = h('input', { type: 'text', placeholder: 'Comment at the crosshair…', 'data-testid': 'comment-text' }) as HTMLInputElement
    const bar = h(
      'div',
      { class: 'pin-bar' },
      note,
      h(
        'button',
        {
          class: 'btn small',
          'data-testid': 'comment-post',
          onclick: () =>
            this.review.comment(note.value)
              .then((c) => {
                if (c) note.value = ''
              })
              .catch((err: unknown) => toast((err as Error).message, 'error')),
        },
        'Comment',
      ),
    )
    return h('div', { class: 'comment-form' }, bar, this.pinField())
  }

  private commentList(): HTMLElement {
    const count = this.review.state.get().comments.length
    const list = h(
      'div',
      { class: 'comments', 'data-testid': 'comment-list' },
      h(
        'div',
        { class: 'comments-head' },
        h('div', { class: 'tb-title' }, `Comments (${count})`),
        count
          ? h(
              'span',
              { class: 'rb-steps' },
              h('button', { class: 'btn small', 'data-testid': 'comment-prev', title: 'Previous comment (unresolved first)', onclick: () => this.review.stepComment(-1) }, '‹ Prev'),
              h('button', { class: 'btn small', 'data-testid': 'comment-next', title: 'Next comment (unresolved first)', onclick: () => this.review.stepComment(1) }, 'Next ›'),
            )
          : null,
      ),
    )
    const currentId = this.review.state.get().currentComment
    if (!this.review.state.get().comments.length) list.append(h('div', { class: 'muted' }, 'No comments yet.'))
    for (const c of [...this.review.state.get().comments].reverse()) {
      const where = [
        c.structure ? c.structure.replace(/_/g, ' ') : null,
        c.voxel ? `voxel ${c.voxel.join(', ')}` : c.slice_index !== null && c.slice_index !== undefined ? `slice ${c.slice_index}` : null,
        c.version_id ? `#${c.version_id}` : null,
      ].filter(Boolean)
      list.append(
        h(
          'div',
          { class: `comment ${c.resolved ? 'resolved' : ''} ${c.id === currentId ? 'current' : ''}`, 'data-testid': `comment-${c.id}` },
          h('div', { class: 'ctext' }, c.text),
          h('div', { class: 'vmeta' }, `${who(c.author)} · ${fmtTime(c.created_at)}${where.length ? ' · ' + where.join(' · ') : ''}`),
          h(
            'div',
            { class: 'cbar' },
            c.voxel || c.slice_index !== null
              ? h('button', { class: 'btn small', 'data-testid': `comment-goto-${c.id}`, onclick: () => this.review.goTo(c) }, 'Go to')
              : null,
            this.review.role !== 'viewer'
              ? h(
                  'label',
                  { class: 'check' },
                  h('input', {
                    type: 'checkbox',
                    checked: c.resolved,
                    'data-testid': `comment-resolved-${c.id}`,
                    onchange: (e: Event) =>
                      this.review.setCommentResolved(c, (e.target as HTMLInputElement).checked).catch((err: unknown) => toast((err as Error).message, 'error')),
                  }),
                  ' resolved',
                )
              : null,
          ),
        ),
      )
    }
    return list
  }

  private findingsList(): HTMLElement {
    const open = this.review.state.get().findings.filter((f) => f.status === 'open')
    const list = h('div', { class: 'findings', 'data-testid': 'finding-list' }, h('div', { class: 'tb-title' }, `QA findings (${open.length} open)`))
    if (!this.review.state.get().findings.length) list.append(h('div', { class: 'muted' }, 'No QA findings.'))
    const closed = h('details', { class: 'closed-findings' })
    const done = this.review.state.get().findings.filter((f) => f.status !== 'open')
    if (done.length) closed.append(h('summary', { class: 'muted' }, `${done.length} resolved or dismissed`))
    for (const f of [...open, ...done]) {
      const d = f.details ?? {}
      const voxel = Array.isArray(d.voxel) ? (d.voxel as number[]) : Array.isArray(d.center) ? (d.center as number[]) : null
      ;(f.status === 'open' ? list : closed).append(
        h(
          'div',
          { class: `finding sev-${f.severity} ${f.status}`, 'data-testid': `finding-${f.id}`, 'data-rule': f.rule, 'data-status': f.status },
          h('div', null, h('b', null, f.rule.replace(/_/g, ' ')), f.structure ? ` · ${f.structure.replace(/_/g, ' ')}` : '', h('span', { class: 'muted' }, ` · ${f.status}`)),
          h('div', { class: 'vmeta' }, f.message),
          h(
            'div',
            { class: 'cbar' },
            voxel ? h('button', { class: 'btn small', onclick: () => this.review.goTo({ voxel, structure: f.structure }) }, 'Go to') : null,
            f.status === 'open' && this.review.isReviewer
              ? [
                  h(
                    'button',
                    { class: 'btn small', 'data-testid': `finding-resolve-${f.id}`, onclick: () => this.review.setFinding(f, 'resolved').catch((err: unknown) => toast((err as Error).message, 'error')) },
                    'Resolve',
                  ),
                  h(
                    'button',
                    { class: 'btn small plain', 'data-testid': `finding-dismiss-${f.id}`, onclick: () => this.review.setFinding(f, 'dismissed').catch((err: unknown) => toast((err as Error).message, 'error')) },
                    'Dismiss',
                  ),
                ]
              : null,
          ),
        ),
      )
    }
    if (done.length) list.append(closed)
    return list
  }

  private reviewList(): HTMLElement {
    const list = h('div', { class: 'reviews', 'data-testid': 'review-list' }, h('div', { class: 'tb-title' }, `Reviews (${this.review.state.get().reviews.length})`))
    for (const r of [...this.review.state.get().reviews].reverse()) {
      list.append(
        h(
          'div',
          { class: `review-item ${r.decision}`, 'data-testid': `review-${r.id}` },
          h('b', null, r.decision === 'approve' ? '✔ approved' : '✎ changes requested'),
          h('span', { class: 'muted' }, ` #${r.version_id} · ${who(r.reviewer)} · ${fmtTime(r.created_at)}`),
          r.message ? h('div', { class: 'vmsg' }, r.message) : null,
        ),
      )
    }
    return list
  }
}
