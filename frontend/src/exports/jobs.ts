/**
 * The project's export jobs: status and progress (followed with `GET /api/jobs/{id}` while they run), the
 * options each was started with, a Download button once the archive is ready (`GET /api/exports/{job}/download`
 * fetched with the session's token, saved through a blob URL) and the dataset card's figures the job keeps in
 * its result (scans per folder, skipped scans, ignore label, paint order, the archive's SHA-256).
 */

import { api } from '../api/client'
import { clear, fmtTime, h, toast } from '../dom'
import { errorText, fmtNum } from '../lead'
import { cardLines, versionLabel } from './request'

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

const ACTIVE = new Set(['queued', 'running'])
const POLL_MS = 2000

/** The file name in a Content-Disposition header, if any. */
function dispositionName(header: string | null): string | null {
  const m = header ? /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(header) : null
  return m ? decodeURIComponent(m[1]) : null
}

/** A job's progress as the API reports it (percent, 0–100) as a fraction. */
function fraction(progress: number | null | undefined): number {
  return Math.max(0, Math.min(1, (progress ?? 0) / 100))
}

export class ExportJobList {
  jobs: ExportJob[]
  /** The last archive fetched by a Download button (name and size; for the browser tests). */
  lastDownload: { job: number; name: string; bytes: number; type: string } | null = null
  readonly element: HTMLElement
  private readonly tbody = h('tbody')
  private timer: number | null = null

  constructor(jobs: ExportJob[]) {
    this.jobs = jobs
    this.element = h(
      'section',
      { class: 'eval-section' },
      h('h2', null, 'Recent exports'),
      h(
        'table',
        { class: 'worklist', 'data-testid': 'export-jobs' },
        h('thead', null, h('tr', null, ['Job', 'Format', 'Version', 'Scans', 'Status', 'Started', 'Finished', ''].map((t) => h('th', null, t)))),
        this.tbody,
      ),
    )
    this.render()
    this.pollSoon()
  }

  /** Put a job (just queued) at the top and follow it. */
  add(job: ExportJob): void {
    this.jobs = [job, ...this.jobs.filter((j) => j.id !== job.id)]
    this.render()
    this.pollSoon()
  }

  /** Re-read the running jobs every few seconds while the page is shown. */
  private pollSoon(): void {
    if (this.timer !== null || !this.jobs.some((j) => ACTIVE.has(j.status))) return
    this.timer = window.setTimeout(() => {
      this.timer = null
      if (!this.element.isConnected) return
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
    if (this.element.isConnected) this.render()
  }

  private render(): void {
    const tbody = this.tbody
    clear(tbody)
    if (!this.jobs.length) {
      tbody.append(h('tr', null, h('td', { colspan: '8', class: 'muted', 'data-testid': 'exports-empty' }, 'No exports yet.')))
      return
    }
    for (const j of this.jobs) {
      tbody.append(this.row(j))
      if (j.status === 'succeeded') tbody.append(this.card(j))
    }
  }

  private row(j: ExportJob): HTMLElement {
    const p = j.params ?? {}
    const scans = Array.isArray(p.scan_ids) ? p.scan_ids.length : null
    const structures = Array.isArray(p.structures) ? p.structures.length : null
    const pct = Math.round(fraction(j.progress) * 100)
    const progress = j.status === 'running' ? ` ${pct}%` : ''
    const queued = j.status === 'queued' && j.queue_position !== null ? ` (#${j.queue_position} in queue)` : ''
    const options = [
      p.format === 'nnunet' && p.nnunet_labels ? String(p.nnunet_labels) : null,
      p.format === 'nnunet' && p.ignore_label !== undefined ? (p.ignore_label ? 'ignore label' : 'no ignore label') : null,
      p.test_split ? `test split ${String(p.test_split)}` : null,
    ].filter(Boolean)
    return h(
      'tr',
      { 'data-testid': `export-row-${j.id}`, 'data-status': j.status },
      h('td', { class: 'case' }, `#${j.id}`),
      h('td', null, String(p.format ?? '—'), options.length ? h('div', { class: 'muted' }, options.join(' · ')) : null),
      h(
        'td',
        { title: p.version ? versionLabel(String(p.version)) : '' },
        String(p.version ?? '—'),
        structures !== null ? h('div', { class: 'muted' }, `${structures} structures`) : null,
      ),
      h('td', { class: 'num' }, scans === null ? '—' : fmtNum(scans)),
      h(
        'td',
        null,
        h('span', { class: `status-chip ${j.status}`, 'data-testid': `export-status-${j.id}`, 'data-status': j.status }, j.status + progress + queued),
        j.status === 'running' ? h('progress', { max: '100', value: String(pct), 'data-testid': `export-progress-${j.id}` }) : null,
        j.error ? h('div', { class: 'form-error', 'data-testid': `export-job-error-${j.id}` }, j.error) : j.message ? h('div', { class: 'muted' }, j.message) : null,
      ),
      h('td', { class: 'nowrap' }, fmtTime(j.started_at ?? j.created_at)),
      h('td', { class: 'nowrap' }, fmtTime(j.finished_at)),
      h('td', null, j.status === 'succeeded' ? this.downloadButton(j) : null),
    )
  }

  private downloadButton(j: ExportJob): HTMLElement {
    const name = String(j.result?.archive_name ?? `export-${j.id}.tar.gz`)
    return h(
      'a',
      {
        class: 'btn small',
        href: `/api/exports/${j.id}/download`,
        download: name,
        'data-testid': `export-download-${j.id}`,
        onclick: (e: Event) => {
          e.preventDefault()
          const link = e.currentTarget as HTMLElement
          if (link.getAttribute('aria-busy') === 'true') return
          link.setAttribute('aria-busy', 'true')
          this.download(j)
            .catch((err) => toast(`Download failed: ${errorText(err)}`, 'error', 6000))
            .finally(() => link.removeAttribute('aria-busy'))
        },
      },
      'Download',
    )
  }

  /** The dataset card's figures of a finished job, in a row under it. */
  private card(j: ExportJob): HTMLElement {
    const lines = cardLines(j.result ?? {})
    return h(
      'tr',
      { class: 'export-card-row', 'data-testid': `export-card-row-${j.id}` },
      h(
        'td',
        { colspan: '8' },
        h(
          'details',
          { class: 'export-card', 'data-testid': `export-card-${j.id}` },
          h('summary', null, `Dataset card of #${j.id}: ${String(j.result?.archive_name ?? '')}`),
          h(
            'dl',
            { class: 'card-lines' },
            lines.flatMap((l) => [h('dt', null, l.label), h('dd', { 'data-testid': `export-card-${j.id}-${l.key}` }, l.value)]),
          ),
        ),
      ),
    )
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
