/**
 * The models page as data (no DOM): a version's validation read into a mean Dice, a per-structure table and, for an
 * interactive model, a clicks-to-Dice curve per structure (`validation.per_structure[name].curve` or the same under
 * `validation.clicker`); the promotion gate's per-structure old/new Dice from a 409 or a decision; the training
 * request body. Unit-tested under Node (test/modelsRequest.test.ts).
 */

import type { components } from '../api/schema'

export type ModelOut = components['schemas']['ModelOut']
export type ModelVersion = components['schemas']['ModelVersionOut']
export type ModelDecision = components['schemas']['ModelDecisionOut']
export type TrainRequest = components['schemas']['TrainRequest']
export type TrainingRound = components['schemas']['TrainingRoundOut']
export type Job = components['schemas']['JobOut']

export type Built<T> = { body: T; error?: undefined } | { body?: undefined; error: string }

/** One structure's validation: its Dice (held-out, or after 3 clicks) and, for interactive models, Dice per click. */
export interface StructureScore {
  structure: string
  dice: number | null
  curve: number[]
}

export interface ValidationSummary {
  mean: number | null
  structures: StructureScore[]
  /** True when the version carries clicks-to-Dice curves (an interactive model). */
  interactive: boolean
  clicksToDice90: number | null
}

function num(x: unknown): number | null {
  return typeof x === 'number' && Number.isFinite(x) ? x : null
}

function obj(x: unknown): Record<string, unknown> | null {
  return x && typeof x === 'object' && !Array.isArray(x) ? (x as Record<string, unknown>) : null
}

/** The mean Dice, per-structure Dice and click curves of a version's `validation` (any part may be missing). */
export function validationSummary(validation: Record<string, unknown> | null | undefined): ValidationSummary {
  const v = obj(validation) ?? {}
  const clicker = obj(v.clicker)
  const source = clicker && obj(clicker.per_structure) ? clicker : v
  const per = obj(source.per_structure) ?? obj(v.per_structure) ?? {}
  const structures: StructureScore[] = Object.entries(per).map(([structure, value]) => {
    const entry = obj(value)
    if (!entry) return { structure, dice: num(value), curve: [] }
    const curve = Array.isArray(entry.curve) ? entry.curve.map((x) => num(x)).filter((x): x is number => x !== null) : []
    const dice = num(entry.dice) ?? num(entry.mean_dice) ?? num(entry.dice_3_clicks) ?? (curve.length ? curve[Math.min(2, curve.length - 1)] : null)
    return { structure, dice, curve }
  })
  structures.sort((a, b) => a.structure.localeCompare(b.structure))
  const scored = structures.map((s) => s.dice).filter((x): x is number => x !== null)
  const mean = num(source.mean_dice) ?? num(v.mean_dice) ?? (scored.length ? scored.reduce((a, b) => a + b, 0) / scored.length : null)
  return {
    mean,
    structures,
    interactive: structures.some((s) => s.curve.length > 0),
    clicksToDice90: num(source.clicks_to_dice_90) ?? num(v.clicks_to_dice_90),
  }
}

/** One structure's row of the promotion gate. */
export interface GateRow {
  structure: string
  previous: number | null
  next: number | null
  delta: number | null
  ok: boolean
}

export interface GateView {
  passed: boolean
  meanPrevious: number | null
  meanNew: number | null
  heldoutScans: number | null
  rows: GateRow[]
  failures: string[]
}

/** A stored gate (`evaluate_gate`'s dict, in a decision, a training round or a 409's `details.gate`), or null. */
export function gateView(gate: unknown): GateView | null {
  const g = obj(gate)
  if (!g || !Array.isArray(g.structures)) return null
  const rows = g.structures.map((r): GateRow => {
    const row = obj(r) ?? {}
    const previous = num(row.previous)
    const next = num(row.new)
    return { structure: String(row.structure ?? ''), previous, next, delta: num(row.delta) ?? (previous !== null && next !== null ? next - previous : null), ok: row.ok === true }
  })
  return {
    passed: g.passed === true,
    meanPrevious: num(g.mean_previous),
    meanNew: num(g.mean_new),
    heldoutScans: num(g.heldout_scans),
    rows,
    failures: Array.isArray(g.failures) ? g.failures.map(String) : [],
  }
}

/** The gate a refused promotion (an ApiError body: `{detail, details: {gate}}`) carries, or null. */
export function gateOfRefusal(body: Record<string, unknown> | null | undefined): GateView | null {
  return gateView(obj(obj(body)?.details)?.gate)
}

/** What the lead typed into the training form. */
export interface TrainForm {
  /** 'approved' (every approved version), or 'ids' with the typed label version ids. */
  versions: 'approved' | 'ids'
  ids: string
  epochs: string
  heldout: string
  seed: string
  init: string
}

export const DEFAULT_TRAIN_FORM: TrainForm = { versions: 'approved', ids: '', epochs: '20', heldout: '0.25', seed: '0', init: 'promoted' }

/** The body of `POST /api/projects/{id}/models/{model_id}/train`, or the first thing to fix. */
export function trainRequest(form: TrainForm): Built<TrainRequest> {
  const epochs = Number(form.epochs)
  if (!Number.isInteger(epochs) || epochs < 1 || epochs > 1000) return { error: 'Epochs must be a whole number from 1 to 1000.' }
  const heldout = Number(form.heldout)
  if (!Number.isFinite(heldout) || heldout <= 0 || heldout >= 1) return { error: 'The held-out fraction must be between 0 and 1 (e.g. 0.2).' }
  const seed = Number(form.seed || '0')
  if (!Number.isInteger(seed) || seed < 0) return { error: 'The seed must be a whole number ≥ 0.' }
  const body: TrainRequest = { epochs, heldout_fraction: heldout, seed, init: form.init || 'promoted' }
  if (form.versions === 'ids') {
    const parts = form.ids.split(/[\s,;]+/).filter(Boolean)
    const ids = parts.map(Number)
    if (!ids.length) return { error: 'List the approved label version ids to train on (or choose every approved version).' }
    if (ids.some((n) => !Number.isInteger(n) || n <= 0)) return { error: 'Label version ids must be whole numbers separated by commas.' }
    const unique = [...new Set(ids)]
    if (unique.length < 2) return { error: 'Training needs at least 2 approved label versions (some are held out).' }
    body.label_version_ids = unique
  }
  return { body }
}

/** A rollback's reason, trimmed; an error when empty (the server records it with the decision). */
export function rollbackReason(text: string): Built<{ reason: string }> {
  const reason = text.trim()
  if (!reason) return { error: 'A rollback needs a reason: it is recorded with the decision.' }
  if (reason.length > 1000) return { error: `The reason is ${reason.length} characters; at most 1000.` }
  return { body: { reason } }
}

/** The words of a decision: "promote v1 → v2", "rollback v3 → v1" (numbers from the model's versions). */
export function decisionLine(d: ModelDecision, numbers: Map<number, number>): string {
  const label = (id: number | null): string => (id === null ? '—' : `v${numbers.get(id) ?? `#${id}`}`)
  return `${d.kind} ${label(d.from_version_id)} → ${label(d.to_version_id)}`
}

/** Whether a job is still queued or running. */
export function jobActive(job: Job): boolean {
  return job.status === 'queued' || job.status === 'running'
}

/** The training round a finished training job produced (its job id), or null while there is none yet. */
export function roundOfJob(rounds: TrainingRound[], jobId: number): TrainingRound | null {
  return rounds.find((r) => r.job_id === jobId) ?? null
}

/** "0.912" or "—". */
export function dice(x: number | null | undefined): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(3)
}

/** "+0.012" / "−0.031" / "—". */
export function delta(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '—'
  return `${x >= 0 ? '+' : '−'}${Math.abs(x).toFixed(3)}`
}
