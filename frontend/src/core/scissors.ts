/**
 * Scissors, pure: a polygon drawn on one 2D view, extruded along the view's normal through the whole volume or a
 * slab of slices around the one it was drawn on, erases (or fills) the active structure inside or outside it.
 *
 * Everything is in NiiVue's RAS voxel grid (x fastest), the grid the drawing layer and the edit session hold, so
 * the scan's stored orientation (RAS, LPS, permuted) plays no part here: the geometry maps the result back to the
 * stored order when the edit is saved as a patch. Polygon vertices are continuous voxel coordinates in the view's
 * plane (voxel centres at whole numbers); a voxel is inside when its centre is, by the even-odd rule with the
 * half-open crossing test of `pointInPolygon` (so two polygons sharing an edge never both own a voxel on it). This
 * is the server's `scissors` operation's rule ("a voxel is inside when its centre is"), computed where the mask is.
 */

import type { Vec3 } from './geometry'

export type Point2 = [number, number]
export type ScissorsRegion = 'inside' | 'outside'
export type ScissorsAction = 'erase' | 'fill'
/** The whole volume along the view's normal, or `slices` slices centred on the one the polygon was drawn on. */
export type ScissorsExtent = { kind: 'volume' } | { kind: 'slab'; slices: number }

export interface ScissorsSpec {
  /** The view drawn on: 0 axial, 1 coronal, 2 sagittal (NiiVue's 2D slice types). */
  plane: number
  /** Vertices (u, v) on that view's in-plane RAS axes (`viewAxes`), continuous voxel coordinates. */
  polygon: Point2[]
  /** The RAS index, along the view's normal, of the slice the polygon was drawn on. */
  slice: number
  extent: ScissorsExtent
  region: ScissorsRegion
  action: ScissorsAction
}

/** The largest slab offered (slices); a bigger one is the whole volume. */
export const MAX_SLAB = 999

/** The in-plane RAS axes (u, v) of a view and its normal axis (the same table as the brush's `planeAxes`). */
export function viewAxes(plane: number): [0 | 1 | 2, 0 | 1 | 2, 0 | 1 | 2] {
  if (plane === 0) return [0, 1, 2]
  if (plane === 1) return [0, 2, 1]
  return [1, 2, 0]
}

/** The in-plane point (u, v) of a continuous RAS voxel position on a view. */
export function toPlane(plane: number, ras: readonly number[]): Point2 {
  const [u, v] = viewAxes(plane)
  return [ras[u], ras[v]]
}

/** The RAS position of an in-plane point on a view's slice `slice` (for drawing the outline over the image). */
export function fromPlane(plane: number, point: Point2, slice: number): Vec3 {
  const [u, v, n] = viewAxes(plane)
  const out: Vec3 = [0, 0, 0]
  out[u] = point[0]
  out[v] = point[1]
  out[n] = slice
  return out
}

/**
 * Whether (x, y) is inside the polygon: even-odd crossing test (W. R. Franklin's pnpoly), an edge counts for the
 * rows y with min(y_i, y_j) <= y < max(y_i, y_j) and for the points strictly left of its crossing.
 */
export function pointInPolygon(x: number, y: number, polygon: readonly Point2[]): boolean {
  let inside = false
  for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
    const [xi, yi] = polygon[i]
    const [xj, yj] = polygon[j]
    if (yi > y !== yj > y && x < xi + ((y - yi) * (xj - xi)) / (yj - yi)) inside = !inside
  }
  return inside
}

/**
 * The pixels of a `width` × `height` plane (u fastest) whose centres lie inside the polygon: 1 inside, 0 outside.
 * A scanline fill that decides every pixel exactly as `pointInPolygon` does (same crossings, same comparisons).
 */
export function polygonMask(width: number, height: number, polygon: readonly Point2[]): Uint8Array {
  const out = new Uint8Array(width * height)
  if (polygon.length < 3) return out
  let top = Infinity
  let bottom = -Infinity
  for (const [, y] of polygon) {
    top = Math.min(top, y)
    bottom = Math.max(bottom, y)
  }
  const crossings: number[] = []
  for (let y = Math.max(0, Math.floor(top)); y <= Math.min(height - 1, Math.ceil(bottom)); y++) {
    crossings.length = 0
    for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
      const [xi, yi] = polygon[i]
      const [xj, yj] = polygon[j]
      if (yi > y !== yj > y) crossings.push(xi + ((y - yi) * (xj - xi)) / (yj - yi))
    }
    crossings.sort((a, b) => a - b)
    // A pixel x is inside when an odd number of crossings lie strictly right of it: x in [c0, c1), [c2, c3), ...
    for (let k = 0; k + 1 < crossings.length; k += 2) {
      const from = Math.max(0, Math.ceil(crossings[k]))
      const to = Math.min(width - 1, Math.ceil(crossings[k + 1]) - 1)
      for (let x = from; x <= to; x++) out[y * width + x] = 1
    }
  }
  return out
}

/** Twice the signed area of a polygon (shoelace); 0 for a degenerate one. */
export function doubleArea(polygon: readonly Point2[]): number {
  let sum = 0
  for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) sum += polygon[j][0] * polygon[i][1] - polygon[i][0] * polygon[j][1]
  return sum
}

/**
 * The polygon as drawn, cleaned: consecutive vertices closer than `minGap` voxels are merged (a double-click adds
 * its point twice), and the closing vertex is dropped when it repeats the first. Null when fewer than three
 * vertices remain or the polygon encloses no area.
 */
export function closePolygon(points: readonly Point2[], minGap = 0.25): Point2[] | null {
  const out: Point2[] = []
  for (const p of points) {
    const last = out[out.length - 1]
    if (last && Math.hypot(p[0] - last[0], p[1] - last[1]) < minGap) continue
    out.push([p[0], p[1]])
  }
  while (out.length > 1 && Math.hypot(out[0][0] - out[out.length - 1][0], out[0][1] - out[out.length - 1][1]) < minGap) out.pop()
  if (out.length < 3 || Math.abs(doubleArea(out)) < 1e-9) return null
  return out
}

/** The slices [first, last] (inclusive, RAS indices along the normal) an extent covers, clipped to the volume. */
export function slabRange(extent: ScissorsExtent, slice: number, count: number): [number, number] {
  if (extent.kind === 'volume') return [0, count - 1]
  const n = Math.max(1, Math.min(MAX_SLAB, Math.floor(extent.slices)))
  const first = slice - Math.floor((n - 1) / 2)
  return [Math.max(0, first), Math.min(count - 1, first + n - 1)]
}

/**
 * Apply the scissors to a RAS bitmap (dims = the RAS grid): every voxel of the region (inside or outside the
 * extruded polygon, within the slab) that the action changes (erase: a set voxel; fill: an unset one) is given
 * `value` (erase: 0, fill: 1; a preview marks them with another value). Returns the number of voxels changed.
 */
export function applyScissors(dims: Vec3, bm: Uint8Array, spec: ScissorsSpec, value: number): number {
  const [u, v, n] = viewAxes(spec.plane)
  const stride: Vec3 = [1, dims[0], dims[0] * dims[1]]
  const width = dims[u]
  const height = dims[v]
  const mask = polygonMask(width, height, spec.polygon)
  const want = spec.region === 'inside' ? 1 : 0
  // The in-slice offsets of the region's pixels, then the same offsets on every slice of the slab.
  let count = 0
  for (let i = 0; i < mask.length; i++) if (mask[i] === want) count++
  const offsets = new Int32Array(count)
  let o = 0
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) if (mask[y * width + x] === want) offsets[o++] = x * stride[u] + y * stride[v]
  }
  const [first, last] = slabRange(spec.extent, spec.slice, dims[n])
  const erase = spec.action === 'erase'
  let changed = 0
  for (let s = first; s <= last; s++) {
    const base = s * stride[n]
    for (let k = 0; k < offsets.length; k++) {
      const i = base + offsets[k]
      if (erase ? bm[i] !== 0 : bm[i] === 0) {
        bm[i] = value
        changed++
      }
    }
  }
  return changed
}

/** The label of a scissors edit for the undo history and the preview, e.g. "scissors: erase outside, 5 slices". */
export function scissorsLabel(spec: Pick<ScissorsSpec, 'action' | 'region' | 'extent'>): string {
  const extent = spec.extent.kind === 'volume' ? 'whole volume' : `${spec.extent.slices} slice${spec.extent.slices === 1 ? '' : 's'}`
  return `scissors: ${spec.action} ${spec.region}, ${extent}`
}
