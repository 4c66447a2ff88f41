/**
 * The review workflow of one open scan, without its views: the task (state, review level, lease, the caller's
 * allowed actions), the edit lease (taken on the first edit, renewed every minute, released on leaving), active
 * editing time (activity.ts), review decisions with comments pinned to a structure and a voxel, QA findings and
 * multi-reader readings. Its state is a store the task bar, the review panel and the workspace's access rules
 * subscribe to; it reaches the workspace only through `ReviewHost`.
 */

import { ApiError, OfflineError, api } from '../api/client'
import type { CommentIn, CommentOut, FindingOut, ReaderSetOut, ReviewOut, TaskOut } from '../api/types'
import type { Vec3 } from '../core/geometry'
import { stepIndex, steppable, unchangedResubmission } from '../core/reviewRules'
import { dialog, h, toast } from '../dom'
import { type ReadableStore, type Store, createStore } from '../store'
import type { ReviewHost } from './host'
import { ActivityTracker } from './activity'
import { ACTION_LABELS, STATE_LABELS } from './labels'
import { CommentMarkers } from './markers'
import { type PinChoice, type PinDefault, pinDefault, pinnedStructure } from './pinning'

const HEARTBEAT_MS = 60_000
/** States in which editing first moves the task to `annotating` (the `start` action, which takes the lease). */
const STARTABLE = new Set(['new', 'pre_annotated', 'changes_requested'])

export interface ReviewState {
  /** False when the workflow endpoints are not there (an older server): the workspace works without them. */
  available: boolean
  task: TaskOut | null
  /** Whether this user holds the live edit lease (the heartbeat renews it). */
  leaseHeld: boolean
  comments: CommentOut[]
  findings: FindingOut[]
  reviews: ReviewOut[]
  readerSet: ReaderSetOut | null
  /** Comments written during this review, sent with the decision. */
  pending: CommentIn[]
  /** "Show comments on image" and "include resolved". */
  markers: { show: boolean; includeResolved: boolean }
  /** The comment last stepped to (its id), or null. */
  currentComment: number | null
  /** The reviewer's decision banner was closed (until the next decision). */
  bannerClosed: number | null
  /** The structure under the crosshair voxel (a new comment's default), and the reviewer's pick in the form. */
  pinUnder: PinDefault
  pinChoice: PinChoice
}

/** A place on the scan: a voxel (stored order), or a slice only, optionally with its structure. */
export interface ScanPlace {
  voxel?: number[] | null
  slice_axis?: number | null
  slice_index?: number | null
  structure?: string | null
}

export class ReviewController {
  readonly host: ReviewHost
  private readonly store: Store<ReviewState>
  private readonly activity: ActivityTracker
  private heartbeat: number | null = null
  private leaseRequest: Promise<boolean> | null = null
  /** The comments drawn on the image ("Show comments on image"). */
  readonly markers = new CommentMarkers()

  constructor(host: ReviewHost) {
    this.host = host
    this.store = createStore<ReviewState>({
      available: true,
      task: null,
      leaseHeld: false,
      comments: [],
      findings: [],
      reviews: [],
      readerSet: null,
      pending: [],
      markers: { show: this.markers.show, includeResolved: this.markers.includeResolved },
      currentComment: null,
      bannerClosed: null,
      pinUnder: { structure: null, drawn: false },
      pinChoice: { kind: 'auto' },
    })
    this.activity = new ActivityTracker(
      host.scanId,
      () => this.available && this.role !== 'viewer',
      (seconds) => {
        const task = this.task
        if (task) this.store.set({ task: { ...task, active_seconds: task.active_seconds + seconds } })
      },
    )
    this.markers.onResolve = (c, resolved) => {
      this.setCommentResolved(c, resolved).catch((err: unknown) => toast((err as Error).message, 'error'))
    }
    this.markers.onGoTo = (c) => this.goTo(c)
    this.markers.canResolve = () => this.role !== 'viewer'
    // Every redraw (the crosshair moved, a slice changed): the comment form follows the structure under the voxel.
    this.markers.onPlaced = () => {
      const next = this.structureUnderCrosshair()
      const now = this.store.get().pinUnder
      if (next.structure !== now.structure || next.drawn !== now.drawn) this.store.set({ pinUnder: next })
    }
    this.store.watch(
      (s) => s.comments,
      (comments) => this.markers.setComments(comments),
    )
  }

  /** The workflow's state, read-only: views and the workspace's access rules watch it. */
  get state(): ReadableStore<ReviewState> {
    return this.store
  }

  get task(): TaskOut | null {
    return this.store.get().task
  }

  get available(): boolean {
    return this.store.get().available
  }

  get leaseHeld(): boolean {
    return this.store.get().leaseHeld
  }

  get me(): number | null {
    return api.user?.id ?? null
  }

  get role(): string {
    return this.host.role()
  }

  get isReviewer(): boolean {
    return ['reviewer', 'lead', 'admin'].includes(this.role)
  }

  /** The live lease of someone else, or null. */
  get foreignLease(): TaskOut['lease'] {
    const lease = this.task?.lease
    if (!lease || lease.user_id === this.me) return null
    return Date.parse(lease.expires_at) > Date.now() ? lease : null
  }

  /** The reader set this user reads in (open, not yet submitted by them), or null. */
  get myReading(): ReaderSetOut | null {
    return readingOf(this.store.get().readerSet, this.me)
  }

  can(action: string): boolean {
    return !!this.task?.allowed_actions.includes(action)
  }

  /** The workflow endpoints failed to answer: the workspace goes on without them. */
  markUnavailable(): void {
    this.store.set({ available: false })
  }

  // ---------------------------------------------------------------- loading

  async load(): Promise<void> {
    let task: TaskOut
    try {
      task = await api.get<TaskOut>(`/api/scans/${this.host.scanId}/task`)
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
        this.store.set({ available: false, task: null })
        return
      }
      throw err
    }
    this.store.set({ available: true })
    this.setTask(task)
    this.startHeartbeat()
    await Promise.all([this.loadComments(), this.loadFindings(), this.loadReviews(), this.loadReaderSet()])
  }

  /** Take a fresh task: whether this user holds the lease follows it (heartbeat on or off). */
  setTask(task: TaskOut): void {
    const lease = task.lease
    this.store.set({ task, leaseHeld: !!lease && lease.user_id === this.me && Date.parse(lease.expires_at) > Date.now() })
  }

  async refreshTask(): Promise<void> {
    if (!this.available) return
    this.setTask(await api.get<TaskOut>(`/api/scans/${this.host.scanId}/task`))
  }

  private async loadComments(): Promise<void> {
    this.store.set({ comments: await api.get<CommentOut[]>(`/api/scans/${this.host.scanId}/comments`).catch(() => []) })
  }

  private async loadFindings(): Promise<void> {
    const out = await api.get<FindingOut[] | { items: FindingOut[] }>(`/api/scans/${this.host.scanId}/findings`).catch(() => [])
    this.store.set({ findings: Array.isArray(out) ? out : (out.items ?? []) })
  }

  private async loadReviews(): Promise<void> {
    this.store.set({ reviews: await api.get<ReviewOut[]>(`/api/scans/${this.host.scanId}/reviews`).catch(() => []) })
  }

  private async loadReaderSet(): Promise<void> {
    const sets = await api.get<ReaderSetOut[]>(`/api/scans/${this.host.scanId}/reader-sets`).catch(() => [] as ReaderSetOut[])
    this.store.set({ readerSet: (Array.isArray(sets) ? sets : []).find((s) => s.members?.some((m) => m.user_id === this.me)) ?? null })
  }

  // ---------------------------------------------------------------- lease and activity

  /**
   * Take the edit lease before the first edit (the `start` action when the task is waiting to be started).
   * Resolves false when someone else holds it (the workspace then locks itself).
   */
  ensureLease(renew = false): Promise<boolean> {
    if (!this.available || !this.task || this.myReading) return Promise.resolve(true)
    if (this.leaseHeld && !renew) return Promise.resolve(true)
    if (!this.leaseRequest) {
      this.leaseRequest = this.acquire(renew).finally(() => {
        this.leaseRequest = null
      })
    }
    return this.leaseRequest
  }

  private async acquire(renew: boolean): Promise<boolean> {
    try {
      if (this.task && STARTABLE.has(this.task.state) && this.can('start')) {
        this.setTask(await api.post<TaskOut>(`/api/scans/${this.host.scanId}/transitions`, { json: { action: 'start' } }))
      }
      if (!this.leaseHeld || renew) this.setTask(await api.post<TaskOut>(`/api/scans/${this.host.scanId}/lease`))
      this.startHeartbeat()
      return true
    } catch (err) {
      if (err instanceof OfflineError) return true // saving will tell; the lease is taken once back online
      if (err instanceof ApiError && err.status === 409) {
        await this.refreshTask().catch(() => undefined)
        return !this.foreignLease
      }
      if (err instanceof ApiError && err.status === 403) return true // the save decides (e.g. a reader's branch)
      throw err
    }
  }

  private startHeartbeat(): void {
    if (this.heartbeat !== null) return
    this.heartbeat = window.setInterval(() => this.beat().catch(() => undefined), HEARTBEAT_MS)
  }

  /**
   * Every minute while the tab is open: renew the lease when this user holds it, else re-read the task (so a
   * lock clears once its holder leaves, and a review decision shows up). Also the test hook's heartbeat.
   */
  async beat(): Promise<void> {
    if (!this.leaseHeld) {
      const before = this.host.accessState()
      await this.refreshTask()
      if (this.host.accessState() !== before && before === 'locked') toast('The edit lock was released: you may edit now', 'info')
      return
    }
    try {
      this.setTask(await api.post<TaskOut>(`/api/scans/${this.host.scanId}/lease`))
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) {
        this.store.set({ leaseHeld: false })
        toast('Your edit lease was taken over: saving is locked. Your edit is kept as a draft.', 'error', 8000)
        await this.refreshTask().catch(() => undefined)
      }
    }
  }

  /** Note a second of input in the viewer (pointer or keyboard). */
  noteInput(): void {
    this.activity.note()
  }

  get pendingSeconds(): number {
    return this.activity.pendingSeconds
  }

  get reportedSeconds(): number {
    return this.activity.reportedSeconds
  }

  /** Report the active seconds gathered so far (every ~30 s of activity, and on leaving). */
  flushActivity(keepalive = false): Promise<number> {
    return this.activity.flush(keepalive)
  }

  dispose(): void {
    if (this.heartbeat !== null) window.clearInterval(this.heartbeat)
    this.heartbeat = null
    void this.activity.flush(true)
    if (this.leaseHeld && api.session) {
      this.store.set({ leaseHeld: false })
      void fetch(`/api/scans/${this.host.scanId}/lease`, {
        method: 'DELETE',
        keepalive: true,
        headers: { Authorization: `Bearer ${api.session.token}` },
      }).catch(() => undefined)
    }
  }

  // ---------------------------------------------------------------- actions

  async transition(action: string, extra: Record<string, unknown> = {}): Promise<TaskOut | null> {
    if (action === 'submit') {
      if (this.host.hasUnsavedChanges()) {
        toast('Save your changes first: a submission names a saved version', 'warn')
        return null
      }
      const version = this.host.baseVersionId() ?? this.task?.head_version_id
      if (!version) {
        toast('There is no saved version to submit yet', 'warn')
        return null
      }
      const same = unchangedResubmission(this.store.get().reviews, version)
      if (same && !(await this.confirmUnchanged(same.version_id))) return null
      extra = { version_id: version, ...extra }
    }
    let task: TaskOut
    try {
      task = await api.post<TaskOut>(`/api/scans/${this.host.scanId}/transitions`, { json: { action, ...extra } })
    } catch (err) {
      toast(`${ACTION_LABELS[action] ?? action}: ${(err as Error).message}`, 'error', 6000)
      await this.refreshTask().catch(() => undefined)
      return null
    }
    this.setTask(task)
    toast(`${ACTION_LABELS[action] ?? action}: now ${STATE_LABELS[task.state] ?? task.state}`, 'ok')
    await Promise.all([this.loadFindings(), this.loadReviews()])
    return this.task
  }

  /** Ask before handing back the very version changes were requested on. */
  private async confirmUnchanged(version: number): Promise<boolean> {
    const body = h(
      'div',
      null,
      h('p', null, `Nothing was saved since the reviewer asked for changes on version #${version}.`),
      h('p', { class: 'muted' }, 'Submit the same version again anyway?'),
    )
    const answer = await dialog(
      'Resubmit without changes?',
      body,
      [
        { label: 'Cancel', value: 'cancel' },
        { label: 'Submit anyway', value: 'submit', kind: 'danger', testid: 'resubmit-anyway' },
      ],
      { testid: 'resubmit-dialog' },
    )
    return answer === 'submit'
  }

  /** Step to the next (+1) or previous (-1) comment (the unresolved ones first): move there and mark it current. */
  stepComment(dir: number): CommentOut | null {
    const list = steppable(this.store.get().comments)
    const current = list.findIndex((c) => c.id === this.store.get().currentComment)
    const next = stepIndex(current, dir, list.length)
    if (next < 0) return null
    const c = list[next]
    this.store.set({ currentComment: c.id })
    this.goTo(c)
    return c
  }

  /** Position of the current comment among those stepped through (1-based), and their number. */
  commentPosition(): { index: number; count: number } {
    const list = steppable(this.store.get().comments)
    return { index: list.findIndex((c) => c.id === this.store.get().currentComment) + 1, count: list.length }
  }

  closeBanner(reviewId: number): void {
    this.store.set({ bannerClosed: reviewId })
  }

  /**
   * Where the crosshair is, as a comment location in the scan's stored voxel indices, pinned to the structure under
   * that voxel (the innermost one drawn there; the active one on background) unless the reviewer chose one.
   */
  location(): Required<Pick<CommentIn, 'structure' | 'slice_axis' | 'slice_index' | 'voxel'>> {
    const { voxel, sliceAxis } = this.host.crosshair()
    const under = pinDefault(this.host.structuresAt(voxel), this.host.structures(), this.host.activeStructure())
    const structure = pinnedStructure(this.store.get().pinChoice, under.structure)
    return { structure, slice_axis: sliceAxis, slice_index: voxel[sliceAxis], voxel: [voxel[0], voxel[1], voxel[2]] }
  }

  /** The comment form's default structure at the crosshair voxel (nothing before the volume is loaded). */
  structureUnderCrosshair(): PinDefault {
    let voxel: Vec3
    try {
      voxel = this.host.crosshair().voxel
    } catch {
      return { structure: null, drawn: false } // the volume is not loaded yet
    }
    return pinDefault(this.host.structuresAt(voxel), this.host.structures(), this.host.activeStructure())
  }

  /** The comment form's structure: 'auto' follows the voxel; a name (or null: none) is kept until the next comment. */
  choosePin(choice: string | null | 'auto'): void {
    this.store.set({ pinChoice: choice === 'auto' ? { kind: 'auto' } : { kind: 'chosen', structure: choice } })
  }

  /** The structure a comment written now is pinned to (what the form shows). */
  get pinStructure(): string | null {
    const s = this.store.get()
    return pinnedStructure(s.pinChoice, s.pinUnder.structure)
  }

  /** Move the crosshair to a comment's (or finding's) voxel, or to the middle of its slice. */
  goTo(loc: ScanPlace): void {
    let ijk: Vec3 | null = null
    if (loc.voxel && loc.voxel.length === 3) ijk = [loc.voxel[0], loc.voxel[1], loc.voxel[2]]
    else if (loc.slice_axis !== null && loc.slice_axis !== undefined && loc.slice_index !== null && loc.slice_index !== undefined) {
      ijk = this.host.crosshair().voxel
      ijk[loc.slice_axis] = loc.slice_index
    }
    if (!ijk) return
    this.host.moveTo(ijk)
    if (loc.structure && loc.structure !== this.host.activeStructure()) this.host.activate(loc.structure)
  }

  pin(text: string): CommentIn | null {
    const t = text.trim()
    if (!t) {
      toast('Write the comment first', 'warn')
      return null
    }
    const c: CommentIn = { ...this.location(), version_id: this.reviewedVersion(), text: t }
    this.store.set({ pending: [...this.store.get().pending, c], pinChoice: { kind: 'auto' } })
    return c
  }

  /** Drop a comment written during this review before it is sent. */
  unpin(index: number): void {
    this.store.set({ pending: this.store.get().pending.filter((_, i) => i !== index) })
  }

  /** Reviews are on the head version (the submitted one, or the reviewer's own correction on top of it). */
  reviewedVersion(): number | null {
    return this.task?.head_version_id ?? this.task?.submitted_version_id ?? this.host.baseVersionId() ?? null
  }

  /** Post a comment now (outside a review decision). */
  async comment(text: string): Promise<CommentOut | null> {
    const t = text.trim()
    if (!t) return null
    const out = await api.post<CommentOut>(`/api/scans/${this.host.scanId}/comments`, {
      json: { ...this.location(), version_id: this.reviewedVersion(), text: t },
    })
    this.store.set({ pinChoice: { kind: 'auto' } })
    await this.loadComments()
    return out
  }

  async decide(decision: 'approve' | 'request_changes', message: string): Promise<ReviewOut | null> {
    const pending = this.store.get().pending
    if (decision === 'request_changes' && !message.trim() && !pending.length) {
      toast('Say what needs to change (a message or a pinned comment)', 'warn')
      return null
    }
    const version = this.reviewedVersion()
    if (version === null) return null
    let review: ReviewOut
    try {
      review = await api.post<ReviewOut>(`/api/scans/${this.host.scanId}/reviews`, {
        json: {
          version_id: version,
          decision,
          message: message.trim() || (decision === 'request_changes' ? pending[0]?.text : '') || '',
          comments: pending,
        },
      })
    } catch (err) {
      toast(`Review: ${(err as Error).message}`, 'error', 6000)
      return null
    }
    this.store.set({ pending: [] })
    toast(decision === 'approve' ? 'Approved' : 'Changes requested', 'ok')
    await Promise.all([this.loadComments(), this.loadReviews()])
    await this.refreshTask()
    return review
  }

  async setCommentResolved(c: CommentOut, resolved: boolean): Promise<void> {
    let ok = false
    try {
      await api.send('PATCH', `/api/comments/${c.id}`, { json: { resolved } })
      ok = true
    } finally {
      // Also on a refusal: a fresh list redraws the popup's box and the panel with what the server holds.
      this.store.set({ comments: this.store.get().comments.map((x) => (ok && x.id === c.id ? { ...x, resolved } : x)) })
    }
  }

  async setFinding(f: FindingOut, status: 'resolved' | 'dismissed'): Promise<void> {
    await api.send('PATCH', `/api/findings/${f.id}`, { json: { status } })
    const findings = this.store.get().findings.map((x) => (x.id === f.id ? { ...x, status } : x))
    const task = this.task
    this.store.set({ findings, task: task ? { ...task, open_findings: findings.filter((x) => x.status === 'open').length } : task })
  }

  /** "Show comments on image" (unresolved only unless "include resolved" is ticked). */
  showMarkers(show: boolean, includeResolved = this.markers.includeResolved): void {
    this.markers.setShow(show, includeResolved)
    this.store.set({ markers: { show: this.markers.show, includeResolved: this.markers.includeResolved } })
  }

  async submitReading(): Promise<boolean> {
    const set = this.myReading
    if (!set) return false
    if (this.host.hasUnsavedChanges()) {
      toast('Save your reading first', 'warn')
      return false
    }
    const version = this.host.baseVersionId()
    if (!version || version === set.base_version_id) {
      toast('Save your reading (a branch of your own) before submitting it', 'warn')
      return false
    }
    try {
      await api.post(`/api/reader-sets/${set.id}/submit`, { json: { version_id: version } })
    } catch (err) {
      toast(`Submit reading: ${(err as Error).message}`, 'error', 6000)
      return false
    }
    toast('Reading submitted', 'ok')
    await this.loadReaderSet()
    await this.refreshTask()
    return true
  }
}

/** The reader set a user reads in (open, not yet submitted by them), or null. */
export function readingOf(set: ReaderSetOut | null, me: number | null): ReaderSetOut | null {
  if (!set || set.status !== 'open') return null
  const member = set.members.find((m) => m.user_id === me)
  return member && !member.submitted ? set : null
}
