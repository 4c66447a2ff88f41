/** The label schema's structures: the server's paint order and the groups of the structures panel. */

export interface StructureLike {
  name: string
  position: number
  group: string
  inside: string | null
}

const GROUP_ORDER = ['pancreas', 'lesion', 'vessel', 'duct', 'organ', 'thorax', 'bone']

/** Server paint order: schema order, each structure after the one it lies inside (labels/service.py). */
export function paintOrder<S extends StructureLike>(structures: S[]): S[] {
  const byName = new Map(structures.map((s) => [s.name, s]))
  const depth = (s: S): number => {
    let level = 0
    const seen = new Set<string>()
    let cur: S | undefined = s
    while (cur?.inside && byName.has(cur.inside) && !seen.has(cur.name)) {
      seen.add(cur.name)
      cur = byName.get(cur.inside)
      level++
    }
    return level
  }
  return [...structures].sort((a, b) => depth(a) - depth(b) || a.position - b.position)
}

/** The structures by group ('other' when none), groups in the panel's order (known groups first, then by name). */
export function groupStructures<S extends StructureLike>(structures: S[]): [string, S[]][] {
  const groups = new Map<string, S[]>()
  for (const s of structures) {
    const g = s.group || 'other'
    if (!groups.has(g)) groups.set(g, [])
    groups.get(g)!.push(s)
  }
  const rank = (g: string): number => {
    const i = GROUP_ORDER.indexOf(g)
    return i < 0 ? 99 : i
  }
  return [...groups.keys()].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b)).map((g) => [g, groups.get(g)!])
}

/** A structure name for people: underscores as spaces. */
export function pretty(name: string): string {
  return name.replace(/_/g, ' ')
}
