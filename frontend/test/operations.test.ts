import { gunzipSync, gzipSync } from 'fflate'
import { describe, expect, it } from 'vitest'
import { Geometry, type Vec3, countNonzero, packBitsLittle, unpackBitsLittle } from '../src/core/geometry'
import { applyAnswer, buildOperation, decodeAnswer, encodeInput, keySlices, maskBox, operationLabel, paintSphere } from '../src/core/operations'
import { EditSession } from '../src/core/editSession'
import { decodePatchBox, toBase64 } from '../src/core/patch'
import type { Grid } from '../src/core/tools'

const DIMS: Vec3 = [6, 5, 4]

/** The parts of a multipart/form-data body: name → bytes. */
function parts(body: Uint8Array, contentType: string): Map<string, Uint8Array> {
  const boundary = /boundary=(.+)$/.exec(contentType)![1]
  const text = new TextDecoder('latin1').decode(body)
  const out = new Map<string, Uint8Array>()
  for (const chunk of text.split(`--${boundary}`)) {
    const m = /name="([^"]+)"[^\r]*\r\n\r\n([\s\S]*)\r\n$/.exec(chunk)
    if (m) out.set(m[1], Uint8Array.from(m[2], (c) => c.charCodeAt(0)))
  }
  return out
}

function answerOf(box: { origin: Vec3; size: Vec3 }, voxels: Uint8Array) {
  return { origin: box.origin, size: box.size, encoding: 'bits+gzip', data: toBase64(gzipSync(packBitsLittle(voxels))) }
}

describe.each([
  ['RAS', [1, 2, 3]],
  ['LPS', [-1, -2, 3]],
  ['permuted', [2, -3, 1]],
])('operations on a %s scan', (_name, perm) => {
  const g = new Geometry(DIMS, perm)

  it('sends the non-zero box of a mask in stored order, bit-packed and gzipped', () => {
    const ras = new Uint8Array(g.voxels)
    const set: Vec3[] = [
      [1, 1, 1],
      [2, 3, 1],
      [1, 2, 2],
    ].map(([i, j, k]) => g.nativeToRasXYZ(i, j, k))
    for (const [x, y, z] of set) ras[g.rasIndex(x, y, z)] = 1
    const box = maskBox(g, ras)!
    expect(box).toEqual({ origin: [1, 1, 1], size: [2, 3, 2] })
    const { input, bytes } = encodeInput(g, 'liver', ras, 'm0')
    expect(input).toEqual({ structure: 'liver', origin: [1, 1, 1], size: [2, 3, 2], encoding: 'bits+gzip', part: 'm0' })
    const voxels = unpackBitsLittle(gunzipSync(bytes!), 12)
    expect(countNonzero(voxels)).toBe(3)
    // i fastest: (1,1,1) is the first voxel of the box, (2,3,1) is i=1, j=2, k=0.
    expect(voxels[0]).toBe(1)
    expect(voxels[1 + 2 * 2]).toBe(1)
  })

  it('builds the multipart request: meta JSON and one part per non-empty input', async () => {
    const target = new Uint8Array(g.voxels)
    target[g.rasIndex(...g.nativeToRasXYZ(2, 2, 2))] = 1
    const empty = new Uint8Array(g.voxels)
    const plan = await buildOperation(g, 'pancreas', { operation: 'logical', params: { op: 'add', source: 'duodenum' } }, [
      { structure: 'pancreas', ras: target },
      { structure: 'duodenum', ras: empty },
    ])
    const p = parts(plan.body, plan.contentType)
    const meta = JSON.parse(new TextDecoder().decode(p.get('meta')))
    expect(meta).toEqual({
      operation: 'logical',
      structure: 'pancreas',
      params: { op: 'add', source: 'duodenum' },
      inputs: [
        { structure: 'pancreas', origin: [2, 2, 2], size: [1, 1, 1], encoding: 'bits+gzip', part: 'm0' },
        { structure: 'duodenum', origin: [0, 0, 0], size: [0, 0, 0], encoding: 'bits+gzip', part: null },
      ],
    })
    expect([...p.keys()].sort()).toEqual(['m0', 'meta'])
    expect(unpackBitsLittle(gunzipSync(p.get('m0')!), 1)[0]).toBe(1)
  })

  it('writes an answer box into the RAS mask (stored order, i fastest)', () => {
    const ras = new Uint8Array(g.voxels)
    ras[g.rasIndex(...g.nativeToRasXYZ(0, 0, 0))] = 1
    ras[g.rasIndex(...g.nativeToRasXYZ(1, 1, 1))] = 1 // removed by the answer
    const box = { origin: [1, 1, 1] as Vec3, size: [2, 2, 1] as Vec3 }
    const changed = applyAnswer(g, ras, answerOf(box, Uint8Array.from([0, 1, 1, 1])))
    expect(changed).toBe(4)
    const on = (i: number, j: number, k: number): number => ras[g.rasIndex(...g.nativeToRasXYZ(i, j, k))]
    expect([on(0, 0, 0), on(1, 1, 1), on(2, 1, 1), on(1, 2, 1), on(2, 2, 1)]).toEqual([1, 0, 1, 1, 1])
    expect(countNonzero(ras)).toBe(4)
  })

  it('finds the edited key slices along the view axis in stored indices', () => {
    const base = new Uint8Array(g.voxels)
    const edited = base.slice()
    // Edits on stored slices k = 0 and k = 3 (stored axis 2 feeds some RAS axis).
    for (const k of [0, 3]) edited[g.rasIndex(...g.nativeToRasXYZ(1, 1, k))] = 1
    const rasAxis = g.axisOf.indexOf(2) as 0 | 1 | 2
    expect(keySlices(g, edited, base, rasAxis)).toEqual({ axis: 2, slices: [0, 3] })
  })
})

describe('decodeAnswer', () => {
  it('is null for an empty answer (nothing changes)', () => {
    expect(decodeAnswer({ origin: [0, 0, 0], size: [0, 0, 0], encoding: 'bits+gzip', data: '' })).toBeNull()
  })

  it('refuses an unknown encoding', () => {
    expect(() => decodeAnswer({ origin: [0, 0, 0], size: [1, 1, 1], encoding: 'u8', data: 'AA==' })).toThrow(/encoding/)
  })

  it('refuses an answer whose bits do not fill its box (never writes a partial box)', () => {
    const short = { origin: [0, 0, 0], size: [4, 4, 1], encoding: 'bits+gzip', data: toBase64(gzipSync(new Uint8Array(1))) }
    expect(() => decodeAnswer(short)).toThrow(/bytes for a box/)
    const ras = new Uint8Array(16)
    expect(() => applyAnswer(new Geometry([4, 4, 1], [1, 2, 3]), ras, short)).toThrow(/bytes for a box/)
  })
})

describe('paintSphere', () => {
  it('paints a ball within 5 % of the analytic volume on anisotropic spacing', () => {
    const dims: Vec3 = [64, 64, 32]
    const grid: Grid = { dims, spacing: [0.8, 0.8, 2.5], hu: new Float32Array(0) }
    const bm = new Uint8Array(dims[0] * dims[1] * dims[2])
    const r = 15
    const n = paintSphere(grid, bm, [32, 32, 16], r, 1)
    const analytic = (4 / 3) * Math.PI * r ** 3 / (0.8 * 0.8 * 2.5)
    expect(n).toBe(countNonzero(bm))
    expect(Math.abs(n - analytic) / analytic).toBeLessThan(0.05)
    // Erasing the same ball clears it; clipped at the volume's edge without wrapping.
    expect(paintSphere(grid, bm, [32, 32, 16], r, 0)).toBe(n)
    expect(countNonzero(bm)).toBe(0)
    paintSphere(grid, bm, [0, 0, 0], 4, 1)
    expect(bm[dims[0] - 1]).toBe(0)
    expect(bm[0]).toBe(1)
  })
})

describe('operationLabel', () => {
  it('names operations for the undo history', () => {
    expect(operationLabel({ operation: 'margin', params: { mm: 3 } })).toBe('margin +3 mm')
    expect(operationLabel({ operation: 'margin', params: { mm: -2 } })).toBe('margin -2 mm')
    expect(operationLabel({ operation: 'islands', params: { mode: 'keep_largest' } })).toBe('islands: keep largest')
    expect(operationLabel({ operation: 'smooth', params: { method: 'closing', mm: 2 } })).toBe('closing 2 mm')
  })
})

describe('an accepted answer in the edit session', () => {
  it('is one undoable edit whose patch box is the changed voxels', async () => {
    const g = new Geometry(DIMS, [-1, 2, 3])
    const session = new EditSession(1, g, 7, () => Promise.resolve(new Uint8Array(g.voxels)))
    const bm = await session.ensure('liver')
    const box = { origin: [1, 1, 1] as Vec3, size: [2, 2, 2] as Vec3 }
    session.begin('liver')
    applyAnswer(g, bm, answerOf(box, new Uint8Array(8).fill(1)))
    const op = session.commit('margin +3 mm')!
    expect(op.idx.length).toBe(8)
    expect(session.undoStack).toHaveLength(1)
    const [patch] = session.patchBoxes()
    expect(patch.box).toEqual(box)
    expect(countNonzero(decodePatchBox(patch))).toBe(8)
    session.undo()
    expect(countNonzero(bm)).toBe(0)
    expect(session.hasChanges).toBe(false)
  })
})
