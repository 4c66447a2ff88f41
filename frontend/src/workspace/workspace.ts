/**
 * The radiologist's workspace for one scan. This module opens the scan and wires the parts around one store:
 * the shell (shell.ts), tool bar and pointer input (toolbar.ts, toolInput.ts), view bar and readout (viewbar.ts),
 * the editing model (editor.ts), structures, versions and attention tabs, saving (saving.ts) and drafts
 * (draftSync.ts), and the review workflow (../review), which sees the workspace only through `ReviewHost`.
 */

import { api } from '../api/client'
import type { Project, Scan, SchemaOut, Structure, Version } from '../api/types'
import { type LockReason, lockReason } from '../core/access'
import { awaitingReview } from '../core/reviewRules'
import { EditSession } from '../core/editSession'
import { fmtBytes, toast } from '../dom'
import type { Vec3 } from '../core/geometry'
import { structureOfLabel } from '../core/outline'
import { type ReviewController, type ReviewHost, createReview } from '../review'
import { sameItems } from '../store'
import { Viewer } from '../viewer'
import { Attention } from './attention'
import type { ShellElements, TabId, WorkspaceContext } from './context'
import { DraftSync } from './draftSync'
import { Editor } from './editor'
import { keyHandler, showHelp } from './keys'
import { fetchMaskRAS } from './masks'
import { Navigation } from './navigation'
import { Saving } from './saving'
import { buildShell, renderHeader, showTab, watchStatus } from './shell'
import { type SaveState, type StructureView, createWorkspaceStore } from './state'
import { StructuresPanel } from './structuresPanel'
import { ToolInput } from './toolInput'
import { Toolbar } from './toolbar'
import { Versions } from './versions'
import { Viewbar } from './viewbar'

export interface Timings {
  openStart: number
  volumeLoaded: number
  /** The first frame handed to the GPU (download, decode and upload calls done). */
  submitted: number
  firstSlice: number
  ready: number
  /** Of which: NIfTI decoding, and adding the volume (GPU upload, orientation). */
  decode: number
  upload: number
}

export class Workspace implements WorkspaceContext {
  readonly root: HTMLElement
  readonly scanId: number
  readonly store = createWorkspaceStore()
  scan!: Scan
  schema!: SchemaOut
  viewer!: Viewer
  session!: EditSession
  readonly review: ReviewController
  readonly el: ShellElements
  readonly editor: Editor
  readonly attention: Attention
  readonly drafts: DraftSync
  readonly saving: Saving
  readonly toolbar: Toolbar
  readonly viewbar: Viewbar
  readonly structuresPanel: StructuresPanel
  readonly versions: Versions
  readonly navigation: Navigation
  private readonly toolInput: ToolInput
  timings: Timings = { openStart: 0, volumeLoaded: 0, submitted: 0, firstSlice: 0, ready: 0, decode: 0, upload: 0 }
  private disposed = false
  private cleanup: (() => void)[] = []
  private readonly redrawStatus: () => void

  constructor(root: HTMLElement, scanId: number) {
    this.root = root
    this.scanId = scanId
    const review = createReview(this.reviewHost())
    this.review = review.controller
    this.el = buildShell(root, { bar: review.bar, panel: review.panel, markers: this.review.markers.layer, banner: review.banner })
    this.redrawStatus = watchStatus(this.el, this.store, () => this.scan?.case_id)
    this.editor = new Editor(this)
    this.attention = new Attention(this)
    this.drafts = new DraftSync(this)
    this.saving = new Saving(this)
    this.toolbar = new Toolbar(this)
    this.navigation = new Navigation(this)
    this.viewbar = new Viewbar(this, this.navigation)
    this.structuresPanel = new StructuresPanel(this)
    this.versions = new Versions(this)
    this.toolInput = new ToolInput(this, () => this.toolbar.huRange())
    // The access rules follow the role and the review workflow's task, lease and reading.
    const updateAccess = (): void => this.store.set({ access: this.lockReason(), reading: !!this.review.myReading })
    this.review.state.watch((s) => [s.available, s.task, s.readerSet] as const, updateAccess, { equals: sameItems })
    this.store.watch((s) => s.role, updateAccess)
  }

  get structures(): Structure[] {
    return this.schema.structures
  }

  structure(name: string): Structure {
    const s = this.structures.find((x) => x.name === name)
    if (!s) throw new Error(`unknown structure ${name}`)
    return s
  }

  /** Why this workspace is read-only for the caller (viewer role, approved scan, someone else's lease), or null. */
  lockReason(): LockReason | null {
    const r = this.review
    const reading = !!r.myReading
    return (
      lockReason({ role: this.store.get().role, workflow: r.available, task: r.task, foreignLease: r.foreignLease, reading }) ??
      (r.available ? awaitingReview(r.task, reading) : null)
    )
  }

  /** Reflect the caller's access: tools and saving disabled with the reason shown, or enabled again. */
  private applyAccess(): void {
    const lock = this.lockReason()
    const { tool, saveState, mode } = this.store.get()
    if (lock && tool !== 'navigate') this.store.set({ tool: 'navigate' })
    this.root.dataset.access = lock ? lock.state : 'edit'
    if (saveState === 'loading' || mode.kind !== 'edit' || this.saving.saving) return
    if (lock) this.setSaveState(lock.state, lock.text)
    else if (saveState === 'readonly' || saveState === 'locked') this.onSessionChange()
  }

  setSaveState(state: SaveState, text?: string): void {
    this.store.set({ saveState: state, saveText: text ?? null })
  }

  showTab(id: TabId): void {
    showTab(this.el, id)
  }

  fail(err: unknown): void {
    console.error(err)
    toast((err as Error).message ?? String(err), 'error', 6000)
  }

  private reviewHost(): ReviewHost {
    return {
      scanId: this.scanId,
      role: () => this.store.get().role,
      hasUnsavedChanges: () => !!this.session?.hasChanges,
      baseVersionId: () => this.session?.baseVersionId ?? null,
      crosshair: () => {
        const g = this.viewer.geometry!
        const ras = this.viewer.crosshairVox()
        const layout = this.viewer.layout
        const rasAxis = layout === 'coronal' ? 1 : layout === 'sagittal' ? 0 : 2
        return { voxel: g.rasToNativeIJK(ras[0], ras[1], ras[2]), sliceAxis: g.axisOf[rasAxis] as 0 | 1 | 2 }
      },
      moveTo: (ijk) => this.viewer.moveTo(this.viewer.geometry!.nativeToRasXYZ(ijk[0], ijk[1], ijk[2])),
      activeStructure: () => this.store.get().active,
      structures: () => this.structures.map((s) => ({ name: s.name, inside: s.inside })),
      structuresAt: (ijk) => this.structuresAt(ijk),
      activate: (name) => {
        if (this.structures.some((s) => s.name === name)) this.editor.setActive(name).catch(() => undefined)
      },
      showReviewTab: () => this.showTab('review'),
      accessState: () => this.lockReason()?.state ?? 'edit',
    }
  }

  /**
   * The structures drawn at a stored voxel: editing, the session's working copies holding it (active first), then
   * the overlay's; viewing or comparing a version, the overlay's (that version's combined map) only.
   */
  private structuresAt(ijk: Vec3): string[] {
    const g = this.viewer?.geometry
    if (!g || !this.session) return []
    const ras = g.nativeToRasXYZ(ijk[0], ijk[1], ijk[2])
    const i = g.rasIndex(ras[0], ras[1], ras[2])
    const { active, mode } = this.store.get()
    const editing = mode.kind === 'edit'
    const held = editing ? [...this.session.edited.keys()].sort((a, b) => Number(b === active) - Number(a === active)) : []
    const out = held.filter((name) => this.session.edited.get(name)![i])
    // An outlined structure's boundary voxels carry its label plus OUTLINE_OFFSET in the overlay (core/outline.ts).
    const other = structureOfLabel(this.structures, this.viewer.labels?.img?.[g.nativeIndexOfRas(i)] ?? 0)?.name
    if (other && !held.includes(other)) out.push(other)
    return out
  }

  // ---------------------------------------------------------------- open

  async open(): Promise<void> {
    this.timings.openStart = performance.now()
    this.mount()
    this.setSaveState('loading', 'Loading scan…')
    this.scan = await api.get<Scan>(`/api/scans/${this.scanId}`)
    if (this.disposed) return
    this.store.set({ headVersionId: this.scan.head_version_id })
    renderHeader(this.el, this.scan, showHelp)
    this.redrawStatus()
    const project = await api.get<Project>(`/api/projects/${this.scan.project_id}`)
    this.store.set({ role: project.role })
    this.schema = await api.get<SchemaOut>(`/api/projects/${this.scan.project_id}/schema`)
    this.store.set({ views: new Map<string, StructureView>(this.structures.map((s) => [s.name, { visible: true, opacity: 0.55 }])) })
    this.viewer = new Viewer(this.el.canvas)
    await this.viewer.attach()
    this.viewer.onLocation = () => this.viewbar.updateReadout()
    this.viewer.onDraw = () => {
      this.review.markers.schedule()
      this.navigation.onDraw()
    }
    this.review.markers.attach(this.viewer)
    this.viewer.onWindow = () => this.viewbar.updateWindowInputs()
    const bytes = await api.download(`/api/scans/${this.scanId}/volume`, (got, total) => this.progress(got, total))
    if (this.disposed) return
    this.timings.volumeLoaded = performance.now()
    this.el.progressLabel.textContent = 'Preparing volume…'
    await this.viewer.loadCT(bytes, `${this.scan.case_id}.nii.gz`, this.scan.affine, this.scan.spacing)
    this.timings.submitted = await this.viewer.frame()
    this.timings.firstSlice = performance.now()
    this.timings.decode = this.viewer.loadMarks.decode
    this.timings.upload = this.viewer.loadMarks.upload
    this.el.loading.hidden = true
    if (this.disposed) return
    this.viewer.prepareDrawing()
    this.newSession(this.scan.head_version_id)
    await this.loadVersions()
    if (this.disposed) return
    this.store.set({ baseVersion: this.store.get().versions.find((v) => v.id === this.scan.head_version_id) ?? null })
    await this.review.load().catch((err: unknown) => {
      console.warn('review workflow unavailable', err)
      this.review.markUnavailable()
    })
    if (this.review.myReading) this.session.branch = true
    const restoredActive = this.store.get().role === 'viewer' ? null : await this.drafts.offer()
    const baseRow = (name: string): Version['structures'][number] | undefined => this.store.get().baseVersion?.structures.find((s) => s.name === name)
    const first =
      restoredActive ??
      this.structures.find((s) => s.name === 'pancreas')?.name ??
      this.structures.find((s) => baseRow(s.name)?.status === 'present')?.name ??
      this.structures[0]?.name ??
      null
    this.structuresPanel.render()
    this.versions.render()
    this.attention.render()
    if (first) await this.editor.setActive(first)
    if (this.disposed) return
    void this.viewer.grid // HU in RAS order for the tools, computed off the critical path of the first slice
    this.onSessionChange()
    this.viewbar.updateReadout()
    this.timings.ready = performance.now()
    this.attention.loadPriorities().catch(() => undefined)
    this.store.watch((s) => s.access, () => this.applyAccess(), { immediate: true })
    this.root.dataset.ready = 'true'
  }

  /** The frame's bars and the listeners that live as long as the workspace. */
  private mount(): void {
    this.toolbar.render()
    this.viewbar.render()
    const stage = this.el.stage
    this.cleanup.push(this.navigation.bind(stage))
    this.toolInput.bind(stage)
    const active = (): void => this.review.noteInput()
    for (const type of ['pointerdown', 'pointermove', 'wheel', 'keydown']) stage.addEventListener(type, active, { passive: true, capture: true })
    const onKey = keyHandler(this, {
      setTool: (tool) => this.toolbar.setTool(tool),
      setBrush: (mm) => this.toolbar.setBrush(mm),
      setHu: (on) => this.toolbar.setHu(on),
      setLayout: (layout) => this.viewbar.setLayout(layout),
      setLabelsOn: (on) => this.viewbar.setLabelsOn(on),
      setRadiological: (on) => this.viewbar.setRadiological(on),
      cyclePreset: (dir) => this.viewbar.cyclePreset(dir),
      cycleStructure: (dir) => this.editor.cycleStructure(dir),
      backToEdit: () => this.versions.backToEdit(),
      zoomBy: (steps) => this.navigation.zoomBy(steps),
      fit: () => this.navigation.fit(),
      toggleCrosshair: () => this.navigation.toggleCrosshair(),
      holdSpace: () => this.navigation.holdSpace(),
    })
    document.addEventListener('keydown', onKey)
    const onUnload = (e: BeforeUnloadEvent): void => {
      if (this.session?.hasChanges) {
        this.drafts.flushLocal()
        e.preventDefault()
      }
    }
    window.addEventListener('beforeunload', onUnload)
    const onHide = (): void => {
      this.drafts.flushLocal()
      this.review.dispose() // leaving the tab: report the active time, release the lease
    }
    window.addEventListener('pagehide', onHide)
    const onOnline = api.onChange(() => this.onConnectivity())
    this.cleanup.push(
      () => document.removeEventListener('keydown', onKey),
      () => window.removeEventListener('beforeunload', onUnload),
      () => window.removeEventListener('pagehide', onHide),
      onOnline,
    )
  }

  dispose(): void {
    this.disposed = true
    this.review.dispose()
    this.drafts.flushLocal()
    for (const fn of this.cleanup) fn()
    this.drafts.dispose()
    this.viewer?.destroy()
  }

  private progress(got: number, total: number): void {
    const pct = total ? Math.round((100 * got) / total) : 0
    this.el.progressBar.style.width = total ? `${pct}%` : '30%'
    this.el.progressLabel.textContent = total ? `Loading volume ${pct}% (${fmtBytes(got)} of ${fmtBytes(total)})` : `Loading volume ${fmtBytes(got)}`
    this.setSaveState('loading', total ? `Loading ${pct}%` : 'Loading…')
  }

  async loadVersions(): Promise<void> {
    this.store.set({ versions: await api.get<Version[]>(`/api/scans/${this.scanId}/versions`) })
  }

  newSession(baseVersionId: number | null): EditSession {
    const geometry = this.viewer.geometry!
    this.session = new EditSession(this.scanId, geometry, baseVersionId, (version, structure) => fetchMaskRAS(geometry, version, structure))
    this.session.onChange = () => this.onSessionChange()
    return this.session
  }

  // ---------------------------------------------------------------- session changes

  onSessionChange(): void {
    const session = this.session
    if (!session) return
    const dirty = session.dirty
    this.store.update((s) => ({ sessionRev: s.sessionRev + 1, dirty, sessionBase: session.baseVersionId, branch: session.branch }))
    const lock = this.lockReason()
    const { mode, saveState } = this.store.get()
    if (lock && mode.kind === 'edit' && !this.saving.saving) this.setSaveState(lock.state, lock.text)
    else if (mode.kind === 'edit' && !this.saving.saving && saveState !== 'conflict') {
      if (!api.online) this.setSaveState('offline')
      else this.setSaveState(session.hasChanges ? 'dirty' : 'saved', session.hasChanges ? `Unsaved changes (${dirty.length})` : undefined)
    }
    this.drafts.schedule()
  }

  private onConnectivity(): void {
    if (!this.session || this.store.get().mode.kind !== 'edit' || this.saving.saving || this.lockReason()) return
    if (!api.online) this.setSaveState('offline')
    else if (this.store.get().saveState === 'offline') {
      this.setSaveState(this.session.hasChanges ? 'dirty' : 'saved')
      this.drafts.schedule()
    }
  }

  /** What the test hook's `state()` reports. */
  testState(): Record<string, unknown> {
    const s = this.store.get()
    const session = this.session
    const g = this.viewer?.geometry
    return {
      scanId: this.scanId,
      baseVersionId: session?.baseVersionId ?? null,
      branch: session?.branch ?? false,
      active: s.activeLoaded,
      dirty: session?.dirty ?? [],
      undo: session?.undoStack.length ?? 0,
      redo: session?.redoStack.length ?? 0,
      count: s.active ? session?.count(s.active) : null,
      layout: this.viewer?.layout,
      tool: s.tool,
      zoom: this.viewer?.ct ? this.viewer.zoom : 1,
      pan: this.viewer?.ct ? this.viewer.pan : null,
      crosshairShown: s.crosshair,
      window: this.viewer?.window,
      saveState: s.saveState,
      mode: s.mode.kind,
      rasDims: g?.rasDims,
      permRAS: g?.permRAS,
      lastSave: this.saving.lastSave,
      timings: this.timings,
      draftInfo: s.draftInfo,
      role: s.role,
      access: this.lockReason()?.state ?? 'edit',
      task: this.review.task,
      leaseHeld: this.review.leaseHeld,
      pendingActivity: this.review.pendingSeconds,
      reportedActivity: this.review.reportedSeconds,
      attention: this.attention.snapshot,
    }
  }
}
