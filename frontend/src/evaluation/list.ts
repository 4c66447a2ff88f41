/**
 * `#/evaluations`: a form that starts an evaluation run (leads and admins), the project's runs (followed while
 * they run) and the leaderboard of model versions per structure.
 */

import { ApiError, api } from '../api/client'
import type { Project, SchemaOut } from '../api/types'
import { dataTable, figure, hbars } from '../charts'
import { pretty } from '../core/structures'
import { clear, fmtTime, h, toast } from '../dom'
import { canRunJobs, errorText, fmtNum, openLeadPage } from '../lead'
import { ACTIVE, type EvaluationPage, type EvaluationRun, type Leaderboard, m3, mm, statusChip } from './model'
import { type EvaluationCreate, type EvaluationOptions, evaluationRequest } from './request'
import { evaluationForm } from './start'

const POLL_MS = 3000

export class EvaluationList {
  readonly root: HTMLElement
  private project!: Project
  private params!: URLSearchParams
  private readonly runsSection = h('section', { class: 'eval-section', 'data-testid': 'runs' })

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
    const mayStart = canRunJobs(project)
    const [runs, board, schema, options] = await Promise.all([
      this.fetchRuns(),
      api.get<Leaderboard>(`/api/projects/${project.id}/leaderboard${structure ? `?structure=${encodeURIComponent(structure)}` : ''}`).catch((err) => {
        if (err instanceof ApiError && err.status === 422) return { structure, nsd_definition: '', rows: [] } as Leaderboard
        throw err
      }),
      api.get<SchemaOut>(`/api/projects/${project.id}/schema`).catch(() => ({ name: '', structures: [] }) as SchemaOut),
      mayStart ? api.get<EvaluationOptions>(`/api/projects/${project.id}/evaluation-options`) : Promise.resolve(null),
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
    )
    if (options) body.append(this.startForm(options))
    body.append(this.runsSection, this.leaderboard(board, schema, structure))
    this.renderRuns(runs, mayStart)
    if (runs.items.some((r) => ACTIVE.has(r.status))) this.refreshSoon(mayStart)
  }

  private fetchRuns(): Promise<EvaluationPage> {
    return api.get<EvaluationPage>(`/api/projects/${this.project.id}/evaluations?page_size=100`)
  }

  /** The form; a started run opens its report, which follows it until it has finished. */
  private startForm(options: EvaluationOptions): HTMLElement {
    const form = evaluationForm(options, (values) => {
      form.showError(null)
      const built = evaluationRequest(values)
      if (built.error !== undefined) {
        form.showError(built.error)
        return
      }
      form.setBusy(true)
      this.start(built.body)
        .then((run) => {
          toast(`Evaluation #${run.id} queued`, 'ok')
          location.hash = `#/evaluations/${run.id}?project=${this.project.id}`
        })
        .catch((err) => form.showError(errorText(err)))
        .finally(() => form.setBusy(false))
    })
    return form.element
  }

  /** Queue an evaluation run (`POST /api/projects/{id}/evaluations`). */
  start(body: EvaluationCreate): Promise<EvaluationRun> {
    return api.post<EvaluationRun>(`/api/projects/${this.project.id}/evaluations`, { json: body })
  }

  /** While a run is queued or running, re-read the runs every few seconds (the form is left as it is). */
  private refreshSoon(mayStart: boolean): void {
    window.setTimeout(() => {
      if (!this.runsSection.isConnected) return
      this.fetchRuns()
        .then((runs) => {
          if (!this.runsSection.isConnected) return
          this.renderRuns(runs, mayStart)
          if (runs.items.some((r) => ACTIVE.has(r.status))) this.refreshSoon(mayStart)
        })
        .catch(() => this.refreshSoon(mayStart))
    }, POLL_MS)
  }

  private renderRuns(runs: EvaluationPage, mayStart: boolean): void {
    const section = this.runsSection
    clear(section)
    if (!runs.items.length) {
      section.append(
        h('h2', null, 'Runs'),
        h(
          'div',
          { class: 'empty', 'data-testid': 'runs-empty' },
          mayStart
            ? 'No evaluation runs yet. Start one above: a model version (or label versions) against the approved ground truth of a split.'
            : 'No evaluation runs yet. A project lead starts them on this page.',
        ),
      )
      return
    }
    section.append(
      h('h2', null, `Runs (${runs.total})`),
      h(
        'table',
        { class: 'worklist', 'data-testid': 'runs-table' },
        h('thead', null, h('tr', null, ['Run', 'Status', 'Model version', 'Split', 'Cases', 'Structures', 'Metrics', 'Started', 'Finished'].map((t) => h('th', null, t)))),
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
              h('td', { class: 'muted', title: r.nsd_definition }, r.metric_definition),
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

