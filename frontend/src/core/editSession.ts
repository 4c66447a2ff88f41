/**
 * The edit session of one scan: per-structure base masks (as loaded from the base version) and working copies,
 * all in NiiVue's RAS order; an undo/redo stack of our own; the patch and draft of the unsaved change (the changed
 * box per structure, in the scan's stored order); rebase onto a new head. Pure: masks come from an injected loader.
 */

import { type Box, type Geometry, countNonzero } from './geometry'
import { type PatchBox, type PatchPlan, decodeBox, encodeBox, encodePatch, encodePatchBox, fromBase64, toBase64 } from './patch'
import type { DraftBox, DraftPayload } from '../types'

/** One structure's recorded change: the voxel indices (RAS), and their values before and after. */
export interface Change {
  structure: string
  idx: Int32Array
  before: Uint8Array
  after: Uint8Array
}

export interface Op extends Change {
  label: string
  /** Changes of other structures made by the same edit (the hierarchy, the overwrite policy): undone and redone with it. */
  linked?: Change[]
}

/** One structure's mask of a version, RAS order, 0/1 (all zeros when the version records it as missing). */
export type MaskLoader = (versionId: number, structure: string) => Promise<Uint8Array>

const MAX_UNDO = 200

export class EditSession {
  readonly scanId: number
  readonly geometry: Geometry
  baseVersionId: number | null
  /** Saves go to a branch (the head belongs to someone else's line). */
  branch = false
  readonly base = new Map<string, Uint8Array>()
  readonly edited = new Map<string, Uint8Array>()
  private readonly dirtySet = new Set<string>()
  undoStack: Op[] = []
  redoStack: Op[] = []
  private snapshot: { structure: string; data: Uint8Array } | null = null
  private loading = new Map<string, Promise<Uint8Array>>()
  /** Called after every change of the working copies (edit, undo, redo, restore, save). */
  onChange: (() => void) | null = null

  private readonly loadMask: MaskLoader

  constructor(scanId: number, geometry: Geometry, baseVersionId: number | null, loadMask: MaskLoader) {
    this.scanId = scanId
    this.geometry = geometry
    this.baseVersionId = baseVersionId
    this.loadMask = loadMask
  }

  /** The working copy of a structure, loading its base mask first if needed. */
  async ensure(structure: string): Promise<Uint8Array> {
    const have = this.edited.get(structure)
    if (have) return have
    let pending = this.loading.get(structure)
    if (!pending) {
      const version = this.baseVersionId
      pending = (async () => {
        const mask = version === null ? new Uint8Array(this.geometry.voxels) : await this.loadMask(version, structure)
        if (!this.edited.has(structure)) {
          this.base.set(structure, mask)
          this.edited.set(structure, mask.slice())
        }
        return this.edited.get(structure)!
      })().finally(() => this.loading.delete(structure))
      this.loading.set(structure, pending)
    }
    return pending
  }

  /** Free the masks of structures that hold nothing unsaved and no undo history (large volumes: 2 × N MB each). */
  release(keep: string | readonly string[]): void {
    const kept = new Set(typeof keep === 'string' ? [keep] : keep)
    const referenced = new Set([...this.undoStack, ...this.redoStack].flatMap((op) => [op.structure, ...(op.linked ?? []).map((c) => c.structure)]))
    for (const structure of [...this.edited.keys()]) {
      if (kept.has(structure) || this.dirtySet.has(structure) || referenced.has(structure)) continue
      if (this.snapshot?.structure === structure) continue
      this.edited.delete(structure)
      this.base.delete(structure)
    }
  }

  count(structure: string): number | null {
    const bm = this.edited.get(structure)
    return bm ? countNonzero(bm) : null
  }

  isDirty(structure: string): boolean {
    return this.dirtySet.has(structure)
  }

  get dirty(): string[] {
    return [...this.dirtySet].sort()
  }

  get hasChanges(): boolean {
    return this.dirtySet.size > 0
  }

  private recheck(structure: string): void {
    const a = this.edited.get(structure)
    const b = this.base.get(structure)
    let differs = false
    if (a && b) {
      for (let i = 0; i < a.length; i++) {
        if ((a[i] > 0) !== (b[i] > 0)) {
          differs = true
          break
        }
      }
    }
    if (differs) this.dirtySet.add(structure)
    else this.dirtySet.delete(structure)
  }

  /** Start an operation on a structure's working copy (snapshot for the undo record). */
  begin(structure: string): Uint8Array {
    const bm = this.edited.get(structure)
    if (!bm) throw new Error(`structure ${structure} is not loaded`)
    this.snapshot = { structure, data: bm.slice() }
    return bm
  }

  /** Finish the operation: record what changed (nothing recorded when nothing changed). */
  commit(label: string): Op | null {
    const snap = this.snapshot
    this.snapshot = null
    if (!snap) return null
    const bm = this.edited.get(snap.structure)!
    const idx: number[] = []
    for (let i = 0; i < bm.length; i++) if (bm[i] !== snap.data[i]) idx.push(i)
    if (!idx.length) return null
    const op: Op = {
      structure: snap.structure,
      label,
      idx: Int32Array.from(idx),
      before: Uint8Array.from(idx, (i) => snap.data[i]),
      after: Uint8Array.from(idx, (i) => bm[i]),
    }
    this.undoStack.push(op)
    if (this.undoStack.length > MAX_UNDO) this.undoStack.shift()
    this.redoStack = []
    this.recheck(snap.structure)
    this.onChange?.()
    return op
  }

  /** Abandon the operation in progress and restore the snapshot. */
  cancel(): void {
    if (!this.snapshot) return
    this.edited.get(this.snapshot.structure)?.set(this.snapshot.data)
    this.snapshot = null
  }

  /** Put the snapshot back but keep the operation open (the outline tool redraws from scratch). */
  revert(): void {
    if (this.snapshot) this.edited.get(this.snapshot.structure)?.set(this.snapshot.data)
  }

  get busy(): boolean {
    return this.snapshot !== null
  }

  /**
   * Set voxels of other loaded structures as part of the newest edit (`op` must be the top of the undo stack):
   * recorded in `op.linked`, so one undo or redo takes the whole edit. Returns the voxels changed.
   */
  link(op: Op, edits: readonly { structure: string; idx: ArrayLike<number>; value: number }[]): number {
    if (this.undoStack.at(-1) !== op) throw new Error('only the newest edit can take linked changes')
    let total = 0
    const touched = new Set<string>()
    for (const e of edits) {
      const bm = this.edited.get(e.structure)
      if (!bm) throw new Error(`structure ${e.structure} is not loaded`)
      const changed: number[] = []
      for (let k = 0; k < e.idx.length; k++) if (bm[e.idx[k]] !== e.value) changed.push(e.idx[k])
      if (!changed.length) continue
      const change: Change = {
        structure: e.structure,
        idx: Int32Array.from(changed),
        before: Uint8Array.from(changed, (i) => bm[i]),
        after: new Uint8Array(changed.length).fill(e.value),
      }
      for (const i of changed) bm[i] = e.value
      ;(op.linked ??= []).push(change)
      touched.add(e.structure)
      total += changed.length
    }
    if (!total) return 0
    for (const structure of touched) this.recheck(structure)
    this.onChange?.()
    return total
  }

  undo(): Op | null {
    const op = this.undoStack.pop()
    if (!op) return null
    const linked = op.linked ?? []
    for (let c = linked.length - 1; c >= 0; c--) this.put(linked[c], linked[c].before)
    this.put(op, op.before)
    this.redoStack.push(op)
    for (const structure of new Set([op.structure, ...linked.map((c) => c.structure)])) this.recheck(structure)
    this.onChange?.()
    return op
  }

  redo(): Op | null {
    const op = this.redoStack.pop()
    if (!op) return null
    const linked = op.linked ?? []
    this.put(op, op.after)
    for (const c of linked) this.put(c, c.after)
    this.undoStack.push(op)
    for (const structure of new Set([op.structure, ...linked.map((c) => c.structure)])) this.recheck(structure)
    this.onChange?.()
    return op
  }

  private put(change: Change, values: Uint8Array): void {
    const bm = this.edited.get(change.structure)!
    for (let k = 0; k < change.idx.length; k++) bm[change.idx[k]] = values[k]
  }

  /** The changed box of a structure in stored order, or null. */
  changedBox(structure: string): Box | null {
    const a = this.edited.get(structure)
    const b = this.base.get(structure)
    if (!a || !b) return null
    return this.geometry.changedBox(a, b)
  }

  /**
   * The changed box of each edited structure, bit-packed, gzipped unless the raw bits are smaller (a short
   * stroke). Deterministic: the same edit on the same base gives the same bytes (a retry can be recognised).
   */
  patchBoxes(): PatchBox[] {
    const boxes: PatchBox[] = []
    for (const structure of this.dirty) {
      const box = this.changedBox(structure)
      if (!box) continue
      boxes.push(encodePatchBox(structure, box, this.geometry.extractBox(this.edited.get(structure)!, box)))
    }
    return boxes
  }

  /** The multipart patch save of these boxes on this session's base. */
  encodePatch(boxes: PatchBox[], message: string, branch: boolean, idempotencyKey: string): PatchPlan {
    return encodePatch(this.baseVersionId, boxes, message, branch, idempotencyKey)
  }

  /** After a successful save: the saved version is the new base; the working copies are its masks. */
  markSaved(versionId: number, branch: boolean): void {
    this.baseVersionId = versionId
    this.branch = branch
    for (const [structure, bm] of this.edited) this.base.set(structure, bm.slice())
    this.dirtySet.clear()
    this.onChange?.()
  }

  /**
   * Move the edit onto another version (the new head): every loaded structure gets that version's mask as
   * base; each edited structure's changed box is re-applied on top. The undo history refers to the old base
   * and is dropped.
   */
  async rebase(versionId: number): Promise<string[]> {
    const carried: { structure: string; box: Box; voxels: Uint8Array }[] = []
    for (const structure of this.dirty) {
      const box = this.changedBox(structure)
      if (box) carried.push({ structure, box, voxels: this.geometry.extractBox(this.edited.get(structure)!, box) })
    }
    const loaded = [...this.edited.keys()]
    const fresh = new Map<string, Uint8Array>()
    for (const structure of loaded) fresh.set(structure, await this.loadMask(versionId, structure))
    this.baseVersionId = versionId
    this.branch = false
    for (const structure of loaded) {
      const mask = fresh.get(structure)!
      this.base.set(structure, mask)
      const working = this.edited.get(structure)!
      working.set(mask)
    }
    for (const c of carried) this.geometry.applyBox(this.edited.get(c.structure)!, c.box, c.voxels)
    this.dirtySet.clear()
    for (const structure of loaded) this.recheck(structure)
    this.undoStack = []
    this.redoStack = []
    this.onChange?.()
    return carried.map((c) => c.structure)
  }

  /** Throw away every change: working copies back to the base. */
  discard(): void {
    for (const [structure, bm] of this.edited) bm.set(this.base.get(structure)!)
    this.dirtySet.clear()
    this.undoStack = []
    this.redoStack = []
    this.onChange?.()
  }

  draftPayload(active: string | null): DraftPayload | null {
    if (!this.hasChanges) return null
    const structures: Record<string, DraftBox> = {}
    for (const structure of this.dirty) {
      const box = this.changedBox(structure)
      if (!box) continue
      const data = toBase64(encodeBox(this.geometry.extractBox(this.edited.get(structure)!, box)))
      structures[structure] = { origin: box.origin, size: box.size, encoding: 'bits+gzip', data }
    }
    return {
      format: 'maskloop-draft/1',
      base_version_id: this.baseVersionId,
      branch: this.branch,
      active,
      updated_at: new Date().toISOString(),
      structures,
    }
  }

  /** Re-apply a draft's boxes on this session's base (which must be the draft's base version). */
  async restoreDraft(payload: DraftPayload): Promise<string[]> {
    const restored: string[] = []
    for (const [structure, entry] of Object.entries(payload.structures)) {
      const bm = await this.ensure(structure)
      const box: Box = { origin: entry.origin, size: entry.size }
      this.geometry.applyBox(bm, box, decodeBox(fromBase64(entry.data), box))
      this.recheck(structure)
      restored.push(structure)
    }
    this.branch = payload.branch
    this.onChange?.()
    return restored
  }
}
