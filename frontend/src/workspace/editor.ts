/**
 * The editing model: only the active structure lives in NiiVue's drawing layer (RAS order); the others are a
 * read-only label overlay (the base version's combined map without the active structure, plus this session's
 * unsaved edits of the others), so overlapping structures are never flattened. Undo/redo, interpolation and
 * scripted edits; the display (masks.ts: palette, fill and outline opacity, outlines, the active structure's rim)
 * follows the store's visibility, opacity, outline and "other structures" switches; the structure rules
 * (structureRules.ts: lock, hierarchy, overwrite policy) apply to every edit.
 */

import { api } from '../api/client'
import type { LabelColor } from '../core/colors'
import type { Op } from '../core/editSession'
import type { Disagreement, OverwritePolicy } from '../core/hierarchy'
import { parseNifti } from '../core/nifti'
import { paintOrder, pretty } from '../core/structures'
import { interpolateSlices } from '../core/tools'
import { toast } from '../dom'
import type { EditorPort, WorkspaceContext } from './context'
import { StructureDisplay } from './masks'
import { planeOf } from './state'
import { StructureRules } from './structureRules'

export class Editor implements EditorPort {
  private readonly ctx: WorkspaceContext
  private overlayCache = new Map<string, Uint8Array>()
  private colorTimer: number | null = null
  private composeTimer: number | null = null
  /** The outlined set and plane the overlay was last built with. */
  private composedKey = ''
  private paletteApplied = false
  /** Palette, fill and outline opacity, outlines (masks.ts). */
  readonly display: StructureDisplay
  /** Lock, hierarchy and overwrite policy of every edit (structureRules.ts). */
  readonly rules: StructureRules

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    this.display = new StructureDisplay(ctx)
    this.rules = new StructureRules(ctx, (version, order) => this.mapInOrder(version, order), (names) => this.afterLinked(names))
    // Colours, visibility, outlines: coalesce bursts (opacity sliders) into one GPU refresh; the overlay is
    // rebuilt only when the outlined set or the view's plane changes.
    ctx.store.watch(
      (s) => [s.views, s.labelsOn, s.outlineAll, s.parentOutline, s.layout] as const,
      () => {
        // The schema's structures are in place once their views are: colour them first (one palette for all).
        if (!this.paletteApplied && ctx.schema) {
          this.paletteApplied = true
          this.display.applyPalette()
          this.rules.loadPolicy()
        }
        this.applyColors()
      },
      { equals: (a, b) => a.every((x, i) => Object.is(x, b[i])) },
    )
    // Parts gaining or losing voxels change which parents are outlined.
    ctx.store.watch(
      (s) => s.dirty.join(),
      () => this.applyColors(),
    )
  }

  /** Label overlay colours of every structure (fills and outlines, masks.ts). */
  colors(): LabelColor[] {
    return this.display.colors()
  }

  private applyColors(): void {
    if (this.colorTimer !== null) window.clearTimeout(this.colorTimer)
    this.colorTimer = window.setTimeout(() => {
      this.colorTimer = null
      if (!this.ctx.viewer) return
      if (this.ctx.store.get().mode.kind === 'edit' && this.display.outlineKey() !== this.composedKey) this.scheduleCompose()
      else this.ctx.viewer.setLabelColors(this.colors())
      this.applyDrawOpacity()
    }, 60)
  }

  /** Rebuild the overlay soon (after linked changes or an outline switch), once for a burst. */
  private scheduleCompose(): void {
    if (this.composeTimer !== null) window.clearTimeout(this.composeTimer)
    this.composeTimer = window.setTimeout(() => {
      this.composeTimer = null
      if (this.ctx.store.get().mode.kind === 'edit' && this.ctx.viewer?.geometry) this.composeOverlay().catch((err: unknown) => this.ctx.fail(err))
    }, 120)
  }

  /** The active structure's fill opacity and rim (drawn as an outline) in the drawing layer. */
  private applyDrawOpacity(): void {
    const { active, mode } = this.ctx.store.get()
    if (!active || mode.kind !== 'edit' || !this.ctx.viewer) return
    const { opacity, rim } = this.display.drawing(active)
    this.ctx.viewer.nv.drawRimOpacity = rim ? 1 : -1
    this.ctx.viewer.setDrawOpacity(opacity)
  }

  /** Linked changes (or a take-back) touched these structures: redraw the drawing layer and the overlay. */
  private afterLinked(names: string[]): void {
    const active = this.ctx.store.get().active
    if (active && names.includes(active)) this.ctx.viewer.refreshDrawing()
    if (names.some((n) => n !== active)) this.scheduleCompose()
  }

  isLocked(name: string): boolean {
    return this.rules.isLocked(name)
  }

  /** Resolves once the last edit's linked changes (parents, parts, overwritten structures) are in place. */
  settled(): Promise<void> {
    return this.rules.settled()
  }

  hierarchyIssues(): Promise<Disagreement[]> {
    return this.rules.issues()
  }

  fixIssue(issue: Disagreement, how: 'parent' | 'part'): Promise<number> {
    return this.rules.fix(issue, how)
  }

  setOverwrite(policy: OverwritePolicy): void {
    this.rules.setPolicy(policy)
  }

  /** Make a structure the one being edited: it goes into the drawing layer, the others into the overlay. */
  async setActive(name: string): Promise<void> {
    const { ctx } = this
    if (ctx.session.busy) return
    const s = ctx.structure(name)
    ctx.store.set({ active: name, activeLoaded: null })
    const bm = await ctx.session.ensure(name)
    // Its parents too: painting it adds to them in the same edit, at once.
    const parents = this.rules.hierarchy.ancestors(name)
    await Promise.all(parents.map((p) => ctx.session.ensure(p)))
    if (ctx.store.get().active !== name) return
    if (ctx.store.get().mode.kind === 'edit') {
      const { opacity, rim } = this.display.drawing(name)
      ctx.viewer.nv.drawRimOpacity = rim ? 1 : -1
      ctx.viewer.setDrawing(bm, s.color, opacity)
      await this.composeOverlay()
    }
    await ctx.attention.follow(name)
    if (ctx.store.get().active === name) {
      // The panels and the readout follow `activeLoaded`.
      ctx.store.set({ activeLoaded: name })
      ctx.session.release([name, ...parents])
    }
  }

  async combinedMap(versionId: number, exclude: string | null): Promise<Uint8Array> {
    const order = paintOrder(this.ctx.structures)
      .filter((s) => s.name !== exclude)
      .map((s) => s.name)
    return (await this.mapInOrder(versionId, order)).slice()
  }

  /** A version's combined map (stored order) painted in this order, cached: read it, never write to it. */
  private async mapInOrder(versionId: number, names: string[]): Promise<Uint8Array> {
    const order = names.join(',')
    const key = `${versionId}:${order}`
    const cached = this.overlayCache.get(key)
    if (cached) return cached
    const bytes = await api.bytes(`/api/versions/${versionId}/combined?order=${encodeURIComponent(order)}`)
    const vol = parseNifti(bytes)
    const out = new Uint8Array(vol.data.length)
    for (let i = 0; i < out.length; i++) out[i] = Math.min(255, vol.data[i])
    this.overlayCache.set(key, out)
    if (this.overlayCache.size > 8) this.overlayCache.delete(this.overlayCache.keys().next().value!)
    return out
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
    this.composedKey = this.display.outlineKey()
    this.display.applyOutlines(labels, active)
    await ctx.viewer.setLabels(labels, this.colors())
    this.applyDrawOpacity()
  }

  refuseEdit(): boolean {
    const { ctx } = this
    if (ctx.store.get().mode.kind !== 'edit') {
      toast('This is a read-only view: press Esc to go back to editing', 'warn')
      return true
    }
    const active = ctx.store.get().active
    if (!active || !ctx.session) return true
    const lock = ctx.lockReason()
    if (lock) {
      toast(lock.text, 'warn')
      return true
    }
    if (this.rules.isLocked(active)) {
      toast(`${pretty(active)} is locked: unlock it in the structures tab to edit it`, 'warn')
      return true
    }
    if (this.rules.busy) {
      toast('Still updating the parent and part structures of the last edit…', 'info', 1500)
      return true
    }
    return false
  }

  /** Programmatic edit (test hook and scripted corrections): set RAS voxels of a structure, one undo step. */
  async paintVoxels(name: string, voxels: [number, number, number][], value: number): Promise<number> {
    const { ctx } = this
    if (ctx.lockReason() || this.rules.isLocked(name)) return 0
    if (!(await ctx.review.ensureLease())) return 0
    await this.rules.settled()
    const bm = await ctx.session.ensure(name)
    ctx.session.begin(name)
    const g = ctx.viewer.geometry!
    for (const v of voxels) bm[g.rasIndex(v[0], v[1], v[2])] = value
    const op = ctx.session.commit('scripted edit')
    await this.rules.settled()
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
    if (ctx.store.get().mode.kind !== 'edit' || ctx.session.busy || this.rules.busy) return
    const op = ctx.session.undo()
    if (!op) {
      toast('Nothing to undo', 'info', 1500)
      return
    }
    this.afterHistory(op)
  }

  redo(): void {
    const { ctx } = this
    if (ctx.store.get().mode.kind !== 'edit' || ctx.session.busy || this.rules.busy) return
    const op = ctx.session.redo()
    if (!op) {
      toast('Nothing to redo', 'info', 1500)
      return
    }
    this.afterHistory(op)
  }

  private afterHistory(op: Op): void {
    const active = this.ctx.store.get().active
    if (op.structure === active) this.ctx.viewer.refreshDrawing()
    else this.setActive(op.structure).catch((err: unknown) => this.ctx.fail(err))
    const linked = (op.linked ?? []).map((c) => c.structure)
    if (linked.length && op.structure === active) this.afterLinked(linked)
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
