import { gunzipSync } from 'fflate'
import { describe, expect, it } from 'vitest'
import { EditSession, type MaskLoader } from '../src/core/editSession'
import { Geometry, type Vec3, unpackBitsLittle } from '../src/core/geometry'
import {
  decodeBox,
  decodePatchBox,
  encodeBox,
  encodePatch,
  encodePatchBox,
  fromBase64,
  type PatchBox,
  multipart,
  randomKey,
  sameSave,
  toBase64,
} from '../src/core/patch'

const DIMS: Vec3 = [6, 5, 4]

/** The parts of a multipart/form-data body: name → bytes. */
function parseMultipart(body: Uint8Array, contentType: string): Map<string, Uint8Array> {
  const boundary = /boundary=(.+)$/.exec(contentType)![1]
  const text = new TextDecoder('latin1').decode(body)
  const out = new Map<string, Uint8Array>()
  const parts = text.split(`--${boundary}`)
  expect(parts.at(-1)).toBe('--\r\n')
  let offset = 0
  for (const part of parts) {
    const start = offset
    offset += part.length + boundary.length + 2
    if (!part.startsWith('\r\nContent-Disposition')) continue
    const name = /name="([^"]+)"/.exec(part)![1]
    const headerEnd = part.indexOf('\r\n\r\n') + 4
    out.set(name, body.slice(start + headerEnd, start + part.length - 2))
  }
  return out
}

/** A loader serving masks per version from a table (RAS order), zeros when absent. */
function loader(geometry: Geometry, table: Record<string, Uint8Array> = {}): MaskLoader {
  return async (version, structure) => table[`${version}:${structure}`]?.slice() ?? new Uint8Array(geometry.voxels)
}

describe('patch encoding', () => {
  it('round trips a box through bits and bits+gzip', () => {
    const box = { origin: [1, 2, 0] as Vec3, size: [5, 3, 2] as Vec3 }
    const sparse = new Uint8Array(30)
    sparse[7] = 1
    const dense = Uint8Array.from({ length: 30 }, (_, i) => (i % 2 ? 1 : 0))
    const big = new Uint8Array(4000).fill(1)
    for (const voxels of [sparse, dense]) {
      const p = encodePatchBox('liver', box, voxels)
      expect(p.structure).toBe('liver')
      expect([...decodePatchBox(p)]).toEqual([...voxels])
    }
    // Gzip only when smaller: a short stroke stays raw bits, a large uniform box is compressed.
    expect(encodePatchBox('a', box, sparse).encoding).toBe('bits')
    const bigBox = { origin: [0, 0, 0] as Vec3, size: [40, 10, 10] as Vec3 }
    const p = encodePatchBox('a', bigBox, big)
    expect(p.encoding).toBe('bits+gzip')
    expect([...unpackBitsLittle(gunzipSync(p.bytes), 4000)]).toEqual([...big])
  })

  it('encodes deterministically (a retried save is recognised)', () => {
    const box = { origin: [0, 0, 0] as Vec3, size: [8, 8, 8] as Vec3 }
    const voxels = Uint8Array.from({ length: 512 }, (_, i) => (i % 7 === 0 ? 1 : 0))
    const a = encodePatchBox('x', box, voxels)
    const b = encodePatchBox('x', box, voxels.slice())
    expect([...a.bytes]).toEqual([...b.bytes])
    const prior = { key: 'k', baseVersionId: 3, branch: false, boxes: [a] }
    expect(sameSave(prior, 3, false, [b])).toBe(true)
    expect(sameSave(prior, 4, false, [b])).toBe(false)
    expect(sameSave(prior, 3, true, [b])).toBe(false)
    const other = encodePatchBox('x', box, voxels.map((v, i) => (i === 1 ? 1 : v)))
    expect(sameSave(prior, 3, false, [other])).toBe(false)
    expect(sameSave(prior, 3, false, [])).toBe(false)
  })

  it('builds the multipart patch save: meta JSON, small boxes inline (base64), larger ones as parts', () => {
    const box = { origin: [1, 0, 2] as Vec3, size: [2, 2, 1] as Vec3 }
    // A box whose bits do not compress: 2,000 bytes, far more than a part's framing, so it goes as a part.
    let seed = 12345
    const noisy = Uint8Array.from({ length: 16000 }, () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 16) & 1)
    const bigBox = { origin: [0, 0, 0] as Vec3, size: [40, 40, 10] as Vec3 }
    const boxes = [encodePatchBox('liver', box, Uint8Array.from([1, 0, 0, 1])), encodePatchBox('kidney_left', bigBox, noisy), encodePatchBox('spleen', box, Uint8Array.from([0, 1, 1, 0]))]
    expect(boxes[1].encoding).toBe('bits')
    const plan = encodePatch(7, boxes, 'fix tail', true, 'key123')
    expect(plan.bodyBytes).toBe(plan.body.length)
    expect(plan.contentType).toMatch(/^multipart\/form-data; boundary=ml/)
    const parts = parseMultipart(plan.body, plan.contentType)
    expect([...parts.keys()].sort()).toEqual(['b0', 'meta'])
    const meta = JSON.parse(new TextDecoder().decode(parts.get('meta')))
    expect(meta).toEqual({
      base_version_id: 7,
      message: 'fix tail',
      branch: true,
      idempotency_key: 'key123',
      patches: [
        { structure: 'liver', origin: [1, 0, 2], size: [2, 2, 1], encoding: 'bits', data: toBase64(Uint8Array.from([9])) },
        { structure: 'kidney_left', origin: [0, 0, 0], size: [40, 40, 10], encoding: 'bits', part: 'b0' },
        { structure: 'spleen', origin: [1, 0, 2], size: [2, 2, 1], encoding: 'bits', data: toBase64(Uint8Array.from([6])) },
      ],
    })
    expect([...decodePatchBox({ box, bytes: fromBase64(meta.patches[0].data), encoding: 'bits' })]).toEqual([1, 0, 0, 1])
    expect([...decodePatchBox({ box: bigBox, bytes: parts.get('b0')!, encoding: 'bits' })]).toEqual([...noisy])
    expect([...decodePatchBox({ box, bytes: fromBase64(meta.patches[2].data), encoding: 'bits' })]).toEqual([0, 1, 1, 0])
  })

  it('sends a box inline only when that is the smaller body', () => {
    const sizes = [1, 17, 60, 150, 200, 230, 260, 400, 3000]
    for (const n of sizes) {
      const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37 + 11) % 256)
      const box: PatchBox = { structure: 'liver', box: { origin: [0, 0, 0], size: [n * 8, 1, 1] }, bytes, encoding: 'bits' }
      const chosen = encodePatch(3, [box], 'm', false, 'k', 'BOUNDARY0123')
      // The same save with the box forced into a part of its own, for the comparison.
      const meta = JSON.stringify({ base_version_id: 3, message: 'm', idempotency_key: 'k', patches: [{ structure: 'liver', origin: [0, 0, 0], size: [n * 8, 1, 1], encoding: 'bits', part: 'b0' }] })
      const asPart = multipart([['meta', meta]], [['b0', bytes]], 'BOUNDARY0123').body.length
      expect(chosen.bodyBytes, `${n} bytes`).toBeLessThanOrEqual(asPart)
      const inline = JSON.parse(new TextDecoder().decode(parseMultipart(chosen.body, chosen.contentType).get('meta'))).patches[0].data !== undefined
      expect(inline, `${n} bytes`).toBe(chosen.bodyBytes < asPart)
    }
  })

  it('leaves default meta fields out', () => {
    const plan = encodePatch(null, [], '', false, 'k')
    const meta = JSON.parse(new TextDecoder().decode(parseMultipart(plan.body, plan.contentType).get('meta')))
    expect(meta).toEqual({ base_version_id: null, idempotency_key: 'k', patches: [] })
  })

  it('multipart keeps binary bytes intact (a fixed boundary for the check)', () => {
    const bytes = Uint8Array.from({ length: 256 }, (_, i) => i)
    const { body, contentType } = multipart([['a', 'x']], [['f', bytes]], 'BOUNDARY')
    expect(contentType).toBe('multipart/form-data; boundary=BOUNDARY')
    expect([...parseMultipart(body, contentType).get('f')!]).toEqual([...bytes])
  })

  it('base64 and draft boxes round trip', () => {
    const bytes = Uint8Array.from({ length: 70000 }, (_, i) => (i * 31) % 256)
    expect([...fromBase64(toBase64(bytes))]).toEqual([...bytes])
    const box = { origin: [0, 0, 0] as Vec3, size: [3, 3, 3] as Vec3 }
    const voxels = Uint8Array.from({ length: 27 }, (_, i) => i % 2)
    expect([...decodeBox(encodeBox(voxels), box)]).toEqual([...voxels])
  })

  it('random keys are 12 characters and differ', () => {
    const keys = new Set(Array.from({ length: 50 }, () => randomKey()))
    expect(keys.size).toBe(50)
    for (const k of keys) expect(k).toMatch(/^[0-9a-z]{12}$/)
  })
})

describe('EditSession', () => {
  const geometry = new Geometry(DIMS, [-2, 3, 1])

  it('records undo steps, tracks dirty structures, and redoes', async () => {
    const s = new EditSession(1, geometry, null, loader(geometry))
    let changes = 0
    s.onChange = () => changes++
    const bm = await s.ensure('liver')
    expect(s.count('liver')).toBe(0)
    s.begin('liver')
    bm[geometry.rasIndex(1, 1, 1)] = 1
    bm[geometry.rasIndex(2, 1, 1)] = 1
    const op = s.commit('brush')!
    expect(op.idx.length).toBe(2)
    expect(s.dirty).toEqual(['liver'])
    expect(s.count('liver')).toBe(2)
    s.begin('liver')
    expect(s.commit('nothing')).toBeNull()
    expect(s.undo()!.label).toBe('brush')
    expect(s.hasChanges).toBe(false)
    expect(s.undo()).toBeNull()
    expect(s.redo()!.label).toBe('brush')
    expect(s.isDirty('liver')).toBe(true)
    expect(changes).toBe(3)
  })

  it('cancel and revert put the snapshot back', async () => {
    const s = new EditSession(1, geometry, null, loader(geometry))
    const bm = await s.ensure('liver')
    s.begin('liver')
    bm[0] = 1
    s.revert()
    expect(bm[0]).toBe(0)
    expect(s.busy).toBe(true)
    bm[1] = 1
    s.cancel()
    expect(bm[1]).toBe(0)
    expect(s.busy).toBe(false)
  })

  it('patch boxes carry exactly the changed voxels in stored order', async () => {
    const base = new Uint8Array(geometry.voxels)
    base[geometry.rasIndex(0, 0, 0)] = 1
    const s = new EditSession(1, geometry, 5, loader(geometry, { '5:liver': base }))
    const bm = await s.ensure('liver')
    s.begin('liver')
    const painted: Vec3[] = [
      [3, 2, 1],
      [4, 2, 1],
      [3, 3, 2],
    ]
    for (const v of painted) bm[geometry.rasIndex(...v)] = 1
    bm[geometry.rasIndex(0, 0, 0)] = 0
    s.commit('brush')
    const [box] = s.patchBoxes()
    const voxels = decodePatchBox(box)
    // Applying the box to the base reproduces the working copy.
    const rebuilt = base.slice()
    geometry.applyBox(rebuilt, box.box, voxels)
    expect([...rebuilt]).toEqual([...bm])
    const changed = [...painted, [0, 0, 0] as Vec3].map((v) => geometry.rasToNativeIJK(...v))
    for (let a = 0; a < 3; a++) {
      expect(box.box.origin[a]).toBe(Math.min(...changed.map((c) => c[a])))
      expect(box.box.origin[a] + box.box.size[a] - 1).toBe(Math.max(...changed.map((c) => c[a])))
    }
    s.markSaved(6, false)
    expect(s.baseVersionId).toBe(6)
    expect(s.hasChanges).toBe(false)
    expect(s.patchBoxes()).toEqual([])
  })

  it('a draft restores the same edit on a fresh session of the same base', async () => {
    const base = new Uint8Array(geometry.voxels)
    base[geometry.rasIndex(1, 1, 1)] = 1
    const load = loader(geometry, { '5:liver': base })
    const s = new EditSession(1, geometry, 5, load)
    const bm = await s.ensure('liver')
    s.begin('liver')
    bm[geometry.rasIndex(2, 3, 1)] = 1
    bm[geometry.rasIndex(1, 1, 1)] = 0
    s.commit('brush')
    s.branch = true
    const draft = s.draftPayload('liver')!
    expect(draft).toMatchObject({ format: 'maskloop-draft/1', base_version_id: 5, branch: true, active: 'liver' })
    expect(Object.keys(draft.structures)).toEqual(['liver'])
    const round = JSON.parse(JSON.stringify(draft))
    const t = new EditSession(1, geometry, 5, load)
    expect(await t.restoreDraft(round)).toEqual(['liver'])
    expect([...t.edited.get('liver')!]).toEqual([...bm])
    expect(t.dirty).toEqual(['liver'])
    expect(t.branch).toBe(true)
    expect(new EditSession(1, geometry, 5, load).draftPayload(null)).toBeNull()
  })

  it('rebase re-applies the changed boxes on the new head and drops the history', async () => {
    const head = new Uint8Array(geometry.voxels)
    head[geometry.rasIndex(5, 4, 3)] = 1
    const s = new EditSession(1, geometry, 5, loader(geometry, { '6:liver': head }))
    const bm = await s.ensure('liver')
    s.begin('liver')
    bm[geometry.rasIndex(1, 1, 1)] = 1
    s.commit('brush')
    expect(await s.rebase(6)).toEqual(['liver'])
    expect(s.baseVersionId).toBe(6)
    expect(s.undoStack).toEqual([])
    const w = s.edited.get('liver')!
    expect(w[geometry.rasIndex(1, 1, 1)]).toBe(1)
    expect(w[geometry.rasIndex(5, 4, 3)]).toBe(1)
    expect(s.dirty).toEqual(['liver'])
  })

  it('discard returns to the base; release frees clean structures only', async () => {
    const s = new EditSession(1, geometry, null, loader(geometry))
    const liver = await s.ensure('liver')
    await s.ensure('spleen')
    await s.ensure('aorta')
    s.begin('liver')
    liver[3] = 1
    s.commit('brush')
    s.release('spleen')
    expect([...s.edited.keys()].sort()).toEqual(['liver', 'spleen'])
    s.discard()
    expect(s.hasChanges).toBe(false)
    expect(liver[3]).toBe(0)
    s.release('spleen')
    expect([...s.edited.keys()]).toEqual(['spleen'])
  })

  it('loads each mask once even when asked twice at the same time', async () => {
    let calls = 0
    const s = new EditSession(1, geometry, 3, async () => {
      calls++
      return new Uint8Array(geometry.voxels)
    })
    const [a, b] = await Promise.all([s.ensure('liver'), s.ensure('liver')])
    expect(a).toBe(b)
    expect(calls).toBe(1)
  })
})
