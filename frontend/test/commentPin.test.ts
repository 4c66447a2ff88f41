import { describe, expect, it } from 'vitest'
import { isInside, pinDefault, pinnedStructure, structureUnder } from '../src/review/pinning'

const SCHEMA = [
  { name: 'liver', inside: null },
  { name: 'spleen', inside: null },
  { name: 'pancreas', inside: null },
  { name: 'pancreas_head', inside: 'pancreas' },
  { name: 'pancreatic_lesion', inside: 'pancreas_head' },
]

describe('structureUnder', () => {
  it('is the structure drawn at the voxel, not the active one', () => {
    // The liver is active but the voxel is the spleen's (only the overlay shows it there).
    expect(structureUnder(['spleen'], SCHEMA)).toBe('spleen')
    expect(structureUnder(['liver'], SCHEMA)).toBe('liver')
  })

  it('is null on background and ignores names outside the schema', () => {
    expect(structureUnder([], SCHEMA)).toBeNull()
    expect(structureUnder(['kidney_left'], SCHEMA)).toBeNull()
  })

  it('prefers the innermost structure, whichever of a part and its parent is active', () => {
    expect(structureUnder(['pancreas', 'pancreas_head'], SCHEMA)).toBe('pancreas_head')
    expect(structureUnder(['pancreas_head', 'pancreas'], SCHEMA)).toBe('pancreas_head')
    expect(structureUnder(['pancreas', 'pancreatic_lesion'], SCHEMA)).toBe('pancreatic_lesion')
  })

  it('takes the first of unrelated overlapping structures (the active one comes first)', () => {
    expect(structureUnder(['liver', 'spleen'], SCHEMA)).toBe('liver')
    expect(structureUnder(['spleen', 'liver', 'spleen'], SCHEMA)).toBe('spleen')
  })
})

describe('isInside', () => {
  it('follows the parents transitively and survives a cycle', () => {
    expect(isInside('pancreatic_lesion', 'pancreas', SCHEMA)).toBe(true)
    expect(isInside('pancreas', 'pancreas_head', SCHEMA)).toBe(false)
    const cyclic = [
      { name: 'a', inside: 'b' },
      { name: 'b', inside: 'a' },
    ]
    expect(isInside('a', 'c', cyclic)).toBe(false)
  })
})

describe('pinnedStructure', () => {
  it('follows the voxel until the reviewer chooses (a structure or none)', () => {
    expect(pinnedStructure({ kind: 'auto' }, 'spleen')).toBe('spleen')
    expect(pinnedStructure({ kind: 'chosen', structure: 'liver' }, 'spleen')).toBe('liver')
    expect(pinnedStructure({ kind: 'chosen', structure: null }, 'spleen')).toBeNull()
  })
})

describe('pinDefault', () => {
  it('is the structure under the voxel, or on background the active one', () => {
    expect(pinDefault(['spleen'], SCHEMA, 'liver')).toEqual({ structure: 'spleen', drawn: true })
    expect(pinDefault([], SCHEMA, 'liver')).toEqual({ structure: 'liver', drawn: false })
    expect(pinDefault([], SCHEMA, null)).toEqual({ structure: null, drawn: false })
  })
})
