/**
 * The scissors tool (C). Click the outline's points on any 2D view; a double-click or Enter closes it (Backspace
 * drops the last point, Esc cancels). The polygon, extruded along the view's normal through the whole volume or a
 * slab of N slices around the slice it was drawn on, erases (or fills) the active structure inside or outside it.
 * The result is first a preview (the voxels that change in the seed colour) to accept (Enter, or the button) or
 * reject (Esc); an accepted cut is ONE undoable edit of the edit session, saved with the next save as a patch like a
 * stroke. Computed here on the working copy with the pure rules of core/scissors.ts (exact: a voxel is cut when
 * its centre is inside the polygon, the server `scissors` operation's rule), so no mask travels for a preview.
 */

import { type Point2, type ScissorsAction, type ScissorsExtent, type ScissorsRegion, type ScissorsSpec, MAX_SLAB, applyScissors, closePolygon, fromPlane, scissorsLabel, toPlane, viewAxes } from '../core/scissors'
import { pretty } from '../core/structures'
import { h, toast } from '../dom'
import type { Viewer } from '../viewer'
import type { WorkspaceContext } from './context'

type Phase = 'idle' | 'drawing' | 'preview'

const SVG = 'http://www.w3.org/2000/svg'

interface Preview {
  structure: string
  spec: ScissorsSpec
  changed: number
}

interface PanelParts {
  target: HTMLElement
  slab: HTMLInputElement
  slabUnit: HTMLElement
  text: HTMLElement
  bar: HTMLElement
}

/** The continuous RAS voxel position under a client point of a 2D view (voxel centres at whole numbers), or null. */
export function rasPointAt(viewer: Viewer, clientX: number, clientY: number): { ras: [number, number, number]; plane: number } | null {
  const g = viewer.geometry
  if (!viewer.ct || !g) return null
  const rect = viewer.canvas.getBoundingClientRect()
  const dpr = viewer.nv.uiData.dpr ?? window.devicePixelRatio ?? 1
  const x = (clientX - rect.left) * dpr
  const y = (clientY - rect.top) * dpr
  const tile = viewer.nv.tileIndex(x, y)
  if (tile < 0) return null
  const plane = viewer.nv.screenSlices[tile].axCorSag
  if (plane > 2) return null
  const frac = viewer.nv.screenXY2TextureFrac(x, y, tile, true)
  if (frac[0] < 0) return null
  const d = g.rasDims
  return { ras: [frac[0] * d[0] - 0.5, frac[1] * d[1] - 0.5, frac[2] * d[2] - 0.5], plane }
}

export class Scissors {
  /** The options, status and preview buttons (on the stage while the tool is chosen). */
  readonly element: HTMLElement
  private readonly layer: SVGSVGElement
  private readonly parts: PanelParts
  private readonly ctx: WorkspaceContext
  private phase: Phase = 'idle'
  private points: Point2[] = []
  private plane = 0
  private slice = 0
  private pointer: Point2 | null = null
  private preview: Preview | null = null
  private action: ScissorsAction = 'erase'
  private region: ScissorsRegion = 'inside'
  private extentKind: ScissorsExtent['kind'] = 'volume'
  private slabSlices = 5
  private hooked: Viewer | null = null
  private drawPending = false

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    this.element = h('div', { class: 'scissors-panel', 'data-testid': 'scissors-panel', hidden: true, dataset: { state: 'idle' } })
    this.layer = document.createElementNS(SVG, 'svg')
    this.layer.classList.add('scissors-layer')
    this.layer.dataset.testid = 'scissors-layer'
    this.parts = this.buildPanel()
    ctx.el.stage.append(this.layer, this.element)
    ctx.store.watch(
      (s) => s.tool,
      () => this.cancel(),
    )
    ctx.store.watch(
      (s) => [s.active, s.mode.kind, s.layout, s.activeLoaded] as const,
      () => this.cancel(),
      { equals: (a, b) => a.every((v, i) => v === b[i]) },
    )
    // The working copy changed under a preview (undo, a save, a discard, a draft): the preview is stale.
    ctx.store.watch(
      (s) => s.sessionRev,
      () => {
        if (this.phase === 'preview') this.cancel()
      },
    )
    // Before the workspace's key handler (document, bubbling): Enter, Esc and Backspace belong to the outline.
    const onKey = (e: KeyboardEvent): void => {
      if (!ctx.el.stage.isConnected) {
        window.removeEventListener('keydown', onKey, true)
        return
      }
      if (this.key(e)) {
        e.preventDefault()
        e.stopPropagation()
      }
    }
    window.addEventListener('keydown', onKey, true)
    // NiiVue resets the window on a double-click: the double-click that closes an outline is ours.
    ctx.el.stage.addEventListener(
      'dblclick',
      (e) => {
        if (this.shown) {
          e.preventDefault()
          e.stopPropagation()
        }
      },
      true,
    )
    ctx.el.stage.addEventListener('mousemove', (e) => this.hover(e))
    this.render()
  }

  private get shown(): boolean {
    return this.ctx.store.get().tool === 'scissors'
  }

  private get extent(): ScissorsExtent {
    return this.extentKind === 'volume' ? { kind: 'volume' } : { kind: 'slab', slices: this.slabSlices }
  }

  /** A left click on a 2D view (ToolInput has checked the workspace may be edited): a point, or the closing one. */
  pointerDown(e: MouseEvent): void {
    const at = rasPointAt(this.ctx.viewer, e.clientX, e.clientY)
    if (!at) return
    // The click's default (focus) is prevented: leave the panel's inputs, so Enter and Esc reach the outline.
    const focused = document.activeElement
    if (focused instanceof HTMLElement && this.element.contains(focused)) focused.blur()
    if (this.phase === 'preview') {
      toast('Accept or reject the scissors preview first (Enter / Esc)', 'info', 2000)
      return
    }
    this.hookDraw()
    if (this.phase === 'idle') {
      const [, , n] = viewAxes(at.plane)
      this.plane = at.plane
      this.slice = Math.max(0, Math.min(this.ctx.viewer.geometry!.rasDims[n] - 1, Math.round(at.ras[n])))
      this.points = []
      this.phase = 'drawing'
    } else if (at.plane !== this.plane) {
      toast('Finish the outline on the view it was started on (or Esc)', 'warn', 2000)
      return
    }
    if (e.detail >= 2) {
      this.close()
      return
    }
    this.points.push(toPlane(this.plane, at.ras))
    this.pointer = null
    this.render()
  }

  private hover(e: MouseEvent): void {
    if (this.phase !== 'drawing') return
    const at = rasPointAt(this.ctx.viewer, e.clientX, e.clientY)
    this.pointer = at && at.plane === this.plane ? toPlane(this.plane, at.ras) : null
    this.schedule()
  }

  /** The keys of the tool; true when the key was used. */
  private key(e: KeyboardEvent): boolean {
    if (!this.shown || this.phase === 'idle' || e.ctrlKey || e.metaKey || e.altKey) return false
    const t = e.target as HTMLElement | null
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT')) return false
    if (document.querySelector('.backdrop')) return false
    if (e.key === 'Escape') this.cancel()
    else if (e.key === 'Enter') {
      if (this.phase === 'drawing') this.close()
      else this.accept().catch((err: unknown) => this.ctx.fail(err))
    } else if (e.key === 'Backspace' && this.phase === 'drawing') {
      this.points.pop()
      if (!this.points.length) this.phase = 'idle'
      this.render()
    } else return false
    return true
  }

  /** Close the outline and show what the cut does. */
  close(): void {
    if (this.phase !== 'drawing') return
    const polygon = closePolygon(this.points)
    if (!polygon) {
      toast('The outline needs at least three points around an area', 'warn')
      return
    }
    this.points = polygon
    this.pointer = null
    this.showPreview()
  }

  /** (Re)compute the preview of the closed outline with the current options. */
  private showPreview(): void {
    const { ctx } = this
    const name = ctx.store.get().active
    const bm = name ? ctx.session.edited.get(name) : undefined
    if (!name || !bm) return this.cancel()
    const started = performance.now()
    const spec: ScissorsSpec = { plane: this.plane, polygon: this.points, slice: this.slice, extent: this.extent, region: this.region, action: this.action }
    const shown = bm.slice()
    const changed = applyScissors(ctx.viewer.geometry!.rasDims, shown, spec, 2)
    this.preview = { structure: name, spec, changed }
    this.phase = 'preview'
    this.display(name, shown)
    this.element.dataset.lastMs = (performance.now() - started).toFixed(1)
    this.render()
  }

  /** Keep the preview: the cut is written into the working copy as ONE undoable edit. */
  async accept(): Promise<void> {
    const { ctx } = this
    const preview = this.preview
    if (this.phase !== 'preview' || !preview || ctx.editor.refuseEdit() || ctx.session.busy) return
    if (!(await ctx.review.ensureLease())) return
    if (this.preview !== preview || ctx.store.get().active !== preview.structure) return
    this.preview = null
    this.phase = 'idle'
    this.points = []
    const bm = ctx.session.begin(preview.structure)
    applyScissors(ctx.viewer.geometry!.rasDims, bm, preview.spec, preview.spec.action === 'erase' ? 0 : 1)
    const op = ctx.session.commit(scissorsLabel(preview.spec))
    this.display(preview.structure, bm)
    this.render()
    if (op) toast(`${op.label}: ${op.idx.length.toLocaleString()} voxels changed`, 'ok', 2000)
  }

  /** Drop the outline and any preview (the working copy was never touched). */
  cancel(): void {
    const preview = this.preview
    this.preview = null
    this.points = []
    this.pointer = null
    this.phase = 'idle'
    if (preview) {
      const bm = this.ctx.session?.edited.get(preview.structure)
      if (bm) this.display(preview.structure, bm)
    }
    this.render()
  }

  /**
   * Show a bitmap of the active structure in the drawing layer: only the bitmap is swapped, so the colours (1: the
   * structure's, 2: the seed colour marking the voxels a preview changes) and opacity stay the editor's.
   */
  private display(name: string, bitmap: Uint8Array): void {
    const { ctx } = this
    if (ctx.store.get().active !== name || ctx.store.get().mode.kind !== 'edit') return
    ctx.viewer.nv.drawBitmap = bitmap
    ctx.viewer.refreshDrawing()
  }

  private option(): void {
    if (this.phase === 'preview') this.showPreview()
    else this.render()
  }

  /** The panel's controls, built once: a redraw only updates them (an input is never replaced while in use). */
  private buildPanel(): PanelParts {
    const select = (testid: string, value: string, options: [string, string][], set: (v: string) => void): HTMLSelectElement =>
      h(
        'select',
        { 'data-testid': testid, onchange: (e: Event) => set((e.target as HTMLSelectElement).value) },
        options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)),
      )
    const parts: PanelParts = {
      target: h('span'),
      slab: h('input', {
        type: 'number',
        class: 'tools-num',
        min: '1',
        max: String(MAX_SLAB),
        step: '1',
        value: String(this.slabSlices),
        title: 'slices around the current one',
        'data-testid': 'scissors-slab',
        onchange: (e: Event) => {
          const n = Math.round(Number((e.target as HTMLInputElement).value))
          if (Number.isFinite(n) && n >= 1) this.slabSlices = Math.min(MAX_SLAB, n)
          this.option()
        },
      }),
      slabUnit: h('span', { class: 'muted' }, 'slices'),
      text: h('div', { class: 'scissors-text', 'data-testid': 'scissors-status' }),
      bar: h(
        'div',
        { class: 'scissors-bar' },
        h('button', { class: 'btn primary', 'data-testid': 'scissors-accept', onclick: () => void this.accept().catch((err: unknown) => this.ctx.fail(err)) }, 'Accept'),
        h('button', { class: 'btn', 'data-testid': 'scissors-reject', onclick: () => this.cancel() }, 'Reject'),
      ),
    }
    this.element.append(
      h('div', { class: 'scissors-head' }, h('b', null, 'Scissors'), parts.target),
      h(
        'div',
        { class: 'scissors-options' },
        select(
          'scissors-action',
          this.action,
          [
            ['erase', 'Erase'],
            ['fill', 'Fill'],
          ],
          (v) => {
            this.action = v as ScissorsAction
            this.option()
          },
        ),
        select(
          'scissors-region',
          this.region,
          [
            ['inside', 'inside'],
            ['outside', 'outside'],
          ],
          (v) => {
            this.region = v as ScissorsRegion
            this.option()
          },
        ),
        select(
          'scissors-extent',
          this.extentKind,
          [
            ['volume', 'whole volume'],
            ['slab', 'slab of'],
          ],
          (v) => {
            this.extentKind = v as ScissorsExtent['kind']
            this.option()
          },
        ),
        parts.slab,
        parts.slabUnit,
      ),
      parts.text,
      parts.bar,
    )
    return parts
  }

  private render(): void {
    const root = this.element
    const parts = this.parts
    root.hidden = !this.shown
    root.dataset.state = this.phase
    root.dataset.points = String(this.points.length)
    if (this.preview) root.dataset.changed = String(this.preview.changed)
    else delete root.dataset.changed
    this.schedule()
    const name = this.ctx.store.get().active
    parts.target.textContent = name ? ` · ${pretty(name)}` : ''
    parts.slab.disabled = this.extentKind !== 'slab'
    parts.slabUnit.hidden = this.extentKind !== 'slab'
    parts.bar.hidden = this.phase !== 'preview'
    parts.text.textContent =
      this.phase === 'idle'
        ? 'Click the outline’s points on a view; double-click or Enter closes it, Esc cancels.'
        : this.phase === 'drawing'
          ? `${this.points.length} point${this.points.length === 1 ? '' : 's'} · double-click or Enter closes, Backspace drops the last, Esc cancels`
          : `Preview: ${this.action === 'erase' ? '−' : '+'}${(this.preview?.changed ?? 0).toLocaleString()} voxels (highlighted) · Enter accepts, Esc rejects`
  }

  /** Redraw the outline after every viewer redraw (zoom, pan, slice, layout). */
  private hookDraw(): void {
    const viewer = this.ctx.viewer
    if (this.hooked === viewer) return
    this.hooked = viewer
    const prior = viewer.onDraw
    viewer.onDraw = () => {
      prior?.()
      this.schedule()
    }
  }

  private schedule(): void {
    if (this.drawPending) return
    this.drawPending = true
    requestAnimationFrame(() => {
      this.drawPending = false
      this.drawOutline()
    })
  }

  /** The outline over the image: the polygon (closed once the preview shows), its points, the rubber band. */
  private drawOutline(): void {
    const layer = this.layer
    while (layer.firstChild) layer.removeChild(layer.firstChild)
    const viewer = this.ctx.viewer
    if (this.phase === 'idle' || !viewer?.geometry || !this.points.length) return
    const rect = layer.getBoundingClientRect()
    const client = (p: Point2): { x: number; y: number } | null => {
      const at = viewer.clientPointOf(fromPlane(this.plane, p, this.slice), this.plane)
      return at ? { x: at.x - rect.left, y: at.y - rect.top } : null
    }
    const pts = this.points.map(client).filter((p): p is { x: number; y: number } => !!p)
    const line = document.createElementNS(SVG, this.phase === 'preview' ? 'polygon' : 'polyline')
    const band = this.pointer && this.phase === 'drawing' ? client(this.pointer) : null
    line.setAttribute('points', [...pts, ...(band ? [band] : [])].map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' '))
    line.classList.add('scissors-outline')
    layer.append(line)
    for (const p of pts) {
      const dot = document.createElementNS(SVG, 'circle')
      dot.setAttribute('cx', p.x.toFixed(1))
      dot.setAttribute('cy', p.y.toFixed(1))
      dot.setAttribute('r', '3')
      dot.classList.add('scissors-point')
      layer.append(dot)
    }
  }
}
