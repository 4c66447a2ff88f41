/**
 * The attention tab: where the models disagree or are unsure, as a graded heat overlay (local density of attention
 * voxels, 32 grades on a hot ramp, opacity slider) per structure, "next region" (largest first), and the scan's
 * priorities per structure.
 */

import { ApiError, api } from '../api/client'
import type { PriorityPage } from '../api/types'
import { components } from '../core/tools'
import { countNonzero, type Vec3 } from '../core/geometry'
import { gradeAttention, heatColors } from '../core/heat'
import { parseNifti } from '../core/nifti'
import { pretty } from '../core/structures'
import { clear, h, toast } from '../dom'
import { sameItems } from '../store'
import type { AttentionPort, WorkspaceContext } from './context'

export class Attention implements AttentionPort {
  private readonly ctx: WorkspaceContext
  private on = false
  private structure: string | null = null
  private regions: Vec3[] = []
  private index = -1
  /** The graded attention of the shown structure (stored order, 0..HEAT_GRADES). */
  private heat: Uint8Array | null = null

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    ctx.store.watch(
      (s) => [s.attention, s.priorities, s.activeLoaded] as const,
      () => this.render(),
      { equals: sameItems },
    )
  }

  /** The state the test hook reports. */
  get snapshot(): { on: boolean; structure: string | null; opacity: number; grades: number } {
    return { on: this.on, structure: this.structure, opacity: this.ctx.store.get().attentionOpacity, grades: this.heat ? new Set(this.heat).size - 1 : 0 }
  }

  /** The panel follows the store: publish what it shows. */
  private publish(): void {
    this.ctx.store.set({ attention: { on: this.on, structure: this.structure, regions: this.regions.length, index: this.index } })
  }

  render(): void {
    const { ctx } = this
    const body = ctx.el.tabAttention
    if (!body || !ctx.schema) return
    clear(body)
    const { active, attentionOpacity, priorities } = ctx.store.get()
    const fail = (err: unknown): void => ctx.fail(err)
    const name = this.structure ?? active
    const select = h(
      'select',
      {
        'data-testid': 'attention-structure',
        onchange: (e: Event) => this.show(true, (e.target as HTMLSelectElement).value).catch(fail),
      },
      ctx.structures.map((s) => h('option', { value: s.name, selected: s.name === name }, pretty(s.name))),
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
            checked: this.on,
            'data-testid': 'attention-toggle',
            onchange: (e: Event) => this.show((e.target as HTMLInputElement).checked, select.value).catch(fail),
          }),
          ' Heat overlay ',
          h('kbd', null, 'A'),
        ),
        h('button', { class: 'btn', 'data-testid': 'attention-next', onclick: () => this.next().catch(fail) }, 'Next region ', h('kbd', null, 'N')),
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
          value: String(attentionOpacity),
          'data-testid': 'attention-opacity',
          oninput: (e: Event) => this.setOpacity(Number((e.target as HTMLInputElement).value)),
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
        this.on ? `${this.regions.length} region${this.regions.length === 1 ? '' : 's'}${this.index >= 0 ? ` · at ${this.index + 1}` : ''}` : '',
      ),
    )
    if (priorities.length) {
      body.append(
        h('div', { class: 'tb-title' }, 'Priority in this scan'),
        h(
          'table',
          { class: 'prio' },
          priorities
            .slice()
            .sort((a, b) => b.priority - a.priority)
            .map((p) =>
              h(
                'tr',
                { onclick: () => this.show(true, p.structure).catch(fail) },
                h('td', null, pretty(p.structure)),
                h('td', null, p.priority.toFixed(3)),
                h('td', null, `${p.attention_voxels.toLocaleString()} vx`),
              ),
            ),
        ),
      )
    }
  }

  async show(on: boolean, structure: string | null = this.ctx.store.get().active): Promise<void> {
    const { viewer, scan, scanId } = this.ctx
    this.on = on
    this.structure = structure
    this.regions = []
    this.index = -1
    this.heat = null
    if (!on || !structure) {
      await viewer.setExtra(null)
      this.publish()
      return
    }
    let bytes: ArrayBuffer
    try {
      bytes = await api.bytes(`/api/scans/${scanId}/attention/${encodeURIComponent(structure)}`)
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        this.on = false
        await viewer.setExtra(null)
        this.publish()
        toast(`No attention map for ${pretty(structure)} yet (attention jobs need two model predictions)`, 'warn')
        return
      }
      throw err
    }
    const vol = parseNifti(bytes)
    const native = new Uint8Array(vol.data.length)
    for (let i = 0; i < native.length; i++) native[i] = vol.data[i] > 0 ? 1 : 0
    const g = viewer.geometry!
    const ras = new Uint8Array(g.voxels)
    g.toRAS(native, ras)
    this.regions = components(g.rasDims, ras).map((c) => c.center)
    this.heat = gradeAttention(native, viewer.nativeDims, scan.spacing)
    await viewer.setExtra(this.heat, heatColors())
    viewer.setExtraOpacity(this.ctx.store.get().attentionOpacity)
    this.publish()
    toast(`Attention map of ${pretty(structure)}: ${this.regions.length} region(s), ${countNonzero(native).toLocaleString()} voxels`, 'info', 2500)
  }

  toggle(): Promise<void> {
    return this.show(!this.on, this.structure ?? this.ctx.store.get().active)
  }

  async follow(structure: string): Promise<void> {
    if (this.on && this.structure !== structure) await this.show(true, structure)
  }

  hidden(): void {
    this.on = false
    this.publish()
  }

  /** Heat overlay opacity (one LUT refresh, no reload). */
  setOpacity(opacity: number): void {
    const value = Math.max(0, Math.min(1, opacity))
    this.ctx.store.set({ attentionOpacity: value })
    if (this.on && this.heat) this.ctx.viewer.setExtraOpacity(value)
  }

  async next(): Promise<void> {
    if (!this.on) await this.show(true, this.structure ?? this.ctx.store.get().active)
    if (!this.regions.length) return
    this.index = (this.index + 1) % this.regions.length
    this.ctx.viewer.moveTo(this.regions[this.index])
    this.publish()
  }

  /** The scan's attention priorities per structure (the panel's table). */
  async loadPriorities(): Promise<void> {
    const page = await api.get<PriorityPage>(`/api/projects/${this.ctx.scan.project_id}/priorities?page_size=500`)
    this.ctx.store.set({ priorities: page.items.filter((p) => p.scan_id === this.ctx.scanId) })
  }
}
