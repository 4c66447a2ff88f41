/**
 * The imports page as data (no DOM): the launch body, a run's progress and totals, the report's query (status
 * filter, paging) and the words shown for runs and cases. Shapes: backend/imports/schemas.py through the generated
 * schema. Unit-tested under Node (test/importsReport.test.ts).
 */

import type { components } from '../api/schema'

export type ImportRequest = components['schemas']['ImportRequest']
export type ImportRun = components['schemas']['ImportRunOut']
export type ImportLaunch = components['schemas']['ImportLaunchOut']
export type ImportReport = components['schemas']['ImportReportOut']
export type ImportCase = components['schemas']['ImportCaseOut']
export type ImportRunPage = components['schemas']['ImportRunPage']
export type CaseCounts = components['schemas']['CaseCounts']
export type CaseStatus = ImportCase['status']

export type Built<T> = { body: T; error?: undefined } | { body?: undefined; error: string }

/** The server's limit on the folder path (ImportRequest.path max_length). */
const MAX_PATH = 1000

/** The POST body of a launch; the server decides whether the folder lies under its import root. */
export function launchBody(path: string): Built<ImportRequest> {
  const text = path.trim()
  if (!text) return { error: 'Type the dataset folder: a path under the server’s import root, e.g. PanTS.' }
  if (text.length > MAX_PATH) return { error: `The folder path takes at most ${MAX_PATH} characters.` }
  if (text.includes('\0')) return { error: 'The folder path may not contain a NUL character.' }
  return { body: { path: text } }
}

export interface Progress {
  /** Cases finished one way or another (imported, skipped, failed). */
  done: number
  total: number
  /** done / total in [0, 1]; 1 for a run with no case. */
  fraction: number
  /** Whole per cent, floored so that 100 % means every case is finished. */
  percent: number
}

/** How far a run is: finished cases over all its cases. */
export function progressOf(counts: CaseCounts): Progress {
  const done = counts.imported + counts.skipped + counts.failed
  const total = Math.max(counts.total, done)
  const fraction = total ? done / total : 1
  return { done, total, fraction, percent: Math.floor(fraction * 100) }
}

/** "2 imported · 1 skipped · 1 failed · 3 pending · 1 running of 8" (zero counts left out, bar imported/failed). */
export function totalsLine(counts: CaseCounts): string {
  const parts: string[] = [`${counts.imported} imported`]
  if (counts.skipped) parts.push(`${counts.skipped} skipped`)
  parts.push(`${counts.failed} failed`)
  if (counts.pending) parts.push(`${counts.pending} pending`)
  if (counts.running) parts.push(`${counts.running} running`)
  return `${parts.join(' · ')} of ${counts.total}`
}

/** Seconds as "45 s", "12.5 min", "3.2 h", "4.1 d"; a dash when unknown. */
export function fmtEta(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—'
  if (seconds < 90) return `${Math.max(0, Math.round(seconds))} s`
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`
  return `${(seconds / 86400).toFixed(1)} d`
}

/** The state line of a run: "running · 40 % · about 2.0 min left" or "finished · 3 failed". */
export function runStateLine(run: ImportRun): string {
  const { percent } = progressOf(run.counts)
  if (run.status === 'running') {
    const eta = run.eta_s === null ? '' : ` · about ${fmtEta(run.eta_s)} left`
    return `running · ${percent} %${eta}`
  }
  return run.counts.failed ? `finished · ${run.counts.failed} failed` : 'finished'
}

/** The dataset folder's last name, for a compact run list ("/data/imports/PanTS" → "PanTS"). */
export function folderName(root: string): string {
  const parts = root.replace(/[\\/]+$/, '').split(/[\\/]/)
  return parts[parts.length - 1] || root
}

/** Whether a re-run (a launch of the same folder) has work to do: a finished run with failed cases. */
export function canResume(run: ImportRun): boolean {
  return run.status === 'finished' && run.counts.failed > 0
}

/** The words of a launch's answer. */
export function launchWords(out: ImportLaunch): string {
  const what = out.resumed ? `Resumed import #${out.id}` : `Started import #${out.id}`
  const parts = [`${out.found} case folder${out.found === 1 ? '' : 's'} found`, `${out.queued} queued`]
  if (out.in_progress) parts.push(`${out.in_progress} still importing`)
  if (out.resumed && !out.queued && !out.in_progress) parts.push('nothing left to retry')
  return `${what}: ${parts.join(', ')}.`
}

/** The report's filters: every case, or one status. */
export type CaseFilter = 'all' | CaseStatus

export const CASE_FILTERS: [CaseFilter, string][] = [
  ['all', 'All cases'],
  ['failed', 'Failed'],
  ['imported', 'Imported'],
  ['skipped', 'Skipped'],
  ['running', 'Running'],
  ['pending', 'Pending'],
]

/** The report's query string: the status filter and one page. */
export function reportQuery(filter: CaseFilter, offset: number, limit: number): URLSearchParams {
  const params = new URLSearchParams()
  if (filter !== 'all') params.set('status', filter)
  params.set('offset', String(Math.max(0, Math.floor(offset))))
  params.set('limit', String(Math.min(5000, Math.max(1, Math.floor(limit)))))
  return params
}

/** "Cases 1–500 of 1,234" for a report page (or "No case" when the filter matches none). */
export function pageLine(report: Pick<ImportReport, 'offset' | 'total' | 'cases'>): string {
  if (!report.total) return 'No case'
  const first = report.offset + 1
  const last = report.offset + report.cases.length
  return `Cases ${first.toLocaleString('en-US')}–${last.toLocaleString('en-US')} of ${report.total.toLocaleString('en-US')}`
}

/** Up to `most` names, then "+N more" (a PanTS case may lack a dozen structure files). */
export function fewNames(names: string[], most = 4): string {
  if (names.length <= most + 1) return names.join(', ')
  return `${names.slice(0, most).join(', ')} +${names.length - most} more`
}

/** What the report's "details" column says for a case: the reason, and missing structures of imported ones. */
export function caseDetails(c: ImportCase): string {
  const parts: string[] = []
  if (c.reason) parts.push(c.reason)
  if (c.missing_structures.length) parts.push(`missing: ${fewNames(c.missing_structures)}`)
  if (c.unknown_files.length) parts.push(`unknown files: ${fewNames(c.unknown_files)}`)
  if (c.attempts > 1) parts.push(`${c.attempts} attempts`)
  return parts.join(' · ')
}

/** The run id named in the URL (`?run=`), or null. */
export function runIdOf(params: URLSearchParams): number | null {
  const id = Number(params.get('run'))
  return Number.isInteger(id) && id > 0 ? id : null
}
