/**
 * The bar over the image (layout, window preset and W/L, zoom and fit, the slice slider, radiological convention,
 * the crosshair, the other structures' overlay) and the readout under it (voxel, HU, mm, slice, the structure
 * under the crosshair).
 */

import { structureOfLabel } from '../core/outline'
import { pretty } from '../core/structures'
import { clear, h, toast } from '../dom'
import { type Layout, PRESETS } from '../viewer'
import type { WorkspaceContext } from './context'
import { planeOf } from './state'

/** What the bar's navigation controls act on (navigation.ts). */
export interface NavTargets {
  zoomBy(steps: number): void
  fit(): void
}

const LAYOUTS: [Layout, string, string, string][] = [
  ['axial', 'Axial', 'Ax', '1'],
  ['coronal', 'Coronal', 'Cor', '2'],
  ['sagittal', 'Sagittal', 'Sag', '3'],
  ['multiplanar', 'MPR', 'MPR', '4'],
  ['3d', '3D', '3D', '5'],
]

export class Viewbar {
  private readonly ctx: WorkspaceContext
  private readonly nav: NavTargets
  /** The view switches (radiological, crosshair, other structures), in the footer beside the readout. */
  private readonly toggles: HTMLElement

  constructor(ctx: WorkspaceContext, nav: NavTargets) {
    this.ctx = ctx
    this.nav = nav
    this.toggles = h('div', { class: 'view-toggles' })
    ctx.store.watch(
      (s) => s.zoom,
      (zoom) => {
        const label = ctx.el.viewbar.querySelector<HTMLElement>('[data-testid=zoom-level]')
        if (label) label.textContent = `${Math.round(zoom * 100)}%`
      },
    )
    ctx.store.watch(
      (s) => s.crosshair,
      (on) => {
        const box = this.toggles.querySelector<HTMLInputElement>('[data-testid=crosshair-toggle]')
        if (box) box.checked = on
      },
    )
    ctx.store.watch(
      (s) => s.layout,
      () => {
        this.render()
        this.updateWindowInputs()
      },
    )
    ctx.store.watch(
      (s) => s.labelsOn,
      (on) => {
        const box = this.toggles.querySelector<HTMLInputElement>('[data-testid=labels-toggle]')
        if (box) box.checked = on
      },
    )
    ctx.store.watch(
      (s) => s.activeLoaded,
      (name) => {
        if (name) this.updateReadout()
      },
    )
  }

  setLayout(layout: Layout): void {
    this.ctx.viewer.setLayout(layout)
    this.ctx.store.set({ layout })
  }

  setLabelsOn(on: boolean): void {
    this.ctx.store.set({ labelsOn: on })
  }

  setRadiological(on: boolean): void {
    this.ctx.viewer.setRadiological(on)
    const box = this.toggles.querySelector<HTMLInputElement>('[data-testid=radiological]')
    if (box) box.checked = on
    this.updateReadout()
  }

  /** The next (+1) or previous (-1) window preset. */
  cyclePreset(dir: number): void {
    const { width, level } = this.ctx.viewer.window
    const i = PRESETS.findIndex((p) => p.width === width && p.level === level)
    const next = PRESETS[(i + dir + PRESETS.length) % PRESETS.length]
    this.ctx.viewer.setWindow(next.width, next.level)
    toast(`Window: ${next.name} W${next.width} L${next.level}`, 'info', 1200)
  }

  render(): void {
    const { ctx } = this
    const vb = ctx.el.viewbar
    clear(vb)
    const current = ctx.store.get().layout
    vb.append(
      h(
        'div',
        { class: 'seg' },
        LAYOUTS.map(([id, label, short, key]) =>
          h(
            'button',
            { class: current === id ? 'on' : '', title: `${label} (${key})`, 'data-testid': `layout-${id}`, onclick: () => this.setLayout(id) },
            h('span', { class: 'long' }, label),
            h('span', { class: 'short' }, short),
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
            if (p) ctx.viewer.setWindow(p.width, p.level)
          },
        },
        PRESETS.map((p) => h('option', { value: p.key }, `${p.name}  W${p.width} L${p.level}`)),
        h('option', { value: 'custom' }, 'Custom'),
      ),
      h('label', { class: 'wl' }, 'W', h('input', { type: 'number', 'data-testid': 'window-width', value: '400', onchange: () => this.applyWindowInputs() })),
      h('label', { class: 'wl' }, 'L', h('input', { type: 'number', 'data-testid': 'window-level', value: '40', onchange: () => this.applyWindowInputs() })),
      h(
        'div',
        { class: 'seg zoom', title: 'Zoom about the pointer: Ctrl+wheel, pinch, + / −; pan: middle-drag or Space+drag' },
        h('button', { 'data-testid': 'zoom-out', title: 'Zoom out (−)', onclick: () => this.nav.zoomBy(-1) }, '−'),
        h('span', { class: 'zoom-level', 'data-testid': 'zoom-level' }, `${Math.round(ctx.store.get().zoom * 100)}%`),
        h('button', { 'data-testid': 'zoom-in', title: 'Zoom in (+)', onclick: () => this.nav.zoomBy(1) }, '+'),
        h('button', { 'data-testid': 'zoom-fit', title: 'Fit: whole slice, no pan (0)', onclick: () => this.nav.fit() }, 'Fit'),
      ),
      this.sliceSlider(),
    )
    this.renderToggles()
  }

  private renderToggles(): void {
    const { ctx } = this
    const el = this.toggles
    if (!el.isConnected) ctx.el.readout.after(el)
    clear(el)
    el.append(
      h(
        'label',
        { class: 'check', title: 'Radiological convention: patient right on screen left (R)' },
        h('input', {
          type: 'checkbox',
          checked: ctx.viewer?.ct ? ctx.viewer.radiological : true,
          'data-testid': 'radiological',
          onchange: (e: Event) => ctx.viewer.setRadiological((e.target as HTMLInputElement).checked),
        }),
        ' Radiological',
      ),
      h(
        'label',
        { class: 'check', title: 'Show the crosshair lines (X)' },
        h('input', {
          type: 'checkbox',
          checked: ctx.store.get().crosshair,
          'data-testid': 'crosshair-toggle',
          onchange: (e: Event) => ctx.store.set({ crosshair: (e.target as HTMLInputElement).checked }),
        }),
        ' Crosshair',
      ),
      h(
        'label',
        { class: 'check', title: 'Show the other structures read-only (L)' },
        h('input', {
          type: 'checkbox',
          checked: ctx.store.get().labelsOn,
          'data-testid': 'labels-toggle',
          onchange: (e: Event) => this.setLabelsOn((e.target as HTMLInputElement).checked),
        }),
        ' Other structures',
      ),
    )
  }

  /** The slice slider of the current 2D view (axial in MPR and 3D): follows the crosshair, moves it. */
  private sliceSlider(): HTMLElement {
    const { ctx } = this
    const plane = planeOf(ctx.store.get().layout)
    const viewer = ctx.viewer
    const count = viewer?.geometry ? viewer.sliceCount(plane) : 1
    const index = viewer?.geometry ? viewer.sliceIndex(plane) : 0
    const label = h('b', { class: 'slice-label', 'data-testid': 'slice-label' }, `${index + 1}/${count}`)
    const input = h('input', {
      type: 'range',
      min: '0',
      max: String(Math.max(0, count - 1)),
      step: '1',
      value: String(index),
      'data-testid': 'slice-slider',
      'aria-label': 'Slice',
      oninput: (e: Event) => ctx.viewer?.setSlice(plane, Number((e.target as HTMLInputElement).value)),
    })
    return h('label', { class: 'slice', title: 'Slice (↑ ↓, PgUp PgDn, wheel)' }, 'Slice ', input, label)
  }

  /** The slider and its label follow the crosshair (and the volume once it is loaded). */
  private updateSlider(): void {
    const viewer = this.ctx.viewer
    if (!viewer?.geometry) return
    const plane = planeOf(this.ctx.store.get().layout)
    const count = viewer.sliceCount(plane)
    const index = viewer.sliceIndex(plane)
    const vb = this.ctx.el.viewbar
    const input = vb.querySelector<HTMLInputElement>('[data-testid=slice-slider]')
    if (input) {
      input.max = String(Math.max(0, count - 1))
      if (Number(input.value) !== index) input.value = String(index)
    }
    const label = vb.querySelector('[data-testid=slice-label]')
    if (label) label.textContent = `${index + 1}/${count}`
  }

  private applyWindowInputs(): void {
    const vb = this.ctx.el.viewbar
    const w = Number(vb.querySelector<HTMLInputElement>('[data-testid=window-width]')!.value)
    const l = Number(vb.querySelector<HTMLInputElement>('[data-testid=window-level]')!.value)
    if (isFinite(w) && isFinite(l) && w > 0) this.ctx.viewer.setWindow(w, l)
  }

  /** The W/L inputs and the preset menu follow the viewer's window (also after a right-drag). */
  updateWindowInputs(): void {
    const { width, level } = this.ctx.viewer.window
    const vb = this.ctx.el.viewbar
    const wi = vb.querySelector<HTMLInputElement>('[data-testid=window-width]')
    const li = vb.querySelector<HTMLInputElement>('[data-testid=window-level]')
    if (wi && document.activeElement !== wi) wi.value = String(width)
    if (li && document.activeElement !== li) li.value = String(level)
    const sel = vb.querySelector<HTMLSelectElement>('[data-testid=window-preset]')
    if (sel) sel.value = PRESETS.find((p) => p.width === width && p.level === level)?.key ?? 'custom'
  }

  updateReadout(): void {
    const { ctx } = this
    const viewer = ctx.viewer
    if (!viewer?.ct) return
    this.updateSlider()
    const active = ctx.store.get().active
    const r = viewer.readout(active ? (ctx.session?.edited.get(active) ?? null) : null)
    if (!r) return
    const labelName = structureOfLabel(ctx.structures, r.label)?.name ?? null
    const dims = viewer.geometry!.rasDims
    const el = ctx.el.readout
    clear(el)
    el.dataset.ijk = r.ijk.join(',')
    el.dataset.ras = r.ras.join(',')
    el.dataset.hu = String(Math.round(r.hu))
    el.append(
      h('span', null, 'voxel ', h('b', { 'data-testid': 'readout-voxel' }, `${r.ijk[0]}, ${r.ijk[1]}, ${r.ijk[2]}`)),
      h('span', null, h('b', { 'data-testid': 'readout-hu' }, `${Math.round(r.hu)}`), ' HU'),
      h('span', null, h('b', { 'data-testid': 'readout-mm' }, r.mm.map((v) => (Math.abs(v) < 0.05 ? 0 : v).toFixed(1)).join(', ')), ' mm'),
      h('span', null, `slice ${r.ras[2] + 1}/${dims[2]}`),
      h('span', null, r.drawn && active ? h('i', { class: 'in-active' }, pretty(active)) : labelName ? pretty(labelName) : ''),
    )
    el.title = viewer.radiological ? 'Radiological convention: patient right on the left of the screen' : 'Neurological convention'
  }
}
