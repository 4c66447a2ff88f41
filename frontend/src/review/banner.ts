/**
 * The banner over the workspace for the annotator: the reviewer's last decision and message ("Changes requested
 * by …"), or "Submitted – waiting for review" while the work is with the reviewers; with the comments to step
 * through (each step moves the crosshair to the comment and makes its structure active).
 */

import { awaitingReview, decisionBanner } from '../core/reviewRules'
import { clear, h } from '../dom'
import { sameItems } from '../store'
import type { ReviewController } from './controller'

export class ReviewBanner {
  readonly el: HTMLElement
  private readonly review: ReviewController

  constructor(review: ReviewController) {
    this.review = review
    this.el = h('div', { class: 'review-banner', 'data-testid': 'review-banner', hidden: true })
    review.state.watch(
      (s) => [s.available, s.task?.state, s.task?.allowed_actions.join(), s.reviews, s.comments, s.currentComment, s.bannerClosed, s.readerSet] as const,
      () => this.render(),
      { equals: sameItems },
    )
  }

  render(): void {
    const r = this.review
    const s = r.state.get()
    const el = this.el
    clear(el)
    const decision = s.available ? decisionBanner(s.task, s.reviews, r.me) : null
    const waiting = s.available && !decision ? awaitingReview(s.task, !!r.myReading) : null
    if ((!decision || s.bannerClosed === decision.reviewId) && !waiting) {
      el.hidden = true
      delete el.dataset.kind
      return
    }
    el.hidden = false
    if (waiting) {
      el.dataset.kind = 'waiting'
      el.append(h('span', { class: 'rb-icon' }, '⏳'), h('b', { 'data-testid': 'review-banner-title' }, waiting.text), h('span', { class: 'muted' }, 'Tools and saving are off until a reviewer decides.'))
      return
    }
    const d = decision!
    el.dataset.kind = d.kind
    const { index, count } = r.commentPosition()
    const current = s.comments.find((c) => c.id === s.currentComment)
    const parts: (HTMLElement | null)[] = [
      h('span', { class: 'rb-icon' }, d.kind === 'approve' ? '✔' : '✎'),
      h('b', { 'data-testid': 'review-banner-title' }, d.title),
      d.message ? h('span', { class: 'rb-message', 'data-testid': 'review-banner-message' }, `“${d.message}”`) : null,
      h('span', { class: 'spacer' }),
      count
        ? h(
            'span',
            { class: 'rb-steps' },
            h('button', { class: 'btn small', 'data-testid': 'review-banner-prev', title: 'Previous comment', onclick: () => r.stepComment(-1) }, '‹'),
            h('span', { 'data-testid': 'review-banner-position' }, index ? `comment ${index}/${count}` : `${count} comment${count > 1 ? 's' : ''}`),
            h('button', { class: 'btn small', 'data-testid': 'review-banner-next', title: 'Next comment', onclick: () => r.stepComment(1) }, '›'),
          )
        : null,
      current ? h('span', { class: 'rb-comment', 'data-testid': 'review-banner-comment' }, current.text) : null,
      h('button', { class: 'btn plain small', 'data-testid': 'review-banner-close', title: 'Hide this banner', onclick: () => r.closeBanner(d.reviewId) }, '✕'),
    ]
    el.append(...parts.filter((p): p is HTMLElement => p !== null))
  }
}
