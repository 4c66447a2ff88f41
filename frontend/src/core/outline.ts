/**
 * Outlines in a label map (the scan's stored order): the boundary voxels of chosen structures get the outline
 * label `value + OUTLINE_OFFSET` (its own colour entry, drawn opaque), interiors keep their label. A voxel is on
 * the boundary of a structure's region (its label, and for a parent the labels of its parts) when a neighbour
 * along one of the given axes lies outside the region or outside the volume. Pure.
 */

import type { LabelColor } from './colors'
import type { Vec3 } from './geometry'

export const OUTLINE_OFFSET = 128

export interface OutlineOwner {
  /** The structure's label value (below OUTLINE_OFFSET). */
  value: number
  /** The label values inside its region: its own and those of its parts. */
  region: readonly number[]
}

/**
 * Rewrite the boundary voxels of the owners (earlier owners win where boundaries meet) in place; `axes` are the
 * native axes whose neighbours count (the two in-plane axes of a 2D view, all three for 3D). Returns the count.
 */
export function drawOutlines(labels: Uint8Array, dims: Vec3, axes: readonly number[], owners: readonly OutlineOwner[]): number {
  const usable = owners.filter((o) => o.value > 0 && o.value < OUTLINE_OFFSET)
  if (!usable.length) return 0
  const inRegion = new Uint8Array(usable.length * 256)
  const ownersOf: number[][] = Array.from({ length: 256 }, () => [])
  usable.forEach((o, k) => {
    for (const v of o.region) {
      if (v <= 0 || v > 255) continue
      inRegion[k * 256 + v] = 1
      ownersOf[v].push(k)
    }
  })
  const src = labels.slice()
  const [dx, dy, dz] = dims
  const stride = [1, dx, dx * dy]
  const size = [dx, dy, dz]
  const coord = [0, 0, 0]
  let written = 0
  let i = 0
  for (let z = 0; z < dz; z++) {
    coord[2] = z
    for (let y = 0; y < dy; y++) {
      coord[1] = y
      for (let x = 0; x < dx; x++, i++) {
        const v = src[i]
        if (!v) continue
        const mine = ownersOf[v]
        if (!mine.length) continue
        coord[0] = x
        for (const k of mine) {
          const base = k * 256
          let edge = false
          for (const a of axes) {
            const c = coord[a]
            if (c === 0 || c === size[a] - 1 || !inRegion[base + src[i - stride[a]]] || !inRegion[base + src[i + stride[a]]]) {
              edge = true
              break
            }
          }
          if (edge) {
            labels[i] = usable[k].value + OUTLINE_OFFSET
            written++
            break
          }
        }
      }
    }
  }
  return written
}

/**
 * Transparent entries below 0 that keep label 0 clear of its neighbours in NiiVue's label lookup texture: its
 * orient shader lifts every value above the range's minimum to at least 2/256 of the texture (issue 1139), which
 * in a table of more than 64 entries lands between labels 1 and 2 (the background took their colour).
 */
export function lutPadding(maxValue: number): LabelColor[] {
  const pad = Math.max(0, Math.ceil((((maxValue + 1) / 128 - 0.5) * 128) / 127))
  return Array.from({ length: pad }, (_, k) => ({ value: -1 - k, rgb: [0, 0, 0] as [number, number, number], alpha: 0, name: '' }))
}

/**
 * The structure a label-map voxel belongs to (null for background or a label no structure has): an outline voxel
 * holds its structure's label plus OUTLINE_OFFSET (`drawOutlines`), so it is read back as that structure.
 */
export function structureOfLabel<S extends { name: string; label_value: number }>(structures: readonly S[], value: number): S | null {
  const label = value >= OUTLINE_OFFSET ? value - OUTLINE_OFFSET : value
  if (!label) return null
  return structures.find((s) => s.label_value === label) ?? null
}
