import { describe, expect, it } from 'vitest'
import { Geometry, type Vec3, countNonzero, packBitsLittle, unpackBitsLittle } from '../src/core/geometry'

/** Every axis permutation with every combination of flips: the 48 orientations a scan can be stored in. */
function allPermRAS(): number[][] {
  const perms = [
    [1, 2, 3],
    [1, 3, 2],
    [2, 1, 3],
    [2, 3, 1],
    [3, 1, 2],
    [3, 2, 1],
  ]
  const out: number[][] = []
  for (const p of perms) for (let flips = 0; flips < 8; flips++) out.push(p.map((a, i) => (flips & (1 << i) ? -a : a)))
  return out
}

const DIMS: Vec3 = [5, 4, 3]

/** A stored-order volume whose every voxel holds its own index + 1 (so reordering is visible). */
function numbered(dims: Vec3): Uint8Array {
  const out = new Uint8Array(dims[0] * dims[1] * dims[2])
  for (let i = 0; i < out.length; i++) out[i] = (i % 250) + 1
  return out
}

describe('Geometry: stored (NIfTI) order ↔ NiiVue RAS order', () => {
  it('identity permRAS keeps the order and the dims', () => {
    const g = new Geometry(DIMS, [1, 2, 3])
    expect(g.isIdentity).toBe(true)
    expect(g.rasDims).toEqual(DIMS)
    const native = numbered(DIMS)
    const ras = new Uint8Array(g.voxels)
    g.toRAS(native, ras)
    expect([...ras]).toEqual([...native])
  })

  it('rejects an invalid permRAS', () => {
    expect(() => new Geometry(DIMS, [1, 1, 3])).toThrow(/invalid permRAS/)
    expect(() => new Geometry(DIMS, [1, 2, 4])).toThrow(/invalid permRAS/)
  })

  for (const perm of allPermRAS()) {
    it(`round trips voxels and indices for permRAS ${perm.join(',')}`, () => {
      const g = new Geometry(DIMS, perm)
      const axisOf = perm.map((a) => Math.abs(a) - 1)
      expect(g.rasDims).toEqual(axisOf.map((a) => DIMS[a]))
      // Index maps are inverse bijections; a flipped axis runs backwards (RAS 0 is the last stored index).
      const seen = new Set<number>()
      const wrong: string[] = []
      for (let z = 0; z < g.rasDims[2]; z++)
        for (let y = 0; y < g.rasDims[1]; y++)
          for (let x = 0; x < g.rasDims[0]; x++) {
            const ijk = g.rasToNativeIJK(x, y, z)
            const n = ijk[0] + ijk[1] * DIMS[0] + ijk[2] * DIMS[0] * DIMS[1]
            const back = g.nativeToRasXYZ(...ijk)
            const coords = g.rasCoords(g.rasIndex(x, y, z))
            if (back.join() !== `${x},${y},${z}` || coords.join() !== back.join()) wrong.push(`xyz ${x},${y},${z}`)
            if (g.nativeIndexOfRas(g.rasIndex(x, y, z)) !== n) wrong.push(`index ${x},${y},${z}`)
            for (let p = 0; p < 3; p++) {
              const r = [x, y, z][p]
              if (ijk[axisOf[p]] !== (perm[p] < 0 ? g.rasDims[p] - 1 - r : r)) wrong.push(`axis ${p} at ${x},${y},${z}`)
            }
            seen.add(n)
          }
      expect(wrong).toEqual([])
      expect(seen.size).toBe(g.voxels)
      // Whole-volume reordering agrees with the index maps and inverts.
      const native = numbered(DIMS)
      const ras = new Uint8Array(g.voxels)
      g.toRAS(native, ras)
      expect([...ras]).toEqual(Array.from(ras, (_, i) => native[g.nativeIndexOfRas(i)]))
      const back = new Uint8Array(g.voxels)
      g.toNative(ras, back)
      expect([...back]).toEqual([...native])
    })
  }

  it('changedBox, extractBox and applyBox agree in stored order', () => {
    for (const perm of [
      [1, 2, 3],
      [-2, 3, -1],
      [3, -1, 2],
    ]) {
      const g = new Geometry(DIMS, perm)
      const base = new Uint8Array(g.voxels)
      const edited = base.slice()
      const touched: Vec3[] = [
        [1, 1, 0],
        [3, 2, 2],
        [2, 3, 1],
      ]
      for (const [i, j, k] of touched) edited[g.rasIndex(...g.nativeToRasXYZ(i, j, k))] = 1
      const box = g.changedBox(edited, base)!
      expect(box).toEqual({ origin: [1, 1, 0], size: [3, 3, 3] })
      const voxels = g.extractBox(edited, box)
      expect(voxels.length).toBe(27)
      expect(countNonzero(voxels)).toBe(3)
      // The box is x-fastest in stored order.
      expect(voxels[0 + 0 * 3 + 0 * 9]).toBe(1) // (1, 1, 0)
      expect(voxels[2 + 1 * 3 + 2 * 9]).toBe(1) // (3, 2, 2)
      const restored = base.slice()
      g.applyBox(restored, box, voxels)
      expect([...restored]).toEqual([...edited])
      expect(g.changedBox(edited, edited)).toBeNull()
    }
  })
})

describe('bit packing (numpy packbits, bitorder little)', () => {
  it('packs least significant bit first and round trips', () => {
    const bytes = Uint8Array.from([1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    const bits = packBitsLittle(bytes)
    expect([...bits]).toEqual([0b00000001, 0b00000110])
    expect([...unpackBitsLittle(bits, bytes.length)]).toEqual([...bytes])
  })

  it('round trips random masks of every length', () => {
    for (let n = 0; n < 40; n++) {
      const bytes = Uint8Array.from({ length: n }, (_, i) => ((i * 7919) % 3 === 0 ? 1 : 0))
      expect([...unpackBitsLittle(packBitsLittle(bytes), n)]).toEqual([...bytes])
    }
  })
})

/** A deterministic pseudo-random 0/1 (with some 7s: any non-zero counts) RAS bitmap, set only inside a box. */
function speckled(g: Geometry, seed: number, inside: { lo: Vec3; hi: Vec3 }, density: number): Uint8Array {
  const out = new Uint8Array(g.voxels)
  let s = seed
  const [dx, dy, dz] = g.rasDims
  for (let z = inside.lo[2]; z <= inside.hi[2] && z < dz; z++)
    for (let y = inside.lo[1]; y <= inside.hi[1] && y < dy; y++)
      for (let x = inside.lo[0]; x <= inside.hi[0] && x < dx; x++) {
        s = (s * 1103515245 + 12345) >>> 0
        if (s / 2 ** 32 < density) out[g.rasIndex(x, y, z)] = s & 1 ? 1 : 7
      }
  return out
}

/** The straightforward bounding box: every non-zero voxel mapped to stored order. */
function referenceBox(g: Geometry, ras: Uint8Array): { origin: Vec3; size: Vec3 } | null {
  const lo: Vec3 = [Infinity, Infinity, Infinity]
  const hi: Vec3 = [-1, -1, -1]
  for (let i = 0; i < ras.length; i++) {
    if (!ras[i]) continue
    const n = g.rasToNativeIJK(...g.rasCoords(i))
    for (let a = 0; a < 3; a++) {
      lo[a] = Math.min(lo[a], n[a])
      hi[a] = Math.max(hi[a], n[a])
    }
  }
  return hi[0] < 0 ? null : { origin: lo, size: [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1] }
}

describe('one-pass box encoding: nonzeroBox, packBox and applyBits equal the byte-per-voxel path', () => {
  // Row lengths divisible by 4 (read four voxels at a time) and not; boxes at the volume's edges and inside it.
  const cases: [Vec3, number[]][] = [
    [[8, 6, 5], [1, 2, 3]],
    [[8, 6, 5], [-3, 1, -2]],
    [[7, 5, 6], [2, -3, 1]],
    [[12, 4, 3], [-1, -2, 3]],
  ]
  it.each(cases)('on dims %j, permRAS %j', (dims, perm) => {
    const g = new Geometry(dims, perm)
    const [dx, dy, dz] = g.rasDims
    const regions = [
      { lo: [0, 0, 0] as Vec3, hi: [dx - 1, dy - 1, dz - 1] as Vec3 },
      { lo: [1, 2, 1] as Vec3, hi: [dx - 2, dy - 1, 2] as Vec3 },
      { lo: [dx - 1, 0, dz - 1] as Vec3, hi: [dx - 1, 0, dz - 1] as Vec3 },
      { lo: [3, 1, 0] as Vec3, hi: [3, 1, 0] as Vec3 },
    ]
    let seed = 1
    for (const region of regions) {
      for (const density of [0.05, 0.5, 1]) {
        const ras = speckled(g, seed++, region, density)
        const box = g.nonzeroBox(ras)
        expect(box).toEqual(referenceBox(g, ras))
        // The same result on a view that does not start on a word boundary (the byte-at-a-time path).
        const shifted = new Uint8Array(ras.length + 1)
        shifted.set(ras, 1)
        expect(g.nonzeroBox(shifted.subarray(1))).toEqual(box)
        if (!box) continue
        const bits = g.packBox(ras, box)
        expect([...bits]).toEqual([...packBitsLittle(g.extractBox(ras, box))])
        // Applying the bits to another bitmap: the same voxels as applyBox, and the count of changed voxels.
        const target = speckled(g, seed++, regions[0], 0.3)
        const expected = target.slice()
        const voxels = g.extractBox(ras, box)
        const before = g.extractBox(expected, box)
        g.applyBox(expected, box, voxels)
        let changes = 0
        for (let i = 0; i < voxels.length; i++) if (voxels[i] !== before[i]) changes++
        const got = target.slice()
        expect(g.applyBits(got, box, bits)).toBe(changes)
        expect([...got]).toEqual([...expected])
        // The preview's form: voxels that were 0 and are set come out as 2, the others as applyBox writes them.
        const marked = target.slice()
        expect(g.applyBits(marked, box, bits, 2)).toBe(changes)
        for (let i = 0; i < marked.length; i++) expect(marked[i]).toBe(expected[i] && !target[i] ? 2 : expected[i])
      }
    }
    expect(g.nonzeroBox(new Uint8Array(g.voxels))).toBeNull()
  })
})
