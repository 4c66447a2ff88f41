import { describe, expect, it } from 'vitest'
import { lockReason, sameLock } from '../src/core/access'
import { hexToRgb } from '../src/core/colors'
import { HEAT_GRADES, gradeAttention, heatColors } from '../src/core/heat'
import { groupStructures, paintOrder } from '../src/core/structures'

const s = (name: string, position: number, group = 'organ', inside: string | null = null) => ({ name, position, group, inside })

describe('structures', () => {
  it('paints parents before the parts inside them, then by schema position', () => {
    const order = paintOrder([s('pancreas_head', 1, 'pancreas', 'pancreas'), s('liver', 2), s('pancreas', 3, 'pancreas'), s('lesion', 0, 'lesion', 'pancreas_head')])
    expect(order.map((x) => x.name)).toEqual(['liver', 'pancreas', 'pancreas_head', 'lesion'])
  })

  it('survives a cycle in `inside`', () => {
    expect(paintOrder([s('a', 0, 'x', 'b'), s('b', 1, 'x', 'a')]).length).toBe(2)
  })

  it('groups in the panel order, unknown groups last by name', () => {
    const groups = groupStructures([s('zeta', 0, 'zoo'), s('liver', 1, 'organ'), s('pancreas', 2, 'pancreas'), s('x', 3, ''), s('aorta', 4, 'vessel')])
    expect(groups.map(([g]) => g)).toEqual(['pancreas', 'vessel', 'organ', 'other', 'zoo'])
  })
})

describe('access', () => {
  const base = { role: 'annotator', workflow: true, task: { state: 'annotating', allowed_actions: ['edit', 'submit'] }, foreignLease: null, reading: false }
  const time = (iso: string): string => iso.slice(11, 16)

  it('lets an annotator edit an editable task', () => {
    expect(lockReason(base)).toBeNull()
  })

  it('is read-only for viewers and approved scans, locked by a foreign lease', () => {
    expect(lockReason({ ...base, role: 'viewer' })?.state).toBe('readonly')
    expect(lockReason({ ...base, task: { state: 'approved', allowed_actions: ['edit'] } })?.text).toMatch(/approved/)
    const lease = { username: 'ann', expires_at: '2024-01-01T10:30:00Z' }
    expect(lockReason({ ...base, foreignLease: lease }, time)).toEqual({ state: 'locked', text: 'Locked by ann until 10:30' })
    expect(lockReason({ ...base, foreignLease: lease, reading: true })).toBeNull()
  })

  it('follows the allowed actions only when the workflow answers', () => {
    const review = { ...base, task: { state: 'in_review', allowed_actions: ['comment'] } }
    expect(lockReason(review)?.text).toBe('Read-only: you may not edit this scan while it is in review')
    expect(lockReason({ ...review, workflow: false })).toBeNull()
    expect(lockReason({ ...base, task: null })).toBeNull()
  })

  it('compares lock reasons by content', () => {
    expect(sameLock(null, null)).toBe(true)
    expect(sameLock({ state: 'locked', text: 'a' }, { state: 'locked', text: 'a' })).toBe(true)
    expect(sameLock({ state: 'locked', text: 'a' }, null)).toBe(false)
  })
})

describe('attention heat', () => {
  it('grades dense regions above isolated voxels, zero outside', () => {
    const dims: [number, number, number] = [20, 20, 14]
    const mask = new Uint8Array(20 * 20 * 14)
    const at = (x: number, y: number, z: number): number => x + 20 * y + 400 * z
    for (let z = 2; z < 12; z++) for (let y = 2; y < 12; y++) for (let x = 2; x < 12; x++) mask[at(x, y, z)] = 1
    mask[at(17, 17, 8)] = 1
    const heat = gradeAttention(mask, dims, [1, 1, 1])
    expect(heat[at(7, 7, 7)]).toBe(HEAT_GRADES)
    expect(heat[at(17, 17, 8)]).toBeGreaterThan(0)
    expect(heat[at(17, 17, 8)]).toBeLessThan(heat[at(2, 2, 2)])
    expect(heat[at(0, 0, 0)]).toBe(0)
    for (let i = 0; i < mask.length; i++) if (!mask[i]) expect(heat[i]).toBe(0)
  })

  it('has one colour per grade on a hot ramp', () => {
    const colors = heatColors()
    expect(colors.map((c) => c.value)).toEqual(Array.from({ length: HEAT_GRADES }, (_, i) => i + 1))
    expect(colors[0].rgb[0]).toBeLessThan(colors.at(-1)!.rgb[0] + 1)
    expect(colors.at(-1)!.rgb).toEqual([255, 255, 255])
  })

  it('reads hex colours', () => {
    expect(hexToRgb('#ff8000')).toEqual([255, 128, 0])
    expect(hexToRgb('00ff00')).toEqual([0, 255, 0])
    expect(hexToRgb('nonsense')).toEqual([200, 200, 200])
  })
})
