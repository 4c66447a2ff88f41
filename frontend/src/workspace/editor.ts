/**
 * The editing model: only the active structure lives in NiiVue's drawing layer (RAS order); the others are a
 * read-only label overlay (the base version's combined map without the active structure, plus this session's
 * unsaved edits of the others), so overlapping structures are never flattened. Undo/redo, interpolation and
 * scripted edits; the overlay colours follow the store's visibility, opacity and "other structures" switch.
 */

import { api } from '../api/client'
import type { LabelColor } from '../core/colors'
import { hexToRgb } from '../core/colors'
import { parseNifti } from '../core/nifti'
import { paintOrder } from '../core/structures'
import { interpolateSlices } from '../core/tools'
import { toast } from '../dom'
import type { EditorPort, WorkspaceContext } from './context'
import { planeOf } from './state'

export class Editor implements EditorPort {
  private readonly ctx: WorkspaceContext
  private overlayCache = new Map<string, Uint8Array>()
  private colorTimer: number | null = null

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    // Colours and visibility changed: coalesce bursts (opacity sliders) into one GPU refresh.
    ctx.store.watch(
      (s) => [s.views, s.labelsOn] as const,
      () => this.applyColors(),
      { equals: (a, b) => a[0] === b[0] && a[1] === b[1] },
    )
  }

  /** Label overlay colours of every structure but the active one; the drawing layer colour of the active. */
  colors(): LabelColor[] {
    const { views, labelsOn } = this.ctx.store.get()
    return this.ctx.structures.map((s) => {
      const v = views.get(s.name)!
      return {
        value: s.label_value,
        rgb: hexToRgb(s.color),
        alpha: labelsOn && v.visible ? v.opacity : 0,
        name: s.name,
      }
    })
  }

  private applyColors(): void {
    if (this.colorTimer !== null) window.clearTimeout(this.colorTimer)
    this.colorTimer = window.setTimeout(() => {
      this.colorTimer = null
      this.ctx.viewer?.setLabelColors(this.colors())
      this.applyDrawOpacity()
    }, 60)
  }

  private drawOpacity(name: string): number {
    const v = this.ctx.store.get().views.get(name)!
    return v.visible ? Math.max(0.15, Math.min(1, v.opacity + 0.15)) : 0
  }

  private applyDrawOpacity(): void {
    const { active, mode } = this.ctx.store.get()
    if (active && mode.kind === 'edit') this.ctx.viewer.setDrawOpacity(this.drawOpacity(active))
  }

  /** Make a structure the one being edited: it goes into the drawing layer, the others into the overlay. */
  async setActive(name: string): Promise<void> {
    const { ctx } = this
    if (ctx.session.busy) return
    const s = ctx.structure(name)
    ctx.store.set({ active: name, activeLoaded: null })
    const bm = await ctx.session.ensure(name)
    if (ctx.store.get().active !== name) return
    if (ctx.store.get().mode.kind === 'edit') {
      ctx.viewer.setDrawing(bm, s.color, this.drawOpacity(name))
      await this.composeOverlay()
    }
    await ctx.attention.follow(name)
    if (ctx.store.get().active === name) {
      // The panels and the readout follow `activeLoaded`.
      ctx.store.set({ activeLoaded: name })
      ctx.session.release(name)
    }
  }

  async combinedMap(versionId: number, exclude: string | null): Promise<Uint8Array> {
    const key = `${versionId}:${exclude ?? ''}`
    const cached = this.overlayCache.get(key)
    if (cached) return cached.slice()
    const order = paintOrder(this.ctx.structures)
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

  clearOverlayCache(): void {
    this.overlayCache.clear()
  }

  /** The read-only overlay: the base version's other structures, with this session's unsaved edits of them. */
  async composeOverlay(): Promise<void> {
    const { ctx } = this
    const geometry = ctx.viewer.geometry!
    const base = ctx.session.baseVersionId
    const active = ctx.store.get().active
    const labels = base === null ? new Uint8Array(geometry.voxels) : await this.combinedMap(base, active)
    for (const name of ctx.session.dirty) {
      if (name === active) continue
      const s = ctx.structure(name)
      const edited = ctx.session.edited.get(name)!
      const orig = ctx.session.base.get(name)!
      for (let i = 0; i < edited.length; i++) {
        if (edited[i] === orig[i]) continue
        const n = geometry.nativeIndexOfRas(i)
        if (edited[i]) labels[n] = s.label_value
        else if (labels[n] === s.label_value) labels[n] = 0
      }
    }
    await ctx.viewer.setLabels(labels, this.colors())
    this.applyDrawOpacity()
  }

  refuseEdit(): boolean {
    const { ctx } = this
    if (ctx.store.get().mode.kind !== 'edit') {
      toast('This is a read-only view: press Esc to go back to editing', 'warn')
      return true
    }
    if (!ctx.store.get().active || !ctx.session) return true
    const lock = ctx.lockReason()
    if (lock) {
      toast(lock.text, 'warn')
      return true
    }
    return false
  }

  /** Programmatic edit (test hook and scripted corrections): set RAS voxels of a structure, one undo step. */
  async paintVoxels(name: string, voxels: [number, number, number][], value: number): Promise<number> {
    const { ctx } = this
    if (ctx.lockReason()) return 0
    if (!(await ctx.review.ensureLease())) return 0
    const bm = await ctx.session.ensure(name)
    ctx.session.begin(name)
    const g = ctx.viewer.geometry!
    for (const v of voxels) bm[g.rasIndex(v[0], v[1], v[2])] = value
    const op = ctx.session.commit('scripted edit')
    if (name === ctx.store.get().active) ctx.viewer.refreshDrawing()
    else await this.composeOverlay()
    return op ? op.idx.length : 0
  }

  interpolate(): void {
    const { ctx } = this
    if (this.refuseEdit()) return
    const name = ctx.store.get().active!
    const bm = ctx.session.begin(name)
    // Add only: the interpolated shape is computed on a copy and only its new voxels are written, so no voxel
    // painted in a gap slice (or there before) is ever removed. The Tools panel offers the server's
    // morphological interpolation as a preview.
    const trial = bm.slice()
    const written = interpolateSlices(ctx.viewer.grid, trial, ctx.session.base.get(name)!, planeOf(ctx.viewer.layout))
    for (let i = 0; i < bm.length; i++) if (trial[i] && !bm[i]) bm[i] = 1
    ctx.session.commit('interpolate')
    ctx.viewer.refreshDrawing()
    toast(written ? `Interpolated ${written} slice${written > 1 ? 's' : ''}` : 'Nothing to interpolate: paint two slices with a gap between them', written ? 'ok' : 'warn')
  }

  undo(): void {
    const { ctx } = this
    if (ctx.store.get().mode.kind !== 'edit' || ctx.session.busy) return
    const op = ctx.session.undo()
    if (!op) {
      toast('Nothing to undo', 'info', 1500)
      return
    }
    this.afterHistory(op.structure)
  }

  redo(): void {
    const { ctx } = this
    if (ctx.store.get().mode.kind !== 'edit' || ctx.session.busy) return
    const op = ctx.session.redo()
    if (!op) {
      toast('Nothing to redo', 'info', 1500)
      return
    }
    this.afterHistory(op.structure)
  }

  private afterHistory(structure: string): void {
    if (structure === this.ctx.store.get().active) this.ctx.viewer.refreshDrawing()
    else this.setActive(structure).catch((err: unknown) => this.ctx.fail(err))
  }

  /** The previous (-1) or next (+1) structure of the schema becomes active. */
  cycleStructure(dir: number): void {
    const active = this.ctx.store.get().active
    if (!active) return
    const names = this.ctx.structures.map((s) => s.name)
    const i = names.indexOf(active)
    this.setActive(names[(i + dir + names.length) % names.length]).catch((err: unknown) => this.ctx.fail(err))
  }
}
