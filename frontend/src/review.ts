/**
 * The review workflow inside the workspace: the task bar (state, review level, assignee, lease holder and the
 * caller's allowed actions), the edit lease (taken on the first edit, renewed every minute, released on
 * leaving), active editing time (seconds with pointer/keyboard input in the viewer, reported every ~30 s),
 * the review panel (approve / request changes with comments pinned to a structure and a voxel), comments with
 * "go to", QA findings and multi-reader readings.
 */

import { ApiError, OfflineError, api } from './api'
import { CommentMarkers } from './commentMarkers'
import { clear, fmtTime, h, toast } from './dom'
import type { Vec3 } from './geometry'
import type { CommentIn, CommentOut, FindingOut, ReaderSetOut, ReviewOut, TaskOut } from './types'
import type { Workspace } from './workspace'

const HEARTBEAT_MS = 60_000
const ACTIVITY_MS = 30_000
/** States in which editing first moves the task to `annotating` (the `start` action, which takes the lease). */
const STARTABLE = new Set(['new', 'pre_annotated', 'changes_requested'])

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

const ACTION_LABELS: Record<string, string> = {
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

function who(ref: { username?: string; display_name?: string } | null | undefined): string {
  return ref?.username ?? ref?.display_name ?? 'someone'
}

function fmtDuration(seconds: number): string {
  const s = Math.round(seconds)
  if (s < 60) return `${s} s`
  const m = Math.floor(s / 60)
  return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`
}

export class ReviewController {
  readonly ws: Workspace
  task: TaskOut | null = null
  /** False when the workflow endpoints are not there (an older server): the workspace works without them. */
  available = true
  comments: CommentOut[] = []
  findings: FindingOut[] = []
  reviews: ReviewOut[] = []
  readerSet: ReaderSetOut | null = null
  /** Comments written during this review, sent with the decision. */
  pending: CommentIn[] = []
  leaseHeld = false
  /** Seconds (epoch second buckets) with input in the viewer since the last report. */
  private activeBuckets = new Set<number>()
  reportedSeconds = 0
  private heartbeat: number | null = null
  private activityTimer: number | null = null
  private leaseRequest: Promise<boolean> | null = null
  bar: HTMLElement
  body: HTMLElement
  /** The comments drawn on the image ("Show comments on image"). */
  readonly markers = new CommentMarkers()

  constructor(ws: Workspace) {
    this.ws = ws
    this.markers.onResolve = (c, resolved) => {
      this.setCommentResolved(c, resolved).catch((err) => toast((err as Error).message, 'error'))
    }
    this.markers.onGoTo = (c) => this.goTo(c)
    this.markers.canResolve = () => this.role !== 'viewer'
    this.bar = h('div', { class: 'taskbar', 'data-testid': 'taskbar', hidden: true })
    this.body = h('div', { class: 'tab-body', 'data-testid': 'panel-review', hidden: true })
  }

  get me(): number | null {
    return api.user?.id ?? null
  }

  get role(): string {
    return this.ws.role
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
    const set = this.readerSet
    if (!set || set.status !== 'open') return null
    const member = set.members.find((m) => m.user_id === this.me)
    return member && !member.submitted ? set : null
  }

  can(action: string): boolean {
    return !!this.task?.allowed_actions.includes(action)
  }

  // ---------------------------------------------------------------- loading

  async load(): Promise<void> {
    try {
      this.task = await api.get<TaskOut>(`/api/scans/${this.ws.scanId}/task`)
      this.available = true
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
        this.available = false
        this.task = null
        this.render()
        return
      }
      throw err
    }
    this.setTask(this.task)
    this.startHeartbeat()
    await Promise.all([this.loadComments(), this.loadFindings(), this.loadReviews(), this.loadReaderSet()])
    this.render()
  }

  /** Take a fresh task: whether this user holds the lease follows it (heartbeat on or off). */
  setTask(task: TaskOut): void {
    this.task = task
    const lease = task.lease
    this.leaseHeld = !!lease && lease.user_id === this.me && Date.parse(lease.expires_at) > Date.now()
  }

  async refreshTask(): Promise<void> {
    if (!this.available) return
    this.setTask(await api.get<TaskOut>(`/api/scans/${this.ws.scanId}/task`))
    this.render()
    this.ws.applyAccess()
  }

  private async loadComments(): Promise<void> {
    this.comments = await api.get<CommentOut[]>(`/api/scans/${this.ws.scanId}/comments`).catch(() => [])
    this.markers.setComments(this.comments)
  }

  private async loadFindings(): Promise<void> {
    const out = await api.get<FindingOut[] | { items: FindingOut[] }>(`/api/scans/${this.ws.scanId}/findings`).catch(() => [])
    this.findings = Array.isArray(out) ? out : (out.items ?? [])
  }

  private async loadReviews(): Promise<void> {
    this.reviews = await api.get<ReviewOut[]>(`/api/scans/${this.ws.scanId}/reviews`).catch(() => [])
  }

  private async loadReaderSet(): Promise<void> {
    const sets = await api.get<ReaderSetOut[]>(`/api/scans/${this.ws.scanId}/reader-sets`).catch(() => [] as ReaderSetOut[])
    this.readerSet = (Array.isArray(sets) ? sets : []).find((s) => s.members?.some((m) => m.user_id === this.me)) ?? null
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
        this.setTask(await api.post<TaskOut>(`/api/scans/${this.ws.scanId}/transitions`, { json: { action: 'start' } }))
      }
      if (!this.leaseHeld || renew) this.setTask(await api.post<TaskOut>(`/api/scans/${this.ws.scanId}/lease`))
      this.startHeartbeat()
      this.render()
      this.ws.applyAccess()
      return true
    } catch (err) {
      if (err instanceof OfflineError) return true // saving will tell; the lease is taken once back online
      if (err instanceof ApiError && err.status === 409) {
        await this.refreshTask().catch(() => undefined)
        this.ws.applyAccess()
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
      const before = this.ws.lockReason?.state ?? 'edit'
      await this.refreshTask()
      if ((this.ws.lockReason?.state ?? 'edit') !== before && before === 'locked') toast('The edit lock was released: you may edit now', 'info')
      return
    }
    try {
      this.setTask(await api.post<TaskOut>(`/api/scans/${this.ws.scanId}/lease`))
      this.renderBar()
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) {
        this.leaseHeld = false
        toast('Your edit lease was taken over: saving is locked. Your edit is kept as a draft.', 'error', 8000)
        await this.refreshTask().catch(() => undefined)
      }
    }
  }

  /** Note a second of input in the viewer (pointer or keyboard). */
  noteInput(): void {
    if (!this.available || this.role === 'viewer') return
    this.activeBuckets.add(Math.floor(Date.now() / 1000))
    if (this.activityTimer === null) this.activityTimer = window.setTimeout(() => this.flushActivity().catch(() => undefined), ACTIVITY_MS)
  }

  get pendingSeconds(): number {
    return this.activeBuckets.size
  }

  /** Report the active seconds gathered so far (every ~30 s of activity, and on leaving). */
  async flushActivity(keepalive = false): Promise<number> {
    if (this.activityTimer !== null) window.clearTimeout(this.activityTimer)
    this.activityTimer = null
    const seconds = Math.min(600, this.activeBuckets.size)
    if (!seconds) return 0
    this.activeBuckets.clear()
    const path = `/api/scans/${this.ws.scanId}/activity`
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
      if (this.task) this.task.active_seconds += seconds
      this.renderBar()
    } catch {
      // Lost on failure: time tracking is best-effort and must never block editing.
    }
    return seconds
  }

  dispose(): void {
    if (this.heartbeat !== null) window.clearInterval(this.heartbeat)
    this.heartbeat = null
    void this.flushActivity(true)
    if (this.leaseHeld && api.session) {
      this.leaseHeld = false
      void fetch(`/api/scans/${this.ws.scanId}/lease`, {
        method: 'DELETE',
        keepalive: true,
        headers: { Authorization: `Bearer ${api.session.token}` },
      }).catch(() => undefined)
    }
  }

  // ---------------------------------------------------------------- actions

  async transition(action: string, extra: Record<string, unknown> = {}): Promise<TaskOut | null> {
    if (action === 'submit') {
      if (this.ws.session?.hasChanges) {
        toast('Save your changes first: a submission names a saved version', 'warn')
        return null
      }
      const version = this.ws.session?.baseVersionId ?? this.task?.head_version_id
      if (!version) {
        toast('There is no saved version to submit yet', 'warn')
        return null
      }
      extra = { version_id: version, ...extra }
    }
    try {
      this.setTask(await api.post<TaskOut>(`/api/scans/${this.ws.scanId}/transitions`, { json: { action, ...extra } }))
    } catch (err) {
      toast(`${ACTION_LABELS[action] ?? action}: ${(err as Error).message}`, 'error', 6000)
      await this.refreshTask().catch(() => undefined)
      return null
    }
    toast(`${ACTION_LABELS[action] ?? action}: now ${STATE_LABELS[this.task!.state] ?? this.task!.state}`, 'ok')
    await Promise.all([this.loadFindings(), this.loadReviews()])
    this.render()
    this.ws.applyAccess()
    return this.task
  }

  /** Where the crosshair is, as a comment location in the scan's stored voxel indices. */
  location(): Required<Pick<CommentIn, 'structure' | 'slice_axis' | 'slice_index' | 'voxel'>> {
    const g = this.ws.viewer.geometry!
    const ras = this.ws.viewer.crosshairVox()
    const ijk = g.rasToNativeIJK(ras[0], ras[1], ras[2])
    const plane = this.ws.viewer.layout === 'coronal' ? 1 : this.ws.viewer.layout === 'sagittal' ? 0 : 2
    const axis = g.axisOf[plane]
    return { structure: this.ws.active, slice_axis: axis, slice_index: ijk[axis], voxel: [ijk[0], ijk[1], ijk[2]] }
  }

  /** Move the crosshair to a comment's (or finding's) voxel, or to the middle of its slice. */
  goTo(loc: { voxel?: number[] | null; slice_axis?: number | null; slice_index?: number | null; structure?: string | null }): void {
    const g = this.ws.viewer.geometry!
    let ijk: Vec3 | null = null
    if (loc.voxel && loc.voxel.length === 3) ijk = [loc.voxel[0], loc.voxel[1], loc.voxel[2]]
    else if (loc.slice_axis !== null && loc.slice_axis !== undefined && loc.slice_index !== null && loc.slice_index !== undefined) {
      const cur = this.ws.viewer.crosshairVox()
      ijk = g.rasToNativeIJK(cur[0], cur[1], cur[2])
      ijk[loc.slice_axis] = loc.slice_index
    }
    if (!ijk) return
    this.ws.viewer.moveTo(g.nativeToRasXYZ(ijk[0], ijk[1], ijk[2]))
    if (loc.structure && loc.structure !== this.ws.active && this.ws.structures.some((s) => s.name === loc.structure))
      this.ws.setActive(loc.structure).catch(() => undefined)
  }

  pin(text: string): CommentIn | null {
    const t = text.trim()
    if (!t) {
      toast('Write the comment first', 'warn')
      return null
    }
    const c: CommentIn = { ...this.location(), version_id: this.reviewedVersion(), text: t }
    this.pending.push(c)
    this.renderBody()
    return c
  }

  /** Reviews are on the head version (the submitted one, or the reviewer's own correction on top of it). */
  private reviewedVersion(): number | null {
    return this.task?.head_version_id ?? this.task?.submitted_version_id ?? this.ws.session?.baseVersionId ?? null
  }

  /** Post a comment now (outside a review decision). */
  async comment(text: string): Promise<CommentOut | null> {
    const t = text.trim()
    if (!t) return null
    const out = await api.post<CommentOut>(`/api/scans/${this.ws.scanId}/comments`, {
      json: { ...this.location(), version_id: this.reviewedVersion(), text: t },
    })
    await this.loadComments()
    this.renderBody()
    return out
  }

  async decide(decision: 'approve' | 'request_changes', message: string): Promise<ReviewOut | null> {
    if (decision === 'request_changes' && !message.trim() && !this.pending.length) {
      toast('Say what needs to change (a message or a pinned comment)', 'warn')
      return null
    }
    const version = this.reviewedVersion()
    if (version === null) return null
    let review: ReviewOut
    try {
      review = await api.post<ReviewOut>(`/api/scans/${this.ws.scanId}/reviews`, {
        json: {
          version_id: version,
          decision,
          message: message.trim() || (decision === 'request_changes' ? this.pending[0]?.text : '') || '',
          comments: this.pending,
        },
      })
    } catch (err) {
      toast(`Review: ${(err as Error).message}`, 'error', 6000)
      return null
    }
    this.pending = []
    toast(decision === 'approve' ? 'Approved' : 'Changes requested', 'ok')
    await Promise.all([this.loadComments(), this.loadReviews()])
    await this.refreshTask()
    return review
  }

  async setCommentResolved(c: CommentOut, resolved: boolean): Promise<void> {
    try {
      await api.send('PATCH', `/api/comments/${c.id}`, { json: { resolved } })
      c.resolved = resolved
    } finally {
      // Also on a refusal: the popup's box goes back to what the server holds.
      this.markers.setComments(this.comments)
      this.renderBody()
    }
  }

  async setFinding(f: FindingOut, status: 'resolved' | 'dismissed'): Promise<void> {
    await api.send('PATCH', `/api/findings/${f.id}`, { json: { status } })
    f.status = status
    if (this.task) this.task.open_findings = this.findings.filter((x) => x.status === 'open').length
    this.render()
  }

  async submitReading(): Promise<boolean> {
    const set = this.myReading
    if (!set) return false
    if (this.ws.session?.hasChanges) {
      toast('Save your reading first', 'warn')
      return false
    }
    const version = this.ws.session?.baseVersionId
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

  // ---------------------------------------------------------------- rendering

  render(): void {
    this.renderBar()
    this.renderBody()
  }

  renderBar(): void {
    const bar = this.bar
    clear(bar)
    const t = this.task
    bar.hidden = !this.available || !t
    if (!t) return
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
        { 'data-testid': 'task-lease', class: lease && lease.user_id !== this.me ? 'warn' : '' },
        lease
          ? lease.user_id === this.me
            ? `you hold the edit lease (until ${new Date(lease.expires_at).toLocaleTimeString()})`
            : `locked by ${who(lease)} until ${new Date(lease.expires_at).toLocaleTimeString()}`
          : 'no edit lease',
      ),
      t.open_findings ? h('span', { class: 'chip warn', 'data-testid': 'task-findings' }, `${t.open_findings} QA finding${t.open_findings > 1 ? 's' : ''}`) : null,
      h('span', { class: 'muted', 'data-testid': 'task-active', title: 'active editing time on this scan' }, `active ${fmtDuration(t.active_seconds)}`),
      h('span', { class: 'spacer' }),
      this.myReading
        ? h('button', { class: 'btn primary small', 'data-testid': 'submit-reading', onclick: () => this.submitReading() }, 'Submit reading')
        : null,
      ...actions.map((a) =>
        h(
          'button',
          {
            class: `btn small ${a === 'submit' || a === 'start_review' ? 'primary' : ''}`,
            'data-testid': `action-${a}`,
            onclick: () => this.transition(a).catch((err) => toast((err as Error).message, 'error')),
          },
          ACTION_LABELS[a],
        ),
      ),
      this.can('approve') || this.can('request_changes')
        ? h('button', { class: 'btn small', 'data-testid': 'open-review', onclick: () => this.ws.showTab('review') }, 'Review…')
        : null,
    ]
    bar.append(...parts.filter((p): p is HTMLElement => p !== null))
  }

  renderBody(): void {
    const body = this.body
    clear(body)
    if (!this.available || !this.task) {
      body.append(h('p', { class: 'muted' }, 'The review workflow is not available on this server.'))
      return
    }
    if (this.can('approve') || this.can('request_changes')) body.append(this.decisionForm())
    else if (this.can('comment')) body.append(this.commentForm())
    body.append(this.markerToggles(), this.commentList(), this.findingsList(), this.reviewList())
  }

  /** "Show comments on image" (unresolved only unless "include resolved" is ticked). */
  private markerToggles(): HTMLElement {
    const m = this.markers
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
          onchange: (e: Event) => {
            m.setShow((e.target as HTMLInputElement).checked)
            this.renderBody()
          },
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
          onchange: (e: Event) => m.setShow(m.show, (e.target as HTMLInputElement).checked),
        }),
        ' include resolved',
      ),
    )
  }

  private decisionForm(): HTMLElement {
    const msg = h('textarea', { rows: '2', placeholder: 'Review message (required to request changes)', 'data-testid': 'review-message' })
    const note = h('input', { type: 'text', placeholder: 'Comment at the crosshair…', 'data-testid': 'comment-text' }) as HTMLInputElement
    const t = this.task!
    const version = this.reviewedVersion()
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
            title: 'Pin this comment to the active structure and the crosshair voxel',
            onclick: () => {
              if (this.pin(note.value)) note.value = ''
            },
          },
          'Pin here',
        ),
      ),
      this.pending.length
        ? h(
            'ul',
            { class: 'pending', 'data-testid': 'pending-comments' },
            this.pending.map((c, i) =>
              h(
                'li',
                null,
                h('span', null, c.text),
                h('span', { class: 'muted' }, ` · ${c.structure?.replace(/_/g, ' ') ?? '—'} @ ${c.voxel?.join(',')}`),
                h(
                  'button',
                  {
                    class: 'btn plain small',
                    onclick: () => {
                      this.pending.splice(i, 1)
                      this.renderBody()
                    },
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
            disabled: !this.can('request_changes'),
            onclick: () => this.decide('request_changes', (msg as HTMLTextAreaElement).value),
          },
          'Request changes',
        ),
        h(
          'button',
          {
            class: 'btn primary',
            'data-testid': 'review-approve',
            disabled: !this.can('approve'),
            onclick: () => this.decide('approve', (msg as HTMLTextAreaElement).value),
          },
          'Approve',
        ),
      ),
    )
  }

  private commentForm(): HTMLElement {
    const note = h('input', { type: 'text', placeholder: 'Comment at the crosshair…', 'data-testid': 'comment-text' }) as HTMLInputElement
    return h(
      'div',
      { class: 'pin-bar' },
      note,
      h(
        'button',
        {
          class: 'btn small',
          'data-testid': 'comment-post',
          onclick: () =>
            this.comment(note.value)
              .then((c) => {
                if (c) note.value = ''
              })
              .catch((err) => toast((err as Error).message, 'error')),
        },
        'Comment',
      ),
    )
  }

  private commentList(): HTMLElement {
    const list = h('div', { class: 'comments', 'data-testid': 'comment-list' }, h('div', { class: 'tb-title' }, `Comments (${this.comments.length})`))
    if (!this.comments.length) list.append(h('div', { class: 'muted' }, 'No comments yet.'))
    for (const c of [...this.comments].reverse()) {
      const where = [
        c.structure ? c.structure.replace(/_/g, ' ') : null,
        c.voxel ? `voxel ${c.voxel.join(', ')}` : c.slice_index !== null && c.slice_index !== undefined ? `slice ${c.slice_index}` : null,
        c.version_id ? `#${c.version_id}` : null,
      ].filter(Boolean)
      list.append(
        h(
          'div',
          { class: `comment ${c.resolved ? 'resolved' : ''}`, 'data-testid': `comment-${c.id}` },
          h('div', { class: 'ctext' }, c.text),
          h('div', { class: 'vmeta' }, `${who(c.author)} · ${fmtTime(c.created_at)}${where.length ? ' · ' + where.join(' · ') : ''}`),
          h(
            'div',
            { class: 'cbar' },
            c.voxel || c.slice_index !== null
              ? h('button', { class: 'btn small', 'data-testid': `comment-goto-${c.id}`, onclick: () => this.goTo(c) }, 'Go to')
              : null,
            this.role !== 'viewer'
              ? h(
                  'label',
                  { class: 'check' },
                  h('input', {
                    type: 'checkbox',
                    checked: c.resolved,
                    'data-testid': `comment-resolved-${c.id}`,
                    onchange: (e: Event) =>
                      this.setCommentResolved(c, (e.target as HTMLInputElement).checked).catch((err) => toast((err as Error).message, 'error')),
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
    const open = this.findings.filter((f) => f.status === 'open')
    const list = h('div', { class: 'findings', 'data-testid': 'finding-list' }, h('div', { class: 'tb-title' }, `QA findings (${open.length} open)`))
    if (!this.findings.length) list.append(h('div', { class: 'muted' }, 'No QA findings.'))
    const closed = h('details', { class: 'closed-findings' })
    const done = this.findings.filter((f) => f.status !== 'open')
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
            voxel ? h('button', { class: 'btn small', onclick: () => this.goTo({ voxel, structure: f.structure }) }, 'Go to') : null,
            f.status === 'open' && this.isReviewer
              ? [
                  h(
                    'button',
                    { class: 'btn small', 'data-testid': `finding-resolve-${f.id}`, onclick: () => this.setFinding(f, 'resolved').catch((err) => toast((err as Error).message, 'error')) },
                    'Resolve',
                  ),
                  h(
                    'button',
                    { class: 'btn small plain', 'data-testid': `finding-dismiss-${f.id}`, onclick: () => this.setFinding(f, 'dismissed').catch((err) => toast((err as Error).message, 'error')) },
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
    const list = h('div', { class: 'reviews', 'data-testid': 'review-list' }, h('div', { class: 'tb-title' }, `Reviews (${this.reviews.length})`))
    for (const r of [...this.reviews].reverse()) {
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
