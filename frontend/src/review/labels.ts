/** Words and badges of the review workflow, shared by the worklist and the workspace's task bar. */

import { h } from '../dom'

export const STATE_LABELS: Record<string, string> = {
  new: 'new',
  pre_annotated: 'AI pre-annotated',
  annotating: 'annotating',
  submitted: 'submitted',
  in_review: 'in review',
  changes_requested: 'changes requested',
  approved: 'approved',
  adjudication: 'adjudication',
}

export const ACTION_LABELS: Record<string, string> = {
  start: 'Start annotating',
  submit: 'Submit for review',
  start_review: 'Start review',
  reopen: 'Reopen',
  adjudicate: 'Send to adjudication',
  resolve: 'Adjudication resolved',
}

/** A state badge (worklist and task bar share it). */
export function stateBadge(state: string, testid?: string): HTMLElement {
  return h('span', { class: `state-badge st-${state}`, 'data-state': state, 'data-testid': testid }, STATE_LABELS[state] ?? state)
}

export function who(ref: { username?: string; display_name?: string } | null | undefined): string {
  return ref?.username ?? ref?.display_name ?? 'someone'
}

export function fmtDuration(seconds: number): string {
  const s = Math.round(seconds)
  if (s < 60) return `${s} s`
  const m = Math.floor(s / 60)
  return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`
}
