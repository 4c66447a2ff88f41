/** Who may edit an open scan: the read-only and locked states of the workspace, from the role and the task. */

export interface AccessInputs {
  /** The caller's role in the scan's project. */
  role: string
  /** Whether the review workflow answers on this server. */
  workflow: boolean
  /** The task's state and the actions the caller may take, or null without a task. */
  task: { state: string; allowed_actions: string[] } | null
  /** Someone else's live edit lease, or null. */
  foreignLease: { username: string; expires_at: string } | null
  /** The caller reads the scan blinded in an open reader set (saves go to their own branch). */
  reading: boolean
}

export interface LockReason {
  state: 'readonly' | 'locked'
  text: string
}

/** Why the workspace is read-only for the caller (viewer role, approved scan, someone else's lease), or null. */
export function lockReason(a: AccessInputs, timeText: (iso: string) => string = (iso) => new Date(iso).toLocaleTimeString()): LockReason | null {
  if (a.role === 'viewer') return { state: 'readonly', text: 'Read-only: you are a viewer in this project' }
  const task = a.task
  if (task?.state === 'approved') return { state: 'readonly', text: 'Read-only: this scan is approved (a lead can reopen it)' }
  const lease = a.reading ? null : a.foreignLease
  if (lease) return { state: 'locked', text: `Locked by ${lease.username} until ${timeText(lease.expires_at)}` }
  if (task && a.workflow && !task.allowed_actions.includes('edit') && !a.reading)
    return { state: 'readonly', text: `Read-only: you may not edit this scan while it is ${task.state.replace(/_/g, ' ')}` }
  return null
}

export function sameLock(a: LockReason | null, b: LockReason | null): boolean {
  return a === b || (!!a && !!b && a.state === b.state && a.text === b.text)
}
