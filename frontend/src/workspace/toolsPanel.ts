/**
 * The Tools panel of the active structure (under the structures list): margin grow/shrink in mm, islands,
 * smoothing, fill holes, logical operations with another structure and interpolation between the edited key
 * slices run on the server (`POST /api/scans/{id}/operations`) and come back as a preview (added voxels in the
 * seed colour) to accept or reject; an accepted result is ONE undoable edit of the edit session, saved as a patch
 * like a stroke. Statistics (mL, HU) fill a table; the 3D sphere brush paints about the crosshair on the client.
 */

import { api } from '../api/client'
import { type OperationAnswer, type OperationSpec, type StructureStats, applyAnswer, buildOperation, keySlices, operationLabel, paintSphere } from '../core/operations'
import { pretty } from '../core/structures'
import { clear, h, toast } from '../dom'
import type { WorkspaceContext } from './context'
import { planeOf } from './state'

type PanelState = 'idle' | 'running' | 'preview'

interface Preview {
  structure: string
  label: string
  answer: OperationAnswer
}

const LOGICAL_OPS = ['copy', 'add', 'subtract', 'intersect', 'invert'] as const

export class ToolsPanel {
  readonly element: HTMLElement
  private readonly ctx: WorkspaceContext
  private state: PanelState = 'idle'
  private preview: Preview | null = null
  private stats: StructureStats[] = []
  /** The drawing layer's bitmap while a preview is shown: the working copy with the answer applied. */
  private shown: Uint8Array | null = null
  /** Input values kept across redraws. */
  private values = { marginMm: '3', minMl: '1', smoothMethod: 'closing', smoothMm: '2', logicalOp: 'add', source: '', sphereMm: '10' }

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    this.element = h('section', { class: 'tools-panel', 'data-testid': 'tools-panel', dataset: { state: 'idle' } })
    ctx.store.watch(
      (s) => s.active,
      () => {
        this.reject()
        this.stats = []
        this.render()
      },
    )
    ctx.store.watch(
      (s) => [s.activeLoaded, s.access, s.mode.kind, s.sessionBase] as const,
      () => {
        if (this.ctx.store.get().mode.kind !== 'edit') this.reject()
        this.render()
      },
      { equals: (a, b) => a.every((v, i) => v === b[i]) },
    )
    // The working copy changed under a preview (a stroke, undo, a save, a discard): the preview is stale.
    ctx.store.watch(
      (s) => s.sessionRev,
      () => this.reject(),
    )
  }

  private get disabled(): boolean {
    const { ctx } = this
    return !ctx.store.get().activeLoaded || ctx.store.get().mode.kind !== 'edit' || !!ctx.lockReason()
  }

  render(): void {
    const { ctx } = this
    const root = this.element
    if (!ctx.schema) return // the role (and so the access) is known before the schema is
    clear(root)
    root.dataset.state = this.state
    const active = ctx.store.get().active
    root.append(h('div', { class: 'group-head' }, h('span', null, 'Tools'), active ? h('span', { class: 'tools-target' }, pretty(active)) : null))
    if (this.state === 'preview' && this.preview) {
      root.append(
        h(
          'div',
          { class: 'tools-preview', 'data-testid': 'tool-preview' },
          h('div', { 'data-testid': 'tool-preview-summary' }, `Preview: ${this.preview.answer.summary}`),
          h(
            'div',
            { class: 'tools-row' },
            h('button', { class: 'btn primary', 'data-testid': 'tool-accept', onclick: () => this.accept() }, 'Accept'),
            h('button', { class: 'btn', 'data-testid': 'tool-reject', onclick: () => this.reject() }, 'Reject'),
          ),
        ),
      )
    }
    const off = this.disabled || this.state !== 'idle'
    const num = (key: keyof ToolsPanel['values'], testid: string, attrs: Record<string, string>): HTMLInputElement =>
      h('input', {
        type: 'number',
        class: 'tools-num',
        value: this.values[key],
        'data-testid': testid,
        ...attrs,
        oninput: (e: Event) => (this.values[key] = (e.target as HTMLInputElement).value),
      })
    const button = (label: string, testid: string, title: string, run: () => void): HTMLButtonElement =>
      h('button', { class: 'btn', 'data-testid': testid, title, disabled: off, onclick: run }, label)
    const row = (label: string, ...children: HTMLElement[]): HTMLElement => h('div', { class: 'tools-row' }, h('span', { class: 'tools-label' }, label), ...children)
    const others = ctx.structures.filter((s) => s.name !== active)
    if (!others.some((s) => s.name === this.values.source)) this.values.source = ''
    root.append(
      row(
        'Margin',
        num('marginMm', 'tool-margin-mm', { min: '0.1', max: '50', step: '0.5', title: 'margin in mm' }),
        button('Grow', 'tool-grow', 'grow by the margin (exact distance on the scan spacing)', () => this.margin(1)),
        button('Shrink', 'tool-shrink', 'shrink by the margin', () => this.margin(-1)),
      ),
      row(
        'Islands',
        button('Keep largest', 'tool-keep-largest', 'keep the largest connected piece', () => void this.run({ operation: 'islands', params: { mode: 'keep_largest' } })),
        button('Keep at crosshair', 'tool-keep-clicked', 'keep the piece under the crosshair (click it in Navigate first)', () => this.keepClicked()),
      ),
      row(
        '',
        num('minMl', 'tool-islands-ml', { min: '0.001', step: '0.1', title: 'smallest volume kept, mL' }),
        button('Remove < mL', 'tool-remove-small', 'remove the pieces smaller than this volume', () => this.removeSmall()),
      ),
      row(
        'Smooth',
        h(
          'select',
          { 'data-testid': 'tool-smooth-method', onchange: (e: Event) => (this.values.smoothMethod = (e.target as HTMLSelectElement).value) },
          ['median', 'opening', 'closing'].map((m) => h('option', { value: m, selected: m === this.values.smoothMethod }, m)),
        ),
        num('smoothMm', 'tool-smooth-mm', { min: '0.5', max: '20', step: '0.5', title: 'radius in mm' }),
        button('Apply', 'tool-smooth', 'smooth with a ball of this radius', () => this.smooth()),
      ),
      row(
        'Fill',
        button('Fill holes', 'tool-fill-holes', 'fill the cavities (3D)', () => void this.run({ operation: 'fill_holes', params: {} })),
        button('Interpolate', 'tool-interpolate', 'fill the gaps between the slices edited in this view (adds only)', () => this.interpolate()),
      ),
      row(
        'Logical',
        h(
          'select',
          { 'data-testid': 'tool-logical-op', onchange: (e: Event) => (this.values.logicalOp = (e.target as HTMLSelectElement).value) },
          LOGICAL_OPS.map((op) => h('option', { value: op, selected: op === this.values.logicalOp }, op)),
        ),
        h(
          'select',
          { 'data-testid': 'tool-logical-source', title: 'the other structure (invert: inside it, or the whole volume)', onchange: (e: Event) => (this.values.source = (e.target as HTMLSelectElement).value) },
          h('option', { value: '' }, '—'),
          others.map((s) => h('option', { value: s.name, selected: s.name === this.values.source }, pretty(s.name))),
        ),
        button('Apply', 'tool-logical', 'combine the active structure with the other one', () => void this.logical()),
      ),
      row(
        'Sphere',
        num('sphereMm', 'tool-sphere-mm', { min: '0.5', max: '100', step: '0.5', title: 'radius in mm' }),
        button('Paint', 'tool-sphere', 'paint a 3D ball of this radius about the crosshair', () => void this.sphere(1)),
        button('Erase', 'tool-sphere-erase', 'erase a 3D ball of this radius about the crosshair', () => void this.sphere(0)),
      ),
      row(
        'Measure',
        h('button', { class: 'btn', 'data-testid': 'tool-stats', disabled: this.disabled || this.state === 'running', onclick: () => void this.statistics() }, 'Statistics'),
      ),
    )
    if (this.stats.length) root.append(this.statsTable())
  }

  private statsTable(): HTMLElement {
    const f = (v: number | null, digits = 1): string => (v === null ? '—' : v.toFixed(digits))
    return h(
      'table',
      { class: 'tools-stats', 'data-testid': 'tool-stats-table' },
      h('thead', null, h('tr', null, ['Structure', 'mL', 'voxels', 'HU mean', 'SD', 'min', 'max'].map((t) => h('th', null, t)))),
      h(
        'tbody',
        null,
        this.stats.map((s) =>
          h(
            'tr',
            { 'data-testid': `tool-stats-row-${s.structure}`, dataset: { voxels: String(s.voxels), ml: String(s.volume_ml) } },
            h('td', null, pretty(s.structure)),
            h('td', null, f(s.volume_ml, 2)),
            h('td', null, s.voxels.toLocaleString()),
            h('td', null, f(s.hu_mean)),
            h('td', null, f(s.hu_sd)),
            h('td', null, f(s.hu_min, 0)),
            h('td', null, f(s.hu_max, 0)),
          ),
        ),
      ),
    )
  }

  private number(key: keyof ToolsPanel['values']): number | null {
    const v = Number(this.values[key])
    if (!Number.isFinite(v) || v <= 0) {
      toast('Enter a positive number', 'warn')
      return null
    }
    return v
  }

  private margin(sign: number): void {
    const mm = this.number('marginMm')
    if (mm !== null) void this.run({ operation: 'margin', params: { mm: sign * mm } })
  }

  private removeSmall(): void {
    const ml = this.number('minMl')
    if (ml !== null) void this.run({ operation: 'islands', params: { mode: 'remove_smaller_ml', min_ml: ml } })
  }

  private keepClicked(): void {
    const ras = this.ctx.viewer.crosshairVox()
    const voxel = this.ctx.viewer.geometry!.rasToNativeIJK(ras[0], ras[1], ras[2])
    void this.run({ operation: 'islands', params: { mode: 'keep_clicked', voxel } })
  }

  private smooth(): void {
    const mm = this.number('smoothMm')
    const method = this.values.smoothMethod as 'median' | 'opening' | 'closing'
    if (mm !== null) void this.run({ operation: 'smooth', params: { method, mm } })
  }

  private async logical(): Promise<void> {
    const op = this.values.logicalOp as (typeof LOGICAL_OPS)[number]
    const other = this.values.source
    if (op !== 'invert' && !other) {
      toast(`Choose the other structure to ${op}`, 'warn')
      return
    }
    const params = op === 'invert' ? (other ? { op, within: other } : { op }) : { op, source: other }
    await this.run({ operation: 'logical', params }, other ? [other] : [])
  }

  private interpolate(): void {
    const { ctx } = this
    const name = ctx.store.get().active
    if (!name) return
    const plane = planeOf(ctx.viewer.layout)
    const rasAxis = plane === 0 ? 2 : plane === 1 ? 1 : 0
    const { axis, slices } = keySlices(ctx.viewer.geometry!, ctx.session.edited.get(name)!, ctx.session.base.get(name)!, rasAxis)
    if (slices.length < 2) {
      toast('Nothing to interpolate: edit two slices of this view with a gap between them', 'warn')
      return
    }
    void this.run({ operation: 'interpolate', params: { axis, key_slices: slices, mode: 'add' } })
  }

  /** Send the operation, then show its result as a preview (or say that nothing changes). */
  async run(spec: OperationSpec, extra: string[] = []): Promise<void> {
    const { ctx } = this
    if (this.state !== 'idle' || ctx.editor.refuseEdit()) return
    const name = ctx.store.get().active!
    const started = performance.now()
    this.setState('running')
    const rev = () => ctx.store.get().sessionRev
    try {
      if (!(await ctx.review.ensureLease())) return
      const masks = [{ structure: name, ras: await ctx.session.ensure(name) }]
      for (const other of extra) masks.push({ structure: other, ras: await ctx.session.ensure(other) })
      // The masks are read when buildOperation is called: the revision they were read at.
      const sent = rev()
      const plan = await buildOperation(ctx.viewer.geometry!, name, spec, masks)
      const answer: OperationAnswer = await api.operation(ctx.scanId, plan)
      if (ctx.store.get().active !== name || ctx.store.get().mode.kind !== 'edit') return
      if (rev() !== sent) {
        toast('The structure changed while the tool ran: apply it again', 'warn')
        return
      }
      this.showPreview(name, operationLabel(spec), answer)
      this.element.dataset.lastMs = (performance.now() - started).toFixed(1)
    } catch (err) {
      ctx.fail(err)
    } finally {
      if ((this.state as PanelState) === 'running') this.setState('idle')
    }
  }

  /**
   * Show the result without touching the working copy: the drawing layer shows a copy with the answer applied
   * (added voxels in the seed colour), so a save, a draft or an undo meanwhile never sees it.
   */
  private showPreview(name: string, label: string, answer: OperationAnswer): void {
    const { ctx } = this
    const bm = ctx.session.edited.get(name)!
    // One bitmap for every preview (only one is shown at a time): no 10 MB allocation per Apply.
    if (this.shown?.length !== bm.length) this.shown = new Uint8Array(bm.length)
    const shown = this.shown
    shown.set(bm)
    // Added voxels are written as 2 (the seed colour) in the same pass over the answer's box.
    if (!applyAnswer(ctx.viewer.geometry!, shown, answer, 2)) {
      toast(answer.summary || 'Nothing changes', 'info')
      return
    }
    this.preview = { structure: name, label, answer }
    this.setState('preview')
    this.display(name, shown)
  }

  /** Put a bitmap of the active structure in the drawing layer, in its colour (the editor's opacity rule). */
  private display(name: string, bitmap: Uint8Array): void {
    const { ctx } = this
    if (ctx.store.get().active !== name || ctx.store.get().mode.kind !== 'edit') return
    const view = ctx.store.get().views.get(name)
    const opacity = view?.visible ? Math.max(0.15, Math.min(1, view.opacity + 0.15)) : 0
    ctx.viewer.setDrawing(bitmap, ctx.structure(name).color, opacity)
  }

  /** Keep the preview: the answer is written into the working copy as ONE undoable edit. */
  accept(): void {
    const { ctx } = this
    const preview = this.preview
    if (this.state !== 'preview' || !preview) return
    this.preview = null
    this.setState('idle')
    const bm = ctx.session.begin(preview.structure)
    applyAnswer(ctx.viewer.geometry!, bm, preview.answer)
    const op = ctx.session.commit(preview.label)
    this.display(preview.structure, bm)
    if (op) toast(`${op.label}: ${op.idx.length.toLocaleString()} voxels changed`, 'ok', 2000)
  }

  /** Throw the preview away (also when the active structure, the mode or the working copy changes). */
  reject(): void {
    const preview = this.preview
    if (this.state !== 'preview' || !preview) return
    this.preview = null
    const bm = this.ctx.session.edited.get(preview.structure)
    if (bm) this.display(preview.structure, bm)
    this.setState('idle')
  }

  private setState(state: PanelState): void {
    this.state = state
    this.render()
  }

  private async statistics(): Promise<void> {
    const { ctx } = this
    const name = ctx.store.get().active
    if (!name || this.state === 'running') return
    // The active structure and the others this session holds (unsaved edits included), at most 8.
    const names = [name, ...[...ctx.session.edited.keys()].filter((n) => n !== name)].slice(0, 8)
    const prior = this.state
    this.state = 'running'
    try {
      const masks = []
      for (const n of names) masks.push({ structure: n, ras: await ctx.session.ensure(n) })
      const answer: OperationAnswer = await api.operation(ctx.scanId, await buildOperation(ctx.viewer.geometry!, name, { operation: 'statistics', params: {} }, masks))
      this.stats = answer.stats?.structures ?? []
    } catch (err) {
      ctx.fail(err)
    } finally {
      this.state = prior
      this.render()
    }
  }

  /** The 3D sphere brush: a ball of the radius in mm about the crosshair (anisotropic spacing), one undo step. */
  private async sphere(value: number): Promise<void> {
    const { ctx } = this
    const r = this.number('sphereMm')
    if (r === null || this.state !== 'idle' || ctx.editor.refuseEdit() || ctx.session.busy) return
    if (!(await ctx.review.ensureLease())) return
    const name = ctx.store.get().active!
    await ctx.session.ensure(name)
    const bm = ctx.session.begin(name)
    paintSphere(ctx.viewer.grid, bm, ctx.viewer.crosshairVox(), r, value)
    ctx.session.commit(value ? `sphere ${r} mm` : `erase sphere ${r} mm`)
    ctx.viewer.refreshDrawing()
  }
}
