import { describe, expect, it } from 'vitest'
import { EditSession } from '../src/core/editSession'
import { Geometry, type Vec3 } from '../src/core/geometry'
import {
  Hierarchy,
  type LinkOptions,
  addToParent,
  disagreements,
  linkedEdits,
  outsideParent,
  overwriteTargets,
  pairsToCheck,
  parsePolicy,
  policyKey,
  removeFromPart,
  splitChange,
} from '../src/core/hierarchy'

const PANTS = [
  { name: 'liver', inside: null },
  { name: 'pancreas', inside: null },
  { name: 'pancreas_head', inside: 'pancreas' },
  { name: 'pancreas_body', inside: 'pancreas' },
  { name: 'pancreatic_lesion', inside: 'pancreas' },
  { name: 'duct_branch', inside: 'pancreas_head' },
  { name: 'spleen', inside: null },
]
const h = new Hierarchy(PANTS)
const none: LinkOptions = { locked: () => false, policy: 'off', visible: () => true, candidates: [] }

function change(structure: string, idx: number[], before: number[], after: number[]) {
  return { structure, idx: Int32Array.from(idx), before: Uint8Array.from(before), after: Uint8Array.from(after) }
}

describe('the inside relation', () => {
  it('knows parents, ancestors, children and descendants', () => {
    expect(h.parent('pancreas_head')).toBe('pancreas')
    expect(h.parent('pancreas')).toBeNull()
    expect(h.ancestors('duct_branch')).toEqual(['pancreas_head', 'pancreas'])
    expect(h.children('pancreas')).toEqual(['pancreas_head', 'pancreas_body', 'pancreatic_lesion'])
    expect(h.descendants('pancreas')).toEqual(['pancreas_head', 'pancreas_body', 'pancreatic_lesion', 'duct_branch'])
    expect(h.family('pancreas_head')).toEqual(['pancreas', 'duct_branch'])
    expect(h.pairs()).toContainEqual(['pancreas_head', 'pancreas'])
  })

  it('ignores unknown parents, self-parents and survives cycles', () => {
    const odd = new Hierarchy([
      { name: 'a', inside: 'b' },
      { name: 'b', inside: 'a' },
      { name: 'c', inside: 'nowhere' },
      { name: 'd', inside: 'd' },
    ])
    expect(odd.ancestors('a')).toEqual(['b'])
    expect(odd.descendants('a')).toEqual(['b'])
    expect(odd.parent('c')).toBeNull()
    expect(odd.parent('d')).toBeNull()
  })
})

describe('linked edits', () => {
  it('adds painted part voxels to every ancestor', () => {
    const c = change('duct_branch', [3, 4, 5], [0, 1, 0], [1, 1, 1])
    expect(splitChange(c).added).toEqual(Int32Array.from([3, 5]))
    const edits = linkedEdits(h, c, none)
    expect(edits.map((e) => [e.structure, e.value, e.why, [...e.idx]])).toEqual([
      ['pancreas_head', 1, 'parent', [3, 5]],
      ['pancreas', 1, 'parent', [3, 5]],
    ])
  })

  it('erases the parts where the parent is erased', () => {
    const edits = linkedEdits(h, change('pancreas', [7, 8], [1, 1], [0, 0]), none)
    expect(edits.map((e) => [e.structure, e.value, e.why])).toEqual([
      ['pancreas_head', 0, 'part'],
      ['pancreas_body', 0, 'part'],
      ['pancreatic_lesion', 0, 'part'],
      ['duct_branch', 0, 'part'],
    ])
    // Erasing a part leaves the parent alone (and erases the part's own parts).
    expect(linkedEdits(h, change('pancreas_body', [7], [1], [0]), none)).toEqual([])
    expect(linkedEdits(h, change('pancreas_head', [7], [1], [0]), none).map((e) => e.structure)).toEqual(['duct_branch'])
  })

  it('never touches a locked structure', () => {
    const locked = { ...none, locked: (n: string) => n === 'pancreas' || n === 'pancreas_body' }
    expect(linkedEdits(h, change('pancreas_head', [1], [0], [1]), locked)).toEqual([])
    const erased = linkedEdits(h, change('pancreas', [1], [1], [0]), locked).map((e) => e.structure)
    expect(erased).not.toContain('pancreas_body')
    expect(erased).toContain('pancreas_head')
  })

  it('erases other structures under added voxels only under the overwrite policy', () => {
    const candidates = ['liver', 'spleen', 'pancreas', 'pancreas_body', 'duct_branch', 'pancreas_head']
    const c = change('pancreas_head', [2], [0], [1])
    expect(linkedEdits(h, c, { ...none, candidates }).filter((e) => e.why === 'overwrite')).toEqual([])
    // all: the others, never the edited structure's parents or parts, never locked ones
    const all = { ...none, candidates, policy: 'all' as const, locked: (n: string) => n === 'spleen' }
    expect(overwriteTargets(h, 'pancreas_head', all)).toEqual(['liver', 'pancreas_body'])
    const edits = linkedEdits(h, c, all)
    expect(edits.filter((e) => e.why === 'overwrite').map((e) => [e.structure, e.value])).toEqual([
      ['liver', 0],
      ['pancreas_body', 0],
    ])
    // visible: only the visible others
    const visible = { ...all, policy: 'visible' as const, visible: (n: string) => n !== 'liver' }
    expect(overwriteTargets(h, 'pancreas_head', visible)).toEqual(['pancreas_body'])
    // erasing never overwrites
    expect(linkedEdits(h, change('liver', [2], [1], [0]), all)).toEqual([])
  })

  it('reads and keys the stored policy', () => {
    expect(parsePolicy('all')).toBe('all')
    expect(parsePolicy('visible')).toBe('visible')
    expect(parsePolicy('bogus')).toBe('off')
    expect(parsePolicy(null)).toBe('off')
    expect(policyKey(7)).toBe('maskloop.overwrite.7')
  })
})

describe('the pre-save check', () => {
  const part = Uint8Array.from([1, 1, 1, 0, 0])
  const parent = Uint8Array.from([0, 1, 1, 1, 0])

  it('counts part voxels outside the parent', () => {
    expect(outsideParent(part, parent)).toBe(1)
    expect(pairsToCheck(h, ['pancreas_head'])).toEqual([
      ['pancreas_head', 'pancreas'],
      ['duct_branch', 'pancreas_head'],
    ])
    expect(pairsToCheck(h, ['liver'])).toEqual([])
    const masks = new Map([
      ['pancreas_head', part],
      ['pancreas', parent],
    ])
    expect(disagreements(pairsToCheck(h, ['pancreas']), (n) => masks.get(n))).toEqual([{ part: 'pancreas_head', parent: 'pancreas', voxels: 1 }])
  })

  it('fixes by adding to the parent or removing from the part', () => {
    const p1 = parent.slice()
    expect(addToParent(part, p1)).toBe(1)
    expect([...p1]).toEqual([1, 1, 1, 1, 0])
    const c1 = part.slice()
    expect(removeFromPart(c1, parent)).toBe(1)
    expect([...c1]).toEqual([0, 1, 1, 0, 0])
    expect(outsideParent(c1, parent)).toBe(0)
  })
})

describe('linked changes in the edit session', () => {
  const dims: Vec3 = [4, 3, 2]
  const geometry = new Geometry(dims, [1, 2, 3])
  const zeros = () => new Uint8Array(24)

  it('are one undo step with the edit and are redone with it', async () => {
    const s = new EditSession(1, geometry, 5, () => Promise.resolve(zeros()))
    const head = await s.ensure('pancreas_head')
    await s.ensure('pancreas')
    s.begin('pancreas_head')
    head[3] = 1
    head[4] = 1
    const op = s.commit('brush')!
    expect(s.link(op, [{ structure: 'pancreas', idx: [3, 4], value: 1 }])).toBe(2)
    expect(s.link(op, [{ structure: 'pancreas', idx: [3, 4], value: 1 }])).toBe(0)
    expect(s.dirty).toEqual(['pancreas', 'pancreas_head'])
    expect(s.count('pancreas')).toBe(2)
    s.undo()
    expect(s.count('pancreas')).toBe(0)
    expect(s.count('pancreas_head')).toBe(0)
    expect(s.dirty).toEqual([])
    s.redo()
    expect(s.count('pancreas')).toBe(2)
    expect(s.dirty).toEqual(['pancreas', 'pancreas_head'])
    // The patch carries both structures.
    expect(s.patchBoxes().map((b) => b.structure)).toEqual(['pancreas', 'pancreas_head'])
  })

  it('only extend the newest edit, of loaded structures, and keep their masks from being released', async () => {
    const s = new EditSession(1, geometry, 5, () => Promise.resolve(zeros()))
    const a = await s.ensure('a')
    await s.ensure('b')
    await s.ensure('c')
    s.begin('a')
    a[0] = 1
    const first = s.commit('one')!
    expect(() => s.link(first, [{ structure: 'zzz', idx: [0], value: 1 }])).toThrow(/not loaded/)
    s.link(first, [{ structure: 'b', idx: [0], value: 1 }])
    s.begin('a')
    a[1] = 1
    s.commit('two')
    expect(() => s.link(first, [{ structure: 'b', idx: [1], value: 1 }])).toThrow(/newest/)
    s.undo()
    s.undo()
    expect(s.dirty).toEqual([])
    s.release('a')
    expect(s.edited.has('b')).toBe(true) // the redo stack still refers to it
    expect(s.edited.has('c')).toBe(false)
    s.release(['a', 'b'])
    expect(s.edited.has('b')).toBe(true)
  })
})
