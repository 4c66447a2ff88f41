/**
 * Editor operations run on the server (`POST /api/scans/{id}/operations`), pure: the multipart request (a `meta`
 * JSON OperationRequest plus one bit-packed box per input structure, in the scan's stored order, as a patch save
 * sends them), the decoding of the answer's box, key slices of an interpolation, and the 3D sphere brush.
 */

import { gunzipSync, gzipSync } from 'fflate'
import { type Box, type Geometry, type Vec3, unpackBitsLittle } from './geometry'
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
  return geometry.nonzeroBox(ras)
}

/** One structure's mask as an operation input: its non-zero box and the box's bits (null when it is empty). */
function packInput(geometry: Geometry, structure: string, ras: Uint8Array, part: string): { input: OperationInput; bits: Uint8Array | null } {
  const box = geometry.nonzeroBox(ras)
  if (!box) return { input: { structure, origin: [0, 0, 0], size: [0, 0, 0], encoding: 'bits+gzip', part: null }, bits: null }
  return { input: { structure, origin: box.origin, size: box.size, encoding: 'bits+gzip', part }, bits: geometry.packBox(ras, box) }
}

/** One structure's mask as an operation input: its non-zero box, bit-packed and gzipped (level 1: speed first). */
export function encodeInput(geometry: Geometry, structure: string, ras: Uint8Array, part: string): { input: OperationInput; bytes: Uint8Array | null } {
  const { input, bits } = packInput(geometry, structure, ras, part)
  return { input, bytes: bits && gzipSync(bits, { level: 1, mtime: 0 }) }
}

/**
 * gzip by the browser's own CompressionStream: native zlib, several times faster than fflate's level 1 in the
 * page and about ten times smaller on bit-packed masks; fflate where the API is missing.
 */
export async function gzipFast(bytes: Uint8Array): Promise<Uint8Array> {
  if (typeof CompressionStream === 'undefined') return gzipSync(bytes, { level: 1, mtime: 0 })
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(new CompressionStream('gzip'))
  return new Uint8Array(await new Response(stream).arrayBuffer())
}

/**
 * The multipart request of an operation on `target`, reading the masks given (the target's first). The masks are
 * read before the first await (the call sees them as they are when it is made), then compressed.
 */
export async function buildOperation(geometry: Geometry, target: string, spec: OperationSpec, masks: { structure: string; ras: Uint8Array }[]): Promise<OperationPlan> {
  const inputs: OperationInput[] = []
  const packed: [string, Uint8Array][] = []
  const seen = new Set<string>()
  for (const m of masks) {
    if (seen.has(m.structure)) continue
    seen.add(m.structure)
    const { input, bits } = packInput(geometry, m.structure, m.ras, `m${inputs.length}`)
    inputs.push(input)
    if (bits) packed.push([input.part!, bits])
  }
  const files = await Promise.all(packed.map(async ([part, bits]): Promise<[string, Uint8Array]> => [part, await gzipFast(bits)]))
  const meta = { operation: spec.operation, structure: target, params: spec.params, inputs }
  const { body, contentType } = multipart([['meta', JSON.stringify(meta)]], files)
  return { meta, body, contentType }
}

type AnswerBox = Pick<OperationAnswer, 'origin' | 'size' | 'data' | 'encoding'>

/** The answer's box and its bit-packed voxels (stored order, i fastest), or null when nothing changes. */
export function answerBits(answer: AnswerBox): { box: Box; bits: Uint8Array } | null {
  const [sx, sy, sz] = answer.size
  if (!sx || !sy || !sz || !answer.data) return null
  if (answer.encoding !== 'bits+gzip') throw new Error(`unexpected result encoding ${answer.encoding}`)
  const box: Box = { origin: [answer.origin[0], answer.origin[1], answer.origin[2]], size: [sx, sy, sz] }
  const bits = gunzipSync(fromBase64(answer.data))
  if (bits.length !== (sx * sy * sz + 7) >> 3) throw new Error(`the answer holds ${bits.length} bytes for a box of ${sx}×${sy}×${sz}`)
  return { box, bits }
}

/** The answer's box and its 0/1 voxels (stored order), or null when nothing changes. */
export function decodeAnswer(answer: AnswerBox): { box: Box; voxels: Uint8Array } | null {
  const decoded = answerBits(answer)
  if (!decoded) return null
  const [sx, sy, sz] = decoded.box.size
  return { box: decoded.box, voxels: unpackBitsLittle(decoded.bits, sx * sy * sz) }
}

/**
 * Write an answer into a RAS mask; returns the voxels that changed (0 when the answer is empty). Voxels it adds
 * get the value `added` (1; the preview marks them 2 to draw them in the seed colour).
 */
export function applyAnswer(geometry: Geometry, ras: Uint8Array, answer: AnswerBox, added = 1): number {
  const decoded = answerBits(answer)
  return decoded ? geometry.applyBits(ras, decoded.box, decoded.bits, added) : 0
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
