import { describe, expect, it } from 'vitest'
import { type Vec3, countNonzero } from '../src/core/geometry'
import { type Grid, components, fillPolygon, floodFill2D, growCut, interpolateSlices, paintDisc, paintSegment, planeAxes } from '../src/core/tools'

function grid(dims: Vec3, spacing: Vec3 = [1, 1, 1], hu = 0): Grid {
  return { dims, spacing, hu: new Float32Array(dims[0] * dims[1] * dims[2]).fill(hu) }
}

const at = (g: Grid, x: number, y: number, z: number): number => x + y * g.dims[0] + z * g.dims[0] * g.dims[1]

function sliceCount(g: Grid, bm: Uint8Array, z: number): number {
  let n = 0
  for (let y = 0; y < g.dims[1]; y++) for (let x = 0; x < g.dims[0]; x++) n += bm[at(g, x, y, z)] ? 1 : 0
  return n
}

describe('planeAxes', () => {
  it('gives the in-plane axes and the fixed one', () => {
    expect(planeAxes(0)).toEqual([0, 1, 2])
    expect(planeAxes(1)).toEqual([0, 2, 1])
    expect(planeAxes(2)).toEqual([1, 2, 0])
  })
})

describe('paintDisc', () => {
  it('paints a disc of the diameter in mm on one slice only', () => {
    const g = grid([41, 41, 3])
    const bm = new Uint8Array(41 * 41 * 3)
    paintDisc(g, bm, [20, 20, 1], 0, 20, 1, null)
    const area = countNonzero(bm)
    expect(sliceCount(g, bm, 1)).toBe(area)
    expect(Math.abs(area - Math.PI * 100) / (Math.PI * 100)).toBeLessThan(0.05)
  })

  it('honours anisotropic spacing (ellipse in voxels)', () => {
    const g = grid([41, 41, 3], [0.5, 2, 1])
    const bm = new Uint8Array(41 * 41 * 3)
    paintDisc(g, bm, [20, 20, 1], 0, 10, 1, null)
    let du = 0
    let dv = 0
    for (let x = 0; x < 41; x++) du += bm[at(g, x, 20, 1)]
    for (let y = 0; y < 41; y++) dv += bm[at(g, 20, y, 1)]
    expect(du).toBe(21) // ±5 mm at 0.5 mm
    expect(dv).toBe(5) // ±5 mm at 2 mm
  })

  it('always paints the centre voxel, erases with value 0, and respects the HU range', () => {
    const g = grid([9, 9, 1])
    const bm = new Uint8Array(81)
    paintDisc(g, bm, [4, 4, 0], 0, 0, 1, null)
    expect(countNonzero(bm)).toBe(1)
    paintDisc(g, bm, [4, 4, 0], 0, 4, 0, null)
    expect(countNonzero(bm)).toBe(0)
    g.hu.fill(500)
    paintDisc(g, bm, [4, 4, 0], 0, 4, 1, { lo: -100, hi: 250 })
    expect(countNonzero(bm)).toBe(0)
  })

  it('paintSegment covers the path between two points', () => {
    const g = grid([30, 5, 1])
    const bm = new Uint8Array(150)
    paintSegment(g, bm, [2, 2, 0], [27, 2, 0], 0, 0, 1, null)
    for (let x = 2; x <= 27; x++) expect(bm[at(g, x, 2, 0)]).toBe(1)
  })
})

describe('fillPolygon and floodFill2D', () => {
  it('fills a square outline, outline included', () => {
    const g = grid([20, 20, 1])
    const bm = new Uint8Array(400)
    fillPolygon(g, bm, [
      [5, 5, 0],
      [14, 5, 0],
      [14, 14, 0],
      [5, 14, 0],
    ], 0, null)
    expect(countNonzero(bm)).toBe(100)
  })

  it('fills an enclosed region, refuses one that leaks, clears a painted region', () => {
    const g = grid([20, 20, 1])
    const bm = new Uint8Array(400)
    for (let i = 5; i <= 14; i++) {
      bm[at(g, i, 5, 0)] = 1
      bm[at(g, i, 14, 0)] = 1
      bm[at(g, 5, i, 0)] = 1
      bm[at(g, 14, i, 0)] = 1
    }
    const ring = countNonzero(bm)
    expect(floodFill2D(g, bm, [1, 1, 0], 0, null)).toBe('leaks')
    expect(countNonzero(bm)).toBe(ring)
    expect(floodFill2D(g, bm, [9, 9, 0], 0, null)).toBe('filled')
    expect(countNonzero(bm)).toBe(100)
    expect(floodFill2D(g, bm, [9, 9, 0], 0, null)).toBe('nothing')
    expect(floodFill2D(g, bm, [9, 9, 0], 0, null, true)).toBe('erased')
    expect(countNonzero(bm)).toBe(0)
  })
})

describe('interpolateSlices', () => {
  it('fills the gap between two painted slices with a blend of their shapes', () => {
    const g = grid([21, 21, 11])
    const base = new Uint8Array(21 * 21 * 11)
    const bm = base.slice()
    paintDisc(g, bm, [10, 10, 2], 0, 6, 1, null)
    paintDisc(g, bm, [10, 10, 8], 0, 14, 1, null)
    const written = interpolateSlices(g, bm, base, 0)
    expect(written).toBe(5)
    const counts = [2, 3, 4, 5, 6, 7, 8].map((z) => sliceCount(g, bm, z))
    for (let i = 1; i < counts.length; i++) expect(counts[i]).toBeGreaterThanOrEqual(counts[i - 1])
    expect(sliceCount(g, bm, 1)).toBe(0)
    expect(sliceCount(g, bm, 9)).toBe(0)
  })

  it('writes nothing with fewer than two key slices', () => {
    const g = grid([9, 9, 5])
    const base = new Uint8Array(405)
    const bm = base.slice()
    paintDisc(g, bm, [4, 4, 2], 0, 4, 1, null)
    expect(interpolateSlices(g, bm, base, 0)).toBe(0)
  })
})

describe('components', () => {
  it('finds 6-connected components, largest first, with a voxel inside each', () => {
    const dims: Vec3 = [10, 10, 10]
    const g = grid(dims)
    const mask = new Uint8Array(1000)
    for (let x = 1; x <= 3; x++) for (let y = 1; y <= 3; y++) for (let z = 1; z <= 3; z++) mask[at(g, x, y, z)] = 1
    mask[at(g, 8, 8, 8)] = 1
    mask[at(g, 7, 7, 8)] = 1 // diagonal: not 6-connected to (8, 8, 8)
    const comps = components(dims, mask)
    expect(comps.map((c) => c.count)).toEqual([27, 1, 1])
    expect(comps[0].center).toEqual([2, 2, 2])
    for (const c of comps) expect(mask[at(g, ...c.center)]).toBe(1)
  })
})

describe('growCut', () => {
  it('grows into the bright region around the seed and stops at its edge', () => {
    const dims: Vec3 = [60, 60, 9]
    const g = grid(dims, [1, 1, 1], -100)
    for (let z = 0; z < 9; z++) for (let y = 20; y < 40; y++) for (let x = 20; x < 40; x++) g.hu[at(g, x, y, z)] = 200
    const bm = new Uint8Array(60 * 60 * 9)
    const added = growCut(g, bm, [30, 30, 4], 0, { radiusMm: 20, depthMm: 2, seedMm: 4, window: [-200, 300] })
    expect(added).toBeGreaterThan(20 * 20)
    let outside = 0
    for (let i = 0; i < bm.length; i++) if (bm[i] && g.hu[i] < 0) outside++
    expect(outside / added).toBeLessThan(0.05)
  })
})
