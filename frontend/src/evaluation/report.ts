/** `#/evaluations/{id}`: one evaluation run's report, or its status and progress (followed) until it has finished. */

import { ApiError, api } from '../api/client'
import { columns, dataTable, figure, hbars, type TableSpec } from '../charts'
import { pretty } from '../core/structures'
import { clear, fmtTime, h } from '../dom'
import { fmtNum, openLeadPage } from '../lead'
import type { Project } from '../api/types'
import {
  ACTIVE,
  type Breakdown,
  type CaseRow,
  type CasesOut,
  type DetectionBlock,
  type EvaluationRun,
  MAX_CASE_ROWS,
  type Summary,
  downloadLink,
  m3,
  mm,
  pct,
  statusChip,
  tolerance,
} from './model'

const FOLLOW_MS = 2000

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
    await this.render(frame.body, frame.project)
  }

  /** Draw the run: its report once it has succeeded, else its status, followed until it has finished. */
  private async render(body: HTMLElement, project: Project): Promise<void> {
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
            { class: 'muted', 'data-testid': 'run-what' },
            `${run.model_version_id === null ? 'explicit label versions' : `model version #${run.model_version_id}`} · split ${run.split ?? '—'} · ` +
              `${fmtNum(summary.cases ?? run.cases_planned)} cases · ${fmtNum(summary.pairs ?? 0)} case×structure pairs · ` +
              `metrics ${run.metric_definition} · started ${fmtTime(run.created_at)}` +
              (run.finished_at ? ` · finished ${fmtTime(run.finished_at)}` : ''),
          ),
        ),
        h(
          'div',
          { class: 'downloads' },
          run.status === 'succeeded' ? downloadLink('Cases CSV', `${base}/cases?format=csv`, `${stem}-cases.csv`, 'download-csv') : null,
          run.status === 'succeeded' ? downloadLink('Cases JSON', `${base}/cases?format=json`, `${stem}-cases.json`, 'download-json') : null,
          downloadLink('Report JSON', `${base}/report`, `${stem}-report.json`, 'download-report'),
        ),
      ),
    )
    if (run.status !== 'succeeded') {
      const active = ACTIVE.has(run.status)
      const percent = Math.max(0, Math.min(100, run.job_progress ?? 0))
      body.append(
        h(
          'div',
          { class: run.status === 'failed' ? 'error pad' : 'muted pad', 'data-testid': 'run-pending', 'data-status': run.status },
          run.status === 'failed' ? `This run failed: ${run.error ?? 'no message'}` : `This run is ${run.status}; the report appears here when it has finished.`,
          active ? h('progress', { max: '100', value: String(percent), 'data-testid': 'run-progress' }) : null,
        ),
      )
      if (active) this.followSoon(body, project)
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

  /** Re-read the run every few seconds while it is queued or running (until the user moves on). */
  private followSoon(body: HTMLElement, project: Project): void {
    const here = location.hash
    window.setTimeout(() => {
      if (!body.isConnected || location.hash !== here) return
      this.render(body, project).catch(() => this.followSoon(body, project))
    }, FOLLOW_MS)
  }

  private definitions(run: EvaluationRun): HTMLElement {
    const s = run.summary
    return h(
      'div',
      { class: 'definition', 'data-testid': 'nsd-definition', 'data-definition': run.metric_definition },
      h('b', null, 'Metric definition'),
      `: ${run.metric_definition} (the same for NSD and HD${s.hd_percentile ?? 95}). `,
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
