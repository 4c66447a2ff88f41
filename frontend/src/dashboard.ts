/**
 * The lead dashboard (`#/dashboard?project=&days=30&basis=head`): where the project stands (scans by workflow
 * state, by site and phase), per-structure coverage, who did what per day, editing time per scan, review
 * turnaround, reader agreement, AI-vs-final Dice per model round and open QA findings. One panel per
 * `GET /api/projects/{pid}/dashboard/...` endpoint (shapes in backend/dashboard/schemas.py); a panel whose
 * endpoint fails says so without hiding the others. Every chart has its numbers in a table.
 */

import { ApiError, api } from './api/client'
import { color, columns, dataTable, figure, hbars, legend, lines, stackedBars, type Series, type StackRow } from './charts'
import { clear, fmtTime, h } from './dom'
import { fmtDuration, fmtNum, openLeadPage, replaceQuery } from './lead'
import type { Project } from './api/types'

export const STATES = ['new', 'pre_annotated', 'annotating', 'submitted', 'in_review', 'changes_requested', 'approved', 'adjudication'] as const
export type TaskState = (typeof STATES)[number]
export type StateCounts = Record<TaskState, number>

export const STATE_COLORS: Record<string, string> = {
  new: '#5b6474',
  pre_annotated: '#8b6fd6',
  annotating: '#3fb6ff',
  submitted: '#f2b441',
  in_review: '#e58a3a',
  changes_requested: '#ff5d5d',
  approved: '#3ecf8e',
  adjudication: '#d65db1',
}

export function stateLabel(state: string): string {
  return state.replace(/_/g, ' ')
}

interface DurationStats {
  count: number
  mean_s: number | null
  median_s: number | null
  p90_s: number | null
}

interface SummaryOut {
  total_scans: number
  by_state: StateCounts
  in_review_by_level: { level: number; name: string | null; scans: number }[]
  approved_fraction: number
  assigned: number
  unassigned_open: number
  live_leases: number
  open_findings: number
  scans_with_open_findings: number
  active_seconds: number
  generated_at: string
}

interface GroupsOut {
  group_by: string
  groups: { key: string | null; total: number; by_state: StateCounts; approved_fraction: number }[]
}

interface StructuresOut {
  basis: string
  structures: {
    name: string
    group: string
    scans_present: number
    scans_with_version: number
    mean_volume_ml: number | null
    median_volume_ml: number | null
    open_findings: number
  }[]
  computed_at: string
  cached: boolean
}

interface PersonDay {
  day: string
  versions_saved: number
  submissions: number
  reviews: number
  approvals: number
  changes_requested: number
  active_seconds: number
}

interface ThroughputOut {
  since: string
  until: string
  people: { user_id: number; name: string; role: string | null; days: PersonDay[]; totals: PersonDay }[]
}

interface EditingTimeOut {
  since: string | null
  overall: DurationStats
  approved: DurationStats
  people: { user_id: number; name: string; scans: number; total_active_seconds: number; per_scan: DurationStats }[]
}

interface TurnaroundOut {
  since: string
  first_review: DurationStats
  approval: DurationStats
  weeks: { week: string; first_review: DurationStats; approval: DurationStats }[]
}

interface Bin {
  lo: number
  hi: number
  count: number
}

interface AgreementOut {
  reader_sets: number
  sets_by_status: Record<string, number>
  in_adjudication: number
  histogram: Bin[]
  structures: { name: string; sets: number; mean_dice: number | null; below_threshold: number; histogram: Bin[] }[]
}

interface ModelRoundsOut {
  models: {
    model_id: number
    name: string
    architecture: string
    rounds: {
      round_id: number
      created_at: string
      new_model_version_id: number | null
      scans_revised: number
      promoted: boolean
      ai_vs_final_dice: Record<string, number>
      ai_vs_final_mean: number | null
      heldout_new_mean: number | null
      heldout_previous_mean: number | null
    }[]
  }[]
}

interface CountBy {
  key: string | null
  count: number
}

interface QaOut {
  open_findings: number
  scans_with_open_findings: number
  by_rule: CountBy[]
  by_structure: CountBy[]
  by_severity: CountBy[]
  by_status: Record<string, number>
}

const METRICS: [keyof PersonDay, string][] = [
  ['versions_saved', 'versions saved'],
  ['submissions', 'submissions'],
  ['reviews', 'review decisions'],
  ['approvals', 'approvals'],
  ['active_seconds', 'active minutes'],
]

function pct(x: number | null | undefined): string {
  return x === null || x === undefined ? '—' : `${(x * 100).toFixed(1)}%`
}

function dice(x: number | null | undefined): string {
  return x === null || x === undefined ? '—' : x.toFixed(3)
}

/** Every day from `since` to `until` (ISO dates, inclusive). */
function daysBetween(since: string, until: string): string[] {
  const out: string[] = []
  const end = Date.parse(until + 'T00:00:00Z')
  for (let t = Date.parse(since + 'T00:00:00Z'); t <= end && out.length < 400; t += 86400_000) out.push(new Date(t).toISOString().slice(0, 10))
  return out
}

export class Dashboard {
  readonly root: HTMLElement
  private project!: Project
  private params!: URLSearchParams
  private grid!: HTMLElement

  constructor(root: HTMLElement) {
    this.root = root
  }

  private get base(): string {
    return `/api/projects/${this.project.id}/dashboard`
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'dashboard', 'dashboard')
    if (!frame) return
    const { body, project, params } = frame
    this.project = project
    this.params = params
    const days = this.days
    clear(body)
    const daysSelect = h(
      'select',
      {
        'data-testid': 'dash-days',
        onchange: (e: Event) => {
          const next = new URLSearchParams(this.params)
          next.set('project', String(project.id))
          next.set('days', (e.target as HTMLSelectElement).value)
          location.hash = `#/dashboard?${next}`
        },
      },
      [7, 30, 90, 365].map((d) => h('option', { value: String(d), selected: d === days }, `last ${d} days`)),
    )
    this.grid = h('div', { class: 'dash-grid', 'data-testid': 'dash-grid' })
    body.append(
      h(
        'div',
        { class: 'wl-head dash-head' },
        h('div', null, h('h1', null, 'Dashboard'), h('p', { class: 'muted', 'data-testid': 'dash-generated' }, project.name)),
        h('label', { class: 'filter' }, 'Activity window', daysSelect),
      ),
      this.grid,
    )
    replaceQuery('/dashboard', new URLSearchParams({ ...Object.fromEntries(params), project: String(project.id) }))
    const panels: [string, string, string, (data: never) => Node[]][] = [
      ['summary', 'Scans by state', 'summary', (d: SummaryOut) => this.summary(d)],
      ['sites', 'By site', 'sites', (d: GroupsOut) => this.groups(d)],
      ['phases', 'By contrast phase', 'phases', (d: GroupsOut) => this.groups(d)],
      ['structures', 'Structures', `structures?basis=${this.basis}`, (d: StructuresOut) => this.structures(d)],
      ['throughput', 'Throughput per person per day', `throughput?days=${days}`, (d: ThroughputOut) => this.throughput(d)],
      ['editing-time', 'Active editing time per scan', `editing-time?days=${days}`, (d: EditingTimeOut) => this.editing(d)],
      ['turnaround', 'Review turnaround', `turnaround?weeks=${Math.max(1, Math.ceil(days / 7))}`, (d: TurnaroundOut) => this.turnaround(d)],
      ['agreement', 'Reader agreement', 'agreement?bins=10', (d: AgreementOut) => this.agreement(d)],
      ['model-rounds', 'AI vs final Dice per model round', 'model-rounds', (d: ModelRoundsOut) => this.modelRounds(d)],
      ['qa', 'Open QA findings', 'qa', (d: QaOut) => this.qa(d)],
    ]
    const cards = panels.map(([key, title]) => {
      const content = h('div', { class: 'card-body' }, h('div', { class: 'muted' }, 'Loading…'))
      const card = h('section', { class: `card dash-${key}`, 'data-testid': `dash-${key}`, 'data-state': 'loading' }, h('h2', null, title), content)
      this.grid.append(card)
      return { card, content }
    })
    await Promise.all(
      panels.map(async ([, , path, render], i) => {
        const { card, content } = cards[i]
        try {
          const data = await api.get<unknown>(`${this.base}/${path}`)
          if (!card.isConnected) return
          clear(content)
          content.append(...render(data as never))
          card.dataset.state = 'ready'
        } catch (err) {
          if (!card.isConnected) return
          clear(content)
          const status = err instanceof ApiError ? err.status : 0
          content.append(
            h(
              'div',
              { class: 'panel-error', 'data-testid': 'panel-error' },
              status === 404 ? 'Not available on this server yet.' : status === 403 ? 'Your role may not read this panel.' : (err as Error).message,
            ),
          )
          card.dataset.state = 'error'
        }
      }),
    )
  }

  private get days(): number {
    const d = Number(this.params.get('days'))
    return [7, 30, 90, 365].includes(d) ? d : 30
  }

  private get basis(): string {
    return this.params.get('basis') === 'approved' ? 'approved' : 'head'
  }

  private summary(d: SummaryOut): Node[] {
    const tiles = h(
      'div',
      { class: 'tiles' },
      tile('Scans', fmtNum(d.total_scans), 'total'),
      tile('Approved', pct(d.approved_fraction), 'approved'),
      tile('In review', fmtNum(d.by_state.in_review), 'in-review'),
      tile('Unassigned open', fmtNum(d.unassigned_open), 'unassigned'),
      tile('Editing now', fmtNum(d.live_leases), 'leases'),
      tile('Open findings', fmtNum(d.open_findings), 'findings'),
      tile('Editing time', fmtDuration(d.active_seconds), 'active'),
    )
    const chart = stackedBars([{ label: 'all scans', parts: d.by_state }], [...STATES], STATE_COLORS, { width: 1200 })
    const items = STATES.map((st) => ({
      label: stateLabel(st),
      color: STATE_COLORS[st],
      value: fmtNum(d.by_state[st]),
      testid: `state-count-${st}`,
    }))
    const levels = d.in_review_by_level.length
      ? h(
          'p',
          { class: 'muted small' },
          'In review by level: ',
          d.in_review_by_level.flatMap((l, i) => [i ? ' · ' : '', `${l.name ?? 'level ' + l.level}: `, h('b', null, String(l.scans))]),
        )
      : null
    return [
      tiles,
      figure(chart, { head: ['State', 'Scans'], rows: STATES.map((st) => [stateLabel(st), d.by_state[st]]), testid: 'summary-table' }, 'summary-chart'),
      legend(items),
      levels ?? h('span'),
      h('p', { class: 'muted small' }, `as of ${fmtTime(d.generated_at)}`),
    ]
  }

  private groups(d: GroupsOut): Node[] {
    if (!d.groups.length) return [h('div', { class: 'muted' }, 'No scans yet.')]
    const rows: StackRow[] = d.groups.map((g) => ({ label: g.key ?? '(none)', parts: g.by_state }))
    const used = STATES.filter((st) => d.groups.some((g) => g.by_state[st]))
    return [
      figure(stackedBars(rows, [...STATES], STATE_COLORS), {
        head: [d.group_by === 'phase' ? 'Phase' : 'Site', 'Scans', ...used.map(stateLabel), 'Approved'],
        rows: d.groups.map((g) => [g.key ?? '(none)', g.total, ...used.map((st) => g.by_state[st]), pct(g.approved_fraction)]),
        testid: `${d.group_by}-table`,
      }),
      legend(used.map((st) => ({ label: stateLabel(st), color: STATE_COLORS[st] }))),
    ]
  }

  private structures(d: StructuresOut): Node[] {
    const basis = h(
      'select',
      {
        'data-testid': 'dash-basis',
        onchange: (e: Event) => {
          const next = new URLSearchParams(this.params)
          next.set('project', String(this.project.id))
          next.set('basis', (e.target as HTMLSelectElement).value)
          location.hash = `#/dashboard?${next}`
        },
      },
      h('option', { value: 'head', selected: d.basis === 'head' }, 'current version'),
      h('option', { value: 'approved', selected: d.basis === 'approved' }, 'approved version'),
    )
    const bars = d.structures.map((st) => ({
      label: st.name.replace(/_/g, ' '),
      value: st.scans_with_version ? st.scans_present / st.scans_with_version : null,
      title: `${st.name}: present in ${st.scans_present} of ${st.scans_with_version} scans`,
    }))
    return [
      h('label', { class: 'filter inline' }, 'Basis ', basis),
      figure(
        hbars(bars, { max: 1, format: (v) => `${Math.round(v * 100)}%` }),
        {
          head: ['Structure', 'Present', 'Of scans', 'Mean mL', 'Median mL', 'Open findings'],
          rows: d.structures.map((st) => [st.name, st.scans_present, st.scans_with_version, fmtNum(st.mean_volume_ml, 1), fmtNum(st.median_volume_ml, 1), st.open_findings]),
          testid: 'structures-table',
        },
        'structures-chart',
      ),
      h('p', { class: 'muted small' }, 'Bars: share of scans whose version has the structure present and non-empty.'),
    ]
  }

  private throughput(d: ThroughputOut): Node[] {
    if (!d.people.length) return [h('div', { class: 'muted', 'data-testid': 'throughput-empty' }, `No activity since ${d.since}.`)]
    const days = daysBetween(d.since, d.until)
    const wrap = h('div')
    const draw = (metric: keyof PersonDay): void => {
      clear(wrap)
      const series = d.people.slice(0, 10).map((p) => {
        const byDay = new Map(p.days.map((x) => [x.day, x]))
        return {
          name: p.name,
          values: days.map((day) => {
            const v = Number(byDay.get(day)?.[metric] ?? 0)
            return metric === 'active_seconds' ? v / 60 : v
          }),
        }
      })
      wrap.append(
        lines(
          days.map((x) => x.slice(5)),
          series,
          { zeroDots: false },
        ),
        legend(series.map((sr, i) => ({ label: sr.name, color: color(i) }))),
      )
    }
    const metric = h(
      'select',
      { 'data-testid': 'throughput-metric', onchange: (e: Event) => draw((e.target as HTMLSelectElement).value as keyof PersonDay) },
      METRICS.map(([key, label]) => h('option', { value: key }, label)),
    )
    draw('versions_saved')
    return [
      h('label', { class: 'filter inline' }, 'Show ', metric),
      wrap,
      dataTable({
        head: ['Person', 'Role', 'Saves', 'Submissions', 'Reviews', 'Approvals', 'Changes req.', 'Active'],
        rows: d.people.map((p) => [
          p.name,
          p.role ?? '—',
          p.totals.versions_saved,
          p.totals.submissions,
          p.totals.reviews,
          p.totals.approvals,
          p.totals.changes_requested,
          fmtDuration(p.totals.active_seconds),
        ]),
        testid: 'throughput-table',
      }),
    ]
  }

  private editing(d: EditingTimeOut): Node[] {
    const rows = [
      { label: 'all scans', st: d.overall },
      { label: 'approved scans', st: d.approved },
      ...d.people.map((p) => ({ label: p.name, st: p.per_scan })),
    ]
    const bars = rows.map((r) => ({
      label: r.label,
      value: r.st.median_s === null ? null : r.st.median_s / 60,
      tick: r.st.p90_s === null ? null : r.st.p90_s / 60,
      title: `${r.label}: median ${fmtDuration(r.st.median_s)}, p90 ${fmtDuration(r.st.p90_s)} over ${r.st.count} scans`,
    }))
    return [
      figure(hbars(bars, { format: (v) => `${v.toFixed(1)} min` }), {
        head: ['Who', 'Scans', 'Mean', 'Median', 'p90'],
        rows: rows.map((r) => [r.label, r.st.count, fmtDuration(r.st.mean_s), fmtDuration(r.st.median_s), fmtDuration(r.st.p90_s)]),
        testid: 'editing-table',
      }, 'editing-chart'),
      h('p', { class: 'muted small' }, 'Bar: median active minutes per scan; tick: 90th percentile.'),
    ]
  }

  private turnaround(d: TurnaroundOut): Node[] {
    const tiles = h(
      'div',
      { class: 'tiles' },
      tile('First review (median)', fmtDuration(d.first_review.median_s), 'first-review'),
      tile('To approval (median)', fmtDuration(d.approval.median_s), 'approval'),
      tile('Decisions', fmtNum(d.first_review.count), 'decisions'),
    )
    if (!d.weeks.length) return [tiles, h('div', { class: 'muted' }, `No review decisions since ${d.since}.`)]
    const labels = d.weeks.map((w) => w.week.slice(5))
    const series = [
      { name: 'first review', values: d.weeks.map((w) => w.first_review.median_s), color: '#f2b441' },
      { name: 'to approval', values: d.weeks.map((w) => w.approval.median_s), color: '#3ecf8e' },
    ]
    const longest = Math.max(0, ...series.flatMap((sr) => sr.values.filter((v): v is number => v !== null)))
    return [
      tiles,
      figure(lines(labels, series, { format: (v) => fmtDuration(v), yMax: longest < 60 ? 60 : undefined }), {
        head: ['Week of', 'Decisions', 'First review median', 'Approvals', 'Approval median'],
        rows: d.weeks.map((w) => [w.week, w.first_review.count, fmtDuration(w.first_review.median_s), w.approval.count, fmtDuration(w.approval.median_s)]),
        testid: 'turnaround-table',
      }),
      legend(series.map((sr) => ({ label: `${sr.name} (weekly median)`, color: sr.color }))),
    ]
  }

  private agreement(d: AgreementOut): Node[] {
    const tiles = h(
      'div',
      { class: 'tiles' },
      tile('Reader sets', fmtNum(d.reader_sets), 'reader-sets'),
      tile('In adjudication', fmtNum(d.in_adjudication), 'adjudication'),
    )
    if (!d.reader_sets) return [tiles, h('div', { class: 'muted' }, 'No multi-reader agreement measured yet.')]
    const cols = d.histogram.map((b) => ({ label: b.lo.toFixed(1), value: b.count, title: `Dice ${b.lo.toFixed(2)}–${b.hi.toFixed(2)}: ${b.count}` }))
    return [
      tiles,
      figure(columns(cols, { yLabel: 'structures × sets' }), {
        head: ['Dice from', 'to', 'Count'],
        rows: d.histogram.map((b) => [b.lo.toFixed(2), b.hi.toFixed(2), b.count]),
        testid: 'agreement-histogram',
      }, 'agreement-chart'),
      dataTable({
        head: ['Structure', 'Sets', 'Mean Dice', 'Below threshold'],
        rows: d.structures.map((st) => [st.name, st.sets, dice(st.mean_dice), st.below_threshold]),
        testid: 'agreement-table',
      }),
    ]
  }

  private modelRounds(d: ModelRoundsOut): Node[] {
    const models = d.models.filter((m) => m.rounds.length)
    if (!models.length) return [h('div', { class: 'muted' }, 'No training rounds yet.')]
    return models.map((m) => {
      const names = [...new Set(m.rounds.flatMap((r) => Object.keys(r.ai_vs_final_dice)))].sort()
      const labels = m.rounds.map((_, i) => `round ${i + 1}`)
      const series: Series[] = [
        { name: 'mean', values: m.rounds.map((r) => r.ai_vs_final_mean), color: '#ffffff' },
        ...names.map((n) => ({ name: n, values: m.rounds.map((r) => r.ai_vs_final_dice[n] ?? null) })),
      ]
      return h(
        'div',
        { class: 'model-block', 'data-testid': `model-${m.model_id}` },
        h('h3', null, `${m.name} `, h('span', { class: 'muted' }, m.architecture)),
        figure(lines(labels, series.slice(0, 11), { yMin: 0, yMax: 1, format: (v) => v.toFixed(2) }), {
          head: ['Round', 'Mean', ...names, 'Held-out new', 'Held-out previous', 'Revised', 'Promoted'],
          rows: m.rounds.map((r, i) => [
            `${i + 1}`,
            dice(r.ai_vs_final_mean),
            ...names.map((n) => dice(r.ai_vs_final_dice[n])),
            dice(r.heldout_new_mean),
            dice(r.heldout_previous_mean),
            r.scans_revised,
            r.promoted ? 'yes' : 'no',
          ]),
          testid: `model-rounds-table-${m.model_id}`,
        }),
        legend(series.slice(0, 11).map((sr, i) => ({ label: sr.name, color: sr.color ?? color(i) }))),
      )
    })
  }

  private qa(d: QaOut): Node[] {
    const tiles = h(
      'div',
      { class: 'tiles' },
      tile('Open findings', fmtNum(d.open_findings), 'qa-open'),
      tile('Scans affected', fmtNum(d.scans_with_open_findings), 'qa-scans'),
      Object.entries(d.by_status)
        .filter(([k]) => k !== 'open')
        .map(([k, v]) => tile(k, fmtNum(v), `qa-${k}`)),
    )
    if (!d.open_findings) return [tiles, h('div', { class: 'muted', 'data-testid': 'qa-none' }, 'No open findings.')]
    const sev: Record<string, string> = { error: '#ff5d5d', warning: '#f2b441', info: '#3fb6ff' }
    return [
      tiles,
      h(
        'div',
        { class: 'two-col' },
        h(
          'div',
          null,
          h('h3', null, 'By rule'),
          dataTable({ head: ['Rule', 'Open'], rows: d.by_rule.map((c) => [c.key ?? '—', c.count]), testid: 'qa-by-rule' }),
        ),
        h(
          'div',
          null,
          h('h3', null, 'By structure'),
          dataTable({ head: ['Structure', 'Open'], rows: d.by_structure.map((c) => [c.key ?? '(scan-wide)', c.count]), testid: 'qa-by-structure' }),
        ),
      ),
      legend(d.by_severity.map((c) => ({ label: c.key ?? '—', color: sev[c.key ?? ''] ?? '#888', value: String(c.count), testid: `qa-severity-${c.key}` }))),
    ]
  }
}

function tile(label: string, value: string, testid: string): HTMLElement {
  return h('div', { class: 'tile', 'data-testid': `tile-${testid}` }, h('div', { class: 'tile-value' }, value), h('div', { class: 'tile-label' }, label))
}
