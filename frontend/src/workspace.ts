/**
 * The radiologist's workspace for one scan: viewer, tools, structures, versions, attention; saving through
 * patch saves with conflict handling; autosaved drafts.
 */

import { ApiError, OfflineError, SAVE_RETRY, api, isTransient, withRetry } from './api'
import { clear, dialog, fmtBytes, fmtTime, h, toast } from './dom'
import { localDrafts, serverDrafts } from './drafts'
import { EditSession, type UnsettledSave, fetchMaskRAS, sameSave } from './edits'
import { countNonzero, type Vec3 } from './geometry'
import { parseNifti } from './nifti'
import { ACTIONS, TOOLS, type ToolId } from './shortcuts'
import { components, fillPolygon, floodFill2D, growCut, interpolateSlices, paintDisc, paintSegment, type HuRange } from './tools'
import type { ConflictBody, DiffOut, DraftPayload, Priority, Project, Scan, SchemaOut, Structure, Version } from './types'
import { PRESETS, Viewer, hexToRgb, type LabelColor, type Layout } from './viewer'
import { ReviewController } from './review'

type Mode = { kind: 'edit' } | { kind: 'view'; versionId: number } | { kind: 'compare'; a: number; b: number; structure: string | null }

type SaveState = 'loading' | 'saved' | 'dirty' | 'saving' | 'conflict' | 'offline' | 'readonly' | 'locked' | 'error'

const GROUP_ORDER = ['pancreas', 'lesion', 'vessel', 'duct', 'organ', 'thorax', 'bone']

interface StructureView {
  visible: boolean
  opacity: number
}

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

/** Where a version came from: its parent, or every reader version a fusion combined. */
function lineageText(v: Version): string {
  const inputs = v.input_version_ids ?? []
  if (inputs.length > 1) return ` · fusion of ${inputs.map((id) => `#${id}`).join(', ')}`
  return v.parent_id ? ` · from #${v.parent_id}` : ''
}

/** A retry-safe key for a save (62 bits of randomness is plenty per scan and user). */
function randomKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8))
  return Array.from(bytes, (b) => b.toString(36).padStart(2, '0')).join('').slice(0, 12)
}

/** Server paint order: schema order, each structure after the one it lies inside (labels/service.py). */
function paintOrder(structures: Structure[]): Structure[] {
  const byName = new Map(structures.map((s) => [s.name, s]))
  const depth = (s: Structure): number => {
    let level = 0
    const seen = new Set<string>()
    let cur: Structure | undefined = s
    while (cur?.inside && byName.has(cur.inside) && !seen.has(cur.name)) {
      seen.add(cur.name)
      cur = byName.get(cur.inside)
      level++
    }
    return level
  }
  return [...structures].sort((a, b) => depth(a) - depth(b) || a.position - b.position)
}

/**
 * Heat grades. NiiVue rounds any value above the LUT's minimum up to 2/256 of the LUT's width (issue 1139), so a
 * LUT wider than 64 entries would paint 0 opaque: 32 grades keep 0 transparent.
 */
export const HEAT_GRADES = 32

/**
 * Grade a binary attention mask into a heat map: each attention voxel gets 1..HEAT_GRADES from the share of
 * attention voxels in a ~6 mm box around it (isolated specks stay faint, dense regions glow); 0 outside. Stored
 * order.
 */
export function gradeAttention(mask: Uint8Array, dims: Vec3, spacing: number[]): Uint8Array {
  const [nx, ny, nz] = dims
  const radius = [0, 1, 2].map((a) => Math.max(1, Math.min(4, Math.round(6 / (spacing[a] || 1)))))
  let cur = new Uint16Array(mask.length)
  for (let i = 0; i < mask.length; i++) cur[i] = mask[i] ? 1 : 0
  const strides = [1, nx, nx * ny]
  const sizes = [nx, ny, nz]
  for (let axis = 0; axis < 3; axis++) {
    const out = new Uint16Array(mask.length)
    const n = sizes[axis]
    const st = strides[axis]
    const r = radius[axis]
    for (let base = 0; base < mask.length; base++) {
      // Run once per line: the line starts where this axis' index is 0.
      if (Math.floor(base / st) % n !== 0) continue
      let sum = 0
      for (let t = 0; t < Math.min(r, n); t++) sum += cur[base + t * st]
      for (let t = 0; t < n; t++) {
        if (t + r < n) sum += cur[base + (t + r) * st]
        if (t - r - 1 >= 0) sum -= cur[base + (t - r - 1) * st]
        out[base + t * st] = sum
      }
    }
    cur = out
  }
  const full = (2 * radius[0] + 1) * (2 * radius[1] + 1) * (2 * radius[2] + 1)
  const heat = new Uint8Array(mask.length)
  for (let i = 0; i < mask.length; i++) if (mask[i]) heat[i] = Math.max(1, Math.min(HEAT_GRADES, Math.ceil((HEAT_GRADES * cur[i]) / full)))
  return heat
}

/**
 * A "hot" ramp (dark red → red → yellow → white) over the grades. NiiVue draws overlay voxels either opaque or
 * not (per-entry alpha is ignored there), so the overlay's opacity is the layer's (`Viewer.setExtraOpacity`).
 */
export function heatColors(): LabelColor[] {
  const out: LabelColor[] = []
  const c = (x: number): number => Math.round(255 * Math.max(0, Math.min(1, x)))
  for (let v = 1; v <= HEAT_GRADES; v++) {
    const t = 0.25 + (0.75 * v) / HEAT_GRADES
    out.push({ value: v, rgb: [c(3 * t), c(3 * t - 1), c(3 * t - 2)], alpha: 1, name: `attention ${v}/${HEAT_GRADES}` })
  }
  return out
}

export class Workspace {
  readonly root: HTMLElement
  readonly scanId: number
  scan!: Scan
  schema!: SchemaOut
  viewer!: Viewer
  session!: EditSession
  baseVersion: Version | null = null
  versions: Version[] = []
  active: string | null = null
  /** The active structure once its mask, drawing layer and overlay are in place. */
  activeLoaded: string | null = null
  tool: ToolId = 'brush'
  brushMm = 10
  huOn = false
  hu: HuRange = { lo: -100, hi: 250 }
  mode: Mode = { kind: 'edit' }
  saveState: SaveState = 'loading'
  labelsOn = true
  attentionOn = false
  attentionStructure: string | null = null
  attentionRegions: Vec3[] = []
  attentionIndex = -1
  /** Heat overlay opacity (0..1) and the graded attention of the shown structure (stored order, 0..255). */
  attentionOpacity = 0.7
  attentionHeat: Uint8Array | null = null
  /** The caller's role in the scan's project (viewer: read-only). */
  role = 'annotator'
  readonly review: ReviewController
  views = new Map<string, StructureView>()
  timings: Timings = { openStart: 0, volumeLoaded: 0, submitted: 0, firstSlice: 0, ready: 0, decode: 0, upload: 0 }
  lastSave: { bodyBytes: number; versionId: number; boxes: number } | null = null
  lastDiff: DiffOut | null = null
  draftInfo = ''
  priorities: Priority[] = []
  private overlayCache = new Map<string, Uint8Array>()
  private stroke: { plane: number; last: Vec3; pts: Vec3[] } | null = null
  private localTimer: number | null = null
  private serverTimer: number | null = null
  private serverDraftExists = false
  private disposed = false
  private el: Record<string, HTMLElement> = {}
  private cleanup: (() => void)[] = []
  private saving = false
  /** The last save whose outcome is unknown; saving the same edit again reuses its idempotency key. */
  private unsettledSave: UnsettledSave | null = null
  private colorTimer: number | null = null

  constructor(root: HTMLElement, scanId: number) {
    this.root = root
    this.scanId = scanId
    this.review = new ReviewController(this)
  }

  get structures(): Structure[] {
    return this.schema.structures
  }

  structure(name: string): Structure {
    const s = this.structures.find((x) => x.name === name)
    if (!s) throw new Error(`unknown structure ${name}`)
    return s
  }

  get voxelMl(): number {
    const [a, b, c] = this.scan.spacing
    return (a * b * c) / 1000
  }

  get editable(): boolean {
    return this.mode.kind === 'edit' && this.active !== null && this.saveState !== 'loading' && !this.lockReason
  }

  /** Why this workspace is read-only for the caller (viewer role, approved scan, someone else's lease), or null. */
  get lockReason(): { state: 'readonly' | 'locked'; text: string } | null {
    if (this.role === 'viewer') return { state: 'readonly', text: 'Read-only: you are a viewer in this project' }
    const task = this.review.task
    if (task?.state === 'approved') return { state: 'readonly', text: 'Read-only: this scan is approved (a lead can reopen it)' }
    const lease = this.review.myReading ? null : this.review.foreignLease
    if (lease) return { state: 'locked', text: `Locked by ${lease.username} until ${new Date(lease.expires_at).toLocaleTimeString()}` }
    if (task && this.review.available && !task.allowed_actions.includes('edit') && !this.review.myReading)
      return { state: 'readonly', text: `Read-only: you may not edit this scan while it is ${task.state.replace(/_/g, ' ')}` }
    return null
  }

  private lockText(): string {
    return this.lockReason?.text ?? 'Someone else holds the edit lease'
  }

  /** Reflect the caller's access: tools and saving disabled with the reason shown, or enabled again. */
  applyAccess(): void {
    const lock = this.lockReason
    if (lock && this.tool !== 'navigate') {
      this.tool = 'navigate'
      if (this.el.stage) this.el.stage.dataset.tool = 'navigate'
      if (this.el.toolbar) this.renderToolbar()
    } else this.lockToolbar()
    this.updateBanner()
    if (this.root) this.root.dataset.access = lock ? lock.state : 'edit'
    if (this.saveState === 'loading' || this.mode.kind !== 'edit' || this.saving) return
    if (lock) this.setSaveState(lock.state, lock.text)
    else if (this.saveState === 'readonly' || this.saveState === 'locked') this.onSessionChange()
  }

  // ---------------------------------------------------------------- open

  async open(): Promise<void> {
    this.timings.openStart = performance.now()
    this.renderShell()
    this.setSaveState('loading', 'Loading scan…')
    this.scan = await api.get<Scan>(`/api/scans/${this.scanId}`)
    if (this.disposed) return
    this.renderHeader()
    const project = await api.get<Project>(`/api/projects/${this.scan.project_id}`)
    this.role = project.role
    this.schema = await api.get<SchemaOut>(`/api/projects/${this.scan.project_id}/schema`)
    for (const s of this.structures) this.views.set(s.name, { visible: true, opacity: 0.55 })
    this.viewer = new Viewer(this.el.canvas as HTMLCanvasElement)
    await this.viewer.attach()
    this.viewer.onLocation = () => this.updateReadout()
    this.viewer.onDraw = () => this.review.markers.schedule()
    this.review.markers.attach(this.viewer)
    this.viewer.onWindow = () => this.updateWindowInputs()
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
    const geometry = this.viewer.geometry!
    this.session = new EditSession(this.scanId, geometry, this.scan.head_version_id)
    this.session.onChange = () => this.onSessionChange()
    await this.loadVersions()
    if (this.disposed) return
    this.baseVersion = this.versions.find((v) => v.id === this.scan.head_version_id) ?? null
    await this.review.load().catch((err) => {
      console.warn('review workflow unavailable', err)
      this.review.available = false
    })
    if (this.review.myReading) this.session.branch = true
    const restoredActive = this.role === 'viewer' ? null : await this.offerDraft()
    const first =
      restoredActive ??
      this.structures.find((s) => s.name === 'pancreas')?.name ??
      this.structures.find((s) => this.versionRow(s.name)?.status === 'present')?.name ??
      this.structures[0]?.name ??
      null
    this.renderStructures()
    this.renderVersions()
    this.renderAttention()
    if (first) await this.setActive(first)
    if (this.disposed) return
    void this.viewer.grid // HU in RAS order for the tools, computed off the critical path of the first slice
    this.onSessionChange()
    this.updateReadout()
    this.timings.ready = performance.now()
    this.loadPriorities().catch(() => undefined)
    this.applyAccess()
    this.root.dataset.ready = 'true'
  }

  dispose(): void {
    this.disposed = true
    this.review.dispose()
    this.flushLocalDraft()
    for (const fn of this.cleanup) fn()
    if (this.localTimer !== null) window.clearTimeout(this.localTimer)
    if (this.serverTimer !== null) window.clearTimeout(this.serverTimer)
    this.viewer?.destroy()
  }

  private progress(got: number, total: number): void {
    const pct = total ? Math.round((100 * got) / total) : 0
    ;(this.el.progressBar as HTMLElement).style.width = total ? `${pct}%` : '30%'
    this.el.progressLabel.textContent = total
      ? `Loading volume ${pct}% (${fmtBytes(got)} of ${fmtBytes(total)})`
      : `Loading volume ${fmtBytes(got)}`
    this.setSaveState('loading', total ? `Loading ${pct}%` : 'Loading…')
  }

  private versionRow(name: string): Version['structures'][number] | undefined {
    return this.baseVersion?.structures.find((s) => s.name === name)
  }

  async loadVersions(): Promise<void> {
    this.versions = await api.get<Version[]>(`/api/scans/${this.scanId}/versions`)
  }

  private async loadPriorities(): Promise<void> {
    const page = await api.get<{ items: Priority[] }>(`/api/projects/${this.scan.project_id}/priorities?page_size=500`)
    this.priorities = page.items.filter((p) => p.scan_id === this.scanId)
    this.renderAttention()
  }

  // ---------------------------------------------------------------- shell

  private renderShell(): void {
    clear(this.root)
    const canvas = h('canvas', { 'data-testid': 'viewer-canvas', tabindex: '0' })
    const stage = h(
      'div',
      { class: 'stage', 'data-testid': 'viewer-stage' },
      canvas,
      h('div', { class: 'brush-cursor', hidden: true }),
      this.review.markers.layer,
      h('div', { class: 'banner', hidden: true, 'data-testid': 'mode-banner' }),
      h(
        'div',
        { class: 'loading', 'data-testid': 'loading' },
        h('div', { class: 'loading-label' }, 'Loading…'),
        h('div', { class: 'progress' }, h('div', { class: 'progress-bar' })),
      ),
    )
    this.el.canvas = canvas
    this.el.stage = stage
    this.el.cursor = stage.querySelector('.brush-cursor')!
    this.el.banner = stage.querySelector('.banner')!
    this.el.loading = stage.querySelector('.loading')!
    this.el.progressLabel = stage.querySelector('.loading-label')!
    this.el.progressBar = stage.querySelector('.progress-bar')!
    this.el.header = h('header', { class: 'topbar' })
    this.el.toolbar = h('aside', { class: 'toolbar', 'data-testid': 'toolbar' })
    this.el.viewbar = h('div', { class: 'viewbar' })
    this.el.readout = h('div', { class: 'readout', 'data-testid': 'readout' }, '—')
    this.el.side = h('aside', { class: 'side' })
    this.root.append(
      this.el.header,
      this.review.bar,
      h(
        'main',
        { class: 'workspace' },
        this.el.toolbar,
        h('section', { class: 'viewer-pane' }, this.el.viewbar, stage, this.el.readout),
        this.el.side,
      ),
    )
    this.renderToolbar()
    this.renderViewbar()
    this.renderSide()
    this.bindPointer(stage)
    const active = (): void => this.review.noteInput()
    for (const type of ['pointerdown', 'pointermove', 'wheel', 'keydown']) stage.addEventListener(type, active, { passive: true, capture: true })
    const onKey = (e: KeyboardEvent): void => this.onKey(e)
    document.addEventListener('keydown', onKey)
    const onUnload = (e: BeforeUnloadEvent): void => {
      if (this.session?.hasChanges) {
        this.flushLocalDraft()
        e.preventDefault()
      }
    }
    window.addEventListener('beforeunload', onUnload)
    const onHide = (): void => {
      this.flushLocalDraft()
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

  private renderHeader(): void {
    const s = this.scan
    const meta = [
      s.orientation,
      s.shape.join('×'),
      s.spacing.map((x) => x.toFixed(2)).join('×') + ' mm',
      s.phase,
      s.site,
      s.tumor === true ? 'tumour' : s.tumor === false ? 'no tumour' : null,
    ].filter(Boolean)
    clear(this.el.header)
    this.el.header.append(
      h('a', { class: 'brand', href: '#/' }, h('span', { class: 'logo' }, '◐'), 'maskloop'),
      h('a', { class: 'crumb', href: '#/', 'data-testid': 'back-to-worklist' }, '← Worklist'),
      h('span', { class: 'case', 'data-testid': 'case-id' }, s.case_id),
      h('span', { class: 'case-meta' }, meta.join(' · ')),
      h('span', { class: 'spacer' }),
      h('span', { class: 'pill', 'data-testid': 'save-status' }, '…'),
      h('span', { class: 'draft-info', 'data-testid': 'draft-status' }),
      h('button', { class: 'btn plain', title: 'Keyboard shortcuts (?)', 'data-testid': 'help', onclick: () => this.showHelp() }, '?'),
      h('span', { class: 'user' }, api.user?.display_name || api.user?.email || ''),
    )
    this.el.pill = this.el.header.querySelector('.pill')!
    this.el.draft = this.el.header.querySelector('.draft-info')!
    this.setSaveState(this.saveState)
  }

  setSaveState(state: SaveState, text?: string): void {
    this.saveState = state
    const labels: Record<SaveState, string> = {
      loading: 'Loading…',
      saved: 'All changes saved',
      dirty: 'Unsaved changes',
      saving: 'Saving…',
      conflict: 'Conflict: action needed',
      offline: 'Offline: edits kept locally',
      readonly: 'Read-only',
      locked: 'Locked',
      error: 'Error',
    }
    if (this.el.pill) {
      this.el.pill.textContent = text ?? labels[state]
      this.el.pill.dataset.state = state
    }
    document.title = `${state === 'dirty' || state === 'offline' ? '● ' : ''}${this.scan?.case_id ?? 'scan'} — maskloop`
  }

  /** Disable every editing control while the workspace is read-only (the navigate tool stays usable). */
  private lockToolbar(): void {
    const lock = this.lockReason
    const tb = this.el.toolbar
    if (!tb) return
    tb.classList.toggle('locked', !!lock)
    for (const el of tb.querySelectorAll<HTMLButtonElement | HTMLInputElement>('button, input'))
      el.disabled = !!lock && el.dataset.testid !== 'tool-navigate'
    tb.querySelector('[data-testid=lock-reason]')?.remove()
    if (lock) tb.prepend(h('div', { class: 'lock-reason', 'data-testid': 'lock-reason' }, lock.text))
  }

  private renderToolbar(): void {
    const tb = this.el.toolbar
    clear(tb)
    tb.append(
      h('div', { class: 'tb-title' }, 'Tools'),
      ...TOOLS.map((t) =>
        h(
          'button',
          {
            class: `tool ${this.tool === t.id ? 'on' : ''}`,
            title: `${t.label} (${t.key}) — ${t.help}`,
            'data-testid': `tool-${t.id}`,
            'aria-pressed': String(this.tool === t.id),
            onclick: () => this.setTool(t.id),
          },
          h('span', { class: 'icon' }, t.icon),
          h('span', { class: 'tl' }, t.label),
          h('kbd', null, t.key),
        ),
      ),
      h('div', { class: 'tb-title' }, 'Brush'),
      h(
        'label',
        { class: 'field' },
        h('span', null, 'Size ', h('b', { 'data-testid': 'brush-size-label' }, `${this.brushMm} mm`)),
        h('input', {
          type: 'range',
          min: '1',
          max: '60',
          step: '1',
          value: String(this.brushMm),
          'data-testid': 'brush-size',
          oninput: (e: Event) => this.setBrush(Number((e.target as HTMLInputElement).value)),
        }),
      ),
      h(
        'label',
        { class: 'check' },
        h('input', {
          type: 'checkbox',
          checked: this.huOn,
          'data-testid': 'hu-toggle',
          onchange: (e: Event) => this.setHu((e.target as HTMLInputElement).checked),
        }),
        ' HU range ',
        h('kbd', null, 'H'),
      ),
      h(
        'div',
        { class: 'hu-range' },
        h('input', {
          type: 'number',
          value: String(this.hu.lo),
          'data-testid': 'hu-lo',
          title: 'lowest HU painted',
          onchange: (e: Event) => (this.hu.lo = Number((e.target as HTMLInputElement).value)),
        }),
        h('span', null, '…'),
        h('input', {
          type: 'number',
          value: String(this.hu.hi),
          'data-testid': 'hu-hi',
          title: 'highest HU painted',
          onchange: (e: Event) => (this.hu.hi = Number((e.target as HTMLInputElement).value)),
        }),
      ),
      h('div', { class: 'tb-title' }, 'Edit'),
      h('button', { class: 'btn', 'data-testid': 'undo', title: 'Undo (Ctrl+Z)', onclick: () => this.undo() }, '↶ Undo'),
      h('button', { class: 'btn', 'data-testid': 'redo', title: 'Redo (Ctrl+Y)', onclick: () => this.redo() }, '↷ Redo'),
      h(
        'button',
        { class: 'btn', 'data-testid': 'interpolate', title: 'Interpolate between painted slices (I)', onclick: () => this.interpolate() },
        '⇕ Interpolate',
      ),
      h('div', { class: 'spacer' }),
      h(
        'button',
        { class: 'btn primary save', 'data-testid': 'save', title: 'Save a new version (Ctrl+S)', onclick: () => this.save() },
        'Save version',
      ),
      h(
        'button',
        { class: 'btn danger', 'data-testid': 'discard', title: 'Throw away unsaved changes', onclick: () => this.discard() },
        'Discard',
      ),
    )
    this.lockToolbar()
  }

  private renderViewbar(): void {
    const vb = this.el.viewbar
    clear(vb)
    const layouts: [Layout, string, string][] = [
      ['axial', 'Axial', '1'],
      ['coronal', 'Coronal', '2'],
      ['sagittal', 'Sagittal', '3'],
      ['multiplanar', 'MPR', '4'],
      ['3d', '3D', '5'],
    ]
    const current = this.viewer?.layout ?? 'axial'
    vb.append(
      h(
        'div',
        { class: 'seg' },
        layouts.map(([id, label, key]) =>
          h(
            'button',
            {
              class: current === id ? 'on' : '',
              title: `${label} (${key})`,
              'data-testid': `layout-${id}`,
              onclick: () => this.setLayout(id),
            },
            label,
          ),
        ),
      ),
      h(
        'select',
        {
          'data-testid': 'window-preset',
          title: 'Window preset (W)',
          onchange: (e: Event) => {
            const p = PRESETS.find((x) => x.key === (e.target as HTMLSelectElement).value)
            if (p) this.viewer.setWindow(p.width, p.level)
          },
        },
        PRESETS.map((p) => h('option', { value: p.key }, `${p.name}  W${p.width} L${p.level}`)),
        h('option', { value: 'custom' }, 'Custom'),
      ),
      h(
        'label',
        { class: 'wl' },
        'W',
        h('input', {
          type: 'number',
          'data-testid': 'window-width',
          value: '400',
          onchange: () => this.applyWindowInputs(),
        }),
      ),
      h(
        'label',
        { class: 'wl' },
        'L',
        h('input', {
          type: 'number',
          'data-testid': 'window-level',
          value: '40',
          onchange: () => this.applyWindowInputs(),
        }),
      ),
      h(
        'label',
        { class: 'check', title: 'Radiological convention: patient right on screen left (R)' },
        h('input', {
          type: 'checkbox',
          checked: true,
          'data-testid': 'radiological',
          onchange: (e: Event) => this.viewer.setRadiological((e.target as HTMLInputElement).checked),
        }),
        ' Radiological',
      ),
      h(
        'label',
        { class: 'check', title: 'Show the other structures read-only (L)' },
        h('input', {
          type: 'checkbox',
          checked: this.labelsOn,
          'data-testid': 'labels-toggle',
          onchange: (e: Event) => this.setLabelsOn((e.target as HTMLInputElement).checked),
        }),
        ' Other structures',
      ),
    )
  }

  private applyWindowInputs(): void {
    const w = Number((this.el.viewbar.querySelector('[data-testid=window-width]') as HTMLInputElement).value)
    const l = Number((this.el.viewbar.querySelector('[data-testid=window-level]') as HTMLInputElement).value)
    if (isFinite(w) && isFinite(l) && w > 0) this.viewer.setWindow(w, l)
  }

  private updateWindowInputs(): void {
    const { width, level } = this.viewer.window
    const wi = this.el.viewbar.querySelector('[data-testid=window-width]') as HTMLInputElement | null
    const li = this.el.viewbar.querySelector('[data-testid=window-level]') as HTMLInputElement | null
    if (wi && document.activeElement !== wi) wi.value = String(width)
    if (li && document.activeElement !== li) li.value = String(level)
    const sel = this.el.viewbar.querySelector('[data-testid=window-preset]') as HTMLSelectElement | null
    if (sel) sel.value = PRESETS.find((p) => p.width === width && p.level === level)?.key ?? 'custom'
  }

  setLayout(layout: Layout): void {
    this.viewer.setLayout(layout)
    this.renderViewbar()
    this.updateWindowInputs()
  }

  private renderSide(): void {
    const tabs: [string, string][] = [
      ['structures', 'Structures'],
      ['versions', 'Versions'],
      ['attention', 'Attention'],
      ['review', 'Review'],
    ]
    this.el.tabStructures = h('div', { class: 'tab-body', 'data-testid': 'panel-structures' })
    this.el.tabVersions = h('div', { class: 'tab-body', 'data-testid': 'panel-versions', hidden: true })
    this.el.tabAttention = h('div', { class: 'tab-body', 'data-testid': 'panel-attention', hidden: true })
    const bodies: Record<string, HTMLElement> = {
      structures: this.el.tabStructures,
      versions: this.el.tabVersions,
      attention: this.el.tabAttention,
      review: this.review.body,
    }
    const bar = h(
      'div',
      { class: 'tabs' },
      tabs.map(([id, label]) =>
        h(
          'button',
          {
            class: id === 'structures' ? 'on' : '',
            'data-testid': `tab-${id}`,
            onclick: (e: Event) => {
              for (const b of bar.querySelectorAll('button')) b.classList.remove('on')
              ;(e.currentTarget as HTMLElement).classList.add('on')
              for (const [k, body] of Object.entries(bodies)) body.hidden = k !== id
            },
          },
          label,
        ),
      ),
    )
    this.el.side.append(bar, this.el.tabStructures, this.el.tabVersions, this.el.tabAttention, this.review.body)
  }

  showTab(id: 'structures' | 'versions' | 'attention' | 'review'): void {
    ;(this.el.side.querySelector(`[data-testid=tab-${id}]`) as HTMLElement).click()
  }

  // ---------------------------------------------------------------- structures

  private structureCount(name: string): number | null {
    const live = this.session?.count(name)
    if (live !== null && live !== undefined) return live
    const row = this.versionRow(name)
    return row && row.status === 'present' ? row.voxel_count : row ? 0 : null
  }

  renderStructures(): void {
    const body = this.el.tabStructures
    clear(body)
    const groups = new Map<string, Structure[]>()
    for (const s of this.structures) {
      const g = s.group || 'other'
      if (!groups.has(g)) groups.set(g, [])
      groups.get(g)!.push(s)
    }
    const ordered = [...groups.keys()].sort((a, b) => {
      const ia = GROUP_ORDER.indexOf(a)
      const ib = GROUP_ORDER.indexOf(b)
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b)
    })
    body.append(
      h(
        'div',
        { class: 'active-info', 'data-testid': 'active-structure' },
        this.active ? ['Editing ', h('b', null, this.active.replace(/_/g, ' '))] : 'No structure selected',
      ),
    )
    for (const g of ordered) {
      const members = groups.get(g)!
      const allVisible = members.every((s) => this.views.get(s.name)!.visible)
      body.append(
        h(
          'div',
          { class: 'group-head' },
          h('span', null, g),
          h('input', {
            type: 'checkbox',
            checked: allVisible,
            title: `show / hide every ${g} structure`,
            'data-testid': `group-visible-${g}`,
            onchange: (e: Event) => {
              const on = (e.target as HTMLInputElement).checked
              for (const s of members) this.views.get(s.name)!.visible = on
              this.applyColors()
              this.renderStructures()
            },
          }),
        ),
      )
      for (const s of members) body.append(this.structureRow(s))
    }
  }

  private structureRow(s: Structure): HTMLElement {
    const view = this.views.get(s.name)!
    const count = this.structureCount(s.name)
    const row = this.versionRow(s.name)
    const missing = row?.status === 'missing' && !this.session?.isDirty(s.name)
    const dirty = this.session?.isDirty(s.name)
    return h(
      'div',
      {
        class: `srow ${this.active === s.name ? 'active' : ''} ${missing ? 'missing' : ''}`,
        'data-testid': `structure-row-${s.name}`,
        title: s.inside ? `${s.name} (inside ${s.inside})` : s.name,
        onclick: (e: Event) => {
          if ((e.target as HTMLElement).closest('input')) return
          this.setActive(s.name).catch((err) => this.fail(err))
        },
      },
      h('input', {
        type: 'radio',
        name: 'active-structure',
        checked: this.active === s.name,
        'data-testid': `activate-${s.name}`,
        onchange: () => this.setActive(s.name).catch((err) => this.fail(err)),
      }),
      h('span', { class: 'swatch', style: { background: s.color } }),
      h('span', { class: 'sname' }, s.inside ? '↳ ' : '', s.name.replace(/_/g, ' '), dirty ? h('span', { class: 'dot', title: 'unsaved change' }, ' ●') : null),
      h(
        'span',
        { class: 'scount', 'data-testid': `structure-count-${s.name}`, 'data-voxels': count === null ? '' : String(count) },
        missing ? 'missing' : count === null ? '—' : `${count.toLocaleString()} vx`,
      ),
      h('span', { class: 'sml' }, count === null || missing ? '' : `${(count * this.voxelMl).toFixed(1)} mL`),
      h('input', {
        type: 'checkbox',
        class: 'eye',
        checked: view.visible,
        title: 'visible',
        'data-testid': `visible-${s.name}`,
        onchange: (e: Event) => {
          view.visible = (e.target as HTMLInputElement).checked
          this.applyColors()
        },
      }),
      h('input', {
        type: 'range',
        class: 'opacity',
        min: '0',
        max: '1',
        step: '0.05',
        value: String(view.opacity),
        title: 'opacity',
        'data-testid': `opacity-${s.name}`,
        oninput: (e: Event) => {
          view.opacity = Number((e.target as HTMLInputElement).value)
          this.applyColors()
        },
      }),
    )
  }

  private updateActiveCount(): void {
    if (!this.active) return
    const cell = this.el.tabStructures.querySelector(`[data-testid=structure-count-${this.active}]`) as HTMLElement | null
    const count = this.structureCount(this.active)
    if (cell && count !== null) {
      cell.textContent = `${count.toLocaleString()} vx`
      cell.dataset.voxels = String(count)
      const ml = cell.nextElementSibling as HTMLElement | null
      if (ml) ml.textContent = `${(count * this.voxelMl).toFixed(1)} mL`
    }
  }

  /** Label overlay colours of every structure but the active one; the drawing layer colour of the active. */
  private colors(): LabelColor[] {
    return this.structures.map((s) => {
      const v = this.views.get(s.name)!
      return {
        value: s.label_value,
        rgb: hexToRgb(s.color),
        alpha: this.labelsOn && v.visible ? v.opacity : 0,
        name: s.name,
      }
    })
  }

  /** Colours and visibility changed: coalesce bursts (opacity sliders) into one GPU refresh. */
  applyColors(): void {
    if (this.colorTimer !== null) window.clearTimeout(this.colorTimer)
    this.colorTimer = window.setTimeout(() => {
      this.colorTimer = null
      this.viewer?.setLabelColors(this.colors())
      this.applyDrawOpacity()
    }, 60)
  }

  private applyDrawOpacity(): void {
    if (this.active && this.mode.kind === 'edit') {
      const v = this.views.get(this.active)!
      this.viewer.setDrawOpacity(v.visible ? Math.max(0.15, Math.min(1, v.opacity + 0.15)) : 0)
    }
  }

  setLabelsOn(on: boolean): void {
    this.labelsOn = on
    const box = this.el.viewbar.querySelector('[data-testid=labels-toggle]') as HTMLInputElement | null
    if (box) box.checked = on
    this.applyColors()
  }

  /** Make a structure the one being edited: it goes into the drawing layer, the others into the overlay. */
  async setActive(name: string): Promise<void> {
    if (this.session.busy) return
    const s = this.structure(name)
    this.active = name
    this.activeLoaded = null
    const bm = await this.session.ensure(name)
    if (this.active !== name) return
    if (this.mode.kind === 'edit') {
      const v = this.views.get(name)!
      this.viewer.setDrawing(bm, s.color, v.visible ? Math.max(0.15, Math.min(1, v.opacity + 0.15)) : 0)
      await this.composeOverlay()
    }
    if (this.attentionOn && this.attentionStructure !== name) await this.showAttention(true, name)
    this.renderStructures()
    this.renderAttention()
    this.updateReadout()
    if (this.active === name) {
      this.activeLoaded = name
      this.session.release(name)
    }
  }

  private async combinedMap(versionId: number, exclude: string | null): Promise<Uint8Array> {
    const key = `${versionId}:${exclude ?? ''}`
    const cached = this.overlayCache.get(key)
    if (cached) return cached.slice()
    const order = paintOrder(this.structures)
      .filter((s) => s.name !== exclude)
      .map((s) => s.name)
      .join(',')
    const bytes = await api.bytes(`/api/versions/${versionId}/combined?order=${encodeURIComponent(order)}`)
    const vol = parseNifti(bytes)
    const out = new Uint8Array(vol.data.length)
    for (let i = 0; i < out.length; i++) out[i] = Math.min(255, vol.data[i])
    this.overlayCache.set(key, out)
    if (this.overlayCache.size > 8) this.overlayCache.delete(this.overlayCache.keys().next().value!)
    return out.slice()
  }

  /** The read-only overlay: the base version's other structures, with this session's unsaved edits of them. */
  async composeOverlay(): Promise<void> {
    const geometry = this.viewer.geometry!
    const base = this.session.baseVersionId
    const labels = base === null ? new Uint8Array(geometry.voxels) : await this.combinedMap(base, this.active)
    for (const name of this.session.dirty) {
      if (name === this.active) continue
      const s = this.structure(name)
      const edited = this.session.edited.get(name)!
      const orig = this.session.base.get(name)!
      for (let i = 0; i < edited.length; i++) {
        if (edited[i] === orig[i]) continue
        const n = geometry.nativeIndexOfRas(i)
        if (edited[i]) labels[n] = s.label_value
        else if (labels[n] === s.label_value) labels[n] = 0
      }
    }
    await this.viewer.setLabels(labels, this.colors())
    this.applyDrawOpacity()
  }

  // ---------------------------------------------------------------- tools

  setTool(tool: ToolId): void {
    const lock = this.lockReason
    if (lock && tool !== 'navigate') {
      toast(lock.text, 'warn', 2500)
      return
    }
    this.tool = tool
    this.renderToolbar()
    this.el.stage.dataset.tool = tool
    this.el.cursor.hidden = true
  }

  setBrush(mm: number): void {
    this.brushMm = Math.max(1, Math.min(60, Math.round(mm)))
    const label = this.el.toolbar.querySelector('[data-testid=brush-size-label]')
    if (label) label.textContent = `${this.brushMm} mm`
    const input = this.el.toolbar.querySelector('[data-testid=brush-size]') as HTMLInputElement | null
    if (input && Number(input.value) !== this.brushMm) input.value = String(this.brushMm)
  }

  setHu(on: boolean): void {
    this.huOn = on
    const box = this.el.toolbar.querySelector('[data-testid=hu-toggle]') as HTMLInputElement | null
    if (box) box.checked = on
    toast(on ? `HU range ${this.hu.lo}…${this.hu.hi} constrains brush, outline and fill` : 'HU range off', 'info', 1800)
  }

  private get huRange(): HuRange | null {
    return this.huOn ? { lo: Math.min(this.hu.lo, this.hu.hi), hi: Math.max(this.hu.lo, this.hu.hi) } : null
  }

  private refuseEdit(): boolean {
    if (this.mode.kind !== 'edit') {
      toast('This is a read-only view: press Esc to go back to editing', 'warn')
      return true
    }
    if (!this.active || !this.session) return true
    const lock = this.lockReason
    if (lock) {
      toast(lock.text, 'warn')
      return true
    }
    return false
  }

  private bindPointer(stage: HTMLElement): void {
    const down = (e: MouseEvent): void => {
      if (this.tool === 'navigate' || e.button !== 0 || e.ctrlKey || e.metaKey || !this.viewer?.ct) return
      if ((e.target as HTMLElement | null)?.closest?.('.comment-layer')) return // a comment marker or its popup
      const hit = this.viewer.voxelAt(e.clientX, e.clientY)
      if (!hit) return
      e.stopPropagation()
      e.preventDefault()
      if (this.refuseEdit()) return
      if (this.session.busy || !this.session.edited.has(this.active!)) return
      this.review.ensureLease().catch((err) => this.fail(err))
      this.startTool(hit.vox, hit.plane, e.shiftKey)
      if (this.stroke) {
        window.addEventListener('mousemove', move, true)
        window.addEventListener('mouseup', up, true)
      }
    }
    const move = (e: MouseEvent): void => {
      if (!this.stroke) return
      e.stopPropagation()
      e.preventDefault()
      const hit = this.viewer.voxelAt(e.clientX, e.clientY)
      this.moveCursor(e)
      if (!hit || hit.plane !== this.stroke.plane) return
      this.continueTool(hit.vox)
    }
    const up = (e: MouseEvent): void => {
      window.removeEventListener('mousemove', move, true)
      window.removeEventListener('mouseup', up, true)
      if (!this.stroke) return
      e.stopPropagation()
      e.preventDefault()
      this.endTool()
    }
    const hover = (e: MouseEvent): void => {
      if (!this.stroke) this.moveCursor(e)
    }
    stage.addEventListener('mousedown', down, true)
    stage.addEventListener('mousemove', hover)
    stage.addEventListener('mouseleave', () => (this.el.cursor.hidden = true))
    stage.addEventListener('contextmenu', (e) => e.preventDefault())
  }

  /** A ring the size of the brush under the pointer. */
  private moveCursor(e: MouseEvent): void {
    const cursor = this.el.cursor
    if ((this.tool !== 'brush' && this.tool !== 'eraser') || !this.viewer?.geometry) {
      cursor.hidden = true
      return
    }
    const hit = this.viewer.voxelAt(e.clientX, e.clientY)
    if (!hit) {
      cursor.hidden = true
      return
    }
    const u = hit.plane === 2 ? 1 : 0
    const next: Vec3 = [...hit.vox]
    next[u] += next[u] + 1 < this.viewer.geometry.rasDims[u] ? 1 : -1
    const a = this.viewer.clientPointOf(hit.vox, hit.plane)
    const b = this.viewer.clientPointOf(next, hit.plane)
    if (!a || !b) {
      cursor.hidden = true
      return
    }
    const pxPerVoxel = Math.hypot(a.x - b.x, a.y - b.y)
    const spacing = this.viewer.grid.spacing[u]
    const d = Math.max(4, (this.brushMm / spacing) * pxPerVoxel)
    const rect = this.el.stage.getBoundingClientRect()
    cursor.hidden = false
    cursor.style.width = `${d}px`
    cursor.style.height = `${d}px`
    cursor.style.left = `${e.clientX - rect.left - d / 2}px`
    cursor.style.top = `${e.clientY - rect.top - d / 2}px`
    cursor.dataset.tool = this.tool
  }

  private startTool(vox: Vec3, plane: number, shift: boolean): void {
    const g = this.viewer.grid
    const name = this.active!
    const bm = this.session.begin(name)
    switch (this.tool) {
      case 'brush':
      case 'eraser':
        paintDisc(g, bm, vox, plane, this.brushMm, this.tool === 'brush' ? 1 : 0, this.tool === 'brush' ? this.huRange : null)
        this.stroke = { plane, last: vox, pts: [vox] }
        this.viewer.refreshDrawing()
        return
      case 'outline':
        this.stroke = { plane, last: vox, pts: [vox] }
        paintDisc(g, bm, vox, plane, 0, 1, null)
        this.viewer.refreshDrawing()
        return
      case 'fill': {
        const result = floodFill2D(g, bm, vox, plane, this.huRange, shift)
        if (result === 'leaks') toast('That region is not enclosed on this slice: close the outline first, or turn on the HU range', 'warn')
        this.finishOp(result === 'erased' ? 'clear region' : 'flood fill')
        return
      }
      case 'growcut': {
        const [lo, hi] = [this.viewer.window.level - this.viewer.window.width / 2, this.viewer.window.level + this.viewer.window.width / 2]
        const added = growCut(g, bm, vox, plane, {
          radiusMm: Math.max(30, this.brushMm * 3),
          depthMm: Math.max(10, this.brushMm),
          seedMm: this.brushMm,
          window: [lo, hi],
        })
        toast(`Grow-cut added ${added.toLocaleString()} voxels`, 'info', 2000)
        this.finishOp('grow-cut')
        return
      }
      default:
        this.session.cancel()
    }
  }

  private continueTool(vox: Vec3): void {
    const s = this.stroke!
    if (vox[0] === s.last[0] && vox[1] === s.last[1] && vox[2] === s.last[2]) return
    const g = this.viewer.grid
    const bm = this.session.edited.get(this.active!)!
    if (this.tool === 'brush' || this.tool === 'eraser') {
      const value = this.tool === 'brush' ? 1 : 0
      paintSegment(g, bm, s.last, vox, s.plane, this.brushMm, value, value ? this.huRange : null)
    } else if (this.tool === 'outline') {
      paintSegment(g, bm, s.last, vox, s.plane, 0, 1, null)
    }
    s.last = vox
    s.pts.push(vox)
    this.viewer.refreshDrawing()
  }

  private endTool(): void {
    const s = this.stroke!
    this.stroke = null
    if (this.tool === 'outline') {
      const bm = this.session.edited.get(this.active!)!
      this.session.revert()
      if (s.pts.length >= 3) fillPolygon(this.viewer.grid, bm, s.pts, s.plane, this.huRange)
      this.finishOp('filled outline')
      return
    }
    this.finishOp(this.tool === 'eraser' ? 'erase' : 'brush')
  }

  private finishOp(label: string): void {
    this.session.commit(label)
    this.viewer.refreshDrawing()
  }

  /** Programmatic edit (test hook and scripted corrections): set RAS voxels of a structure, one undo step. */
  async paintVoxels(name: string, voxels: Vec3[], value: number): Promise<number> {
    if (this.lockReason) return 0
    if (!(await this.review.ensureLease())) return 0
    const bm = await this.session.ensure(name)
    this.session.begin(name)
    const g = this.viewer.geometry!
    for (const v of voxels) bm[g.rasIndex(v[0], v[1], v[2])] = value
    const op = this.session.commit('scripted edit')
    if (name === this.active) this.viewer.refreshDrawing()
    else await this.composeOverlay()
    return op ? op.idx.length : 0
  }

  interpolate(): void {
    if (this.refuseEdit()) return
    const name = this.active!
    const plane = this.viewer.layout === 'coronal' ? 1 : this.viewer.layout === 'sagittal' ? 2 : 0
    const bm = this.session.begin(name)
    const written = interpolateSlices(this.viewer.grid, bm, this.session.base.get(name)!, plane)
    this.finishOp('interpolate')
    toast(written ? `Interpolated ${written} slice${written > 1 ? 's' : ''}` : 'Nothing to interpolate: paint two slices with a gap between them', written ? 'ok' : 'warn')
  }

  undo(): void {
    if (this.mode.kind !== 'edit' || this.session.busy) return
    const op = this.session.undo()
    if (!op) {
      toast('Nothing to undo', 'info', 1500)
      return
    }
    this.afterHistory(op.structure)
  }

  redo(): void {
    if (this.mode.kind !== 'edit' || this.session.busy) return
    const op = this.session.redo()
    if (!op) {
      toast('Nothing to redo', 'info', 1500)
      return
    }
    this.afterHistory(op.structure)
  }

  private afterHistory(structure: string): void {
    if (structure === this.active) this.viewer.refreshDrawing()
    else this.setActive(structure).catch((err) => this.fail(err))
  }

  // ---------------------------------------------------------------- session changes, drafts

  private onSessionChange(): void {
    if (!this.session) return
    this.updateActiveCount()
    const dirtyNames = this.session.dirty
    for (const row of this.el.tabStructures.querySelectorAll('.srow')) {
      const name = (row as HTMLElement).dataset.testid!.replace('structure-row-', '')
      const dot = row.querySelector('.dot')
      if (dirtyNames.includes(name) && !dot) row.querySelector('.sname')!.append(h('span', { class: 'dot', title: 'unsaved change' }, ' ●'))
      if (!dirtyNames.includes(name) && dot) dot.remove()
    }
    const lock = this.lockReason
    if (lock && this.mode.kind === 'edit' && !this.saving) this.setSaveState(lock.state, lock.text)
    else if (this.mode.kind === 'edit' && !this.saving && this.saveState !== 'conflict') {
      if (!api.online) this.setSaveState('offline')
      else this.setSaveState(this.session.hasChanges ? 'dirty' : 'saved', this.session.hasChanges ? `Unsaved changes (${dirtyNames.length})` : undefined)
    }
    this.scheduleDrafts()
  }

  private onConnectivity(): void {
    if (!this.session || this.mode.kind !== 'edit' || this.saving || this.lockReason) return
    if (!api.online) this.setSaveState('offline')
    else if (this.saveState === 'offline') {
      this.setSaveState(this.session.hasChanges ? 'dirty' : 'saved')
      this.scheduleDrafts()
    }
  }

  private scheduleDrafts(): void {
    if (this.localTimer !== null) window.clearTimeout(this.localTimer)
    if (this.serverTimer !== null) window.clearTimeout(this.serverTimer)
    this.localTimer = window.setTimeout(() => this.saveLocalDraft(), 250)
    this.serverTimer = window.setTimeout(() => this.saveServerDraft(), 1200)
  }

  private draftPayload(): DraftPayload | null {
    return this.session?.draftPayload(this.active) ?? null
  }

  private async saveLocalDraft(): Promise<void> {
    const user = api.user
    if (!user || !this.session) return
    const payload = this.draftPayload()
    if (payload) await localDrafts.save(user.id, this.scanId, payload)
    else await localDrafts.remove(user.id, this.scanId)
  }

  private flushLocalDraft(): void {
    const user = api.user
    const payload = this.draftPayload()
    if (user && payload) localDrafts.saveNow(user.id, this.scanId, payload)
  }

  private async saveServerDraft(): Promise<void> {
    if (!this.session || this.saving) return
    const payload = this.draftPayload()
    try {
      if (payload) {
        await serverDrafts.save(this.scanId, payload)
        this.serverDraftExists = true
        this.setDraftInfo(`Draft saved ${new Date().toLocaleTimeString()} · server + this browser`)
      } else if (this.serverDraftExists) {
        await serverDrafts.remove(this.scanId)
        this.serverDraftExists = false
        this.setDraftInfo('')
      } else this.setDraftInfo('')
    } catch (err) {
      if (err instanceof OfflineError) {
        this.setDraftInfo('Draft kept in this browser (server unreachable)')
        this.serverTimer = window.setTimeout(() => this.saveServerDraft(), 10_000)
      } else {
        this.setDraftInfo(`Draft kept in this browser (server: ${(err as Error).message})`)
      }
    }
  }

  private setDraftInfo(text: string): void {
    this.draftInfo = text
    if (this.el.draft) {
      this.el.draft.textContent = text
      this.el.draft.dataset.saved = text.startsWith('Draft saved') ? 'server' : text ? 'local' : ''
    }
  }

  /** Offer the newest draft (this browser or the server); returns the structure it was editing. */
  private async offerDraft(): Promise<string | null> {
    const user = api.user
    if (!user) return null
    const local = await localDrafts.load(user.id, this.scanId)
    let server: DraftPayload | null = null
    try {
      server = (await serverDrafts.load(this.scanId))?.payload ?? null
    } catch {
      server = null
    }
    if (server) this.serverDraftExists = true
    const valid = (d: DraftPayload | null): d is DraftPayload =>
      !!d && d.format === 'maskloop-draft/1' && Object.keys(d.structures ?? {}).length > 0
    const candidates = [local, server].filter(valid)
    if (!candidates.length) return null
    const draft = candidates.sort((a, b) => Date.parse(b.updated_at) - Date.parse(a.updated_at))[0]
    const source = draft === server ? (valid(local) ? 'server and this browser' : 'server') : 'this browser'
    const onHead = draft.base_version_id === this.scan.head_version_id
    const names = Object.keys(draft.structures).map((n) => n.replace(/_/g, ' '))
    const choice = await dialog(
      'Restore your unsaved edit?',
      h(
        'div',
        null,
        h('p', null, `An unsaved edit of ${names.join(', ')} from ${fmtTime(draft.updated_at)} was kept (${source}).`),
        h(
          'p',
          { class: onHead ? 'muted' : 'warn' },
          onHead
            ? `It is based on version #${draft.base_version_id}, the current head.`
            : `It is based on version #${draft.base_version_id}; the scan has moved on to #${this.scan.head_version_id}. ` +
                'It opens on its own base; saving will offer to rebase it onto the head or save it as a branch.',
        ),
      ),
      [
        { label: 'Discard it', value: 'discard', kind: 'danger', testid: 'draft-discard' },
        { label: 'Restore', value: 'restore', kind: 'primary', testid: 'draft-restore' },
      ],
      { testid: 'draft-dialog', dismissable: false },
    )
    if (choice !== 'restore') {
      await localDrafts.remove(user.id, this.scanId)
      await serverDrafts.remove(this.scanId).catch(() => undefined)
      this.serverDraftExists = false
      return null
    }
    if (draft.base_version_id !== this.session.baseVersionId) {
      this.session = new EditSession(this.scanId, this.viewer.geometry!, draft.base_version_id)
      this.session.onChange = () => this.onSessionChange()
      this.baseVersion = this.versions.find((v) => v.id === draft.base_version_id) ?? null
    }
    await this.session.restoreDraft(draft)
    toast(`Restored your unsaved edit of ${names.join(', ')}`, 'ok')
    return draft.active && this.structures.some((s) => s.name === draft.active) ? draft.active : Object.keys(draft.structures)[0]
  }

  // ---------------------------------------------------------------- saving

  async save(message?: string): Promise<Version | null> {
    if (this.mode.kind !== 'edit' || !this.session) return null
    if (this.saving) return null
    if (!this.session.hasChanges) {
      toast('Nothing to save', 'info', 1500)
      return null
    }
    const lock = this.lockReason
    if (lock) {
      toast(`${lock.text}: not saved (your edit is kept as a draft)`, 'warn', 6000)
      return null
    }
    if (message === undefined) {
      const input = h('textarea', { rows: '3', placeholder: 'What did you change? (optional)', 'data-testid': 'save-message' })
      const choice = await dialog(
        'Save a new version',
        h(
          'div',
          null,
          h('p', { class: 'muted' }, `Changed: ${this.session.dirty.map((n) => n.replace(/_/g, ' ')).join(', ')}. Only the changed boxes are sent.`),
          input,
        ),
        [
          { label: 'Cancel', value: '', testid: 'save-cancel' },
          {
            label: this.review.myReading ? 'Save my reading' : this.session.branch ? 'Save on branch' : this.session.baseVersionId === null ? 'Save first version' : 'Save',
            value: 'save',
            kind: 'primary',
            testid: 'save-confirm',
          },
        ],
        { testid: 'save-dialog' },
      )
      if (choice !== 'save') return null
      message = (input as HTMLTextAreaElement).value.trim()
    }
    if (!(await this.review.ensureLease(true))) {
      toast(`${this.lockText()}: not saved (your edit is kept as a draft)`, 'warn', 6000)
      return null
    }
    return this.commitSave(message, this.session.branch || !!this.review.myReading)
  }

  private async commitSave(message: string, branch: boolean): Promise<Version | null> {
    const boxes = this.session.patchBoxes()
    if (!boxes.length) {
      toast('Nothing to save', 'info')
      return null
    }
    const base = this.session.baseVersionId
    // One idempotency key per save: every retry sends it, so a save committed but unacknowledged (the
    // connection broke) is answered with its version by the server, never stored twice.
    const prior = this.unsettledSave
    const key = prior && sameSave(prior, base, branch, boxes) ? prior.key : randomKey()
    const plan = this.session.encodePatch(boxes, message, branch, key)
    this.saving = true
    this.setSaveState('saving', branch ? 'Saving on a branch…' : 'Saving…')
    try {
      const version = await withRetry(
        () =>
          api.post<Version>(`/api/scans/${this.scanId}/versions/patch`, {
            body: plan.body,
            headers: { 'Content-Type': plan.contentType },
          }),
        SAVE_RETRY,
        (n) => this.setSaveState('saving', `No answer from the server: retrying the save (${n}/${SAVE_RETRY.attempts - 1})…`),
      )
      this.unsettledSave = null
      this.lastSave = { bodyBytes: plan.bodyBytes, versionId: version.id, boxes: plan.boxes.length }
      this.saving = false
      this.session.markSaved(version.id, branch)
      this.baseVersion = version
      this.overlayCache.clear()
      const user = api.user
      if (user) await localDrafts.remove(user.id, this.scanId)
      await serverDrafts.remove(this.scanId).catch(() => undefined)
      this.serverDraftExists = false
      this.setDraftInfo('')
      if (!branch) this.scan.head_version_id = version.id
      await this.loadVersions()
      this.setSaveState('saved', branch ? `Saved on branch #${version.id}` : `Saved version #${version.id}`)
      this.renderStructures()
      this.renderVersions()
      this.updateBanner()
      toast(`Saved version #${version.id}${branch ? ' (branch)' : ''}`, 'ok')
      await this.review.refreshTask().catch(() => undefined)
      return version
    } catch (err) {
      this.saving = false
      this.unsettledSave = isTransient(err) ? { key, baseVersionId: base, branch, boxes } : null
      // The error body keeps a conflict's fields under `details` ({detail, error, details}).
      const conflict = err instanceof ApiError ? (err.body.details as Record<string, unknown> | undefined) : undefined
      if (err instanceof ApiError && err.status === 409 && err.body.error === 'conflict' && conflict && 'head_version_id' in conflict) {
        return this.onConflict(message, conflict as unknown as ConflictBody)
      }
      if (err instanceof ApiError && (err.status === 409 || err.status === 403)) {
        // Approved meanwhile, someone else's lease, or no right to write: keep the edit, show why.
        await this.review.refreshTask().catch(() => undefined)
        await this.saveLocalDraft()
        const lock = this.lockReason
        this.setSaveState(lock?.state ?? 'error', lock ? lock.text : `Not saved: ${err.message}`)
        toast(`Not saved: ${err.message}. Your edit is kept as a draft.`, 'error', 8000)
        return null
      }
      if (err instanceof OfflineError) {
        this.setSaveState('offline', 'Offline: not saved, edit kept')
        await this.saveLocalDraft()
        toast('The server cannot be reached. Your edit is kept in this browser; save again when back online.', 'error', 6000)
        return null
      }
      this.setSaveState('error', 'Save failed: edit kept')
      toast(`Save failed: ${(err as Error).message}. Your edit is kept.`, 'error', 8000)
      return null
    }
  }

  private async onConflict(message: string, body: ConflictBody): Promise<Version | null> {
    this.setSaveState('conflict')
    const who = body.head_author ?? 'a model or another user'
    const choice = await dialog(
      'This scan was saved by someone else meanwhile',
      h(
        'div',
        null,
        h(
          'p',
          { 'data-testid': 'conflict-who' },
          h('b', null, who),
          ` saved version #${body.head_version_id}`,
          body.head_message ? [' — “', h('i', null, body.head_message), '”'] : null,
          ` at ${fmtTime(body.head_created_at)}.`,
        ),
        h(
          'p',
          null,
          `Your edit of ${this.session.dirty.map((n) => n.replace(/_/g, ' ')).join(', ')} (based on #${body.base_version_id}) is kept and not saved yet.`,
        ),
        h('ul', { class: 'muted' }, [
          h('li', null, h('b', null, 'Rebase'), `: re-apply your changed boxes onto #${body.head_version_id} and save on top of it.`),
          h('li', null, h('b', null, 'Branch'), `: save your edit as a branch of #${body.base_version_id}; the head stays #${body.head_version_id}.`),
        ]),
      ),
      [
        { label: 'Keep editing', value: 'cancel', testid: 'conflict-cancel' },
        { label: 'Save as branch', value: 'branch', testid: 'conflict-branch' },
        { label: `Rebase onto #${body.head_version_id} & save`, value: 'rebase', kind: 'primary', testid: 'conflict-rebase' },
      ],
      { testid: 'conflict-dialog', dismissable: false },
    )
    if (choice === 'rebase' && body.head_version_id !== null) {
      this.setSaveState('saving', 'Rebasing…')
      await this.session.rebase(body.head_version_id)
      await this.loadVersions()
      this.baseVersion = this.versions.find((v) => v.id === body.head_version_id) ?? null
      this.scan.head_version_id = body.head_version_id
      this.overlayCache.clear()
      if (this.active) await this.setActive(this.active)
      return this.commitSave(message, false)
    }
    if (choice === 'branch') return this.commitSave(message, true)
    this.setSaveState('dirty', 'Unsaved changes (conflict pending)')
    return null
  }

  async discard(): Promise<void> {
    if (!this.session?.hasChanges) return
    const choice = await dialog(
      'Discard unsaved changes?',
      `Your changes to ${this.session.dirty.join(', ')} will be lost (drafts included).`,
      [
        { label: 'Keep them', value: '', testid: 'discard-cancel' },
        { label: 'Discard', value: 'discard', kind: 'danger', testid: 'discard-confirm' },
      ],
    )
    if (choice !== 'discard') return
    this.session.discard()
    this.viewer.refreshDrawing()
    await this.composeOverlay()
    const user = api.user
    if (user) await localDrafts.remove(user.id, this.scanId)
    await serverDrafts.remove(this.scanId).catch(() => undefined)
    this.serverDraftExists = false
    this.renderStructures()
  }

  // ---------------------------------------------------------------- versions

  renderVersions(): void {
    const body = this.el.tabVersions
    if (!body) return
    clear(body)
    const newest = [...this.versions].reverse()
    const byId = new Map(this.versions.map((v) => [v.id, v]))
    const headId = this.scan.head_version_id
    const aDefault =
      this.mode.kind === 'compare'
        ? this.mode.a
        : (newest.find((v) => v.kind === 'model')?.id ?? (headId !== null ? byId.get(headId)?.parent_id : null) ?? newest.at(-1)?.id)
    const bDefault = this.mode.kind === 'compare' ? this.mode.b : headId
    const selA = h(
      'select',
      { 'data-testid': 'compare-a' },
      newest.map((v) => h('option', { value: String(v.id), selected: v.id === aDefault }, `#${v.id} ${v.kind}`)),
    )
    const selB = h(
      'select',
      { 'data-testid': 'compare-b' },
      newest.map((v) => h('option', { value: String(v.id), selected: v.id === bDefault }, `#${v.id} ${v.kind}`)),
    )
    body.append(
      h(
        'div',
        { class: 'compare-bar' },
        h('span', null, 'Compare'),
        selA,
        h('span', null, '→'),
        selB,
        h(
          'button',
          {
            class: 'btn',
            'data-testid': 'compare-run',
            onclick: () => this.compare(Number(selA.value), Number(selB.value)).catch((err) => this.fail(err)),
          },
          'Compare',
        ),
      ),
    )
    if (this.lastDiff && this.mode.kind === 'compare') body.append(this.diffTable(this.lastDiff))
    const list = h('div', { class: 'versions', 'data-testid': 'version-list' })
    for (const v of newest) {
      const changed = v.structures.filter((s) => s.changed)
      const who = v.author.display_name ?? (v.author.model_version_id ? `model v${v.author.model_version_id}` : 'unknown')
      const viewing = this.mode.kind === 'view' && this.mode.versionId === v.id
      list.append(
        h(
          'div',
          {
            class: `version ${v.id === this.session?.baseVersionId ? 'base' : ''} ${viewing ? 'viewing' : ''}`,
            'data-testid': `version-${v.id}`,
          },
          h(
            'div',
            { class: 'vhead' },
            h('b', null, `#${v.id}`),
            h('span', { class: `kind ${v.kind}` }, v.kind === 'model' ? 'AI' : v.kind),
            v.id === headId ? h('span', { class: 'tag head' }, 'HEAD') : null,
            v.is_branch ? h('span', { class: 'tag branch' }, 'branch') : null,
            v.id === this.session?.baseVersionId ? h('span', { class: 'tag base' }, 'editing') : null,
            h('span', { class: 'spacer' }),
            h(
              'button',
              { class: 'btn small', 'data-testid': `view-version-${v.id}`, onclick: () => this.viewVersion(v.id).catch((err) => this.fail(err)) },
              'View',
            ),
          ),
          h('div', { class: 'vmeta' }, `${who} · ${fmtTime(v.created_at)}${lineageText(v)}`),
          v.message ? h('div', { class: 'vmsg' }, v.message) : null,
          h(
            'div',
            { class: 'vchanges' },
            changed.length > 6 && v.parent_id === null
              ? `${changed.length} structures`
              : changed.map((s) => h('span', { class: 'chip' }, `${s.name.replace(/_/g, ' ')} ${s.voxel_count.toLocaleString()}`)),
          ),
        ),
      )
    }
    body.append(list)
  }

  private diffTable(diff: DiffOut): HTMLElement {
    const rows = diff.structures.filter((s) => s.added || s.removed || s.voxels_a || s.voxels_b)
    const selected = this.mode.kind === 'compare' ? this.mode.structure : null
    return h(
      'div',
      { class: 'diff', 'data-testid': 'diff-table' },
      h('div', { class: 'diff-title' }, `#${diff.version_a} → #${diff.version_b}: Dice per structure (click a row for its difference overlay)`),
      h(
        'table',
        null,
        h('tr', null, h('th', null, 'structure'), h('th', null, 'Dice'), h('th', null, '+ added'), h('th', null, '− removed')),
        rows.map((s) =>
          h(
            'tr',
            {
              class: `${s.added || s.removed ? 'changed' : ''} ${selected === s.structure ? 'sel' : ''}`,
              'data-testid': `diff-row-${s.structure}`,
              onclick: () => this.showDiff(s.structure).catch((err) => this.fail(err)),
            },
            h('td', null, s.structure.replace(/_/g, ' ')),
            h('td', { 'data-testid': `dice-${s.structure}`, 'data-dice': s.dice === null ? '' : String(s.dice) }, s.dice === null ? 'n/a' : s.dice.toFixed(4)),
            h('td', { class: 'add' }, s.added ? `+${s.added.toLocaleString()}` : '0'),
            h('td', { class: 'rem' }, s.removed ? `−${s.removed.toLocaleString()}` : '0'),
          ),
        ),
      ),
    )
  }

  /** Show a version read-only: its structures in the overlay, the drawing layer hidden, tools off. */
  async viewVersion(id: number): Promise<void> {
    this.mode = { kind: 'view', versionId: id }
    const labels = await this.combinedMap(id, null)
    await this.viewer.setLabels(labels, this.colors())
    await this.viewer.setExtra(null)
    this.viewer.setDrawOpacity(0)
    this.setSaveState('readonly', `Read-only: version #${id}`)
    this.updateBanner()
    this.renderVersions()
  }

  async compare(a: number, b: number): Promise<DiffOut> {
    const diff = await api.get<DiffOut>(`/api/versions/${b}/diff?against=${a}`)
    this.lastDiff = diff
    this.mode = { kind: 'compare', a, b, structure: null }
    const labels = await this.combinedMap(b, null)
    await this.viewer.setLabels(labels, this.colors())
    this.viewer.setDrawOpacity(0)
    this.setSaveState('readonly', `Comparing #${a} → #${b}`)
    const first = diff.structures.filter((s) => s.added || s.removed).sort((x, y) => y.added + y.removed - (x.added + x.removed))[0]
    if (first) await this.showDiff(first.structure)
    else await this.viewer.setExtra(null)
    this.updateBanner()
    this.renderVersions()
    this.showTab('versions')
    return diff
  }

  /** The difference overlay of one structure: green added (in b, not a), red removed (in a, not b). */
  async showDiff(structure: string): Promise<void> {
    if (this.mode.kind !== 'compare') return
    const { a, b } = this.mode
    this.mode = { ...this.mode, structure }
    const g = this.viewer.geometry!
    const [ma, mb] = await Promise.all([fetchMaskRAS(g, a, structure), fetchMaskRAS(g, b, structure)])
    const ras = new Uint8Array(g.voxels)
    let first = -1
    for (let i = 0; i < ras.length; i++) {
      if (mb[i] && !ma[i]) ras[i] = 1
      else if (ma[i] && !mb[i]) ras[i] = 2
      else continue
      if (first < 0) first = i
    }
    const native = new Uint8Array(g.voxels)
    g.toNative(ras, native)
    await this.viewer.setExtra(native, [
      { value: 1, rgb: [64, 220, 110], alpha: 0.95, name: 'added' },
      { value: 2, rgb: [255, 70, 70], alpha: 0.95, name: 'removed' },
    ])
    if (first >= 0) {
      const comps = components(g.rasDims, ras)
      if (comps.length) this.viewer.moveTo(comps[0].center)
    }
    this.renderVersions()
  }

  /** Leave a version view or comparison and go back to the edit (which was kept in memory). */
  async backToEdit(): Promise<void> {
    if (this.mode.kind === 'edit') return
    this.mode = { kind: 'edit' }
    await this.viewer.setExtra(null)
    this.attentionOn = false
    if (this.active) await this.setActive(this.active)
    this.onSessionChange()
    if (!this.session.hasChanges && !this.lockReason) this.setSaveState('saved')
    this.updateBanner()
    this.renderVersions()
    this.renderAttention()
  }

  private updateBanner(): void {
    const banner = this.el.banner
    clear(banner)
    let text = ''
    if (this.mode.kind === 'view') text = `Viewing version #${this.mode.versionId} (read-only)`
    else if (this.mode.kind === 'compare')
      text = `Comparing #${this.mode.a} → #${this.mode.b}${this.mode.structure ? ` · ${this.mode.structure.replace(/_/g, ' ')}: green added, red removed` : ''}`
    else if (this.review.myReading) text = `Your blinded reading: saves go to your own branch; submit it when done`
    else if (this.session?.branch) text = `Editing on branch #${this.session.baseVersionId} (the head is #${this.scan.head_version_id})`
    banner.hidden = !text
    if (text) {
      banner.append(h('span', null, text))
      if (this.mode.kind !== 'edit')
        banner.append(h('button', { class: 'btn small', 'data-testid': 'back-to-edit', onclick: () => this.backToEdit() }, 'Back to editing (Esc)'))
    }
  }

  // ---------------------------------------------------------------- attention

  renderAttention(): void {
    const body = this.el.tabAttention
    if (!body) return
    clear(body)
    const name = this.attentionStructure ?? this.active
    const select = h(
      'select',
      {
        'data-testid': 'attention-structure',
        onchange: (e: Event) => this.showAttention(true, (e.target as HTMLSelectElement).value).catch((err) => this.fail(err)),
      },
      this.structures.map((s) => h('option', { value: s.name, selected: s.name === name }, s.name.replace(/_/g, ' '))),
    )
    body.append(
      h('p', { class: 'muted' }, 'Where the models disagree or are unsure: revise these regions first.'),
      h('div', { class: 'att-bar' }, select),
      h(
        'div',
        { class: 'att-bar' },
        h(
          'label',
          { class: 'check' },
          h('input', {
            type: 'checkbox',
            checked: this.attentionOn,
            'data-testid': 'attention-toggle',
            onchange: (e: Event) => this.showAttention((e.target as HTMLInputElement).checked, select.value).catch((err) => this.fail(err)),
          }),
          ' Heat overlay ',
          h('kbd', null, 'A'),
        ),
        h(
          'button',
          { class: 'btn', 'data-testid': 'attention-next', onclick: () => this.nextAttention().catch((err) => this.fail(err)) },
          'Next region ',
          h('kbd', null, 'N'),
        ),
      ),
      h(
        'label',
        { class: 'field' },
        h('span', null, 'Heat opacity'),
        h('input', {
          type: 'range',
          min: '0',
          max: '1',
          step: '0.05',
          value: String(this.attentionOpacity),
          'data-testid': 'attention-opacity',
          oninput: (e: Event) => this.setAttentionOpacity(Number((e.target as HTMLInputElement).value)),
        }),
      ),
      h(
        'div',
        { class: 'heat-legend', title: 'attention density: faint = isolated voxels, bright = dense regions' },
        h('span', null, 'sparse'),
        h('span', { class: 'heat-ramp' }),
        h('span', null, 'dense'),
      ),
      h(
        'div',
        { class: 'muted', 'data-testid': 'attention-info' },
        this.attentionOn
          ? `${this.attentionRegions.length} region${this.attentionRegions.length === 1 ? '' : 's'}${this.attentionIndex >= 0 ? ` · at ${this.attentionIndex + 1}` : ''}`
          : '',
      ),
    )
    if (this.priorities.length) {
      body.append(
        h('div', { class: 'tb-title' }, 'Priority in this scan'),
        h(
          'table',
          { class: 'prio' },
          this.priorities
            .slice()
            .sort((a, b) => b.priority - a.priority)
            .map((p) =>
              h(
                'tr',
                { onclick: () => this.showAttention(true, p.structure).catch((err) => this.fail(err)) },
                h('td', null, p.structure.replace(/_/g, ' ')),
                h('td', null, p.priority.toFixed(3)),
                h('td', null, `${p.attention_voxels.toLocaleString()} vx`),
              ),
            ),
        ),
      )
    }
  }

  async showAttention(on: boolean, structure: string | null = this.active): Promise<void> {
    this.attentionOn = on
    this.attentionStructure = structure
    this.attentionRegions = []
    this.attentionIndex = -1
    this.attentionHeat = null
    if (!on || !structure) {
      await this.viewer.setExtra(null)
      this.renderAttention()
      return
    }
    let bytes: ArrayBuffer
    try {
      bytes = await api.bytes(`/api/scans/${this.scanId}/attention/${encodeURIComponent(structure)}`)
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        this.attentionOn = false
        await this.viewer.setExtra(null)
        this.renderAttention()
        toast(`No attention map for ${structure.replace(/_/g, ' ')} yet (attention jobs need two model predictions)`, 'warn')
        return
      }
      throw err
    }
    const vol = parseNifti(bytes)
    const native = new Uint8Array(vol.data.length)
    for (let i = 0; i < native.length; i++) native[i] = vol.data[i] > 0 ? 1 : 0
    const g = this.viewer.geometry!
    const ras = new Uint8Array(g.voxels)
    g.toRAS(native, ras)
    this.attentionRegions = components(g.rasDims, ras).map((c) => c.center)
    this.attentionHeat = gradeAttention(native, this.viewer.nativeDims, this.scan.spacing)
    await this.viewer.setExtra(this.attentionHeat, heatColors())
    this.viewer.setExtraOpacity(this.attentionOpacity)
    this.renderAttention()
    toast(`Attention map of ${structure.replace(/_/g, ' ')}: ${this.attentionRegions.length} region(s), ${countNonzero(native).toLocaleString()} voxels`, 'info', 2500)
  }

  /** Heat overlay opacity (one LUT refresh, no reload). */
  setAttentionOpacity(opacity: number): void {
    this.attentionOpacity = Math.max(0, Math.min(1, opacity))
    if (this.attentionOn && this.attentionHeat) this.viewer.setExtraOpacity(this.attentionOpacity)
  }

  async nextAttention(): Promise<void> {
    if (!this.attentionOn) await this.showAttention(true, this.attentionStructure ?? this.active)
    if (!this.attentionRegions.length) return
    this.attentionIndex = (this.attentionIndex + 1) % this.attentionRegions.length
    this.viewer.moveTo(this.attentionRegions[this.attentionIndex])
    this.renderAttention()
  }

  // ---------------------------------------------------------------- readout, keys, help

  updateReadout(): void {
    if (!this.viewer?.ct) return
    const r = this.viewer.readout(this.active ? (this.session?.edited.get(this.active) ?? null) : null)
    if (!r) return
    const labelName = r.label ? this.structures.find((s) => s.label_value === r.label)?.name : null
    const dims = this.viewer.geometry!.rasDims
    const el = this.el.readout
    clear(el)
    el.dataset.ijk = r.ijk.join(',')
    el.dataset.ras = r.ras.join(',')
    el.dataset.hu = String(Math.round(r.hu))
    el.append(
      h('span', null, 'voxel ', h('b', { 'data-testid': 'readout-voxel' }, `${r.ijk[0]}, ${r.ijk[1]}, ${r.ijk[2]}`)),
      h('span', null, h('b', { 'data-testid': 'readout-hu' }, `${Math.round(r.hu)}`), ' HU'),
      h('span', null, h('b', { 'data-testid': 'readout-mm' }, r.mm.map((v) => (Math.abs(v) < 0.05 ? 0 : v).toFixed(1)).join(', ')), ' mm'),
      h('span', null, `slice ${r.ras[2] + 1}/${dims[2]}`),
      h('span', null, r.drawn && this.active ? h('i', { class: 'in-active' }, this.active.replace(/_/g, ' ')) : labelName ? labelName.replace(/_/g, ' ') : ''),
      h('span', { class: 'spacer' }),
      h('span', { class: 'muted' }, this.viewer.radiological ? 'radiological (R on left of screen)' : 'neurological'),
    )
  }

  private onKey(e: KeyboardEvent): void {
    const t = e.target as HTMLElement | null
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT') && e.key !== 'Escape') return
    if (document.querySelector('.backdrop')) return
    if (!this.viewer?.ct || !this.session) return
    const ctrl = e.ctrlKey || e.metaKey
    const k = e.key
    const lower = k.toLowerCase()
    let handled = true
    if (ctrl && lower === 'z' && !e.shiftKey) this.undo()
    else if (ctrl && (lower === 'y' || (lower === 'z' && e.shiftKey))) this.redo()
    else if (ctrl && lower === 's') this.save().catch((err) => this.fail(err))
    else if (ctrl || e.altKey) {
      if (e.altKey && (k === 'ArrowUp' || k === 'ArrowDown')) this.cycleStructure(k === 'ArrowUp' ? -1 : 1)
      else handled = false
    } else if (TOOLS.some((tool) => tool.key.toLowerCase() === lower)) this.setTool(TOOLS.find((tool) => tool.key.toLowerCase() === lower)!.id)
    else if (lower === 'h') this.setHu(!this.huOn)
    else if (lower === 'i') this.interpolate()
    else if (k === '[') this.setBrush(this.brushMm - (this.brushMm > 10 ? 2 : 1))
    else if (k === ']') this.setBrush(this.brushMm + (this.brushMm >= 10 ? 2 : 1))
    else if (['1', '2', '3', '4', '5'].includes(k)) this.setLayout((['axial', 'coronal', 'sagittal', 'multiplanar', '3d'] as Layout[])[Number(k) - 1])
    else if (lower === 'w') this.cyclePreset(e.shiftKey ? -1 : 1)
    else if (lower === 'r') {
      this.viewer.setRadiological(!this.viewer.radiological)
      ;(this.el.viewbar.querySelector('[data-testid=radiological]') as HTMLInputElement).checked = this.viewer.radiological
      this.updateReadout()
    } else if (lower === 'l') this.setLabelsOn(!this.labelsOn)
    else if (lower === 'a') this.showAttention(!this.attentionOn, this.attentionStructure ?? this.active).catch((err) => this.fail(err))
    else if (lower === 'n') this.nextAttention().catch((err) => this.fail(err))
    else if ((k === 'ArrowUp' || k === 'PageUp') && t !== this.el.canvas) this.viewer.step(this.currentPlane(), 1)
    else if ((k === 'ArrowDown' || k === 'PageDown') && t !== this.el.canvas) this.viewer.step(this.currentPlane(), -1)
    else if (k === '?') this.showHelp()
    else if (k === 'Escape') this.backToEdit().catch((err) => this.fail(err))
    else handled = false
    if (handled) e.preventDefault()
  }

  private currentPlane(): number {
    return this.viewer.layout === 'coronal' ? 1 : this.viewer.layout === 'sagittal' ? 2 : 0
  }

  private cyclePreset(dir: number): void {
    const { width, level } = this.viewer.window
    const i = PRESETS.findIndex((p) => p.width === width && p.level === level)
    const next = PRESETS[(i + dir + PRESETS.length) % PRESETS.length]
    this.viewer.setWindow(next.width, next.level)
    toast(`Window: ${next.name} W${next.width} L${next.level}`, 'info', 1200)
  }

  private cycleStructure(dir: number): void {
    if (!this.active) return
    const names = this.structures.map((s) => s.name)
    const i = names.indexOf(this.active)
    this.setActive(names[(i + dir + names.length) % names.length]).catch((err) => this.fail(err))
  }

  showHelp(): void {
    const body = h(
      'div',
      { class: 'help', 'data-testid': 'help-panel' },
      h('table', null, [
        ...TOOLS.map((t) => h('tr', null, h('td', null, h('kbd', null, t.key)), h('td', null, h('b', null, t.label), ' — ', t.help))),
        ...ACTIONS.map((a) => h('tr', null, h('td', null, h('kbd', null, a.keys)), h('td', null, a.label))),
      ]),
      h(
        'p',
        { class: 'muted' },
        'Only the active structure is edited; the others are shown read-only, so overlapping structures stay intact. ',
        'Edits are autosaved as a draft (server and this browser) until you save a version.',
      ),
    )
    dialog('Keyboard shortcuts', body, [{ label: 'Close', value: 'close', kind: 'primary' }], { testid: 'help-dialog' }).catch(() => undefined)
  }

  private fail(err: unknown): void {
    console.error(err)
    toast((err as Error).message ?? String(err), 'error', 6000)
  }
}
