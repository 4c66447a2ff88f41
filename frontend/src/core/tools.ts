/**
 * Editing algorithms on a RAS-ordered uint8 bitmap (NiiVue's drawing layer layout, x fastest).
 * Plane: 0 axial (z fixed), 1 coronal (y fixed), 2 sagittal (x fixed).
 */

import type { Vec3 } from './geometry'

export interface Grid {
  dims: Vec3
  /** Voxel size in mm along the RAS axes. */
  spacing: Vec3
  /** CT values (HU) in RAS order. */
  hu: Float32Array
}

export interface HuRange {
  lo: number
  hi: number
}

/** In-plane axes (u, v) and the fixed axis of a plane. */
export function planeAxes(plane: number): [number, number, number] {
  if (plane === 0) return [0, 1, 2]
  if (plane === 1) return [0, 2, 1]
  return [1, 2, 0]
}

function idx(g: Grid, x: number, y: number, z: number): number {
  return x + y * g.dims[0] + z * g.dims[0] * g.dims[1]
}

function inside(g: Grid, c: number[]): boolean {
  return c[0] >= 0 && c[1] >= 0 && c[2] >= 0 && c[0] < g.dims[0] && c[1] < g.dims[1] && c[2] < g.dims[2]
}

/** Paint (value 1) or erase (value 0) a disc of `diameterMm` on one slice; `hu` limits which voxels paint. */
export function paintDisc(
  g: Grid,
  bm: Uint8Array,
  center: Vec3,
  plane: number,
  diameterMm: number,
  value: number,
  hu: HuRange | null,
): void {
  const [u, v] = planeAxes(plane)
  const r = Math.max(diameterMm / 2, 0)
  const ru = Math.floor(r / g.spacing[u])
  const rv = Math.floor(r / g.spacing[v])
  const c = [center[0], center[1], center[2]]
  const p = [0, 0, 0]
  for (let dv = -rv; dv <= rv; dv++) {
    for (let du = -ru; du <= ru; du++) {
      const mu = du * g.spacing[u]
      const mv = dv * g.spacing[v]
      if (mu * mu + mv * mv > r * r + 1e-6 && (du !== 0 || dv !== 0)) continue
      p[0] = c[0]
      p[1] = c[1]
      p[2] = c[2]
      p[u] += du
      p[v] += dv
      if (!inside(g, p)) continue
      const i = idx(g, p[0], p[1], p[2])
      if (value && hu && (g.hu[i] < hu.lo || g.hu[i] > hu.hi)) continue
      bm[i] = value
    }
  }
}

/** Paint discs along the segment a→b (both on the same slice), one every half voxel. */
export function paintSegment(
  g: Grid,
  bm: Uint8Array,
  a: Vec3,
  b: Vec3,
  plane: number,
  diameterMm: number,
  value: number,
  hu: HuRange | null,
): void {
  const steps = Math.max(1, Math.ceil(2 * Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), Math.abs(b[2] - a[2]))))
  for (let s = 0; s <= steps; s++) {
    const t = s / steps
    const p: Vec3 = [
      Math.round(a[0] + (b[0] - a[0]) * t),
      Math.round(a[1] + (b[1] - a[1]) * t),
      Math.round(a[2] + (b[2] - a[2]) * t),
    ]
    paintDisc(g, bm, p, plane, diameterMm, value, hu)
  }
}

/** Fill the polygon traced by `pts` (voxel coordinates on one slice) with 1s, outline included. */
export function fillPolygon(g: Grid, bm: Uint8Array, pts: Vec3[], plane: number, hu: HuRange | null): number {
  if (pts.length < 3) return 0
  const [u, v, w] = planeAxes(plane)
  const fixed = pts[0][w]
  const us = pts.map((p) => p[u])
  const vs = pts.map((p) => p[v])
  const u0 = Math.max(0, Math.floor(Math.min(...us)))
  const u1 = Math.min(g.dims[u] - 1, Math.ceil(Math.max(...us)))
  const v0 = Math.max(0, Math.floor(Math.min(...vs)))
  const v1 = Math.min(g.dims[v] - 1, Math.ceil(Math.max(...vs)))
  let painted = 0
  const p = [0, 0, 0]
  p[w] = fixed
  for (let pv = v0; pv <= v1; pv++) {
    for (let pu = u0; pu <= u1; pu++) {
      // Even-odd rule at the voxel centre.
      let inPoly = false
      for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
        const ui = us[i]
        const vi = vs[i]
        const uj = us[j]
        const vj = vs[j]
        if (vi > pv !== vj > pv && pu < ((uj - ui) * (pv - vi)) / (vj - vi) + ui) inPoly = !inPoly
      }
      if (!inPoly) continue
      p[u] = pu
      p[v] = pv
      const i = idx(g, p[0], p[1], p[2])
      if (hu && (g.hu[i] < hu.lo || g.hu[i] > hu.hi)) continue
      if (!bm[i]) painted++
      bm[i] = 1
    }
  }
  for (let i = 0; i < pts.length; i++) {
    const a = pts[i]
    const b = pts[(i + 1) % pts.length]
    paintSegment(g, bm, a, b, plane, 0, 1, hu)
  }
  return painted
}

export type FillResult = 'filled' | 'erased' | 'leaks' | 'nothing'

/**
 * Flood fill on one slice from a seed (4-connected). A background seed fills its region with 1 — refused
 * when the region reaches the slice edge (not enclosed) unless an HU range bounds it; a painted seed with
 * `eraseRegion` clears its connected painted region.
 */
export function floodFill2D(
  g: Grid,
  bm: Uint8Array,
  seed: Vec3,
  plane: number,
  hu: HuRange | null,
  eraseRegion = false,
): FillResult {
  if (!inside(g, seed)) return 'nothing'
  const [u, v, w] = planeAxes(plane)
  const nu = g.dims[u]
  const nv = g.dims[v]
  const p = [0, 0, 0]
  p[w] = seed[w]
  const at = (pu: number, pv: number): number => {
    p[u] = pu
    p[v] = pv
    return idx(g, p[0], p[1], p[2])
  }
  const seedIndex = at(seed[u], seed[v])
  const target = bm[seedIndex] ? 1 : 0
  if (target === 1 && !eraseRegion) return 'nothing'
  const ok = (i: number): boolean => {
    if ((bm[i] ? 1 : 0) !== target) return false
    if (target === 0 && hu && (g.hu[i] < hu.lo || g.hu[i] > hu.hi)) return false
    return true
  }
  if (!ok(seedIndex)) return 'nothing'
  const seen = new Uint8Array(nu * nv)
  const region: number[] = []
  const stack = [seed[u] + seed[v] * nu]
  seen[stack[0]] = 1
  let touchesEdge = false
  while (stack.length) {
    const q = stack.pop()!
    const qu = q % nu
    const qv = (q - qu) / nu
    region.push(at(qu, qv))
    if (qu === 0 || qv === 0 || qu === nu - 1 || qv === nv - 1) touchesEdge = true
    const next = [
      [qu - 1, qv],
      [qu + 1, qv],
      [qu, qv - 1],
      [qu, qv + 1],
    ]
    for (const [a, b] of next) {
      if (a < 0 || b < 0 || a >= nu || b >= nv) continue
      const k = a + b * nu
      if (seen[k]) continue
      seen[k] = 1
      if (ok(at(a, b))) stack.push(k)
    }
  }
  if (target === 0 && touchesEdge && !hu) return 'leaks'
  const value = target === 0 ? 1 : 0
  for (const i of region) bm[i] = value
  return value ? 'filled' : 'erased'
}

/** Exact squared Euclidean distance transform (Felzenszwalb) of one line, in place. */
function edt1d(f: Float64Array, n: number, step: number, out: Float64Array, v: Int32Array, z: Float64Array): void {
  let k = 0
  v[0] = 0
  z[0] = -Infinity
  z[1] = Infinity
  const s2 = step * step
  for (let q = 1; q < n; q++) {
    let s: number
    for (;;) {
      const r = v[k]
      s = (f[q] + s2 * q * q - (f[r] + s2 * r * r)) / (2 * s2 * (q - r))
      if (s <= z[k]) {
        k--
        if (k < 0) {
          k = 0
          break
        }
      } else break
    }
    k++
    v[k] = q
    z[k] = s
    z[k + 1] = Infinity
  }
  k = 0
  for (let q = 0; q < n; q++) {
    while (z[k + 1] < q) k++
    const d = q - v[k]
    out[q] = s2 * d * d + f[v[k]]
  }
}

/** Squared distance (mm²) of every pixel of a 2D mask to the nearest pixel where `mask === target`. */
function distance2D(mask: Uint8Array, nu: number, nv: number, su: number, sv: number, target: number): Float64Array {
  const BIG = 1e20
  const d = new Float64Array(nu * nv)
  for (let i = 0; i < d.length; i++) d[i] = mask[i] === target ? 0 : BIG
  const n = Math.max(nu, nv)
  const f = new Float64Array(n)
  const out = new Float64Array(n)
  const vv = new Int32Array(n)
  const zz = new Float64Array(n + 1)
  for (let b = 0; b < nv; b++) {
    for (let a = 0; a < nu; a++) f[a] = d[a + b * nu]
    edt1d(f, nu, su, out, vv, zz)
    for (let a = 0; a < nu; a++) d[a + b * nu] = out[a]
  }
  for (let a = 0; a < nu; a++) {
    for (let b = 0; b < nv; b++) f[b] = d[a + b * nu]
    edt1d(f, nv, sv, out, vv, zz)
    for (let b = 0; b < nv; b++) d[a + b * nu] = out[b]
  }
  return d
}

function getSlice(g: Grid, bm: Uint8Array, plane: number, s: number): Uint8Array {
  const [u, v, w] = planeAxes(plane)
  const nu = g.dims[u]
  const nv = g.dims[v]
  const out = new Uint8Array(nu * nv)
  const p = [0, 0, 0]
  p[w] = s
  for (let b = 0; b < nv; b++) {
    for (let a = 0; a < nu; a++) {
      p[u] = a
      p[v] = b
      out[a + b * nu] = bm[idx(g, p[0], p[1], p[2])] ? 1 : 0
    }
  }
  return out
}

function setSlice(g: Grid, bm: Uint8Array, plane: number, s: number, data: Uint8Array): void {
  const [u, v, w] = planeAxes(plane)
  const nu = g.dims[u]
  const nv = g.dims[v]
  const p = [0, 0, 0]
  p[w] = s
  for (let b = 0; b < nv; b++) {
    for (let a = 0; a < nu; a++) {
      p[u] = a
      p[v] = b
      bm[idx(g, p[0], p[1], p[2])] = data[a + b * nu]
    }
  }
}

/** Signed distance (mm): negative inside the mask, positive outside. */
function signedDistance(mask: Uint8Array, nu: number, nv: number, su: number, sv: number): Float64Array {
  const toInside = distance2D(mask, nu, nv, su, sv, 1)
  const toOutside = distance2D(mask, nu, nv, su, sv, 0)
  const out = new Float64Array(mask.length)
  for (let i = 0; i < mask.length; i++) out[i] = mask[i] ? -Math.sqrt(toOutside[i]) : Math.sqrt(toInside[i])
  return out
}

function sliceDiffers(g: Grid, a: Uint8Array, b: Uint8Array, plane: number, s: number): boolean {
  const x = getSlice(g, a, plane, s)
  const y = getSlice(g, b, plane, s)
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return true
  return false
}

function sliceEmpty(g: Grid, bm: Uint8Array, plane: number, s: number): boolean {
  const x = getSlice(g, bm, plane, s)
  for (let i = 0; i < x.length; i++) if (x[i]) return false
  return true
}

/**
 * Shape-based interpolation between painted slices along the plane's normal. Key slices are the slices edited
 * since the base (when there are two or more), else the non-empty slices; every slice strictly between two
 * consecutive key slices that is not itself a key slice is replaced by the interpolated shape
 * (signed-distance blend). Returns the number of slices written.
 */
export function interpolateSlices(g: Grid, bm: Uint8Array, base: Uint8Array, plane: number): number {
  const [u, v, w] = planeAxes(plane)
  const n = g.dims[w]
  let keys: number[] = []
  for (let s = 0; s < n; s++) if (sliceDiffers(g, bm, base, plane, s) && !sliceEmpty(g, bm, plane, s)) keys.push(s)
  let onlyEmptyGaps = false
  if (keys.length < 2) {
    keys = []
    for (let s = 0; s < n; s++) if (!sliceEmpty(g, bm, plane, s)) keys.push(s)
    onlyEmptyGaps = true
  }
  const nu = g.dims[u]
  const nv = g.dims[v]
  let written = 0
  for (let k = 0; k + 1 < keys.length; k++) {
    const a = keys[k]
    const b = keys[k + 1]
    if (b - a < 2) continue
    if (onlyEmptyGaps) {
      let allEmpty = true
      for (let s = a + 1; s < b; s++) if (!sliceEmpty(g, bm, plane, s)) allEmpty = false
      if (!allEmpty) continue
    }
    const da = signedDistance(getSlice(g, bm, plane, a), nu, nv, g.spacing[u], g.spacing[v])
    const db = signedDistance(getSlice(g, bm, plane, b), nu, nv, g.spacing[u], g.spacing[v])
    for (let s = a + 1; s < b; s++) {
      const t = (s - a) / (b - a)
      const out = new Uint8Array(nu * nv)
      for (let i = 0; i < out.length; i++) out[i] = (1 - t) * da[i] + t * db[i] <= 0 ? 1 : 0
      setSlice(g, bm, plane, s, out)
      written++
    }
  }
  return written
}

/**
 * Grow-cut (Vezhnevets & Konouchine cellular automaton) in a box around a seed. Foreground seeds: a disc of
 * `seedMm` at the click plus the structure's voxels in the box; background seeds: the box border outside the
 * structure. Intensities are clipped to the display window. Voxels that end up foreground are added.
 */
export function growCut(
  g: Grid,
  bm: Uint8Array,
  seed: Vec3,
  plane: number,
  opts: { radiusMm: number; depthMm: number; seedMm: number; window: [number, number]; maxIterations?: number },
): number {
  const [u, v, w] = planeAxes(plane)
  const lo = [0, 0, 0]
  const hi = [0, 0, 0]
  for (const axis of [0, 1, 2]) {
    const reach = axis === w ? opts.depthMm : opts.radiusMm
    const r = Math.max(axis === w ? 0 : 2, Math.round(reach / g.spacing[axis]))
    lo[axis] = Math.max(0, seed[axis] - r)
    hi[axis] = Math.min(g.dims[axis] - 1, seed[axis] + r)
  }
  const sx = hi[0] - lo[0] + 1
  const sy = hi[1] - lo[1] + 1
  const sz = hi[2] - lo[2] + 1
  const n = sx * sy * sz
  const label = new Uint8Array(n) // 0 unlabelled, 1 fg, 2 bg
  const strength = new Float32Array(n)
  const inten = new Float32Array(n)
  const [wlo, whi] = opts.window
  const range = Math.max(1, whi - wlo)
  const at = (x: number, y: number, z: number): number => x - lo[0] + (y - lo[1]) * sx + (z - lo[2]) * sx * sy
  for (let z = lo[2]; z <= hi[2]; z++) {
    for (let y = lo[1]; y <= hi[1]; y++) {
      for (let x = lo[0]; x <= hi[0]; x++) {
        const i = at(x, y, z)
        const gi = idx(g, x, y, z)
        inten[i] = (Math.min(whi, Math.max(wlo, g.hu[gi])) - wlo) / range
        const c = [x, y, z]
        let border = false
        for (const axis of [u, v]) {
          if ((c[axis] === lo[axis] && lo[axis] > 0) || (c[axis] === hi[axis] && hi[axis] < g.dims[axis] - 1)) border = true
        }
        if (bm[gi]) {
          label[i] = 1
          strength[i] = 1
        } else if (border) {
          label[i] = 2
          strength[i] = 1
        }
      }
    }
  }
  // Seed disc at the click.
  const r = opts.seedMm / 2
  const ru = Math.max(0, Math.floor(r / g.spacing[u]))
  const rv = Math.max(0, Math.floor(r / g.spacing[v]))
  const p = [0, 0, 0]
  for (let dv = -rv; dv <= rv; dv++) {
    for (let du = -ru; du <= ru; du++) {
      if ((du * g.spacing[u]) ** 2 + (dv * g.spacing[v]) ** 2 > r * r + 1e-6 && (du || dv)) continue
      p[0] = seed[0]
      p[1] = seed[1]
      p[2] = seed[2]
      p[u] += du
      p[v] += dv
      if (p[0] < lo[0] || p[1] < lo[1] || p[2] < lo[2] || p[0] > hi[0] || p[1] > hi[1] || p[2] > hi[2]) continue
      const i = at(p[0], p[1], p[2])
      label[i] = 1
      strength[i] = 1
    }
  }
  const maxIt = opts.maxIterations ?? 200
  const strides = [1, sx, sx * sy]
  const size = [sx, sy, sz]
  const coord = [0, 0, 0]
  for (let it = 0; it < maxIt; it++) {
    let changed = 0
    for (let i = 0; i < n; i++) {
      coord[0] = i % sx
      coord[1] = Math.floor(i / sx) % sy
      coord[2] = Math.floor(i / (sx * sy))
      for (let a = 0; a < 3; a++) {
        for (const d of [-1, 1]) {
          const c = coord[a] + d
          if (c < 0 || c >= size[a]) continue
          const j = i + d * strides[a]
          if (!label[j]) continue
          const attack = (1 - Math.abs(inten[i] - inten[j])) * strength[j]
          if (attack > strength[i] + 1e-6) {
            strength[i] = attack
            if (label[i] !== label[j]) {
              label[i] = label[j]
              changed++
            }
          }
        }
      }
    }
    if (!changed && it > 2) break
  }
  let added = 0
  for (let z = lo[2]; z <= hi[2]; z++) {
    for (let y = lo[1]; y <= hi[1]; y++) {
      for (let x = lo[0]; x <= hi[0]; x++) {
        if (label[at(x, y, z)] !== 1) continue
        const gi = idx(g, x, y, z)
        if (!bm[gi]) added++
        bm[gi] = 1
      }
    }
  }
  return added
}

/** 6-connected components of a RAS mask, largest first: voxel count and a representative voxel near the centre. */
export function components(dims: Vec3, mask: Uint8Array): { count: number; center: Vec3 }[] {
  const [dx, dy, dz] = dims
  const seen = new Uint8Array(mask.length)
  const out: { count: number; center: Vec3 }[] = []
  const stack: number[] = []
  for (let start = 0; start < mask.length; start++) {
    if (!mask[start] || seen[start]) continue
    seen[start] = 1
    stack.push(start)
    const members: number[] = []
    let cx = 0
    let cy = 0
    let cz = 0
    while (stack.length) {
      const i = stack.pop()!
      members.push(i)
      const x = i % dx
      const y = Math.floor(i / dx) % dy
      const z = Math.floor(i / (dx * dy))
      cx += x
      cy += y
      cz += z
      const nb: [number, boolean][] = [
        [i - 1, x > 0],
        [i + 1, x < dx - 1],
        [i - dx, y > 0],
        [i + dx, y < dy - 1],
        [i - dx * dy, z > 0],
        [i + dx * dy, z < dz - 1],
      ]
      for (const [j, ok] of nb) {
        if (ok && mask[j] && !seen[j]) {
          seen[j] = 1
          stack.push(j)
        }
      }
    }
    const m = members.length
    const c = [cx / m, cy / m, cz / m]
    let best = members[0]
    let bestD = Infinity
    for (const i of members) {
      const x = i % dx
      const y = Math.floor(i / dx) % dy
      const z = Math.floor(i / (dx * dy))
      const d = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
      if (d < bestD) {
        bestD = d
        best = i
      }
    }
    out.push({ count: m, center: [best % dx, Math.floor(best / dx) % dy, Math.floor(best / (dx * dy))] })
  }
  out.sort((a, b) => b.count - a.count)
  return out
}
