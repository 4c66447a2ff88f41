/** `#/evaluations`: the project's evaluation runs and the leaderboard of model versions per structure. */

import { ApiError, api } from '../api/client'
import type { Project, SchemaOut } from '../api/types'
import { dataTable, figure, hbars } from '../charts'
import { pretty } from '../core/structures'
import { clear, fmtTime, h } from '../dom'
import { fmtNum, openLeadPage } from '../lead'
import { ACTIVE, type EvaluationPage, type Leaderboard, m3, mm, statusChip } from './model'

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

