import { describe, expect, it } from 'vitest'
import { FIT, MAX_ZOOM, MIN_ZOOM, type Pan, clampSlice, dragPan, normalAxis, screenOf, stepZoom, wheelSteps, zoomAbout } from '../src/core/zoom'

describe('zoom and pan', () => {
  it('keeps the point zoomed about fixed on screen, in every plane', () => {
    let pan: Pan = [...FIT]
    const p: [number, number, number] = [31.5, -12.25, 80]
    const before = screenOf(pan, p)
    for (const zoom of [1.25, 3, 7.5, 2, 1]) {
      pan = zoomAbout(pan, p, zoom)
      const after = screenOf(pan, p)
      for (let i = 0; i < 3; i++) expect(after[i]).toBeCloseTo(before[i], 9)
      expect(pan[3]).toBe(zoom)
    }
    // Another point moves away from the fixed one in proportion to the zoom.
    const q: [number, number, number] = [41.5, -12.25, 80]
    pan = zoomAbout([...FIT], p, 2)
    expect(screenOf(pan, q)[0] - screenOf(pan, p)[0]).toBeCloseTo(20, 9)
  })

  it('clamps zoom and steps by a factor', () => {
    expect(stepZoom(1, 1)).toBeCloseTo(1.25)
    expect(stepZoom(1, -1)).toBeCloseTo(0.8)
    expect(stepZoom(10, 100)).toBe(MAX_ZOOM)
    expect(stepZoom(1, -100)).toBe(MIN_ZOOM)
    const pan = zoomAbout([...FIT], [10, 10, 10], 1000)
    expect(pan[3]).toBe(MAX_ZOOM)
  })

  it('turns wheel deltas into bounded zoom steps (wheel up zooms in)', () => {
    expect(wheelSteps(-100)).toBeCloseTo(1)
    expect(wheelSteps(100)).toBeCloseTo(-1)
    expect(wheelSteps(-3, 1)).toBeCloseTo(0.99)
    expect(wheelSteps(-5000)).toBe(3)
    expect(wheelSteps(-4)).toBeCloseTo(0.04) // a pinch
  })

  it('drags the grabbed point under the pointer', () => {
    const pan: Pan = [5, -3, 0, 2.5]
    const grabbed: [number, number, number] = [10, 20, 30]
    // With the pointer moved, the point under it (at the old pan) is `under`; after the drag, the grabbed point
    // is drawn where `under` was drawn.
    const under: [number, number, number] = [14, 18, 30]
    const next = dragPan(pan, grabbed, under)
    const a = screenOf(next, grabbed)
    const b = screenOf(pan, under)
    for (let i = 0; i < 3; i++) expect(a[i]).toBeCloseTo(b[i], 9)
    expect(next[3]).toBe(2.5)
  })

  it('maps planes to their normal axis and clamps slices', () => {
    expect([0, 1, 2].map(normalAxis)).toEqual([2, 1, 0])
    expect(clampSlice(-3, 48)).toBe(0)
    expect(clampSlice(60, 48)).toBe(47)
    expect(clampSlice(12.4, 48)).toBe(12)
  })
})
