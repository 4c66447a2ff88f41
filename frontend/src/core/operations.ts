/**
 * Editor operations run on the server (`POST /api/scans/{id}/operations`), pure: the multipart request (a `meta`
 * JSON OperationRequest plus one bit-packed box per input structure, in the scan's stored order, as a patch save
 * sends them), the decoding of the answer's box, key slices of an interpolation, and the 3D sphere brush.
 */

import { gunzipSync, gzipSync } from 'fflate'
import { type Box, type Geometry, type Vec3, packBitsLittle, unpackBitsLittle } from './geometry'
import { fromBase64, multipart } from './patch'
import type { Grid } from './tools'

export type StorageAxis = 0 | 1 | 2

/** The operation and its parameters (the server's OperationRequest without structure and inputs). */
export type OperationSpec =
  | { operation: 'interpolate'; params: { axis: StorageAxis; key_slices: number[]; mode?: 'add' | 'replace' } }
  | { operation: 'margin'; params: { mm: number } }
  | {
      operation: 'islands'
      params: { mode: 'keep_largest' | 'remove_smaller_ml' | 'keep_clicked'; min_ml?: number; voxel?: Vec3; connectivity?: 6 | 18 | 26 }
    }
  | { operation: 'smooth'; params: { method: 'median' | 'opening' | 'closing'; mm: number } }
  | { operation: 'fill_holes'; params: { per_slice_axis?: StorageAxis | null } }
  | { operation: 'logical'; params: { op: 'copy' | 'add' | 'subtract' | 'intersect' | 'invert'; source?: string; within?: string } }
  | { operation: 'statistics'; params: Record<string, never> }

export type OperationName = OperationSpec['operation']

export interface OperationInput {
  structure: string
  origin: Vec3
  size: Vec3
  encoding: 'bits+gzip'
  part: string | null
}

/** The request body of one operation, built here so its bytes are known and testable. */
export interface OperationPlan {
  meta: { operation: OperationName; structure: string; params: unknown; inputs: OperationInput[] }
  body: Uint8Array<ArrayBuffer>
  contentType: string
}

export interface StructureStats {
  structure: string
  voxels: number
  volume_ml: number
  hu_mean: number | null
  hu_sd: number | null
  hu_min: number | null
  hu_max: number | null
}

/** The server's OperationResult (the fields the client reads). */
export interface OperationAnswer {
  structure: string
  origin: number[]
  size: number[]
  encoding: string
  data: string
  added: number
  removed: number
  summary: string
  stats?: { structures: StructureStats[] } | null
}

/** The stored-order bounding box of a RAS mask's non-zero voxels, or null when it is empty. */
export function maskBox(geometry: Geometry, ras: Uint8Array): Box | null {
  const [dx, dy, dz] = geometry.rasDims
  const lo: Vec3 = [dx, dy, dz]
  const hi: Vec3 = [-1, -1, -1]
  let i = 0
  for (let z = 0; z < dz; z++) {
    for (let y = 0; y < dy; y++) {
      for (let x = 0; x < dx; x++, i++) {
        if (!ras[i]) continue
        if (x < lo[0]) lo[0] = x
        if (x > hi[0]) hi[0] = x
        if (y < lo[1]) lo[1] = y
        if (y > hi[1]) hi[1] = y
        if (z < lo[2]) lo[2] = z
        if (z > hi[2]) hi[2] = z
      }
    }
  }
  if (hi[0] < 0) return null
  // A RAS box is a stored-order box (the axes are only permuted and flipped): map both corners.
  const a = geometry.rasToNativeIJK(lo[0], lo[1], lo[2])
  const b = geometry.rasToNativeIJK(hi[0], hi[1], hi[2])
  const origin: Vec3 = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.min(a[2], b[2])]
  const size: Vec3 = [Math.abs(a[0] - b[0]) + 1, Math.abs(a[1] - b[1]) + 1, Math.abs(a[2] - b[2]) + 1]
  return { origin, size }
}

/** One structure's mask as an operation input: its non-zero box, bit-packed and gzipped (level 1: speed first). */
export function encodeInput(geometry: Geometry, structure: string, ras: Uint8Array, part: string): { input: OperationInput; bytes: Uint8Array | null } {
  const box = maskBox(geometry, ras)
  if (!box) return { input: { structure, origin: [0, 0, 0], size: [0, 0, 0], encoding: 'bits+gzip', part: null }, bytes: null }
  const bytes = gzipSync(packBitsLittle(geometry.extractBox(ras, box)), { level: 1, mtime: 0 })
  return { input: { structure, origin: box.origin, size: box.size, encoding: 'bits+gzip', part }, bytes }
}

/** The multipart request of an operation on `target`, reading the masks given (the target's first). */
export function buildOperation(geometry: Geometry, target: string, spec: OperationSpec, masks: { structure: string; ras: Uint8Array }[]): OperationPlan {
  const inputs: OperationInput[] = []
  const files: [string, Uint8Array][] = []
  const seen = new Set<string>()
  for (const m of masks) {
    if (seen.has(m.structure)) continue
    seen.add(m.structure)
    const { input, bytes } = encodeInput(geometry, m.structure, m.ras, `m${inputs.length}`)
    inputs.push(input)
    if (bytes) files.push([input.part!, bytes])
  }
  const meta = { operation: spec.operation, structure: target, params: spec.params, inputs }
  const { body, contentType } = multipart([['meta', JSON.stringify(meta)]], files)
  return { meta, body, contentType }
}

/** The answer's box and its 0/1 voxels (stored order), or null when nothing changes. */
export function decodeAnswer(answer: Pick<OperationAnswer, 'origin' | 'size' | 'data' | 'encoding'>): { box: Box; voxels: Uint8Array } | null {
  const [sx, sy, sz] = answer.size
  if (!sx || !sy || !sz || !answer.data) return null
  if (answer.encoding !== 'bits+gzip') throw new Error(`unexpected result encoding ${answer.encoding}`)
  const box: Box = { origin: [answer.origin[0], answer.origin[1], answer.origin[2]], size: [sx, sy, sz] }
  return { box, voxels: unpackBitsLittle(gunzipSync(fromBase64(answer.data)), sx * sy * sz) }
}

/** Write an answer into a RAS mask; returns the voxels that changed (0 when the answer is empty). */
export function applyAnswer(geometry: Geometry, ras: Uint8Array, answer: Pick<OperationAnswer, 'origin' | 'size' | 'data' | 'encoding'>): number {
  const decoded = decodeAnswer(answer)
  if (!decoded) return 0
  const before = geometry.extractBox(ras, decoded.box)
  geometry.applyBox(ras, decoded.box, decoded.voxels)
  let changed = 0
  for (let i = 0; i < before.length; i++) if (before[i] !== decoded.voxels[i]) changed++
  return changed
}

/**
 * The key slices of an interpolation: the slices along a RAS axis where the working copy differs from the base
 * (the slices the user edited), as the stored axis and its indices, sorted.
 */
export function keySlices(geometry: Geometry, edited: Uint8Array, base: Uint8Array, rasAxis: 0 | 1 | 2): { axis: StorageAxis; slices: number[] } {
  const [dx, dy] = geometry.rasDims
  const hit = new Uint8Array(geometry.rasDims[rasAxis])
  for (let i = 0; i < edited.length; i++) {
    if ((edited[i] > 0) === (base[i] > 0)) continue
    const x = i % dx
    const y = Math.floor(i / dx) % dy
    const z = Math.floor(i / (dx * dy))
    hit[rasAxis === 0 ? x : rasAxis === 1 ? y : z] = 1
  }
  const axis = geometry.axisOf[rasAxis] as StorageAxis
  const flip = geometry.flipOf[rasAxis]
  const n = hit.length
  const slices: number[] = []
  for (let r = 0; r < n; r++) if (hit[r]) slices.push(flip ? n - 1 - r : r)
  return { axis, slices: slices.sort((a, b) => a - b) }
}

/** Paint (1) or erase (0) a 3D ball of `radiusMm` about a RAS voxel on anisotropic spacing; returns voxels changed. */
export function paintSphere(g: Grid, bm: Uint8Array, center: Vec3, radiusMm: number, value: number): number {
  const r = Math.max(radiusMm, 0)
  const reach = [0, 1, 2].map((a) => Math.floor(r / g.spacing[a]))
  const [nx, ny, nz] = g.dims
  let changed = 0
  for (let dz = -reach[2]; dz <= reach[2]; dz++) {
    const z = center[2] + dz
    if (z < 0 || z >= nz) continue
    const mz = dz * g.spacing[2]
    for (let dy = -reach[1]; dy <= reach[1]; dy++) {
      const y = center[1] + dy
      if (y < 0 || y >= ny) continue
      const my = dy * g.spacing[1]
      for (let dx = -reach[0]; dx <= reach[0]; dx++) {
        const x = center[0] + dx
        if (x < 0 || x >= nx) continue
        const mx = dx * g.spacing[0]
        if (mx * mx + my * my + mz * mz > r * r + 1e-6) continue
        const i = x + y * nx + z * nx * ny
        if (bm[i] !== value) {
          bm[i] = value
          changed++
        }
      }
    }
  }
  return changed
}

/** The human label of an operation, for the undo history and the preview bar. */
export function operationLabel(spec: OperationSpec): string {
  const p = spec.params as Record<string, unknown>
  switch (spec.operation) {
    case 'margin':
      return `margin ${(p.mm as number) > 0 ? '+' : ''}${String(p.mm)} mm`
    case 'islands':
      return `islands: ${String(p.mode).replace(/_/g, ' ')}`
    case 'smooth':
      return `${String(p.method)} ${String(p.mm)} mm`
    case 'fill_holes':
      return 'fill holes'
    case 'logical':
      return `logical ${String(p.op)}${p.source ? ` ${String(p.source)}` : ''}`
    case 'interpolate':
      return 'interpolate'
    case 'statistics':
      return 'statistics'
  }
}
