/**
 * Patch and draft encoding, pure: the changed box of a structure in the scan's stored order, bit-packed (numpy
 * `packbits(bitorder="little")`), gzipped when that is smaller; the multipart/form-data body of a patch save (a
 * small box inline in the meta as base64, a larger one as a part of its own); the idempotency key that makes a
 * retried save safe; base64 for drafts kept as JSON.
 */

import { gunzipSync, gzipSync } from 'fflate'
import { type Box, packBitsLittle, unpackBitsLittle } from './geometry'

export type BoxEncoding = 'bits' | 'bits+gzip'

export interface PatchBox {
  structure: string
  box: Box
  bytes: Uint8Array
  encoding: BoxEncoding
}

export interface PatchPlan {
  boxes: PatchBox[]
  /** The multipart/form-data request body, built here so its exact size is known. */
  body: Uint8Array<ArrayBuffer>
  contentType: string
  bodyBytes: number
}

/** A save whose outcome is unknown (the connection broke, or the server stayed unavailable): its key and content. */
export interface UnsettledSave {
  key: string
  baseVersionId: number | null
  branch: boolean
  boxes: PatchBox[]
}

/**
 * Whether a new save sends exactly the unsettled save's boxes on the same base: then it reuses that key, so a
 * save the server did commit is answered with that version instead of being stored twice.
 */
export function sameSave(prior: UnsettledSave, baseVersionId: number | null, branch: boolean, boxes: PatchBox[]): boolean {
  if (prior.baseVersionId !== baseVersionId || prior.branch !== branch || prior.boxes.length !== boxes.length) return false
  return prior.boxes.every((a, i) => {
    const b = boxes[i]
    return (
      a.structure === b.structure &&
      a.encoding === b.encoding &&
      a.box.origin.join() === b.box.origin.join() &&
      a.box.size.join() === b.box.size.join() &&
      a.bytes.length === b.bytes.length &&
      a.bytes.every((v, j) => v === b.bytes[j])
    )
  })
}

/** A retry-safe key for a save (62 bits of randomness is plenty per scan and user). */
export function randomKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8))
  return Array.from(bytes, (b) => b.toString(36).padStart(2, '0'))
    .join('')
    .slice(0, 12)
}

/** Encode multipart/form-data: text fields and binary parts (no FormData, so the bytes are ours to count). */
export function multipart(
  fields: [string, string][],
  files: [string, Uint8Array][],
  boundary = `ml${Math.random().toString(36).slice(2, 12)}`,
): { body: Uint8Array<ArrayBuffer>; contentType: string } {
  const enc = new TextEncoder()
  const chunks: Uint8Array[] = []
  for (const [name, value] of fields) {
    chunks.push(enc.encode(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`))
  }
  for (const [name, bytes] of files) {
    chunks.push(enc.encode(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="${name}"\r\n\r\n`), bytes, enc.encode('\r\n'))
  }
  chunks.push(enc.encode(`--${boundary}--\r\n`))
  const body = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0))
  let offset = 0
  for (const c of chunks) {
    body.set(c, offset)
    offset += c.length
  }
  return { body, contentType: `multipart/form-data; boundary=${boundary}` }
}

/** One box's 0/1 voxels (stored order), bit-packed and gzipped unless the raw bits are smaller (a short stroke). */
export function encodePatchBox(structure: string, box: Box, voxels: Uint8Array): PatchBox {
  const bits = packBitsLittle(voxels)
  const gz = gzipSync(bits, { level: 9, mtime: 0 })
  return gz.length < bits.length ? { structure, box, bytes: gz, encoding: 'bits+gzip' } : { structure, box, bytes: bits, encoding: 'bits' }
}

/** The 0/1 voxels of a patch box (the inverse of `encodePatchBox`). */
export function decodePatchBox(p: Pick<PatchBox, 'box' | 'bytes' | 'encoding'>): Uint8Array {
  const n = p.box.size[0] * p.box.size[1] * p.box.size[2]
  return unpackBitsLittle(p.encoding === 'bits+gzip' ? gunzipSync(p.bytes) : p.bytes, n)
}

/** The characters of base64 for `n` bytes. */
function base64Length(n: number): number {
  return 4 * Math.ceil(n / 3)
}

/** The bytes a box costs as a multipart part of its own: the part's framing, its bytes, its name in the meta. */
function partCost(name: string, bytes: number, boundary: string): number {
  const framing = `--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="${name}"\r\n\r\n`.length + 2
  return framing + bytes + `,"part":"${name}"`.length
}

/** Largest box carried inline (base64 in the meta JSON): the server's limit on `data`. */
export const MAX_INLINE_CHARS = 65_536

/**
 * The multipart patch save of these boxes (POST /api/scans/{id}/versions/patch); only non-default meta fields are
 * sent. Each box goes where it costs fewer bytes: as a part of its own, or (a small box, such as a brush stroke's,
 * whose bytes are fewer than a part's framing) inline in the meta JSON as base64 `data`.
 */
export function encodePatch(
  baseVersionId: number | null,
  boxes: PatchBox[],
  message: string,
  branch: boolean,
  idempotencyKey: string,
  boundary = `ml${Math.random().toString(36).slice(2, 12)}`,
): PatchPlan {
  const meta: Record<string, unknown> = { base_version_id: baseVersionId }
  if (message) meta.message = message
  if (branch) meta.branch = true
  meta.idempotency_key = idempotencyKey
  const files: [string, Uint8Array][] = []
  meta.patches = boxes.map((b) => {
    const entry: Record<string, unknown> = { structure: b.structure, origin: b.box.origin, size: b.box.size, encoding: b.encoding }
    const name = `b${files.length}`
    const inline = base64Length(b.bytes.length)
    if (inline <= MAX_INLINE_CHARS && inline + ',"data":""'.length < partCost(name, b.bytes.length, boundary)) entry.data = toBase64(b.bytes)
    else {
      entry.part = name
      files.push([name, b.bytes])
    }
    return entry
  })
  const { body, contentType } = multipart([['meta', JSON.stringify(meta)]], files, boundary)
  return { boxes, body, contentType, bodyBytes: body.length }
}

export function toBase64(bytes: Uint8Array): string {
  let s = ''
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000))
  return btoa(s)
}

export function fromBase64(text: string): Uint8Array {
  const s = atob(text)
  const out = new Uint8Array(s.length)
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i)
  return out
}

/** A draft box: bit-packed, always gzipped (drafts favour size; they are written every few seconds). */
export function encodeBox(voxels: Uint8Array): Uint8Array {
  return gzipSync(packBitsLittle(voxels), { level: 6, mtime: 0 })
}

export function decodeBox(data: Uint8Array, box: Box): Uint8Array {
  const n = box.size[0] * box.size[1] * box.size[2]
  return unpackBitsLittle(gunzipSync(data), n)
}
