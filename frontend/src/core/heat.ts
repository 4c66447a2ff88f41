/** The attention heat map: a binary attention mask graded by local density, and its colour ramp. */

import type { LabelColor } from './colors'
import type { Vec3 } from './geometry'

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
