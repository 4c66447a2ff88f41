/**
 * The rules every edit follows, whichever tool made it (brush, eraser, fill, Tools-panel operations, sphere brush,
 * AI refine, interpolation, scissors, scripted edits): a locked structure is never changed (the edit is refused up
 * front, and taken back should one get through); the hierarchy of the schema's `inside` relation (painting a part
 * adds to its parents, erasing a structure erases its parts there) and the overwrite policy are applied as linked
 * changes of the same undoable edit. The pre-save check of parts outside their parent, with its two fixes.
 */

import { api } from '../api/client'
import type { EditSession, Op } from '../core/editSession'
import {
  type Disagreement,
  Hierarchy,
  type LinkedEdit,
  type OverwritePolicy,
  addToParent,
  disagreements,
  linkedEdits,
  pairsToCheck,
  parsePolicy,
  policyKey,
  removeFromPart,
  splitChange,
} from '../core/hierarchy'
import { paintOrder, pretty } from '../core/structures'
import { toast } from '../dom'
import type { WorkspaceContext } from './context'

/** A version's combined label map (stored order) painted in the given order: the editor's cache, read only. */
export type MapSource = (versionId: number, order: string[]) => Promise<Uint8Array>

export class StructureRules {
  private readonly ctx: WorkspaceContext
  private readonly maps: MapSource
  /** Called with the structures a linked change (or a take-back) touched: the drawing and overlay follow. */
  private readonly changed: (structures: string[]) => void
  private readonly seen = new WeakSet<Op>()
  private pending: Promise<void> | null = null
  /** Edits made while this is above zero skip the overwrite policy (the pre-save fixes). */
  private noOverwrite = 0
  private hierarchyCache: Hierarchy | null = null

  constructor(ctx: WorkspaceContext, maps: MapSource, changed: (structures: string[]) => void) {
    this.ctx = ctx
    this.maps = maps
    this.changed = changed
    // Every change of the session: a new edit gets its linked changes (undo and redo replay them).
    ctx.store.watch(
      (s) => s.sessionRev,
      () => this.onSessionChange(),
    )
  }

  get hierarchy(): Hierarchy {
    this.hierarchyCache ??= new Hierarchy(this.ctx.structures)
    return this.hierarchyCache
  }

  isLocked(name: string): boolean {
    return !!this.ctx.store.get().views.get(name)?.locked
  }

  /** Linked changes of the last edit are still being applied (a parent or another structure loading). */
  get busy(): boolean {
    return this.pending !== null
  }

  /** Resolves once the last edit's linked changes are in place. */
  async settled(): Promise<void> {
    while (this.pending) await this.pending
  }

  // ---------------------------------------------------------------- overwrite policy (per user, localStorage)

  /** The caller's stored overwrite policy into the store. */
  loadPolicy(): void {
    let stored: string | null
    try {
      stored = localStorage.getItem(policyKey(api.user?.id))
    } catch {
      stored = null // storage refused (private mode): the default
    }
    this.ctx.store.set({ overwrite: parsePolicy(stored) })
  }

  setPolicy(policy: OverwritePolicy): void {
    this.ctx.store.set({ overwrite: policy })
    try {
      localStorage.setItem(policyKey(api.user?.id), policy)
    } catch {
      // private mode: the choice lasts for this page only
    }
  }

  // ---------------------------------------------------------------- edits

  private onSessionChange(): void {
    const session = this.ctx.session
    const op = session?.undoStack.at(-1)
    if (!session || !op || this.seen.has(op)) return
    this.seen.add(op)
    if (this.isLocked(op.structure)) {
      this.takeBack(session, op)
      return
    }
    const job = this.link(session, op)
      .catch((err: unknown) => this.ctx.fail(err))
      .finally(() => {
        if (this.pending === job) this.pending = null
      })
    this.pending = job
  }

  /** An edit of a locked structure got through: undo it and drop it from the redo stack. */
  private takeBack(session: EditSession, op: Op): void {
    session.undo()
    session.redoStack = session.redoStack.filter((o) => o !== op)
    toast(`${pretty(op.structure)} is locked: not changed`, 'warn')
    this.changed([op.structure])
  }

  /**
   * Apply the hierarchy and the overwrite policy to a new edit: synchronously when every structure it touches is
   * loaded (and the label maps are cached), else after loading them, if the edit is still the newest.
   */
  private async link(session: EditSession, op: Op): Promise<void> {
    const h = this.hierarchy
    const policy = this.noOverwrite ? 'off' : this.ctx.store.get().overwrite
    const { added } = splitChange(op)
    const candidates = policy === 'off' || !added.length ? [] : await this.candidates(session, op.structure, added)
    const { views, labelsOn } = this.ctx.store.get()
    const edits: LinkedEdit[] = linkedEdits(h, op, {
      locked: (n) => this.isLocked(n),
      policy,
      visible: (n) => labelsOn && !!views.get(n)?.visible,
      candidates,
    })
    if (!edits.length) return
    const missing = [...new Set(edits.map((e) => e.structure))].filter((n) => !session.edited.has(n))
    if (missing.length) await Promise.all(missing.map((n) => session.ensure(n)))
    if (this.ctx.session !== session || session.undoStack.at(-1) !== op) {
      toast(`The edit of ${pretty(op.structure)} was followed by another before its parent/parts were updated: check the hierarchy before saving`, 'warn', 6000)
      return
    }
    if (session.link(op, edits)) this.changed([...new Set(edits.map((e) => e.structure))])
  }

  /**
   * The other structures that may hold voxels where an edit added some: those loaded, and those the base
   * version's label maps show there (painted in order and in reverse, so a structure under another is found too),
   * with their parents and parts (hidden under one another in both maps).
   */
  private async candidates(session: EditSession, name: string, added: Int32Array): Promise<string[]> {
    const out = new Set([...session.edited.keys()])
    const base = session.baseVersionId
    if (base === null) return [...out]
    const order = paintOrder(this.ctx.structures).map((s) => s.name).filter((n) => n !== name)
    const byValue = new Map(this.ctx.structures.map((s) => [s.label_value, s.name]))
    const g = this.ctx.viewer.geometry!
    const found = new Set<string>()
    for (const map of [await this.maps(base, order), await this.maps(base, [...order].reverse())]) {
      for (let k = 0; k < added.length; k++) {
        const v = map[g.nativeIndexOfRas(added[k])]
        const n = v ? byValue.get(v) : undefined
        if (n) found.add(n)
      }
    }
    for (const n of found) {
      out.add(n)
      for (const f of this.hierarchy.family(n)) out.add(f)
    }
    return [...out]
  }

  // ---------------------------------------------------------------- the pre-save check

  /** Parts outside their parent among the pairs with an edited side (both masks loaded first). */
  async issues(): Promise<Disagreement[]> {
    await this.settled()
    const session = this.ctx.session
    const pairs = pairsToCheck(this.hierarchy, session.dirty)
    await Promise.all([...new Set(pairs.flat())].map((n) => session.ensure(n)))
    return disagreements(pairs, (n) => session.edited.get(n))
  }

  /** One-click fix of a disagreement, as one undoable edit: the parent gets the part's voxels, or the part loses them. */
  async fix(d: Disagreement, how: 'parent' | 'part'): Promise<number> {
    const { ctx } = this
    const target = how === 'parent' ? d.parent : d.part
    if (this.isLocked(target)) {
      toast(`${pretty(target)} is locked: unlock it to fix this`, 'warn')
      return 0
    }
    await this.settled()
    const session = ctx.session
    if (session.busy || ctx.lockReason() || !(await ctx.review.ensureLease())) return 0
    const part = await session.ensure(d.part)
    const parent = await session.ensure(d.parent)
    this.noOverwrite++
    let op: Op | null
    try {
      session.begin(target)
      if (how === 'parent') addToParent(part, parent)
      else removeFromPart(part, parent)
      op = session.commit(how === 'parent' ? `add ${pretty(d.part)} to ${pretty(d.parent)}` : `remove ${pretty(d.part)} outside ${pretty(d.parent)}`)
      await this.settled()
    } finally {
      this.noOverwrite--
    }
    this.changed([target])
    return op ? op.idx.length : 0
  }
}
