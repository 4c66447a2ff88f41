import { describe, expect, it } from 'vitest'
import schema from '../../backend/projects/pants_schema.json'
import {
  PALETTE_MIN,
  PANTS_PALETTE,
  adjacentPairs,
  colorDistance,
  defaultColors,
  deltaE2000,
  displayColors,
  paletteProblems,
  sameHueFamily,
} from '../src/core/palette'

interface SchemaStructure {
  name: string
  color: string
  inside?: string | null
}

// The backend's PanTS schema ships the palette (backend/projects/pants_schema.json).
const SCHEMA = schema as { structures: SchemaStructure[] }
const PANTS = SCHEMA.structures.map((s) => ({ name: s.name, inside: s.inside ?? null, color: s.color }))
// The PanTS colours before issue 13: pancreas, its parts, duodenum and liver all orange/brown.
const OLD: Record<string, string> = {
  pancreas: '#fcc419', pancreas_body: '#ffa94d', pancreas_head: '#ff922b', pancreas_tail: '#fd7e14', duodenum: '#f08c00',
  liver: '#a0522d', spleen: '#9c36b5', kidney_right: '#ae3ec9', lung_right: '#66d9e8', pancreatic_lesion: '#00e5ff',
}

describe('CIEDE2000', () => {
  it('matches the published test data (Sharma, Wu and Dalal 2005)', () => {
    const cases: [[number, number, number], [number, number, number], number][] = [
      [[50, 2.6772, -79.7751], [50, 0, -82.7485], 2.0425],
      [[50, 3.1571, -77.2803], [50, 0, -82.7485], 2.8615],
      [[50, -1.3802, -84.2814], [50, 0, -82.7485], 1.0],
      [[50, 2.5, 0], [50, 0, -2.5], 4.3065],
      [[50, 2.5, 0], [73, 25, -18], 27.1492],
      [[60.2574, -34.0099, 36.2677], [60.4626, -34.1751, 39.4387], 1.2644],
      [[22.7233, 20.0904, -46.694], [23.0331, 14.973, -42.5619], 2.0373],
      [[90.9257, -0.5406, -0.9208], [88.6381, -0.8985, -0.7239], 1.5381],
    ]
    for (const [a, b, want] of cases) {
      expect(deltaE2000(a, b)).toBeCloseTo(want, 3)
      expect(deltaE2000(b, a)).toBeCloseTo(want, 3)
    }
    expect(colorDistance('#000000', '#ffffff')).toBeCloseTo(100, 1)
  })

  it('puts hues within the gap in one family and greys in none', () => {
    expect(sameHueFamily('#ff922b', '#fd7e14')).toBe(true)
    expect(sameHueFamily('#ff0000', '#0000ff')).toBe(false)
    expect(sameHueFamily('#808080', '#888888')).toBe(false)
  })
})

describe('the default palette', () => {
  const names = Object.keys(PANTS_PALETTE)
  const colors = new Map(Object.entries(PANTS_PALETTE))
  const pairs = adjacentPairs(PANTS)

  it('covers the PanTS schema and is what the backend schema ships', () => {
    expect(new Set(names)).toEqual(new Set(PANTS.map((s) => s.name)))
    for (const s of PANTS) expect(s.color, s.name).toBe(PANTS_PALETTE[s.name])
    expect(new Set(names.map((n) => PANTS_PALETTE[n])).size).toBe(names.length)
  })

  it(`keeps every two colours at least ${PALETTE_MIN.any} CIEDE2000 apart`, () => {
    let worst = Infinity
    for (let i = 0; i < names.length; i++) for (let j = i + 1; j < names.length; j++) worst = Math.min(worst, colorDistance(PANTS_PALETTE[names[i]], PANTS_PALETTE[names[j]]))
    expect(worst).toBeGreaterThanOrEqual(PALETTE_MIN.any)
  })

  it(`gives adjacent structures colours at least ${PALETTE_MIN.adjacent} apart and of different hue families`, () => {
    expect(pairs.length).toBeGreaterThan(80)
    for (const [a, b] of pairs) {
      expect(colorDistance(PANTS_PALETTE[a], PANTS_PALETTE[b]), `${a} / ${b}`).toBeGreaterThanOrEqual(PALETTE_MIN.adjacent)
      expect(sameHueFamily(PANTS_PALETTE[a], PANTS_PALETTE[b]), `${a} / ${b}`).toBe(false)
    }
    expect(paletteProblems(colors, pairs)).toEqual([])
  })

  it('separates the pairs the issue names', () => {
    for (const [a, b] of [
      ['kidney_left', 'kidney_right'],
      ['lung_left', 'pancreatic_lesion'],
      ['lung_right', 'pancreatic_lesion'],
      ['spleen', 'kidney_right'],
      ['pancreas', 'pancreas_head'],
      ['pancreas_head', 'duodenum'],
      ['liver', 'duodenum'],
    ]) {
      expect(pairs.some(([x, y]) => (x === a && y === b) || (x === b && y === a)) || colorDistance(PANTS_PALETTE[a], PANTS_PALETTE[b]) > 25, `${a}/${b}`).toBe(true)
      expect(sameHueFamily(PANTS_PALETTE[a], PANTS_PALETTE[b]), `${a}/${b}`).toBe(false)
    }
  })

  it('counts parts, siblings and left/right pairs as adjacent in any schema', () => {
    const custom = [
      { name: 'organ', inside: null },
      { name: 'part_a', inside: 'organ' },
      { name: 'part_b', inside: 'organ' },
      { name: 'ovary_left', inside: null },
      { name: 'ovary_right', inside: null },
    ]
    const got = adjacentPairs(custom).map((p) => [...p].sort().join('/'))
    expect(got.sort()).toEqual(['organ/part_a', 'organ/part_b', 'ovary_left/ovary_right', 'part_a/part_b'])
  })

  it('picks distinct colours for names outside the curated palette', () => {
    const custom = Array.from({ length: 12 }, (_, i) => ({ name: `thing_${i}`, inside: i > 0 && i < 4 ? 'thing_0' : null }))
    const colors = defaultColors(custom)
    expect(colors.size).toBe(12)
    expect(paletteProblems(colors, adjacentPairs(custom), { any: 10, adjacent: 20, hueGap: 30 })).toEqual([])
    expect(defaultColors(custom)).toEqual(colors) // deterministic
  })
})

describe('the colours shown', () => {
  it('keeps a schema whose own colours are distinct', () => {
    const got = displayColors(PANTS)
    expect(got.source).toBe('schema')
    expect(got.colors.get('pancreas')).toBe(PANTS_PALETTE.pancreas)
  })

  it('replaces colours that share a hue family (the old PanTS orange pancreas family) by the palette', () => {
    const old = PANTS.map((s) => ({ ...s, color: OLD[s.name] ?? s.color }))
    const got = displayColors(old)
    expect(got.source).toBe('default')
    for (const s of PANTS) expect(got.colors.get(s.name)).toBe(PANTS_PALETTE[s.name])
  })

  it('gives structures without a colour (the placeholder) the palette', () => {
    const grey = [
      { name: 'liver', inside: null, color: '#888888' },
      { name: 'tumour', inside: 'liver', color: '#888888' },
    ]
    const got = displayColors(grey)
    expect(got.source).toBe('default')
    expect(got.colors.get('liver')).toBe(PANTS_PALETTE.liver)
    expect(colorDistance(got.colors.get('liver')!, got.colors.get('tumour')!)).toBeGreaterThanOrEqual(PALETTE_MIN.adjacent)
  })
})
