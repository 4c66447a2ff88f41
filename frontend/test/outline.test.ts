import { describe, expect, it } from 'vitest'
import type { Vec3 } from '../src/core/geometry'
import { OUTLINE_OFFSET, drawOutlines, lutPadding, structureOfLabel } from '../src/core/outline'

const DIMS: Vec3 = [7, 7, 3]
const at = (x: number, y: number, z: number): number => x + DIMS[0] * (y + DIMS[1] * z)

/** A 5×5 square of label 1 on every slice, with a 3×3 square of label 2 (a part) in its middle on slice 1. */
function map(): Uint8Array {
  const out = new Uint8Array(DIMS[0] * DIMS[1] * DIMS[2])
  for (let z = 0; z < 3; z++) for (let y = 1; y < 6; y++) for (let x = 1; x < 6; x++) out[at(x, y, z)] = 1
  for (let y = 2; y < 5; y++) for (let x = 2; x < 5; x++) out[at(x, y, 1)] = 2
  return out
}

describe('outlines in a label map', () => {
  it('marks the in-plane boundary of a structure and keeps its interior', () => {
    const labels = map()
    const n = drawOutlines(labels, DIMS, [0, 1], [{ value: 1, region: [1] }])
    // slice 0: the 16 boundary voxels of the 5×5 square; its 3×3 interior keeps label 1
    expect(labels[at(1, 1, 0)]).toBe(1 + OUTLINE_OFFSET)
    expect(labels[at(3, 1, 0)]).toBe(1 + OUTLINE_OFFSET)
    expect(labels[at(3, 3, 0)]).toBe(1)
    // slice 1: the part (label 2) is outside the region of 1, so the voxels of 1 around it are a boundary too
    expect(labels[at(1, 3, 1)]).toBe(1 + OUTLINE_OFFSET)
    expect(labels[at(3, 3, 1)]).toBe(2)
    expect(n).toBe(16 + 16 + 16)
  })

  it('draws a parent around its parts: the parts count as inside', () => {
    const labels = map()
    drawOutlines(labels, DIMS, [0, 1], [{ value: 1, region: [1, 2] }])
    expect(labels[at(1, 3, 1)]).toBe(1 + OUTLINE_OFFSET)
    expect(labels[at(2, 2, 1)]).toBe(2) // the part's edge keeps the part's fill
    expect(labels[at(3, 3, 1)]).toBe(2)
  })

  it('gives the earlier owner a shared boundary voxel, and uses all three axes for 3D', () => {
    const labels = map()
    drawOutlines(labels, DIMS, [0, 1, 2], [
      { value: 1, region: [1, 2] },
      { value: 2, region: [2] },
    ])
    // every voxel of slices 0 and 2 touches the volume's edge along z
    expect(labels[at(3, 3, 0)]).toBe(1 + OUTLINE_OFFSET)
    expect(labels[at(2, 2, 1)]).toBe(2 + OUTLINE_OFFSET)
    // a one-slice part has no inside in 3D: its neighbours above and below are outside it
    expect(labels[at(3, 3, 1)]).toBe(2 + OUTLINE_OFFSET)
    // the parent's region (1 and 2) fills slice 1 inside the square: no boundary there
    expect(labels[at(2, 1, 1)]).toBe(1 + OUTLINE_OFFSET)
  })

  it('ignores owners whose value has no room for an outline label', () => {
    const labels = map()
    expect(drawOutlines(labels, DIMS, [0, 1], [{ value: 200, region: [200] }])).toBe(0)
  })
})

describe('the label lookup table', () => {
  /** NiiVue's orient shader: the texture coordinate of a value, lifted to 2/256 above the minimum (issue 1139). */
  function texel(value: number, min: number, max: number): number {
    const n = max - min + 1
    let txl = (value - (min - 0.5)) / n
    if (value > min - 0.5) txl = Math.max(txl, 2 / 256)
    return txl * n - 0.5 // the texel index sampled (linear filtering: an integer is one texel's centre)
  }

  it('pads below 0 so that label 0 samples its own texel, however many labels', () => {
    for (const max of [28, 63, 64, 100, 156, 255, 300]) {
      const pad = lutPadding(max)
      const min = pad.length ? pad[pad.length - 1].value : 0
      expect(texel(0, min, max), `max ${max}`).toBeCloseTo(-min, 6)
      expect(texel(1, min, max)).toBeCloseTo(1 - min, 6)
      expect(pad.every((c) => c.alpha === 0)).toBe(true)
    }
    expect(lutPadding(28)).toEqual([])
    expect(lutPadding(156).map((c) => c.value)).toEqual([-1])
  })
})

describe('the structure under a voxel of the label map (the readout, comment pins)', () => {
  const structures = [
    { name: 'pancreas', label_value: 1 },
    { name: 'pancreas_head', label_value: 2 },
  ]

  it('names the outlined structure on its boundary voxels, as inside them', () => {
    const labels = map()
    drawOutlines(labels, DIMS, [0, 1], [
      { value: 1, region: [1, 2] },
      { value: 2, region: [2] },
    ])
    expect(labels[at(1, 1, 0)]).toBe(1 + OUTLINE_OFFSET) // the parent's boundary
    expect(labels[at(2, 2, 1)]).toBe(2 + OUTLINE_OFFSET) // the part's boundary
    expect(structureOfLabel(structures, labels[at(1, 1, 0)])?.name).toBe('pancreas')
    expect(structureOfLabel(structures, labels[at(2, 2, 1)])?.name).toBe('pancreas_head')
    expect(structureOfLabel(structures, labels[at(3, 3, 1)])?.name).toBe('pancreas_head') // interior
    expect(structureOfLabel(structures, labels[at(2, 2, 0)])?.name).toBe('pancreas')
  })

  it('is null on background and on a label no structure has', () => {
    expect(structureOfLabel(structures, 0)).toBeNull()
    expect(structureOfLabel(structures, 7)).toBeNull()
    expect(structureOfLabel(structures, 7 + OUTLINE_OFFSET)).toBeNull()
  })
})
