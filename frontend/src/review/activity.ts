/**
 * Active editing time: the seconds with pointer or keyboard input in the viewer (one-second buckets), reported to
 * the server every ~30 s of activity and on leaving (a keepalive request then). Best-effort: a failed report is
 * dropped, never retried, and never blocks editing.
 */

import { api } from '../api/client'

const ACTIVITY_MS = 30_000

export class ActivityTracker {
  private readonly scanId: number
  /** Whether input counts now (the workflow answers and the caller is not a viewer). */
  private readonly counts: () => boolean
  /** Called with the seconds the server accepted. */
  private readonly onReported: (seconds: number) => void
  private buckets = new Set<number>()
  private timer: number | null = null
  reportedSeconds = 0

  constructor(scanId: number, counts: () => boolean, onReported: (seconds: number) => void) {
    this.scanId = scanId
    this.counts = counts
    this.onReported = onReported
  }

  /** Seconds gathered and not reported yet. */
  get pendingSeconds(): number {
    return this.buckets.size
  }

  /** Note a second of input in the viewer (pointer or keyboard). */
  note(): void {
    if (!this.counts()) return
    this.buckets.add(Math.floor(Date.now() / 1000))
    if (this.timer === null) this.timer = window.setTimeout(() => this.flush().catch(() => undefined), ACTIVITY_MS)
  }

  /** Report the active seconds gathered so far (every ~30 s of activity, and on leaving with `keepalive`). */
  async flush(keepalive = false): Promise<number> {
    if (this.timer !== null) window.clearTimeout(this.timer)
    this.timer = null
    const seconds = Math.min(600, this.buckets.size)
    if (!seconds) return 0
    this.buckets.clear()
    const path = `/api/scans/${this.scanId}/activity`
    if (keepalive && api.session) {
      void fetch(path, {
        method: 'POST',
        keepalive: true,
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${api.session.token}` },
        body: JSON.stringify({ active_seconds: seconds }),
      }).catch(() => undefined)
      return seconds
    }
    try {
      await api.post(path, { json: { active_seconds: seconds } })
      this.reportedSeconds += seconds
      this.onReported(seconds)
    } catch {
      // Lost on failure: time tracking is best-effort and must never block editing.
    }
    return seconds
  }
}
