/**
 * Evaluation runs and their reports.
 *
 * `#/evaluations?project=&structure=`: the project's runs (status, what was evaluated) and the leaderboard of
 * model versions per structure. `#/evaluations/{id}`: one run's report: the metric definitions (NSD as the
 * backend computes it, HD percentile, the empty-mask policy), the per-structure table (DSC/NSD/HD95 mean and
 * median) with a DSC chart, the per-case DSC distribution, breakdowns by lesion size, site, phase and
 * manufacturer, tumour detection, and CSV/JSON downloads. Shapes: backend/evaluation/schemas.py + service.py.
 */

import { ApiError, api } from './api'
import { columns, dataTable, figure, hbars, type TableSpec } from './charts'
import { clear, fmtTime, h, toast } from './dom'
import { fmtNum, openLeadPage } from './lead'
import type { Project, SchemaOut } from './types'

interface Stats {
  n: number
  undefined: number
  mean: number | null
  median: number | null
}

interface StructureBlock {
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

interface Compact {
  pairs: number
  dsc_mean: number | null
  dsc_median: number | null
  nsd_mean: number | null
}

type Breakdown = Record<string, Record<string, Compact>>

interface DetectionBlock {
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

interface Summary {
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

export interface EvaluationRun {
  id: number
  project_id: number
  name: string
  status: string
  job_id: number | null
  job_status: string | null
  job_progress: number | null
  model_version_id: number | null
  split: string | null
  structures: string[]
  cases_planned: number
  nsd_definition: string
  config: Record<string, unknown>
  summary: Summary
  error: string | null
  created_by: number | null
  created_at: string
  finished_at: string | null
}

interface EvaluationPage {
  items: EvaluationRun[]
  total: number
  page: number
  page_size: number
}

interface LeaderRow {
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

interface Leaderboard {
  structure: string | null
  nsd_definition: string
  rows: LeaderRow[]
}

interface CaseRow {
  case_id: string
  scan_id: number
  structure: string
  dsc: number | null
  nsd: number | null
  hd95: number | null
}

interface CasesOut {
  cases: CaseRow[]
}

/** Above this many (case, structure) pairs the report does not fetch per-case rows (the CSV has them). */
const MAX_CASE_ROWS = 20000
const ACTIVE = new Set(['queued', 'running', 'pending'])

function m3(x: number | null | undefined): string {
  return x === null || x === undefined ? '—' : x.toFixed(3)
}

function mm(x: number | null | undefined): string {
  return x === null || x === undefined ? '—' : `${x.toFixed(1)}`
}

function pct(x: number | null | undefined): string {
  return x === null || x === undefined ? '—' : `${(x * 100).toFixed(1)}%`
}

function pretty(name: string): string {
  return name.replace(/_/g, ' ')
}

function statusChip(run: EvaluationRun): HTMLElement {
  const progress = ACTIVE.has(run.status) && run.job_progress !== null ? ` ${Math.round(run.job_progress * 100)}%` : ''
  return h('span', { class: `status-chip ${run.status}`, 'data-testid': 'run-status' }, run.status + progress)
}

function tolerance(t: Summary['nsd_tolerance_mm']): string {
  if (t === undefined || t === null) return '1 mm'
  if (typeof t === 'number') return `${t} mm`
  return Object.entries(t)
    .map(([k, v]) => `${k === 'default' ? 'default' : pretty(k)} ${v} mm`)
    .join(', ')
}

/** Fetch a file with the session's token and hand it to the browser as a download. */
async function download(path: string, filename: string): Promise<void> {
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

function downloadLink(label: string, path: string, filename: string, testid: string): HTMLElement {
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

export class EvaluationList {
  readonly root: HTMLElement
  private project!: Project
  private params!: URLSearchParams

  constructor(root: HTMLElement) {
    this.root = root
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'evaluations', 'evaluation report')
    if (!frame) return
    const { body, project, params } = frame
    this.project = project
    this.params = params
    const structure = params.get('structure') ?? ''
    const [runs, board, schema] = await Promise.all([
      api.get<EvaluationPage>(`/api/projects/${project.id}/evaluations?page_size=100`),
      api.get<Leaderboard>(`/api/projects/${project.id}/leaderboard${structure ? `?structure=${encodeURIComponent(structure)}` : ''}`).catch((err) => {
        if (err instanceof ApiError && err.status === 422) return { structure, nsd_definition: '', rows: [] } as Leaderboard
        throw err
      }),
      api.get<SchemaOut>(`/api/projects/${project.id}/schema`).catch(() => ({ name: '', structures: [] }) as SchemaOut),
    ])
    if (!body.isConnected) return
    clear(body)
    body.append(
      h(
        'div',
        { class: 'wl-head' },
        h('h1', null, 'Evaluations'),
        h('p', { class: 'muted' }, 'Model versions scored against the approved ground truth (DSC, NSD, HD95, tumour detection).'),
      ),
      this.runsTable(runs),
      this.leaderboard(board, schema, structure),
    )
    if (runs.items.some((r) => ACTIVE.has(r.status))) this.refreshSoon(body)
  }

  /** While a run is queued or running, reload the list every few seconds (stops once the user moves on). */
  private refreshSoon(body: HTMLElement): void {
    const here = location.hash
    window.setTimeout(() => {
      if (body.isConnected && location.hash === here) window.dispatchEvent(new HashChangeEvent('hashchange'))
    }, 4000)
  }

  private runsTable(runs: EvaluationPage): HTMLElement {
    if (!runs.items.length)
      return h(
        'section',
        { class: 'eval-section' },
        h('h2', null, 'Runs'),
        h(
          'div',
          { class: 'empty', 'data-testid': 'runs-empty' },
          'No evaluation runs yet. Start one with POST /api/projects/{id}/evaluations (a model version, or explicit label versions, against approved ground truth).',
        ),
      )
    return h(
      'section',
      { class: 'eval-section' },
      h('h2', null, `Runs (${runs.total})`),
      h(
        'table',
        { class: 'worklist', 'data-testid': 'runs-table' },
        h('thead', null, h('tr', null, ['Run', 'Status', 'Model version', 'Split', 'Cases', 'Structures', 'Started', 'Finished'].map((t) => h('th', null, t)))),
        h(
          'tbody',
          null,
          runs.items.map((r) =>
            h(
              'tr',
              { 'data-testid': `run-row-${r.id}`, onclick: () => (location.hash = `#/evaluations/${r.id}?project=${this.project.id}`) },
              h('td', { class: 'case' }, h('a', { href: `#/evaluations/${r.id}?project=${this.project.id}`, 'data-testid': `run-link-${r.id}` }, r.name || `run ${r.id}`)),
              h('td', null, statusChip(r)),
              h('td', null, r.model_version_id === null ? 'label versions' : `#${r.model_version_id}`),
              h('td', null, r.split ?? '—'),
              h('td', { class: 'num' }, fmtNum(r.cases_planned)),
              h('td', { class: 'muted' }, r.structures.length ? `${r.structures.length}` : 'all'),
              h('td', { class: 'nowrap' }, fmtTime(r.created_at)),
              h('td', { class: 'nowrap' }, fmtTime(r.finished_at)),
            ),
          ),
        ),
      ),
    )
  }

  private leaderboard(board: Leaderboard, schema: SchemaOut, structure: string): HTMLElement {
    const select = h(
      'select',
      {
        'data-testid': 'leaderboard-structure',
        onchange: (e: Event) => {
          const next = new URLSearchParams(this.params)
          next.set('project', String(this.project.id))
          const value = (e.target as HTMLSelectElement).value
          if (value) next.set('structure', value)
          else next.delete('structure')
          location.hash = `#/evaluations?${next}`
        },
      },
      h('option', { value: '' }, 'all structures'),
      schema.structures.map((st) => h('option', { value: st.name, selected: st.name === structure }, pretty(st.name))),
    )
    const rows = board.rows
    const section = h(
      'section',
      { class: 'eval-section', 'data-testid': 'leaderboard' },
      h('h2', null, 'Leaderboard'),
      h('p', { class: 'muted' }, 'Each model version’s latest finished run, ranked per structure by mean DSC (then mean NSD).'),
      h('label', { class: 'filter inline' }, 'Structure ', select),
    )
    if (!rows.length) {
      section.append(h('div', { class: 'muted', 'data-testid': 'leaderboard-empty' }, 'No finished model evaluations yet.'))
      return section
    }
    if (structure) {
      section.append(
        figure(
          hbars(
            rows.map((r) => ({ label: `${r.model ?? 'model'} v${r.version ?? '?'}`, value: r.dsc_mean })),
            { max: 1, format: (v) => v.toFixed(3) },
          ),
          null,
          'leaderboard-chart',
        ),
      )
    }
    section.append(
      dataTable({
        head: ['Structure', 'Rank', 'Model', 'Version', 'DSC mean', 'NSD mean', 'HD95 median (mm)', 'Pairs', 'Run'],
        rows: rows.map((r) => [
          pretty(r.structure),
          r.rank,
          r.model ?? '—',
          r.version === null ? '—' : `v${r.version}`,
          m3(r.dsc_mean),
          m3(r.nsd_mean),
          mm(r.hd95_median),
          r.pairs,
          h('a', { href: `#/evaluations/${r.run_id}?project=${this.project.id}` }, r.run_name || `run ${r.run_id}`),
        ]),
        testid: 'leaderboard-table',
      }),
    )
    for (const [i, r] of rows.entries()) if (r.rank === 1) section.querySelectorAll('[data-testid=leaderboard-table] tbody tr')[i]?.classList.add('best')
    return section
  }
}

export class EvaluationReport {
  readonly root: HTMLElement
  readonly runId: number

  constructor(root: HTMLElement, runId: number) {
    this.root = root
    this.runId = runId
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'evaluations', 'evaluation report')
    if (!frame) return
    const { body, project } = frame
    let run: EvaluationRun
    try {
      run = await api.get<EvaluationRun>(`/api/evaluations/${this.runId}`)
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 404) throw err
      clear(body)
      body.append(h('div', { class: 'empty', 'data-testid': 'run-missing' }, `Evaluation run ${this.runId} was not found.`))
      return
    }
    const summary = run.summary ?? {}
    const names = Object.keys(summary.structures ?? {})
    let cases: CaseRow[] | null = null
    if (run.status === 'succeeded' && (summary.pairs ?? 0) <= MAX_CASE_ROWS) {
      cases = (await api.get<CasesOut>(`/api/evaluations/${run.id}/cases?format=json`).catch(() => ({ cases: [] }) as CasesOut)).cases
    }
    if (!body.isConnected) return
    clear(body)
    const base = `/api/evaluations/${run.id}`
    const stem = `evaluation-${run.id}`
    body.append(
      h('p', { class: 'crumb' }, h('a', { href: `#/evaluations?project=${project.id}`, 'data-testid': 'back-to-runs' }, '‹ All evaluations')),
      h(
        'div',
        { class: 'wl-head dash-head' },
        h(
          'div',
          null,
          h('h1', { 'data-testid': 'run-name' }, run.name || `Evaluation ${run.id}`, ' ', statusChip(run)),
          h(
            'p',
            { class: 'muted' },
            `${run.model_version_id === null ? 'explicit label versions' : `model version #${run.model_version_id}`} · split ${run.split ?? '—'} · ` +
              `${fmtNum(summary.cases ?? run.cases_planned)} cases · ${fmtNum(summary.pairs ?? 0)} case×structure pairs · started ${fmtTime(run.created_at)}` +
              (run.finished_at ? ` · finished ${fmtTime(run.finished_at)}` : ''),
          ),
        ),
        h(
          'div',
          { class: 'downloads' },
          run.status === 'succeeded' ? downloadLink('Cases CSV', `${base}/cases?format=csv`, `${stem}-cases.csv`, 'download-csv') : null,
          run.status === 'succeeded' ? downloadLink('Cases JSON', `${base}/cases?format=json`, `${stem}-cases.json`, 'download-json') : null,
          downloadLink('Report JSON', base, `${stem}.json`, 'download-report'),
        ),
      ),
    )
    if (run.status !== 'succeeded') {
      body.append(
        h(
          'div',
          { class: run.status === 'failed' ? 'error pad' : 'muted pad', 'data-testid': 'run-pending' },
          run.status === 'failed' ? `This run failed: ${run.error ?? 'no message'}` : `This run is ${run.status}; the report appears when it has finished.`,
        ),
      )
      if (ACTIVE.has(run.status)) {
        const here = location.hash
        window.setTimeout(() => {
          if (body.isConnected && location.hash === here) window.dispatchEvent(new HashChangeEvent('hashchange'))
        }, 3000)
      }
      return
    }
    body.append(
      this.definitions(run),
      this.structureTable(summary, names),
      h(
        'div',
        { class: 'two-col' },
        this.dscChart(summary, names),
        cases ? this.distribution(cases, names) : h('p', { class: 'muted' }, 'Per-case rows are in the CSV download (too many to chart here).'),
      ),
      this.breakdowns(summary, names),
      this.detection(summary.detection ?? null),
    )
    if (summary.skipped_count)
      body.append(h('p', { class: 'warn', 'data-testid': 'run-skipped' }, `${summary.skipped_count} pair(s) were skipped (see the report JSON).`))
    if (summary.unpredicted_cases?.length)
      body.append(h('p', { class: 'warn' }, `${summary.unpredicted_cases.length} approved case(s) had no prediction from this model version.`))
  }

  private definitions(run: EvaluationRun): HTMLElement {
    const s = run.summary
    return h(
      'div',
      { class: 'definition', 'data-testid': 'nsd-definition' },
      h('b', null, 'NSD'),
      ` (normalised surface distance, “surface Dice”) at tolerance τ = ${tolerance(s.nsd_tolerance_mm)}: ${s.nsd_definition ?? run.nsd_definition}. ` +
        'The share of the two surfaces’ area (ground truth and prediction, each surface element weighted by its area in mm²) lying within τ of the other surface. ',
      h('b', null, `HD${s.hd_percentile ?? 95}`),
      `: the larger of the two directed, area-weighted ${s.hd_percentile ?? 95}th-percentile surface distances, in mm. `,
      h('b', null, 'DSC'),
      ': 2|G∩P| / (|G|+|P|) in voxels. ',
      h('br'),
      h('b', null, 'Empty masks'),
      `: ${s.empty_policy ?? '—'}.`,
    )
  }

  private structureTable(summary: Summary, names: string[]): HTMLElement {
    const blocks = summary.structures ?? {}
    const spec: TableSpec = {
      head: ['Structure', 'Pairs', 'DSC mean', 'DSC median', 'NSD mean', 'NSD median', 'NSD undefined', 'HD95 mean (mm)', 'HD95 median (mm)', 'Vol. error mean (mL)', 'GT empty', 'Pred. empty'],
      rows: names.map((n) => {
        const b = blocks[n]
        return [pretty(n), b.pairs, m3(b.dsc.mean), m3(b.dsc.median), m3(b.nsd.mean), m3(b.nsd.median), b.nsd.undefined, mm(b.hd95.mean), mm(b.hd95.median), mm(b.volume_error_ml.mean), b.gt_empty, b.pred_empty]
      }),
      testid: 'structure-table',
    }
    const table = dataTable(spec)
    table.querySelectorAll('tbody tr').forEach((tr, i) => tr.setAttribute('data-structure', names[i]))
    return h('section', { class: 'eval-section' }, h('h2', null, 'Per structure'), table)
  }

  private dscChart(summary: Summary, names: string[]): HTMLElement {
    const blocks = summary.structures ?? {}
    return h(
      'section',
      { class: 'eval-section' },
      h('h2', null, 'Mean DSC per structure (tick: median)'),
      figure(
        hbars(
          names.map((n) => ({ label: pretty(n), value: blocks[n].dsc.mean, tick: blocks[n].dsc.median })),
          { max: 1, format: (v) => v.toFixed(3) },
        ),
        null,
        'dsc-chart',
      ),
    )
  }

  /** Per-case DSC histogram for one structure (chosen in a select), 10 bins over [0, 1]. */
  private distribution(cases: CaseRow[], names: string[]): HTMLElement {
    const wrap = h('div')
    const draw = (structure: string): void => {
      clear(wrap)
      const values = cases.filter((c) => c.structure === structure && c.dsc !== null).map((c) => c.dsc as number)
      const bins = Array.from({ length: 10 }, (_, i) => ({ lo: i / 10, hi: (i + 1) / 10, count: 0 }))
      for (const v of values) bins[Math.min(9, Math.floor(v * 10))].count++
      wrap.append(
        figure(
          columns(
            bins.map((b) => ({ label: b.lo.toFixed(1), value: b.count, title: `DSC ${b.lo.toFixed(1)}–${b.hi.toFixed(1)}: ${b.count} cases` })),
            { yLabel: 'cases' },
          ),
          { head: ['DSC from', 'to', 'Cases'], rows: bins.map((b) => [b.lo.toFixed(1), b.hi.toFixed(1), b.count]), testid: 'distribution-table' },
          'distribution-chart',
        ),
        h('p', { class: 'muted small' }, `${values.length} case${values.length === 1 ? '' : 's'} of ${pretty(structure)}.`),
      )
    }
    const select = h(
      'select',
      { 'data-testid': 'distribution-structure', onchange: (e: Event) => draw((e.target as HTMLSelectElement).value) },
      names.map((n) => h('option', { value: n }, pretty(n))),
    )
    if (names.length) draw(names[0])
    return h('section', { class: 'eval-section' }, h('h2', null, 'Per-case DSC distribution'), h('label', { class: 'filter inline' }, 'Structure ', select), wrap)
  }

  /** Group × structure mean DSC matrices for each breakdown (lesion size, site, phase, manufacturer). */
  private breakdowns(summary: Summary, names: string[]): HTMLElement {
    const dims: [string, string, Breakdown | undefined][] = [
      ['lesion-size', 'Lesion size', summary.by_lesion_size],
      ['site', 'Site', summary.by_site],
      ['phase', 'Phase', summary.by_phase],
      ['manufacturer', 'Manufacturer', summary.by_manufacturer],
    ]
    const order = (key: string, groups: string[]): string[] => {
      if (key !== 'lesion-size' || !summary.lesion_size_buckets) return groups
      const known = summary.lesion_size_buckets
      return [...groups].sort((a, b) => (known.indexOf(a) + 1 || 99) - (known.indexOf(b) + 1 || 99))
    }
    return h(
      'section',
      { class: 'eval-section' },
      h('h2', null, 'Breakdowns (mean DSC; pairs in brackets)'),
      dims.map(([key, label, data]) => {
        const groups = order(key, Object.keys(data ?? {}))
        if (!data || !groups.length) return null
        return h(
          'details',
          { class: 'breakdown', open: key === 'lesion-size', 'data-testid': `breakdown-${key}` },
          h('summary', null, `By ${label.toLowerCase()} (${groups.length})`),
          h(
            'div',
            { class: 'scroll-x' },
            dataTable({
              head: [label, ...names.map(pretty)],
              rows: groups.map((g) => [g, ...names.map((n) => (data[g][n] ? `${m3(data[g][n].dsc_mean)} (${data[g][n].pairs})` : '—'))]),
              testid: `breakdown-${key}-table`,
            }),
          ),
        )
      }),
    )
  }

  private detection(d: DetectionBlock | null): HTMLElement {
    const section = h('section', { class: 'eval-section', 'data-testid': 'detection' }, h('h2', null, 'Tumour detection'))
    if (!d) {
      section.append(h('p', { class: 'muted' }, 'No detection results in this run.'))
      return section
    }
    const tile = (label: string, value: string, testid: string): HTMLElement =>
      h('div', { class: 'tile', 'data-testid': `det-${testid}` }, h('div', { class: 'tile-value' }, value), h('div', { class: 'tile-label' }, label))
    section.append(
      h(
        'div',
        { class: 'tiles' },
        tile('Patient sensitivity', pct(d.patient_sensitivity), 'patient-sensitivity'),
        tile('Specificity', pct(d.specificity), 'specificity'),
        tile('Lesion sensitivity', pct(d.tumour_sensitivity), 'lesion-sensitivity'),
        tile('AUC', m3(d.auc), 'auc'),
        tile('False-positive components', fmtNum(d.false_positive_components), 'fp'),
      ),
      h(
        'p',
        { class: 'muted small' },
        `${d.tumour_patients} tumour and ${d.tumour_free_patients} tumour-free patients; ${d.lesions_detected} of ${d.lesions} lesions detected; ` +
          `confidence from ${Array.isArray(d.confidence_source) ? d.confidence_source.join(', ') : d.confidence_source}.`,
      ),
      h(
        'p',
        { class: 'muted small', 'data-testid': 'detection-config' },
        'Settings: ',
        Object.entries(d.config)
          .map(([k, v]) => `${k.replace(/_/g, ' ')} ${Array.isArray(v) ? v.join(' / ') : String(v)}`)
          .join(' · '),
      ),
      dataTable({
        head: ['Lesion size', 'Lesions', 'Detected', 'Sensitivity'],
        rows: Object.entries(d.by_lesion_size).map(([bucket, b]) => [bucket, b.lesions, b.detected, pct(b.sensitivity)]),
        testid: 'detection-table',
      }),
    )
    return section
  }
}
