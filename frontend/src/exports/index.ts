/**
 * Exports page (#/exports, leads and admins: backend `run_jobs`): a form offering what
 * `GET /api/projects/{id}/export-options` advertises (format, version policy with "last approved" the default,
 * test-split handling, nnU-Net labels and ignore label, structures, scans), which queues an export
 * (`POST /api/projects/{id}/exports`), and the project's recent export jobs
 * (`GET /api/projects/{id}/jobs?kind=export`) with progress, their dataset card figures and a Download button.
 * Shapes: backend/exports/schemas.py, backend/jobs/schemas.py.
 */

import { api } from '../api/client'
import type { Project, SchemaOut } from '../api/types'
import { clear, h, toast } from '../dom'
import { errorText, openLeadPage } from '../lead'
import { exportForm } from './form'
import { type ExportJob, ExportJobList } from './jobs'
import { type ExportOptions, type ExportRequest, exportRequest } from './request'

export type { ExportJob } from './jobs'

interface ExportJobCreated {
  job_id: number
  status: string
  queue: string
  queue_position: number | null
  message: string
  params: Record<string, unknown>
  download_url: string
}

export class ExportsPage {
  readonly root: HTMLElement
  private project!: Project
  private list: ExportJobList = new ExportJobList([])

  constructor(root: HTMLElement) {
    this.root = root
  }

  /** The jobs shown (for the test hook in main.ts). */
  get jobs(): ExportJob[] {
    return this.list.jobs
  }

  /** The last archive a Download button fetched (for the test hook in main.ts). */
  get lastDownload(): ExportJobList['lastDownload'] {
    return this.list.lastDownload
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'exports', 'exports page')
    if (!frame) return
    const { body, project } = frame
    this.project = project
    const [options, schema, jobs] = await Promise.all([
      api.get<ExportOptions>(`/api/projects/${project.id}/export-options`),
      api.get<SchemaOut>(`/api/projects/${project.id}/schema`).catch(() => ({ name: '', structures: [] }) as SchemaOut),
      api.get<{ items: ExportJob[] }>(`/api/projects/${project.id}/jobs?kind=export&page_size=25`),
    ])
    if (!body.isConnected) return
    this.list = new ExportJobList(jobs.items)
    const form = exportForm(options, schema, project, (values) => {
      form.showError(null)
      const built = exportRequest(values)
      if (built.error !== undefined) {
        form.showError(built.error)
        return
      }
      form.setBusy(true)
      this.start(built.body)
        .catch((err) => form.showError(errorText(err)))
        .finally(() => form.setBusy(false))
    })
    clear(body)
    body.append(
      h(
        'div',
        { class: 'wl-head' },
        h('h1', null, 'Exports'),
        h(
          'p',
          { class: 'muted' },
          'Export one label version per scan as a dataset archive (.tar.gz) with its dataset card (README.md, cases.csv) and SHA256SUMS; the job runs on the cpu queue.',
        ),
      ),
      form.element,
      this.list.element,
    )
    exportsHook.page = this
  }

  /** Queue an export; the new job goes to the top of the list and is followed until it finishes. */
  async start(body: ExportRequest): Promise<number> {
    const created = await api.post<ExportJobCreated>(`/api/projects/${this.project.id}/exports`, { json: body })
    toast(`Export #${created.job_id} queued`, 'ok')
    const job = await api.get<ExportJob>(`/api/jobs/${created.job_id}`).catch(
      (): ExportJob => ({
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
      }),
    )
    this.list.add(job)
    return job.id
  }
}

/** The exports page last opened (for the test hook in main.ts). */
export const exportsHook: { page: ExportsPage | null } = { page: null }
