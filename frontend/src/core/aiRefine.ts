/**
 * The "AI refine" tool, pure: the clicks of a structure's click session, kept with the undo step each answer became
 * (an undone answer takes its click with it, a redone one brings it back); the click request (every click so far,
 * newest last, in the scan's stored order, and the structure's current mask as `previous`); the answer's box
 * checked and written into a RAS mask. The shapes mirror the API's ClickIn/ClickOut (src/api/schema.d.ts).
 */

import type { Box, Geometry, Vec3 } from './geometry'
import { applyAnswer, encodeInput } from './operations'
import { toBase64 } from './patch'

/** One click: a stored-order voxel (i, j, k), inside (positive) or outside (negative) the structure. */
export interface Click {
  voxel: Vec3
  positive: boolean
}

/** The structure's current mask as the request's `previous`: its non-zero box, bit-packed, gzipped, base64. */
export interface PreviousBox {
  origin: number[]
  size: number[]
  encoding: string
  data: string
}

/** The body of `POST /api/scans/{id}/interactive` (the server's ClickIn). */
export interface ClickBody {
  structure: string
  positive: number[][]
  negative: number[][]
  previous: PreviousBox | null
  branch: boolean
  model?: string | null
}

/** The server's answer (ClickOut): the structure's new mask inside a box, in stored order. */
export interface ClickAnswer {
  structure: string
  origin: number[]
  size: number[]
  encoding: string
  data: string
  voxels: number
  model: string
  model_version_id: number
  timings: Record<string, number>
}

/** One answer that became an edit: its undo record and every click that produced it. */
interface Step<O> {
  structure: string
  op: O
  clicks: Click[]
}

/** Steps remembered at most (the edit session keeps 200 undo steps). */
const MAX_STEPS = 200

/**
 * The click sessions of every structure. A new click continues the session of the structure's newest answer that
 * is still applied (its undo step is in the undo stack); with none (never clicked, undone, restarted, the history
 * dropped by a rebase or discard) it starts afresh.
 */
export class ClickHistory<O> {
  private steps: Step<O>[] = []

  /** The clicks so far of a structure: those of its newest answer still in `undoStack` (empty when none). */
  clicksFor(structure: string, undoStack: readonly O[]): Click[] {
    const applied = new Set(undoStack)
    for (let i = this.steps.length - 1; i >= 0; i--) {
      const step = this.steps[i]
      if (step.structure === structure && applied.has(step.op)) return step.clicks.map((c) => ({ voxel: [...c.voxel], positive: c.positive }))
    }
    return []
  }

  /** Remember that `op` (an undo step of `structure`) is the answer to `clicks`. */
  record(structure: string, op: O, clicks: readonly Click[]): void {
    this.steps.push({ structure, op, clicks: clicks.map((c) => ({ voxel: [...c.voxel], positive: c.positive })) })
    if (this.steps.length > MAX_STEPS) this.steps.shift()
  }

  /** Start the structure's click session afresh (its answers stay applied, as ordinary edits). */
  restart(structure: string): void {
    this.steps = this.steps.filter((s) => s.structure !== structure)
  }

  /** Forget the steps whose undo record is in neither stack any more (a rebase, a discard, the stack's limit). */
  prune(undoStack: readonly O[], redoStack: readonly O[]): void {
    const live = new Set([...undoStack, ...redoStack])
    this.steps = this.steps.filter((s) => live.has(s.op))
  }
}

/**
 * The clicks a request may carry: the newest `max` of them. When that would drop every positive click, the newest
 * positive one takes the oldest kept place (the server needs one unless the current mask is sent).
 */
export function limitClicks(clicks: readonly Click[], max: number): Click[] {
  if (max <= 0) return []
  if (clicks.length <= max) return [...clicks]
  const kept = clicks.slice(clicks.length - max)
  if (!kept.some((c) => c.positive)) {
    const dropped = clicks.slice(0, clicks.length - max)
    for (let i = dropped.length - 1; i >= 0; i--) {
      if (!dropped[i].positive) continue
      kept[0] = dropped[i]
      break
    }
  }
  return kept
}

/** The structure's current mask as `previous`, or null when it is empty (RAS working copy in, stored order out). */
export function previousOf(geometry: Geometry, ras: Uint8Array): PreviousBox | null {
  const { input, bytes } = encodeInput(geometry, '', ras, 'previous')
  if (!bytes) return null
  return { origin: [...input.origin], size: [...input.size], encoding: input.encoding, data: toBase64(bytes) }
}

/** The click request: the structure, every click so far (newest last) split by sign, its current mask, the branch flag. */
export function buildClickRequest(
  structure: string,
  clicks: readonly Click[],
  previous: PreviousBox | null,
  options: { branch?: boolean; model?: string | null } = {},
): ClickBody {
  const body: ClickBody = {
    structure,
    positive: clicks.filter((c) => c.positive).map((c) => [...c.voxel]),
    negative: clicks.filter((c) => !c.positive).map((c) => [...c.voxel]),
    previous,
    branch: options.branch ?? false,
  }
  if (options.model) body.model = options.model
  return body
}

/** A stored-order voxel as a click, refusing one outside the volume. */
export function clickAt(geometry: Geometry, voxel: Vec3, positive: boolean): Click {
  if (!voxel.every((v, a) => Number.isInteger(v) && v >= 0 && v < geometry.nativeDims[a])) throw new Error(`the click ${voxel.join(', ')} is outside the volume`)
  return { voxel: [voxel[0], voxel[1], voxel[2]], positive }
}

/** The answer's box, checked: three sizes, inside the volume, the encoding the client decodes. */
export function answerBox(geometry: Geometry, answer: Pick<ClickAnswer, 'origin' | 'size' | 'encoding'>): Box {
  const { origin, size } = answer
  if (origin.length !== 3 || size.length !== 3) throw new Error('the answer has no 3D box')
  for (let a = 0; a < 3; a++) {
    if (!Number.isInteger(origin[a]) || !Number.isInteger(size[a]) || origin[a] < 0 || size[a] < 0 || origin[a] + size[a] > geometry.nativeDims[a]) {
      throw new Error(`the answer's box ${origin.join(',')} + ${size.join('×')} is outside the volume`)
    }
  }
  if (answer.encoding !== 'bits+gzip') throw new Error(`unexpected answer encoding ${answer.encoding}`)
  return { origin: [origin[0], origin[1], origin[2]], size: [size[0], size[1], size[2]] }
}

/** Replace the voxels of the answer's box in a RAS mask with the answer; returns the voxels that changed. */
export function applyClickAnswer(geometry: Geometry, ras: Uint8Array, answer: Pick<ClickAnswer, 'origin' | 'size' | 'encoding' | 'data'>): number {
  answerBox(geometry, answer)
  return applyAnswer(geometry, ras, answer)
}

/** The undo label of an answer: the tool, and the clicks (positive, negative) it answered. */
export function refineLabel(clicks: readonly Click[]): string {
  const pos = clicks.filter((c) => c.positive).length
  return `AI refine (${pos}+ ${clicks.length - pos}−)`
}

/** The status line after an answer: time taken in the browser, the server's parts, the voxels in the box. */
export function answerSummary(answer: Pick<ClickAnswer, 'voxels' | 'timings'>, elapsedMs: number): string {
  const worker = answer.timings.worker_ms
  const parts = [`${Math.round(elapsedMs)} ms`]
  if (Number.isFinite(worker)) parts.push(`model ${Math.round(worker)} ms`)
  parts.push(`${answer.voxels.toLocaleString('en')} voxels in the box`)
  return parts.join(' · ')
}
