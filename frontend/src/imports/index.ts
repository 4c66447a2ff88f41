/**
 * `#/imports` (leads and admins: backend `import`): import a PanTS-layout dataset folder on the server (a path under
 * its import root, `MASKLOOP_IMPORT_ROOT`) as one `cpu` job per case, list the project's runs, and follow a run's
 * report live until it finishes: progress bar, totals, and the cases (imported, skipped, failed with the file at
 * fault and the reason), filterable by status. Launching a run's folder again resumes it (done cases stay, failed
 * ones are retried). Endpoints: backend/imports/router.py.
 */

import { api } from '../api/client'
import type { Project } from '../api/types'
import { clear, fmtTime, h, toast } from '../dom'
import { errorText, openLeadPage, replaceQuery } from '../lead'
import {
  CASE_FILTERS,
  type CaseFilter,
  type ImportCase,
  type ImportLaunch,
  type ImportReport,
  type ImportRun,
  type ImportRunPage,
  canResume,
  caseDetails,
  folderName,
  launchBody,
  launchWords,
  pageLine,
  progressOf,
  reportQuery,
  runIdOf,
  runStateLine,
  totalsLine,
} from './report'

const POLL_MS = 1500
const PAGE_SIZE = 200

export class ImportsPage {
  readonly root: HTMLElement
  private project!: Project
  private readonly runs = h('tbody')
  private readonly report = h('section', { class: 'loop-section imports-report', 'data-testid': 'imports-report', hidden: true })
  private filter: CaseFilter = 'all'
  private runId: number | null = null
  /** Bumped whenever another run, filter or page is shown: an older poll stops at its next tick. */
  private generation = 0

  constructor(root: HTMLElement) {
    this.root = root
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'imports', 'imports page')
    if (!frame) return
    const { body, project, params } = frame
    this.project = project
    const filter = params.get('status')
    this.filter = CASE_FILTERS.some(([f]) => f === filter) ? (filter as CaseFilter) : 'all'
    const page = await this.loadRuns().catch((err: unknown) => {
      toast(errorText(err), 'error', 6000)
      return null
    })
    if (!body.isConnected) return
    clear(body)
    body.append(
      h(
        'div',
        { class: 'wl-head' },
        h('h1', null, 'Dataset imports'),
        h('p', { class: 'muted' }, 'Import a PanTS-layout folder on the server, one cpu job per case. A case that cannot be imported is reported with its file and reason while the others go on; importing the folder again resumes it.'),
      ),
      this.launchForm(),
      h(
        'section',
        { class: 'loop-section' },
        h('h2', null, 'Runs'),
        h(
          'table',
          { class: 'data-table imports-runs', 'data-testid': 'imports-runs' },
          h('thead', null, h('tr', null, ['Run', 'Folder', 'State', 'Cases', 'Launched', 'Launches'].map((t) => h('th', null, t)))),
          this.runs,
        ),
      ),
      this.report,
    )
    this.showRuns(page?.items ?? [])
    const wanted = runIdOf(params) ?? page?.items[0]?.id ?? null
    if (wanted !== null) void this.select(wanted, this.filter)
  }

  private async loadRuns(): Promise<ImportRunPage> {
    return api.get<ImportRunPage>(`/api/projects/${this.project.id}/imports?limit=50`)
  }

  private launchForm(): HTMLElement {
    const path = h('input', { type: 'text', placeholder: 'PanTS (relative to the import root) or an absolute path under it', size: 60, 'data-testid': 'imports-path' })
    const go = h('button', { class: 'btn primary', type: 'submit', 'data-testid': 'imports-start' }, 'Start import')
    const error = h('p', { class: 'form-error', hidden: true, role: 'alert', 'data-testid': 'imports-error' })
    const submit = async (): Promise<void> => {
      const built = launchBody(path.value)
      error.hidden = built.error === undefined
      if (built.error !== undefined) return void (error.textContent = built.error)
      go.disabled = true
      try {
        await this.launch(built.body.path)
      } catch (err) {
        error.textContent = errorText(err)
        error.hidden = false
      } finally {
        go.disabled = false
      }
    }
    return h(
      'form',
      { class: 'loop-section', 'data-testid': 'imports-launch', onsubmit: (e: Event) => (e.preventDefault(), void submit()) },
      h('h2', null, 'Import a dataset folder'),
      h('div', { class: 'loop-row' }, h('label', { class: 'field imports-path' }, 'Folder on the server', path), go),
      error,
    )
  }

  /** Launch (or resume) the import of a folder and follow its run. Throws the API's error. */
  private async launch(path: string): Promise<void> {
    const out = await api.post<ImportLaunch>(`/api/projects/${this.project.id}/imports`, { json: { path } })
    toast(launchWords(out), 'ok')
    await this.refreshRuns()
    await this.select(out.id, this.filter)
  }

  private async refreshRuns(): Promise<void> {
    const page = await this.loadRuns().catch(() => null)
    if (page) this.showRuns(page.items)
  }

  private showRuns(items: ImportRun[]): void {
    clear(this.runs)
    if (!items.length) {
      this.runs.append(h('tr', null, h('td', { colspan: 6, class: 'muted', 'data-testid': 'imports-no-runs' }, 'No import yet.')))
      return
    }
    for (const run of items) this.runs.append(this.runRow(run))
  }

  private runRow(run: ImportRun): HTMLElement {
    return h(
      'tr',
      {
        class: run.id === this.runId ? 'on imports-run' : 'imports-run',
        'data-testid': `imports-run-${run.id}`,
        'data-status': run.status,
        title: run.root,
        onclick: () => void this.select(run.id, this.filter),
      },
      h('td', null, h('a', { href: `#/imports?project=${this.project.id}&run=${run.id}`, onclick: (e: Event) => e.preventDefault() }, `#${run.id}`)),
      h('td', null, folderName(run.root)),
      h('td', null, runStateLine(run)),
      h('td', null, totalsLine(run.counts)),
      h('td', null, fmtTime(run.launched_at)),
      h('td', { class: 'num' }, String(run.launches)),
    )
  }

  /** Show a run's report (one filter, one page) and poll it while the run is running. */
  private async select(runId: number, filter: CaseFilter, offset = 0): Promise<void> {
    const generation = ++this.generation
    this.runId = runId
    this.filter = filter
    const params = new URLSearchParams({ project: String(this.project.id), run: String(runId) })
    if (filter !== 'all') params.set('status', filter)
    replaceQuery('/imports', params)
    for (const row of this.runs.querySelectorAll<HTMLElement>('tr.imports-run')) {
      row.classList.toggle('on', row.dataset.testid === `imports-run-${runId}`)
    }
    let wasRunning = false
    let fresh = true
    for (;;) {
      let report: ImportReport
      try {
        report = await api.get<ImportReport>(`/api/projects/${this.project.id}/imports/${runId}?${reportQuery(filter, offset, PAGE_SIZE)}`)
      } catch (err) {
        if (generation !== this.generation || !this.report.isConnected) return
        this.showError(errorText(err))
        return
      }
      if (generation !== this.generation || !this.report.isConnected) return
      // Polls redraw only the live part: the filter keeps its focus (and an open list) while the run goes on.
      this.showReport(report, fresh)
      fresh = false
      const running = report.run.status === 'running'
      // The list's counts move with the report while running, and once more when it finishes.
      if (running || wasRunning) this.replaceRun(report.run)
      if (!running) return
      wasRunning = true
      await new Promise((resolve) => window.setTimeout(resolve, POLL_MS))
      if (generation !== this.generation || !this.report.isConnected) return
    }
  }

  private replaceRun(run: ImportRun): void {
    const row = this.runs.querySelector(`[data-testid="imports-run-${run.id}"]`)
    if (row) row.replaceWith(this.runRow(run))
    else void this.refreshRuns()
  }

  private showError(message: string): void {
    clear(this.report)
    this.report.hidden = false
    this.report.append(h('p', { class: 'form-error', role: 'alert', 'data-testid': 'imports-report-error' }, message))
  }

  private showReport(report: ImportReport, fresh: boolean): void {
    const { run } = report
    const progress = progressOf(run.counts)
    let live = this.report.querySelector<HTMLElement>('.imports-live')
    if (fresh || !live) {
      clear(this.report)
      live = h('div', { class: 'imports-live' })
      this.report.append(...this.reportHead(run), live)
    }
    clear(live)
    this.report.hidden = false
    this.report.dataset.run = String(run.id)
    this.report.dataset.status = run.status
    const resume = canResume(run)
      ? h(
          'button',
          {
            class: 'btn',
            'data-testid': 'imports-resume',
            title: 'Launch the folder again: imported and skipped cases stay, failed ones are queued again.',
            onclick: (e: Event) => {
              const button = e.currentTarget as HTMLButtonElement
              button.disabled = true
              this.launch(run.root)
                .catch((err: unknown) => toast(errorText(err), 'error', 6000))
                .finally(() => (button.disabled = false))
            },
          },
          `Re-run: retry ${run.counts.failed} failed`,
        )
      : null
    live.append(
      h(
        'div',
        { class: 'imports-progress-row' },
        h(
          'div',
          {
            class: 'progress imports-progress',
            role: 'progressbar',
            'aria-valuemin': '0',
            'aria-valuemax': String(progress.total),
            'aria-valuenow': String(progress.done),
            'data-testid': 'imports-progress',
          },
          h('div', { class: 'progress-bar', style: { width: `${(progress.fraction * 100).toFixed(1)}%` } }),
        ),
        h('span', { 'data-testid': 'imports-state' }, runStateLine(run)),
      ),
      h('p', { class: 'imports-totals', 'data-testid': 'imports-totals' }, `${progress.done} of ${progress.total} cases done: ${totalsLine(run.counts)}`),
      ...(resume ? [resume] : []),
      this.caseTable(report),
      this.pager(report),
    )
  }

  /** The report's title, folder and status filter (kept while the run is polled). */
  private reportHead(run: ImportRun): HTMLElement[] {
    const filter = h(
      'select',
      {
        'data-testid': 'imports-filter',
        onchange: (e: Event) => void this.select(run.id, (e.target as HTMLSelectElement).value as CaseFilter),
      },
      CASE_FILTERS.map(([value, label]) => h('option', { value, selected: value === this.filter }, label)),
    )
    return [
      h('h2', null, `Import #${run.id} · ${folderName(run.root)}`),
      h('p', { class: 'muted', 'data-testid': 'imports-root' }, run.root),
      h('div', { class: 'loop-row' }, h('label', { class: 'field' }, 'Show', filter)),
    ]
  }

  private caseTable(report: ImportReport): HTMLElement {
    if (!report.cases.length) {
      return h('p', { class: 'muted', 'data-testid': 'imports-no-cases' }, this.filter === 'all' ? 'No case in this run.' : `No ${this.filter} case.`)
    }
    return h(
      'table',
      { class: 'data-table imports-cases', 'data-testid': 'imports-cases' },
      h('thead', null, h('tr', null, ['Case', 'Split', 'Status', 'File', 'Details', 'Scan'].map((t) => h('th', null, t)))),
      h(
        'tbody',
        null,
        report.cases.map((c: ImportCase) =>
          h(
            'tr',
            { class: `imports-case status-${c.status}`, 'data-testid': `imports-case-${c.case_id}`, 'data-status': c.status },
            h('td', null, c.case_id),
            h('td', null, c.split ?? '—'),
            h('td', { class: 'imports-status' }, c.status),
            h('td', { class: 'imports-file' }, c.file ?? ''),
            h('td', { class: 'imports-reason', title: [...c.missing_structures, ...c.unknown_files].join(', ') || undefined }, caseDetails(c)),
            h('td', null, c.scan_id !== null ? h('a', { href: `#/scan/${c.scan_id}` }, `#${c.scan_id}`) : ''),
          ),
        ),
      ),
    )
  }

  private pager(report: ImportReport): HTMLElement {
    const { offset, limit, total } = report
    const runId = report.run.id
    return h(
      'div',
      { class: 'loop-row imports-pager' },
      h('span', { class: 'muted', 'data-testid': 'imports-page' }, pageLine(report)),
      offset > 0 ? h('button', { class: 'btn small', onclick: () => void this.select(runId, this.filter, Math.max(0, offset - limit)) }, 'Previous') : null,
      offset + report.cases.length < total ? h('button', { class: 'btn small', onclick: () => void this.select(runId, this.filter, offset + limit) }, 'Next') : null,
    )
  }
}
