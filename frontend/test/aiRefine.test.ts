import { gunzipSync, gzipSync } from 'fflate'
import { describe, expect, it } from 'vitest'
import {
  type Click,
  ClickHistory,
  answerBox,
  answerSummary,
  applyClickAnswer,
  buildClickRequest,
  clickAt,
  limitClicks,
  previousOf,
  refineLabel,
} from '../src/core/aiRefine'
import { EditSession } from '../src/core/editSession'
import { Geometry, type Vec3, packBitsLittle, unpackBitsLittle } from '../src/core/geometry'
import { fromBase64, toBase64 } from '../src/core/patch'

const DIMS: Vec3 = [6, 5, 4]

const pos = (i: number, j: number, k: number): Click => ({ voxel: [i, j, k], positive: true })
const neg = (i: number, j: number, k: number): Click => ({ voxel: [i, j, k], positive: false })

/** An answer as the server encodes it: bits (x fastest), gzip, base64. */
function answerOf(origin: Vec3, size: Vec3, voxels: Uint8Array) {
  const data = toBase64(gzipSync(packBitsLittle(voxels)))
  return { structure: 'liver', origin, size, encoding: 'bits+gzip', data, voxels: voxels.reduce((n, v) => n + v, 0), model: 'm', model_version_id: 1, timings: { worker_ms: 12.4 } }
}

/** Stored-order 0/1 of a RAS mask. */
function stored(g: Geometry, ras: Uint8Array): Uint8Array {
  const out = new Uint8Array(g.voxels)
  g.toNative(ras, out)
  return out
}

const nativeIndex = (i: number, j: number, k: number): number => i + j * DIMS[0] + k * DIMS[0] * DIMS[1]

describe('the click history', () => {
  it('continues the session of the newest answer still applied, and forgets an undone one', () => {
    const history = new ClickHistory<string>()
    expect(history.clicksFor('liver', [])).toEqual([])
    history.record('liver', 'op1', [pos(1, 1, 1)])
    history.record('liver', 'op2', [pos(1, 1, 1), neg(2, 2, 2)])
    history.record('spleen', 'op3', [pos(3, 3, 3)])
    expect(history.clicksFor('liver', ['op1', 'op2', 'op3'])).toEqual([pos(1, 1, 1), neg(2, 2, 2)])
    expect(history.clicksFor('spleen', ['op1', 'op2', 'op3'])).toEqual([pos(3, 3, 3)])
    // op2 undone: the next click refines the first answer with its single click.
    expect(history.clicksFor('liver', ['op1', 'brush'])).toEqual([pos(1, 1, 1)])
    expect(history.clicksFor('liver', ['brush'])).toEqual([])
  })

  it('hands out copies, restarts one structure, and prunes steps gone from both stacks', () => {
    const history = new ClickHistory<string>()
    const clicks = [pos(1, 1, 1)]
    history.record('liver', 'op1', clicks)
    clicks[0].voxel[0] = 5
    const got = history.clicksFor('liver', ['op1'])
    expect(got).toEqual([pos(1, 1, 1)])
    got.push(neg(0, 0, 0))
    expect(history.clicksFor('liver', ['op1'])).toEqual([pos(1, 1, 1)])
    history.record('spleen', 'op2', [pos(2, 2, 2)])
    history.restart('liver')
    expect(history.clicksFor('liver', ['op1', 'op2'])).toEqual([])
    expect(history.clicksFor('spleen', ['op1', 'op2'])).toEqual([pos(2, 2, 2)])
    history.record('liver', 'op4', [pos(0, 1, 2)])
    history.prune([], ['op4'])
    expect(history.clicksFor('spleen', ['op2'])).toEqual([])
    expect(history.clicksFor('liver', ['op4'])).toEqual([pos(0, 1, 2)])
  })

  it('follows a real edit session: undo and redo of answers', () => {
    const g = new Geometry(DIMS, [1, 2, 3])
    const session = new EditSession(1, g, null, () => Promise.resolve(new Uint8Array(g.voxels)))
    const history = new ClickHistory<object>()
    return session.ensure('liver').then((bm) => {
      session.begin('liver')
      bm[0] = 1
      const op1 = session.commit('a1')!
      history.record('liver', op1, [pos(0, 0, 0)])
      session.begin('liver')
      bm[1] = 1
      const op2 = session.commit('a2')!
      history.record('liver', op2, [pos(0, 0, 0), neg(3, 0, 0)])
      expect(history.clicksFor('liver', session.undoStack)).toHaveLength(2)
      session.undo()
      expect(history.clicksFor('liver', session.undoStack)).toEqual([pos(0, 0, 0)])
      session.redo()
      expect(history.clicksFor('liver', session.undoStack)).toHaveLength(2)
      session.discard()
      history.prune(session.undoStack, session.redoStack)
      expect(history.clicksFor('liver', session.undoStack)).toEqual([])
    })
  })
})

describe('limiting the clicks of a request', () => {
  it('keeps the newest, and a positive one when the newest are all negative', () => {
    const clicks = [pos(0, 0, 0), neg(1, 0, 0), pos(2, 0, 0), neg(3, 0, 0), neg(4, 0, 0)]
    expect(limitClicks(clicks, 8)).toEqual(clicks)
    expect(limitClicks(clicks, 3)).toEqual([pos(2, 0, 0), neg(3, 0, 0), neg(4, 0, 0)])
    expect(limitClicks(clicks, 2)).toEqual([pos(2, 0, 0), neg(4, 0, 0)])
    expect(limitClicks([neg(0, 0, 0), neg(1, 0, 0)], 1)).toEqual([neg(1, 0, 0)])
    expect(limitClicks(clicks, 0)).toEqual([])
  })
})

describe('the click request', () => {
  it('splits the clicks by sign in order, with the branch flag and the model only when named', () => {
    const body = buildClickRequest('liver', [pos(1, 2, 3), neg(0, 0, 0), pos(4, 4, 3)], null)
    expect(body).toEqual({ structure: 'liver', positive: [[1, 2, 3], [4, 4, 3]], negative: [[0, 0, 0]], previous: null, branch: false })
    const named = buildClickRequest('liver', [pos(1, 2, 3)], null, { branch: true, model: 'tiny' })
    expect(named.branch).toBe(true)
    expect(named.model).toBe('tiny')
  })

  it('refuses a click outside the volume', () => {
    const g = new Geometry(DIMS, [1, 2, 3])
    expect(clickAt(g, [5, 4, 3], true)).toEqual(pos(5, 4, 3))
    expect(() => clickAt(g, [6, 0, 0], true)).toThrow(/outside the volume/)
    expect(() => clickAt(g, [0, -1, 0], false)).toThrow(/outside the volume/)
  })

  it('labels and summarises', () => {
    expect(refineLabel([pos(0, 0, 0), neg(1, 1, 1), pos(2, 2, 2)])).toBe('AI refine (2+ 1−)')
    expect(answerSummary({ voxels: 1234, timings: { worker_ms: 80.6 } }, 412.3)).toBe('412 ms · model 81 ms · 1,234 voxels in the box')
    expect(answerSummary({ voxels: 0, timings: {} }, 9)).toBe('9 ms · 0 voxels in the box')
  })
})

describe.each([
  ['RAS', [1, 2, 3]],
  ['LPS', [-1, -2, 3]],
  ['permuted', [2, -3, 1]],
])('boxes on a %s scan', (_name, perm) => {
  const g = new Geometry(DIMS, perm)

  it('sends the current mask as its stored-order non-zero box (null when empty)', () => {
    const ras = new Uint8Array(g.voxels)
    expect(previousOf(g, ras)).toBeNull()
    const set: Vec3[] = [
      [1, 1, 1],
      [3, 2, 1],
      [1, 2, 2],
    ]
    for (const [i, j, k] of set) {
      const [x, y, z] = g.nativeToRasXYZ(i, j, k)
      ras[g.rasIndex(x, y, z)] = 1
    }
    const previous = previousOf(g, ras)!
    expect(previous.origin).toEqual([1, 1, 1])
    expect(previous.size).toEqual([3, 2, 2])
    expect(previous.encoding).toBe('bits+gzip')
    const voxels = unpackBitsLittle(gunzipSync(fromBase64(previous.data)), 12)
    const expected = new Uint8Array(12)
    for (const [i, j, k] of set) expected[i - 1 + (j - 1) * 3 + (k - 1) * 6] = 1
    expect([...voxels]).toEqual([...expected])
  })

  it("replaces exactly the answer's box: voxels outside it are kept, inside it are the answer's", () => {
    const ras = new Uint8Array(g.voxels)
    const keepOutside: Vec3 = [0, 0, 0]
    const clearedInside: Vec3 = [2, 2, 2]
    for (const [i, j, k] of [keepOutside, clearedInside]) {
      const [x, y, z] = g.nativeToRasXYZ(i, j, k)
      ras[g.rasIndex(x, y, z)] = 1
    }
    const origin: Vec3 = [1, 1, 1]
    const size: Vec3 = [3, 3, 2]
    const box = new Uint8Array(18)
    box[0] = 1 // (1,1,1)
    box[2 + 1 * 3 + 1 * 9] = 1 // (3,2,2)
    const changed = applyClickAnswer(g, ras, answerOf(origin, size, box))
    expect(changed).toBe(3)
    const out = stored(g, ras)
    const set = [...out.keys()].filter((n) => out[n])
    expect(set.sort((a, b) => a - b)).toEqual([nativeIndex(0, 0, 0), nativeIndex(1, 1, 1), nativeIndex(3, 2, 2)].sort((a, b) => a - b))
  })

  it('refuses a box outside the volume or an unknown encoding', () => {
    const ras = new Uint8Array(g.voxels)
    const box = new Uint8Array(8)
    expect(() => applyClickAnswer(g, ras, answerOf([5, 0, 0], [2, 2, 2], box))).toThrow(/outside the volume/)
    expect(() => answerBox(g, { origin: [0, 0], size: [1, 1, 1], encoding: 'bits+gzip' })).toThrow(/no 3D box/)
    expect(() => answerBox(g, { origin: [0, 0, 0], size: [1, 1, 1], encoding: 'u8' })).toThrow(/encoding/)
    expect(answerBox(g, { origin: [0, 0, 0], size: [6, 5, 4], encoding: 'bits+gzip' })).toEqual({ origin: [0, 0, 0], size: [6, 5, 4] })
  })
})
