/**
 * Which structure a review comment is pinned to, pure: the structure under the clicked voxel (the innermost one
 * when a part lies over its parent; the active one only on background), unless the reviewer chose one in the
 * comment form. A reviewer looking at the liver who clicks the spleen writes about the spleen.
 */

export interface StructureRef {
  name: string
  /** The parent structure this one lies inside (schema `inside`), or null. */
  inside: string | null
}

/** Whether `name` lies (directly or through its ancestors) inside `ancestor`. */
export function isInside(name: string, ancestor: string, structures: readonly StructureRef[]): boolean {
  const parent = new Map(structures.map((s) => [s.name, s.inside]))
  const seen = new Set<string>()
  let at = parent.get(name) ?? null
  while (at !== null && !seen.has(at)) {
    if (at === ancestor) return true
    seen.add(at)
    at = parent.get(at) ?? null
  }
  return false
}

/**
 * The structure a comment at a voxel is about, of the structures drawn there (in the order given: the active one
 * first): the innermost one (no other candidate lies inside it), the first such; null on background.
 */
export function structureUnder(candidates: readonly string[], structures: readonly StructureRef[]): string | null {
  const known = candidates.filter((c, i) => candidates.indexOf(c) === i && structures.some((s) => s.name === c))
  return known.find((c) => !known.some((d) => d !== c && isInside(d, c, structures))) ?? null
}

/** A new comment's default structure: the one under the voxel (`drawn`), else, on background, the active one. */
export interface PinDefault {
  structure: string | null
  drawn: boolean
}

/**
 * The default structure of a comment at a voxel: the structure drawn there (`structureUnder`); on background the
 * active one (a reviewer pointing next to a structure usually means that structure is missing there).
 */
export function pinDefault(candidates: readonly string[], structures: readonly StructureRef[], active: string | null): PinDefault {
  const under = structureUnder(candidates, structures)
  return under !== null ? { structure: under, drawn: true } : { structure: active, drawn: false }
}

/** The reviewer's pick in the comment form: follow the voxel ('auto') or a chosen structure (null: none). */
export type PinChoice = { kind: 'auto' } | { kind: 'chosen'; structure: string | null }

/** The structure a new comment is pinned to: the chosen one, else the one under the voxel. */
export function pinnedStructure(choice: PinChoice, under: string | null): string | null {
  return choice.kind === 'chosen' ? choice.structure : under
}
