/**
 * Review rules the workspace shows: read-only while the caller's submission waits for review, the reviewer's last
 * decision as a banner for the annotator, "nothing changed since changes were requested" before a resubmission,
 * and stepping through comments. Pure (no DOM, no HTTP): unit-tested under Node.
 */

import type { LockReason } from './access'

export interface TaskLike {
  state: string
  allowed_actions: string[]
  submitted_by?: number | null
  submitted_version_id?: number | null
}

export interface ReviewLike {
  id: number
  decision: string
  message: string
  version_id: number
  reviewer: { id: number; username: string } | null
}

const REVIEW_ACTIONS = ['start_review', 'approve', 'request_changes']

/**
 * Read-only while the task is submitted or in review and the caller cannot review it (the annotator who
 * submitted, or anyone without the review actions); null otherwise (also for a blinded reader).
 */
export function awaitingReview(task: TaskLike | null, reading: boolean): LockReason | null {
  if (!task || reading) return null
  if (task.state !== 'submitted' && task.state !== 'in_review') return null
  if (REVIEW_ACTIONS.some((a) => task.allowed_actions.includes(a))) return null
  return {
    state: 'readonly',
    text: task.state === 'submitted' ? 'Submitted – waiting for review' : 'In review – waiting for the reviewer’s decision',
  }
}

export interface DecisionBanner {
  kind: 'request_changes' | 'approve'
  title: string
  message: string
  reviewId: number
}

/**
 * The banner an annotator sees on opening: the last review's decision and message, while the task is still where
 * that decision left it (changes requested, or approved); never for the reviewer who wrote it.
 */
export function decisionBanner(task: TaskLike | null, reviews: readonly ReviewLike[], me: number | null): DecisionBanner | null {
  if (!task || !reviews.length) return null
  const last = reviews[reviews.length - 1]
  if (last.reviewer && last.reviewer.id === me) return null
  const who = last.reviewer?.username ?? 'the reviewer'
  if (last.decision === 'request_changes' && task.state === 'changes_requested')
    return { kind: 'request_changes', title: `Changes requested by ${who}`, message: last.message, reviewId: last.id }
  if (last.decision === 'approve' && task.state === 'approved') return { kind: 'approve', title: `Approved by ${who}`, message: last.message, reviewId: last.id }
  return null
}

/**
 * Whether a submission would hand back unchanged work: the last decision asked for changes on exactly the version
 * being submitted now.
 */
export function unchangedResubmission(reviews: readonly ReviewLike[], versionId: number | null): ReviewLike | null {
  if (!reviews.length || versionId === null) return null
  const last = reviews[reviews.length - 1]
  return last.decision === 'request_changes' && last.version_id === versionId ? last : null
}

/** The comments stepped through: the unresolved ones, or all of them when every one is resolved. */
export function steppable<C extends { resolved: boolean }>(comments: readonly C[]): C[] {
  const open = comments.filter((c) => !c.resolved)
  return open.length ? open : [...comments]
}

/** The next index when stepping `dir` (±1) through `count` items from `index` (-1: none yet), wrapping. */
export function stepIndex(index: number, dir: number, count: number): number {
  if (count <= 0) return -1
  if (index < 0 || index >= count) return dir < 0 ? count - 1 : 0
  return (((index + dir) % count) + count) % count
}
