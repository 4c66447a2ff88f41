/**
 * Evaluation runs and their reports: the shapes of a run's summary, formatting, downloads.
 *
 * `#/evaluations?project=&structure=`: the project's runs (status, what was evaluated) and the leaderboard of
 * model versions per structure. `#/evaluations/{id}`: one run's report: the metric definitions (NSD as the
 * backend computes it, HD percentile, the empty-mask policy), the per-structure table (DSC/NSD/HD95 mean and
 * median) with a DSC chart, the per-case DSC distribution, breakdowns by lesion size, site, phase and
 * manufacturer, tumour detection, and CSV/JSON downloads. Shapes: backend/evaluation/schemas.py + service.py.
 */

import { api } from '../api/client'
import type { EvaluationOut, EvaluationPage as EvaluationPageOut } from '../api/types'
import { pretty } from '../core/structures'
import { h, toast } from '../dom'

export interface Stats {
  n: number
  undefined: number
  mean: number | null
  median: number | null
}

export interface StructureBlock {
  pairs: number
  dsc: Stats
  nsd: Stats
  hd95: Stats
  volume_error_ml: Stats
  volume_error_rel: Stats
  gt_empty: number
  pred_empty: number
  both_empty: number
}

export interface Compact {
  pairs: number
  dsc_mean: number | null
  dsc_median: number | null
  nsd_mean: number | null
}

export type Breakdown = Record<string, Record<string, Compact>>

export interface DetectionBlock {
  cases: number
  tumour_patients: number
  tumour_free_patients: number
  patient_sensitivity: number | null
  lesions: number
  lesions_detected: number
  tumour_sensitivity: number | null
  specificity: number | null
  false_positive_components: number
  auc: number | null
  confidence_source: string | string[]
  by_lesion_size: Record<string, { lesions: number; detected: number; sensitivity: number | null }>
  config: Record<string, unknown>
}

export interface Summary {
  nsd_definition?: string
  empty_policy?: string
  hd_percentile?: number
  nsd_tolerance_mm?: number | Record<string, number>
  cases?: number
  pairs?: number
  structures?: Record<string, StructureBlock>
  by_lesion_size?: Breakdown
  lesion_size_buckets?: string[]
  by_site?: Breakdown
  by_phase?: Breakdown
  by_manufacturer?: Breakdown
  detection?: DetectionBlock | null
  skipped_count?: number
  unpredicted_cases?: unknown[]
}

/** A run (GET /api/evaluations/{id}); the API types `summary` as an open object, its shape is this client's view. */
export type EvaluationRun = Omit<EvaluationOut, 'summary'> & { summary: Summary }

export interface EvaluationPage extends Omit<EvaluationPageOut, 'items'> {
  items: EvaluationRun[]
}

export interface LeaderRow {
  structure: string
  model_version_id: number
  model: string | null
  version: number | null
  run_id: number
  run_name: string
  split: string | null
  finished_at: string | null
  pairs: number
  dsc_mean: number | null
  nsd_mean: number | null
  hd95_median: number | null
  rank: number
}

export interface Leaderboard {
  structure: string | null
  nsd_definition: string
  rows: LeaderRow[]
}

export interface CaseRow {
  case_id: string
  scan_id: number
  structure: string
  dsc: number | null
  nsd: number | null
  hd95: number | null
}

export interface CasesOut {
  cases: CaseRow[]
}

/** Above this many (case, structure) pairs the report does not fetch per-case rows (the CSV has them). */
export const MAX_CASE_ROWS = 20000
export const ACTIVE = new Set(['queued', 'running', 'pending'])

export function m3(x: number | null | undefined): string {
  return x === null || x === undefined ? '—' : x.toFixed(3)
}

export function mm(x: number | null | undefined): string {
  return x === null || x === undefined ? '—' : `${x.toFixed(1)}`
}

export function pct(x: number | null | undefined): string {
  return x === null || x === undefined ? '—' : `${(x * 100).toFixed(1)}%`
}

export function statusChip(run: EvaluationRun): HTMLElement {
  // job_progress is a percentage (0–100), as every job reports it.
  const progress = run.status === 'running' && run.job_progress !== null ? ` ${Math.round(run.job_progress)}%` : ''
  return h('span', { class: `status-chip ${run.status}`, 'data-testid': 'run-status', 'data-status': run.status }, run.status + progress)
}

export function tolerance(t: Summary['nsd_tolerance_mm']): string {
  if (t === undefined || t === null) return '1 mm'
  if (typeof t === 'number') return `${t} mm`
  return Object.entries(t)
    .map(([k, v]) => `${k === 'default' ? 'default' : pretty(k)} ${v} mm`)
    .join(', ')
}

/** Fetch a file with the session's token and hand it to the browser as a download. */
export async function download(path: string, filename: string): Promise<void> {
  try {
    const resp = await api.send('GET', path)
    const blob = await resp.blob()
    const url = URL.createObjectURL(blob)
    const a = h('a', { href: url, download: filename, hidden: true })
    document.body.append(a)
    a.click()
    a.remove()
    window.setTimeout(() => URL.revokeObjectURL(url), 30_000)
  } catch (err) {
    toast(`Download failed: ${(err as Error).message}`, 'error')
  }
}

export function downloadLink(label: string, path: string, filename: string, testid: string): HTMLElement {
  return h(
    'a',
    {
      class: 'btn small',
      href: path,
      'data-testid': testid,
      onclick: (e: Event) => {
        e.preventDefault()
        download(path, filename).catch(() => undefined)
      },
    },
    label,
  )
}

