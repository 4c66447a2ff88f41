import { describe, expect, it } from 'vitest'
import { awaitingReview, decisionBanner, stepIndex, steppable, unchangedResubmission } from '../src/core/reviewRules'

const review = (id: number, decision: string, version: number, reviewer = 7) => ({
  id,
  decision,
  message: `m${id}`,
  version_id: version,
  reviewer: { id: reviewer, username: `r${reviewer}` },
})

describe('review rules', () => {
  it('makes the workspace read-only while the caller’s submission waits for review', () => {
    const edit = ['edit', 'lease', 'comment']
    expect(awaitingReview({ state: 'submitted', allowed_actions: edit }, false)?.text).toBe('Submitted – waiting for review')
    expect(awaitingReview({ state: 'in_review', allowed_actions: edit }, false)?.state).toBe('readonly')
    // A reviewer (or a lead) who may review keeps the tools; so does a blinded reader and every other state.
    expect(awaitingReview({ state: 'submitted', allowed_actions: [...edit, 'start_review'] }, false)).toBeNull()
    expect(awaitingReview({ state: 'in_review', allowed_actions: [...edit, 'approve', 'request_changes'] }, false)).toBeNull()
    expect(awaitingReview({ state: 'submitted', allowed_actions: edit }, true)).toBeNull()
    expect(awaitingReview({ state: 'annotating', allowed_actions: edit }, false)).toBeNull()
    expect(awaitingReview(null, false)).toBeNull()
  })

  it('shows the last decision to the annotator while the task is where it left it', () => {
    const reviews = [review(1, 'request_changes', 10), review(2, 'request_changes', 12)]
    const banner = decisionBanner({ state: 'changes_requested', allowed_actions: [] }, reviews, 3)
    expect(banner).toEqual({ kind: 'request_changes', title: 'Changes requested by r7', message: 'm2', reviewId: 2 })
    expect(decisionBanner({ state: 'changes_requested', allowed_actions: [] }, reviews, 7)).toBeNull()
    expect(decisionBanner({ state: 'annotating', allowed_actions: [] }, reviews, 3)).toBeNull()
    expect(decisionBanner({ state: 'approved', allowed_actions: [] }, [review(3, 'approve', 12)], 3)?.kind).toBe('approve')
    expect(decisionBanner({ state: 'changes_requested', allowed_actions: [] }, [], 3)).toBeNull()
  })

  it('notices a resubmission of the version changes were requested on', () => {
    const reviews = [review(1, 'request_changes', 10)]
    expect(unchangedResubmission(reviews, 10)?.id).toBe(1)
    expect(unchangedResubmission(reviews, 11)).toBeNull()
    expect(unchangedResubmission([review(2, 'approve', 10)], 10)).toBeNull()
    expect(unchangedResubmission([], 10)).toBeNull()
  })

  it('steps through the unresolved comments, wrapping', () => {
    const comments = [
      { id: 1, resolved: true },
      { id: 2, resolved: false },
      { id: 3, resolved: false },
    ]
    expect(steppable(comments).map((c) => c.id)).toEqual([2, 3])
    expect(steppable([{ id: 1, resolved: true }]).map((c) => c.id)).toEqual([1])
    expect(stepIndex(-1, 1, 3)).toBe(0)
    expect(stepIndex(-1, -1, 3)).toBe(2)
    expect(stepIndex(2, 1, 3)).toBe(0)
    expect(stepIndex(0, -1, 3)).toBe(2)
    expect(stepIndex(0, 1, 0)).toBe(-1)
  })
})
