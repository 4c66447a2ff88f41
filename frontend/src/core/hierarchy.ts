/**
 * The label schema's `inside` relation as editing rules: painting a part adds the same voxels to its parent (and
 * the parent's parent), erasing a structure erases its parts there, and a stroke erases other structures under it
 * only under the overwrite policy (Slicer's "overwrite other segments": off / all / visible). Locked structures are
 * never changed. The pre-save check: part voxels outside the parent, and the two one-click fixes. Pure.
 */

export type OverwritePolicy = 'off' | 'all' | 'visible'

export const OVERWRITE_POLICIES: readonly OverwritePolicy[] = ['off', 'all', 'visible']

/** A stored overwrite policy, or 'off' when missing or unknown. */
export function parsePolicy(value: string | null | undefined): OverwritePolicy {
  return OVERWRITE_POLICIES.includes(value as OverwritePolicy) ? (value as OverwritePolicy) : 'off'
}

/** The localStorage key of a user's overwrite policy. */
export function policyKey(userId: number | string | null | undefined): string {
  return `maskloop.overwrite.${userId ?? 'anonymous'}`
}

export interface Nested {
  name: string
  inside: string | null
}

export class Hierarchy {
  private readonly parents = new Map<string, string>()
  private readonly kids = new Map<string, string[]>()

  constructor(structures: readonly Nested[]) {
    const names = new Set(structures.map((s) => s.name))
    for (const s of structures) {
      if (!s.inside || !names.has(s.inside) || s.inside === s.name) continue
      this.parents.set(s.name, s.inside)
      this.kids.set(s.inside, [...(this.kids.get(s.inside) ?? []), s.name])
    }
  }

  parent(name: string): string | null {
    return this.parents.get(name) ?? null
  }

  children(name: string): string[] {
    return this.kids.get(name) ?? []
  }

  /** The parent, its parent, … (a cycle in a bad schema stops the walk). */
  ancestors(name: string): string[] {
    const out: string[] = []
    let cur = this.parents.get(name)
    while (cur !== undefined && cur !== name && !out.includes(cur)) {
      out.push(cur)
      cur = this.parents.get(cur)
    }
    return out
  }

  /** Every structure inside this one, at any depth. */
  descendants(name: string): string[] {
    const out: string[] = []
    const todo = [...this.children(name)]
    while (todo.length) {
      const n = todo.shift()!
      if (n === name || out.includes(n)) continue
      out.push(n)
      todo.push(...this.children(n))
    }
    return out
  }

  /** The structures an edit of this one may touch through the hierarchy. */
  family(name: string): string[] {
    return [...this.ancestors(name), ...this.descendants(name)]
  }

  /** Every (part, parent) pair of the schema. */
  pairs(): [string, string][] {
    return [...this.parents.entries()]
  }
}

/** One structure's change of an edit: voxel indices and what they were and became (as the edit session records it). */
export interface VoxelChange {
  structure: string
  idx: ArrayLike<number>
  before: ArrayLike<number>
  after: ArrayLike<number>
}

/** A change to make to another structure as part of the same edit. */
export interface LinkedEdit {
  structure: string
  idx: Int32Array
  value: 0 | 1
  why: 'parent' | 'part' | 'overwrite'
}

export interface LinkOptions {
  locked: (name: string) => boolean
  policy: OverwritePolicy
  visible: (name: string) => boolean
  /** The other structures that may hold voxels where the edit added some (loaded, or seen in the label maps). */
  candidates: readonly string[]
}

/** The voxels an edit added and removed. */
export function splitChange(change: VoxelChange): { added: Int32Array; removed: Int32Array } {
  const added: number[] = []
  const removed: number[] = []
  for (let k = 0; k < change.idx.length; k++) {
    const was = change.before[k] > 0
    const now = change.after[k] > 0
    if (now && !was) added.push(change.idx[k])
    else if (was && !now) removed.push(change.idx[k])
  }
  return { added: Int32Array.from(added), removed: Int32Array.from(removed) }
}

/** The structures the overwrite policy erases under an edit of `name` (never its parents or parts, nor locked ones). */
export function overwriteTargets(h: Hierarchy, name: string, opts: LinkOptions): string[] {
  if (opts.policy === 'off') return []
  const related = new Set([name, ...h.family(name)])
  return [...new Set(opts.candidates)].filter((n) => !related.has(n) && !opts.locked(n) && (opts.policy === 'all' || opts.visible(n)))
}

/**
 * What an edit of one structure means for the others: voxels added go into every (unlocked) ancestor and, under
 * the overwrite policy, out of the other structures; voxels removed go out of every (unlocked) part inside it.
 */
export function linkedEdits(h: Hierarchy, change: VoxelChange, opts: LinkOptions): LinkedEdit[] {
  const { added, removed } = splitChange(change)
  const out: LinkedEdit[] = []
  if (added.length) {
    for (const a of h.ancestors(change.structure)) if (!opts.locked(a)) out.push({ structure: a, idx: added, value: 1, why: 'parent' })
    for (const t of overwriteTargets(h, change.structure, opts)) out.push({ structure: t, idx: added, value: 0, why: 'overwrite' })
  }
  if (removed.length) {
    for (const d of h.descendants(change.structure)) if (!opts.locked(d)) out.push({ structure: d, idx: removed, value: 0, why: 'part' })
  }
  return out
}

/** A part's voxels outside its parent. */
export interface Disagreement {
  part: string
  parent: string
  voxels: number
}

/** Voxels set in the part and not in the parent. */
export function outsideParent(part: Uint8Array, parent: Uint8Array): number {
  let n = 0
  for (let i = 0; i < part.length; i++) if (part[i] && !parent[i]) n++
  return n
}

/**
 * The (part, parent) pairs to check before a save: every pair with an edited side. Both masks must be loaded
 * to count; `masks` gives the loaded ones.
 */
export function pairsToCheck(h: Hierarchy, edited: readonly string[]): [string, string][] {
  const dirty = new Set(edited)
  return h.pairs().filter(([part, parent]) => dirty.has(part) || dirty.has(parent))
}

/** The disagreements among these pairs (pairs with a mask not given are skipped). */
export function disagreements(pairs: readonly [string, string][], masks: (name: string) => Uint8Array | undefined): Disagreement[] {
  const out: Disagreement[] = []
  for (const [part, parent] of pairs) {
    const a = masks(part)
    const b = masks(parent)
    if (!a || !b) continue
    const voxels = outsideParent(a, b)
    if (voxels) out.push({ part, parent, voxels })
  }
  return out
}

/** The fix "add to parent": the parent gets every voxel of the part. Returns the voxels changed. */
export function addToParent(part: Uint8Array, parent: Uint8Array): number {
  let n = 0
  for (let i = 0; i < part.length; i++) {
    if (part[i] && !parent[i]) {
      parent[i] = 1
      n++
    }
  }
  return n
}

/** The fix "remove from part": the part loses its voxels outside the parent. Returns the voxels changed. */
export function removeFromPart(part: Uint8Array, parent: Uint8Array): number {
  let n = 0
  for (let i = 0; i < part.length; i++) {
    if (part[i] && !parent[i]) {
      part[i] = 0
      n++
    }
  }
  return n
}
