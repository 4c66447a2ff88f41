import { describe, expect, it } from 'vitest'
import { Geometry, type Vec3, countNonzero } from '../src/core/geometry'
import {
  type Point2,
  type ScissorsSpec,
  applyScissors,
  closePolygon,
  fromPlane,
  pointInPolygon,
  polygonMask,
  scissorsLabel,
  slabRange,
  toPlane,
  viewAxes,
} from '../src/core/scissors'

/** A small deterministic generator (tests must not depend on Math.random). */
function lcg(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    return s / 2 ** 32
  }
}

const cells = (mask: Uint8Array, width: number): Point2[] => {
  const out: Point2[] = []
  for (let i = 0; i < mask.length; i++) if (mask[i]) out.push([i % width, Math.floor(i / width)])
  return out
}

describe('polygonMask', () => {
  it('takes the pixels whose centres are inside a rectangle with half-voxel corners', () => {
    const mask = polygonMask(8, 6, [
      [1.5, 0.5],
      [4.5, 0.5],
      [4.5, 3.5],
      [1.5, 3.5],
    ])
    const expected: Point2[] = []
    for (let y = 1; y <= 3; y++) for (let x = 2; x <= 4; x++) expected.push([x, y])
    expect(cells(mask, 8)).toEqual(expected)
  })

  it('decides every pixel as the crossing test does, for concave and self-crossing polygons', () => {
    const rand = lcg(7)
    for (let trial = 0; trial < 60; trial++) {
      const n = 3 + Math.floor(rand() * 9)
      const polygon: Point2[] = []
      for (let i = 0; i < n; i++) polygon.push([rand() * 30 - 5, rand() * 24 - 4])
      // Some vertices on whole voxel positions: edges through voxel centres are the delicate case.
      if (trial % 3 === 0) for (const p of polygon) p[0] = Math.round(p[0])
      if (trial % 4 === 0) for (const p of polygon) p[1] = Math.round(p[1])
      const mask = polygonMask(21, 17, polygon)
      for (let y = 0; y < 17; y++) {
        for (let x = 0; x < 21; x++) expect(mask[y * 21 + x], `trial ${trial} at ${x},${y}`).toBe(pointInPolygon(x, y, polygon) ? 1 : 0)
      }
    }
  })

  it('gives two polygons sharing an edge disjoint pixels that cover their union', () => {
    const left: Point2[] = [
      [0, 0],
      [5, 0],
      [7, 9],
      [0, 9],
    ]
    const right: Point2[] = [
      [5, 0],
      [12, 0],
      [12, 9],
      [7, 9],
    ]
    const a = polygonMask(14, 11, left)
    const b = polygonMask(14, 11, right)
    const both = polygonMask(14, 11, [
      [0, 0],
      [12, 0],
      [12, 9],
      [0, 9],
    ])
    for (let i = 0; i < a.length; i++) {
      expect(a[i] & b[i]).toBe(0)
      expect(a[i] | b[i]).toBe(both[i])
    }
  })

  it('clips to the plane and ignores fewer than three vertices', () => {
    const mask = polygonMask(4, 4, [
      [-10, -10],
      [10, -10],
      [10, 10],
      [-10, 10],
    ])
    expect(countNonzero(mask)).toBe(16)
    expect(
      countNonzero(
        polygonMask(4, 4, [
          [0, 0],
          [3, 3],
        ]),
      ),
    ).toBe(0)
  })
})

describe('closePolygon', () => {
  it('merges repeated points (a double-click) and the repeated first vertex', () => {
    expect(
      closePolygon([
        [1, 1],
        [5, 1],
        [5, 1.1],
        [5, 6],
        [1.05, 1],
      ]),
    ).toEqual([
      [1, 1],
      [5, 1],
      [5, 6],
    ])
  })

  it('refuses fewer than three distinct vertices or no area', () => {
    expect(
      closePolygon([
        [1, 1],
        [5, 1],
        [5, 1],
      ]),
    ).toBeNull()
    expect(
      closePolygon([
        [0, 0],
        [2, 2],
        [4, 4],
      ]),
    ).toBeNull()
  })
})

describe('slabRange', () => {
  it('covers the whole volume or the slices centred on the current one, clipped', () => {
    expect(slabRange({ kind: 'volume' }, 7, 20)).toEqual([0, 19])
    expect(slabRange({ kind: 'slab', slices: 1 }, 7, 20)).toEqual([7, 7])
    expect(slabRange({ kind: 'slab', slices: 5 }, 7, 20)).toEqual([5, 9])
    expect(slabRange({ kind: 'slab', slices: 4 }, 7, 20)).toEqual([6, 9])
    expect(slabRange({ kind: 'slab', slices: 9 }, 1, 20)).toEqual([0, 5])
    expect(slabRange({ kind: 'slab', slices: 9 }, 18, 20)).toEqual([14, 19])
    expect(slabRange({ kind: 'slab', slices: 0 }, 3, 20)).toEqual([3, 3])
  })
})

describe('view axes', () => {
  it('match the brush planes and round-trip a point', () => {
    expect(viewAxes(0)).toEqual([0, 1, 2])
    expect(viewAxes(1)).toEqual([0, 2, 1])
    expect(viewAxes(2)).toEqual([1, 2, 0])
    for (const plane of [0, 1, 2]) {
      const ras: Vec3 = [3.5, 7.25, 11]
      const [, , n] = viewAxes(plane)
      expect(fromPlane(plane, toPlane(plane, ras), ras[n])).toEqual(ras)
    }
  })
})

/** The RAS grid of a geometry filled from a stored-order predicate. */
function rasMask(g: Geometry, set: (i: number, j: number, k: number) => boolean): Uint8Array {
  const native = new Uint8Array(g.voxels)
  const [ni, nj, nk] = g.nativeDims
  for (let k = 0; k < nk; k++) for (let j = 0; j < nj; j++) for (let i = 0; i < ni; i++) native[i + j * ni + k * ni * nj] = set(i, j, k) ? 1 : 0
  const ras = new Uint8Array(g.voxels)
  g.toRAS(native, ras)
  return ras
}

/**
 * The stored voxels a scissors spec must change, computed voxel by voxel in the stored order: each stored voxel's
 * RAS position decides (the reference the RAS-grid implementation is checked against).
 */
function expectedNative(g: Geometry, before: Uint8Array, spec: ScissorsSpec): Uint8Array {
  const [ni, nj, nk] = g.nativeDims
  const [u, v, n] = viewAxes(spec.plane)
  const [first, last] = slabRange(spec.extent, spec.slice, g.rasDims[n])
  const nativeBefore = new Uint8Array(g.voxels)
  g.toNative(before, nativeBefore)
  const out = nativeBefore.slice()
  for (let k = 0; k < nk; k++) {
    for (let j = 0; j < nj; j++) {
      for (let i = 0; i < ni; i++) {
        const ras = g.nativeToRasXYZ(i, j, k)
        if (ras[n] < first || ras[n] > last) continue
        const inside = pointInPolygon(ras[u], ras[v], spec.polygon)
        if (inside !== (spec.region === 'inside')) continue
        out[i + j * ni + k * ni * nj] = spec.action === 'erase' ? 0 : 1
      }
    }
  }
  return out
}

// RAS-canonical dims 12 × 10 × 8; each orientation stores them permuted and flipped (same anatomy in the world).
const ORIENTATIONS: [string, Vec3, number[]][] = [
  ['RAS', [12, 10, 8], [1, 2, 3]],
  ['LPS', [12, 10, 8], [-1, -2, 3]],
  ['PIR (stored sagittal-first)', [10, 8, 12], [3, -1, -2]],
]

describe('applyScissors on RAS, LPS and permuted scans', () => {
  const polygon: Point2[] = [
    [2.3, 1.6],
    [9.2, 2.4],
    [7.7, 6.1],
    [4.4, 5],
    [3.1, 7.9],
  ]
  for (const [name, nativeDims, perm] of ORIENTATIONS) {
    const g = new Geometry(nativeDims, perm)
    const blob = (i: number, j: number, k: number): boolean => (i * 7 + j * 3 + k * 5) % 4 !== 0 && i > 0
    for (const plane of [0, 1, 2]) {
      for (const extent of [{ kind: 'volume' }, { kind: 'slab', slices: 3 }] as const) {
        for (const region of ['inside', 'outside'] as const) {
          for (const action of ['erase', 'fill'] as const) {
            it(`${name}: ${action} ${region}, plane ${plane}, ${extent.kind}`, () => {
              const before = rasMask(g, blob)
              const spec: ScissorsSpec = { plane, polygon, slice: 4, extent, region, action }
              const bm = before.slice()
              const changed = applyScissors(g.rasDims, bm, spec, action === 'erase' ? 0 : 1)
              const native = new Uint8Array(g.voxels)
              g.toNative(bm, native)
              const expected = expectedNative(g, before, spec)
              expect(Array.from(native)).toEqual(Array.from(expected))
              let diff = 0
              for (let i = 0; i < bm.length; i++) if (bm[i] !== before[i]) diff++
              expect(changed).toBe(diff)
              expect(changed).toBeGreaterThan(0)
            })
          }
        }
      }
    }
  }

  it('cuts the stored voxels under the polygon as drawn (LPS: RAS x runs against the stored i)', () => {
    const g = new Geometry([12, 10, 8], [-1, -2, 3])
    const all = rasMask(g, () => true)
    // A square over RAS x 0..2, y 0..2 on axial slice 4 only.
    const spec: ScissorsSpec = {
      plane: 0,
      polygon: [
        [-0.5, -0.5],
        [2.5, -0.5],
        [2.5, 2.5],
        [-0.5, 2.5],
      ],
      slice: 4,
      extent: { kind: 'slab', slices: 1 },
      region: 'inside',
      action: 'erase',
    }
    expect(applyScissors(g.rasDims, all, spec, 0)).toBe(9)
    const native = new Uint8Array(g.voxels)
    g.toNative(all, native)
    const erased: Vec3[] = []
    for (let n = 0; n < native.length; n++) if (!native[n]) erased.push([n % 12, Math.floor(n / 12) % 10, Math.floor(n / 120)])
    // Stored i = 11 - x, j = 9 - y (left-posterior first), k = z.
    expect(erased.sort()).toEqual(
      [
        [11, 9, 4],
        [10, 9, 4],
        [9, 9, 4],
        [11, 8, 4],
        [10, 8, 4],
        [9, 8, 4],
        [11, 7, 4],
        [10, 7, 4],
        [9, 7, 4],
      ].sort(),
    )
  })

  it('marks the voxels a preview would change without touching the others', () => {
    const g = new Geometry([12, 10, 8], [1, 2, 3])
    const before = rasMask(g, (i) => i >= 6)
    const shown = before.slice()
    const spec: ScissorsSpec = {
      plane: 0,
      polygon: [
        [-1, -1],
        [8.5, -1],
        [8.5, 20],
        [-1, 20],
      ],
      slice: 0,
      extent: { kind: 'volume' },
      region: 'inside',
      action: 'erase',
    }
    // Columns 6..8 of every slice are set and inside: 3 × 10 × 8 voxels marked 2; the rest as before.
    expect(applyScissors(g.rasDims, shown, spec, 2)).toBe(240)
    for (let i = 0; i < shown.length; i++) {
      const x = i % 12
      expect(shown[i]).toBe(x >= 6 && x <= 8 ? 2 : before[i])
    }
  })
})

describe('scissorsLabel', () => {
  it('names the action, region and extent', () => {
    expect(scissorsLabel({ action: 'erase', region: 'outside', extent: { kind: 'slab', slices: 5 } })).toBe('scissors: erase outside, 5 slices')
    expect(scissorsLabel({ action: 'fill', region: 'inside', extent: { kind: 'volume' } })).toBe('scissors: fill inside, whole volume')
  })
})
