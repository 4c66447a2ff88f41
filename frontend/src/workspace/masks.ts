/**
 * Masks from the server in NiiVue's RAS order (the edit session's loader and the difference overlay's input), and
 * how the structures are drawn: display colours, fill and outline opacity, outlines in the overlay, the rim of
 * the active structure.
 */

import { ApiError, api } from '../api/client'
import { type LabelColor, hexToRgb } from '../core/colors'
import type { Geometry } from '../core/geometry'
import { Hierarchy } from '../core/hierarchy'
import { parseNifti } from '../core/nifti'
import { OUTLINE_OFFSET, drawOutlines, lutPadding } from '../core/outline'
import { displayColors } from '../core/palette'
import type { WorkspaceContext } from './context'
import type { StructureView } from './state'

/** One structure's mask of a version in RAS order (all zeros when recorded as missing). */
export async function fetchMaskRAS(geometry: Geometry, versionId: number, structure: string): Promise<Uint8Array> {
  const out = new Uint8Array(geometry.voxels)
  let bytes: ArrayBuffer
  try {
    bytes = await api.bytes(`/api/versions/${versionId}/masks/${encodeURIComponent(structure)}`)
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return out
    throw err
  }
  const vol = parseNifti(bytes)
  if (vol.dims[0] * vol.dims[1] * vol.dims[2] !== geometry.voxels) throw new Error(`mask ${structure} has the wrong size`)
  const native = new Uint8Array(geometry.voxels)
  for (let i = 0; i < native.length; i++) native[i] = vol.data[i] > 0 ? 1 : 0
  geometry.toRAS(native, out)
  return out
}

// ---------------------------------------------------------------- display: colours, opacity, outlines

/** How the structures are drawn in the editor: the palette, the fill and outline colours, the outlined set. */
export class StructureDisplay {
  private readonly ctx: WorkspaceContext
  private hierarchyCache: Hierarchy | null = null

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
  }

  private get hierarchy(): Hierarchy {
    this.hierarchyCache ??= new Hierarchy(this.ctx.structures)
    return this.hierarchyCache
  }

  /**
   * Give every structure its display colour (the schema's own when distinct enough, else the default palette):
   * written into the schema's structures once, so every part of the workspace draws the same colours.
   */
  applyPalette(): 'schema' | 'default' {
    const { colors, source } = displayColors(this.ctx.structures)
    for (const s of this.ctx.structures) s.color = colors.get(s.name) ?? s.color
    this.hierarchyCache = null
    return source
  }

  private view(name: string): StructureView | undefined {
    return this.ctx.store.get().views.get(name)
  }

  /** Shown: the structure's eye, and for the others than the active one the "other structures" switch. */
  visible(name: string): boolean {
    const { labelsOn, active } = this.ctx.store.get()
    return (labelsOn || name === active) && !!this.view(name)?.visible
  }

  /** Holds voxels: in the base version, or in this session's unsaved edit. */
  private present(name: string): boolean {
    if (this.ctx.session?.isDirty(name)) return true
    const row = this.ctx.store.get().baseVersion?.structures.find((s) => s.name === name)
    return !!row && row.status === 'present' && row.voxel_count > 0
  }

  /**
   * The structures drawn as outlines while editing, parents first: outline mode (per structure or all), and a
   * parent whose parts are shown and hold voxels ("parents as outline"). Hidden structures are not drawn at all.
   */
  outlined(): string[] {
    const { outlineAll, parentOutline, views, mode } = this.ctx.store.get()
    if (mode.kind !== 'edit') return []
    const h = this.hierarchy
    const out = this.ctx.structures.filter((s) => {
      if (!this.visible(s.name)) return false
      if (outlineAll || views.get(s.name)?.outline) return true
      return parentOutline && h.descendants(s.name).some((d) => this.visible(d) && this.present(d))
    })
    const depth = (name: string): number => h.ancestors(name).length
    return out.map((s) => s.name).sort((a, b) => depth(a) - depth(b))
  }

  /** A key that changes when the outlined set or the view's plane does (the overlay must be rebuilt then). */
  outlineKey(): string {
    const names = this.outlined()
    return names.length ? `${names.join(',')}|${this.ctx.store.get().layout}` : ''
  }

  /**
   * Label colours of every structure: the fill (transparent for an outlined structure) and, at `value + 128`,
   * the outline (opaque enough to read over other fills).
   */
  colors(): LabelColor[] {
    const { views, labelsOn } = this.ctx.store.get()
    const outlined = new Set(this.outlined())
    const out: LabelColor[] = []
    for (const s of this.ctx.structures) {
      const v = views.get(s.name)!
      const shown = labelsOn && v.visible
      const rgb = hexToRgb(s.color)
      out.push({ value: s.label_value, rgb, alpha: shown && !outlined.has(s.name) ? v.opacity : 0, name: s.name })
      if (s.label_value < OUTLINE_OFFSET) {
        out.push({ value: s.label_value + OUTLINE_OFFSET, rgb, alpha: shown ? Math.min(1, Math.max(0.75, v.opacity + 0.35)) : 0, name: `${s.name} outline` })
      }
    }
    return [...lutPadding(Math.max(0, ...out.map((c) => c.value))), ...out]
  }

  /** Draw the outlined structures' boundaries into an overlay label map (stored order), in the view's plane. */
  applyOutlines(labels: Uint8Array, exclude: string | null): void {
    const names = this.outlined().filter((n) => n !== exclude)
    if (!names.length) return
    const g = this.ctx.viewer.geometry!
    const h = this.hierarchy
    const value = (n: string): number => this.ctx.structure(n).label_value
    const owners = names.map((n) => ({ value: value(n), region: [value(n), ...h.descendants(n).filter((d) => d !== exclude).map(value)] }))
    const layout = this.ctx.store.get().layout
    const ras = layout === 'axial' ? [0, 1] : layout === 'coronal' ? [0, 2] : layout === 'sagittal' ? [1, 2] : [0, 1, 2]
    drawOutlines(labels, g.nativeDims, ras.map((a) => g.axisOf[a]), owners)
  }

  /** The active structure in the drawing layer: its fill opacity, and whether it is drawn as an outline (rim). */
  drawing(name: string): { opacity: number; rim: boolean } {
    const v = this.view(name)
    if (!v?.visible) return { opacity: 0, rim: false }
    const rim = this.outlined().includes(name)
    return { opacity: rim ? 0.12 : Math.max(0.15, Math.min(1, v.opacity + 0.15)), rim }
  }
}
