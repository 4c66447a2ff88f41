/**
 * Exports page (#/exports, leads and admins: backend `run_jobs`): a form that queues an export
 * (`POST /api/projects/{id}/exports`: format PanTS / nnU-Net / MSD / DICOM SEG, the version per scan — head,
 * approved or a registered model's — a structure subset, the nnU-Net label mode and dataset name), the project's
 * recent export jobs (`GET /api/projects/{id}/jobs?kind=export`) with status and progress, followed with
 * `GET /api/jobs/{id}` while they run, and a Download button once an archive is ready
 * (`GET /api/exports/{job}/download` fetched with the session's token and saved through a blob URL).
 * Shapes: backend/exports/schemas.py, backend/jobs/schemas.py.
 */

import { ApiError, api } from './api/client'
import { clear, fmtTime, h, toast } from './dom'
import { fmtNum, openLeadPage } from './lead'
import type { Project, SchemaOut } from './api/types'

export interface ExportJob {
  id: number
  project_id: number
  kind: string
  queue: string
  status: string
  progress: number
  message: string
  queue_position: number | null
  error: string | null
  params: Record<string, unknown>
  result: Record<string, unknown>
  created_at: string
  started_at: string | null
  finished_at: string | null
  cancel_requested: boolean
}

interface ExportJobCreated {
  job_id: number
  status: string
  queue: string
  queue_position: number | null
  message: string
  params: Record<string, unknown>
  download_url: string
}

interface ModelRef {
  id: number
  name: string
  architecture: string
  structures: string[]
}

export const FORMATS: [string, string][] = [
  ['pants', 'PanTS (one folder per case)'],
  ['nnunet', 'nnU-Net (DatasetXXX_Name)'],
  ['msd', 'Medical Segmentation Decathlon'],
  ['dicom-seg', 'DICOM SEG'],
]

const ACTIVE = new Set(['queued', 'running'])
const POLL_MS = 2000

/** The message of a failed request: every failed field of a validation error (`details.errors`), else `detail`. */
export function errorText(err: unknown): string {
  if (err instanceof ApiError) {
    const errors = (err.body.details as { errors?: unknown } | undefined)?.errors
    if (Array.isArray(errors) && errors.length) {
      const parts = errors.map((d) => {
        const item = d as { loc?: unknown[]; msg?: string }
        const where = Array.isArray(item.loc) ? item.loc.filter((x) => x !== 'body').join('.') : ''
        return `${where ? where + ': ' : ''}${item.msg ?? JSON.stringify(d)}`
      })
      return `${err.status}: ${parts.join('; ')}`
    }
    return err.message
  }
  return (err as Error).message ?? String(err)
}

/** The file name in a Content-Disposition header, if any. */
function dispositionName(header: string | null): string | null {
  const m = header ? /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(header) : null
  return m ? decodeURIComponent(m[1]) : null
}

export class ExportsPage {
  readonly root: HTMLElement
  private project!: Project
  private body!: HTMLElement
  private schema: SchemaOut = { name: '', structures: [] }
  private models: ModelRef[] = []
  jobs: ExportJob[] = []
  private timer: number | null = null
  private tbody: HTMLElement = h('tbody')
  private errorBox: HTMLElement = h('div', { class: 'form-error', 'data-testid': 'export-error', role: 'alert', hidden: true })
  /** The last archive fetched by a Download button (name and size; for the browser tests). */
  lastDownload: { job: number; name: string; bytes: number; type: string } | null = null

  constructor(root: HTMLElement) {
    this.root = root
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'exports', 'exports page')
    if (!frame) return
    const { body, project } = frame
    this.project = project
    this.body = body
    const [schema, models, jobs] = await Promise.all([
      api.get<SchemaOut>(`/api/projects/${project.id}/schema`).catch(() => this.schema),
      api.get<ModelRef[]>(`/api/projects/${project.id}/models`).catch(() => [] as ModelRef[]),
      api.get<{ items: ExportJob[] }>(`/api/projects/${project.id}/jobs?kind=export&page_size=25`),
    ])
    if (!body.isConnected) return
    this.schema = schema
    this.models = models
    this.jobs = jobs.items
    clear(body)
    body.append(
      h(
        'div',
        { class: 'wl-head' },
        h('h1', null, 'Exports'),
        h('p', { class: 'muted' }, 'Export one label version per scan as a dataset archive (.tar.gz); the job runs on the cpu queue.'),
      ),
      this.form(),
      h(
        'section',
        { class: 'eval-section' },
        h('h2', null, 'Recent exports'),
        h(
          'table',
          { class: 'worklist', 'data-testid': 'export-jobs' },
          h('thead', null, h('tr', null, ['Job', 'Format', 'Version', 'Scans', 'Status', 'Started', 'Finished', ''].map((t) => h('th', null, t)))),
          this.tbody,
        ),
      ),
    )
    this.renderJobs()
    this.pollSoon()
    exportsHook.page = this
  }

  // ---------------------------------------------------------------- the form

  private form(): HTMLElement {
    const format = h(
      'select',
      { 'data-testid': 'export-format', name: 'format' },
      FORMATS.map(([value, label]) => h('option', { value }, label)),
    ) as HTMLSelectElement
    const version = h(
      'select',
      { 'data-testid': 'export-version', name: 'version' },
      h('option', { value: 'head' }, 'Latest (head) version'),
      h('option', { value: 'approved' }, 'Approved version'),
      this.models.map((m) => h('option', { value: `model:${m.name}` }, `Model: ${m.name} (${m.architecture})`)),
    ) as HTMLSelectElement
    const labels = h(
      'select',
      { 'data-testid': 'export-nnunet-labels', name: 'nnunet_labels' },
      h('option', { value: 'paint-order' }, 'one label per structure (paint order)'),
      h('option', { value: 'regions' }, 'regions (lossless, overlapping structures)'),
    ) as HTMLSelectElement
    const datasetId = h('input', { type: 'number', min: '1', max: '999', value: '1', 'data-testid': 'export-dataset-id' }) as HTMLInputElement
    const datasetName = h('input', { type: 'text', placeholder: this.project.slug, maxlength: '80', 'data-testid': 'export-dataset-name' }) as HTMLInputElement
    const nnunet = h(
      'div',
      { class: 'export-nnunet', hidden: true },
      h('label', { class: 'field' }, 'nnU-Net labels', labels),
      h('label', { class: 'field' }, 'Dataset id', datasetId),
      h('label', { class: 'field' }, 'Dataset name', datasetName),
    )
    format.addEventListener('change', () => (nnunet.hidden = format.value !== 'nnunet'))
    const all = h('input', { type: 'checkbox', checked: true, 'data-testid': 'export-all-structures' }) as HTMLInputElement
    const boxes = this.schema.structures.map(
      (s) =>
        h('input', { type: 'checkbox', value: s.name, 'data-testid': `export-structure-${s.name}` }) as HTMLInputElement,
    )
    const list = h(
      'div',
      { class: 'export-structures', hidden: true },
      boxes.map((box, i) => h('label', { class: 'check' }, box, ` ${this.schema.structures[i].name.replace(/_/g, ' ')}`)),
    )
    all.addEventListener('change', () => (list.hidden = all.checked))
    const scanIds = h('input', { type: 'text', placeholder: 'all scans (or e.g. 12, 15, 18)', 'data-testid': 'export-scan-ids' }) as HTMLInputElement
    const start = h('button', { class: 'btn primary', type: 'submit', 'data-testid': 'export-start' }, 'Start export') as HTMLButtonElement
    const form = h(
      'form',
      { class: 'export-form', 'data-testid': 'export-form' },
      h('label', { class: 'field' }, 'Format', format),
      h('label', { class: 'field' }, 'Version of each scan', version),
      nnunet,
      h('div', { class: 'field export-structures-field' }, h('label', { class: 'check' }, all, ' All structures of the schema'), list),
      h('label', { class: 'field' }, 'Scans', scanIds),
      h('div', { class: 'decision-bar' }, start),
      this.errorBox,
    )
    form.addEventListener('submit', (e) => {
      e.preventDefault()
      this.showError(null)
      const body: Record<string, unknown> = { format: format.value, version: version.value }
      if (!all.checked) {
        const chosen = boxes.filter((b) => b.checked).map((b) => b.value)
        if (!chosen.length) {
          this.showError('Choose at least one structure (or tick “All structures”).')
          return
        }
        body.structures = chosen
      }
      const ids = scanIds.value
        .split(/[\s,;]+/)
        .filter(Boolean)
        .map(Number)
      if (ids.some((n) => !Number.isInteger(n) || n <= 0)) {
        this.showError('Scan ids must be whole numbers separated by commas.')
        return
      }
      if (ids.length) body.scan_ids = ids
      if (format.value === 'nnunet') {
        body.nnunet_labels = labels.value
        body.dataset_id = Number(datasetId.value) || 1
        if (datasetName.value.trim()) body.dataset_name = datasetName.value.trim()
      }
      start.disabled = true
      this.start(body)
        .catch((err) => this.showError(errorText(err)))
        .finally(() => (start.disabled = false))
    })
    return h('section', { class: 'eval-section' }, h('h2', null, 'New export'), form)
  }

  private showError(text: string | null): void {
    this.errorBox.hidden = !text
    this.errorBox.textContent = text ?? ''
  }

  /** Queue an export; the new job goes to the top of the list and is followed until it finishes. */
  async start(body: Record<string, unknown>): Promise<number> {
    const created = await api.post<ExportJobCreated>(`/api/projects/${this.project.id}/exports`, { json: body })
    toast(`Export #${created.job_id} queued`, 'ok')
    const job = await api.get<ExportJob>(`/api/jobs/${created.job_id}`).catch(
      () =>
        ({
          id: created.job_id,
          project_id: this.project.id,
          kind: 'export',
          queue: created.queue,
          status: created.status,
          progress: 0,
          message: created.message,
          queue_position: created.queue_position,
          error: null,
          params: created.params,
          result: {},
          created_at: new Date().toISOString(),
          started_at: null,
          finished_at: null,
          cancel_requested: false,
        }) as ExportJob,
    )
    this.jobs = [job, ...this.jobs.filter((j) => j.id !== job.id)]
    this.renderJobs()
    this.pollSoon()
    return job.id
  }

  // ---------------------------------------------------------------- the job list

  /** Re-read the running jobs every few seconds while the page is shown. */
  private pollSoon(): void {
    if (this.timer !== null || !this.jobs.some((j) => ACTIVE.has(j.status))) return
    this.timer = window.setTimeout(() => {
      this.timer = null
      if (!this.body.isConnected) return
      this.poll()
        .catch(() => undefined)
        .finally(() => this.pollSoon())
    }, POLL_MS)
  }

  private async poll(): Promise<void> {
    const active = this.jobs.filter((j) => ACTIVE.has(j.status))
    const fresh = await Promise.all(active.map((j) => api.get<ExportJob>(`/api/jobs/${j.id}`).catch(() => j)))
    const byId = new Map(fresh.map((j) => [j.id, j]))
    this.jobs = this.jobs.map((j) => byId.get(j.id) ?? j)
    if (this.body.isConnected) this.renderJobs()
  }

  private renderJobs(): void {
    const tbody = this.tbody
    clear(tbody)
    if (!this.jobs.length) {
      tbody.append(h('tr', null, h('td', { colspan: '8', class: 'muted', 'data-testid': 'exports-empty' }, 'No exports yet.')))
      return
    }
    for (const j of this.jobs) {
      const p = j.params ?? {}
      const scans = Array.isArray(p.scan_ids) ? p.scan_ids.length : null
      const structures = Array.isArray(p.structures) ? p.structures.length : null
      const progress = ACTIVE.has(j.status) && j.status === 'running' ? ` ${Math.round((j.progress ?? 0) * 100)}%` : ''
      const queued = j.status === 'queued' && j.queue_position !== null ? ` (#${j.queue_position} in queue)` : ''
      tbody.append(
        h(
          'tr',
          { 'data-testid': `export-row-${j.id}`, 'data-status': j.status },
          h('td', { class: 'case' }, `#${j.id}`),
          h('td', null, String(p.format ?? '—'), p.format === 'nnunet' && p.nnunet_labels ? h('span', { class: 'muted' }, ` · ${String(p.nnunet_labels)}`) : null),
          h('td', null, String(p.version ?? '—'), structures !== null ? h('div', { class: 'muted' }, `${structures} structures`) : null),
          h('td', { class: 'num' }, scans === null ? '—' : fmtNum(scans)),
          h(
            'td',
            null,
            h('span', { class: `status-chip ${j.status}`, 'data-testid': `export-status-${j.id}`, 'data-status': j.status }, j.status + progress + queued),
            j.status === 'running' ? h('progress', { max: '1', value: String(j.progress ?? 0), 'data-testid': `export-progress-${j.id}` }) : null,
            j.error ? h('div', { class: 'form-error', 'data-testid': `export-job-error-${j.id}` }, j.error) : j.message ? h('div', { class: 'muted' }, j.message) : null,
          ),
          h('td', { class: 'nowrap' }, fmtTime(j.started_at ?? j.created_at)),
          h('td', { class: 'nowrap' }, fmtTime(j.finished_at)),
          h(
            'td',
            null,
            j.status === 'succeeded'
              ? h(
                  'button',
                  {
                    class: 'btn small',
                    'data-testid': `export-download-${j.id}`,
                    onclick: (e: Event) => {
                      const button = e.currentTarget as HTMLButtonElement
                      button.disabled = true
                      this.download(j)
                        .catch((err) => toast(`Download failed: ${errorText(err)}`, 'error', 6000))
                        .finally(() => (button.disabled = false))
                    },
                  },
                  'Download',
                )
              : null,
          ),
        ),
      )
    }
  }

  /** Fetch the archive with the session's token and save it through a blob URL. */
  async download(job: ExportJob): Promise<void> {
    const resp = await api.send('GET', `/api/exports/${job.id}/download`)
    const blob = await resp.blob()
    const name = dispositionName(resp.headers.get('Content-Disposition')) ?? String(job.result?.archive_name ?? `export-${job.id}.tar.gz`)
    this.lastDownload = { job: job.id, name, bytes: blob.size, type: blob.type }
    const url = URL.createObjectURL(blob)
    const a = h('a', { href: url, download: name, hidden: true })
    document.body.append(a)
    a.click()
    a.remove()
    window.setTimeout(() => URL.revokeObjectURL(url), 30_000)
  }
}

/** The exports page last opened (for the test hook in main.ts). */
export const exportsHook: { page: ExportsPage | null } = { page: null }
