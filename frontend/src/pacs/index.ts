/**
 * `#/pacs`: the project's DICOMweb source (URL, user, password — never shown back), a QIDO study search, each
 * study's series with the choice rules' pick, retrieval into scans (job progress) and STOW-RS of a scan's
 * approved version as DICOM SEG.
 */

import { ApiError, api } from '../api/client'
import type { Project } from '../api/types'
import { clear, h, toast } from '../dom'
import { errorText, openLeadPage } from '../lead'
import type { Job } from '../models/request'
import { type PacsSource, type RetrieveOut, type Series, type StowOut, type Study, retrieveWords, searchQuery, seriesLine, sourceBody } from './request'

const POLL_MS = 1500

export class PacsPage {
  readonly root: HTMLElement
  private project!: Project
  private readonly results = h('div', { class: 'pacs-results', 'data-testid': 'pacs-results' })
  private readonly jobs = h('ul', { class: 'loop-jobs', 'data-testid': 'pacs-jobs' })

  constructor(root: HTMLElement) {
    this.root = root
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'pacs', 'PACS page')
    if (!frame) return
    this.project = frame.project
    const source = await api.get<PacsSource>(`/api/projects/${this.project.id}/pacs`).catch((err) => {
      if (err instanceof ApiError && err.status === 404) return null
      throw err
    })
    if (!frame.body.isConnected) return
    clear(frame.body)
    frame.body.append(
      h('div', { class: 'wl-head' }, h('h1', null, 'PACS'), h('p', { class: 'muted' }, 'DICOMweb intake (QIDO-RS, WADO-RS) and DICOM SEG back over STOW-RS.')),
      this.sourceForm(source),
      this.searchForm(),
      this.results,
      this.stowForm(),
      h('section', { class: 'loop-section' }, h('h2', null, 'Jobs'), this.jobs),
    )
  }

  private sourceForm(source: PacsSource | null): HTMLElement {
    const url = h('input', { type: 'url', value: source?.base_url ?? '', placeholder: 'https://pacs.example.org/dicom-web', 'data-testid': 'pacs-url' })
    const user = h('input', { type: 'text', value: source?.username ?? '', autocomplete: 'off', 'data-testid': 'pacs-user' })
    const password = h('input', { type: 'password', value: '', autocomplete: 'new-password', placeholder: source?.has_password ? '•••• stored (type to replace)' : '', 'data-testid': 'pacs-password' })
    const deid = h('input', { type: 'checkbox', checked: source?.deidentify ?? false, 'data-testid': 'pacs-deidentify' })
    const note = h('p', { class: 'muted', 'data-testid': 'pacs-source-note' }, source ? `Configured${source.has_password ? ' with a stored password' : ''}.` : 'No source configured yet.')
    const save = async (): Promise<void> => {
      const built = sourceBody({ baseUrl: url.value, username: user.value, password: password.value, deidentify: deid.checked })
      if (built.error !== undefined) return void (note.textContent = built.error)
      try {
        const saved = await api.put<PacsSource>(`/api/projects/${this.project.id}/pacs`, { json: built.body })
        password.value = ''
        password.placeholder = saved.has_password ? '•••• stored (type to replace)' : ''
        note.textContent = `Saved${saved.has_password ? ' with a stored password' : ''}.`
      } catch (err) {
        note.textContent = errorText(err)
      }
    }
    return h(
      'form',
      { class: 'loop-section', 'data-testid': 'pacs-source', onsubmit: (e: Event) => (e.preventDefault(), void save()) },
      h('h2', null, 'Source'),
      h('div', { class: 'loop-row' }, h('label', { class: 'field' }, 'DICOMweb URL', url), h('label', { class: 'field' }, 'User', user), h('label', { class: 'field' }, 'Password', password), h('label', { class: 'check' }, deid, ' De-identify on intake and export')),
      h('button', { class: 'btn', type: 'submit', 'data-testid': 'pacs-save' }, 'Save source'),
      note,
    )
  }

  private searchForm(): HTMLElement {
    const input = (testid: string, placeholder = '', value = ''): HTMLInputElement => h('input', { type: 'text', placeholder, value, 'data-testid': testid })
    const patient = input('pacs-patient', 'id or name')
    const date = input('pacs-date', 'YYYYMMDD or range')
    const modality = input('pacs-modality', 'CT', 'CT')
    const accession = input('pacs-accession')
    const description = input('pacs-description')
    const error = h('p', { class: 'form-error', hidden: true, 'data-testid': 'pacs-search-error' })
    const search = async (): Promise<void> => {
      const built = searchQuery({ patient: patient.value, studyDate: date.value, modality: modality.value, accession: accession.value, description: description.value })
      error.hidden = built.error === undefined
      if (built.error !== undefined) return void (error.textContent = built.error)
      clear(this.results)
      try {
        const page = await api.get<{ items: Study[] }>(`/api/projects/${this.project.id}/pacs/studies?${built.body}`)
        this.showStudies(page.items)
      } catch (err) {
        error.textContent = errorText(err)
        error.hidden = false
      }
    }
    return h(
      'form',
      { class: 'loop-section', 'data-testid': 'pacs-search', onsubmit: (e: Event) => (e.preventDefault(), void search()) },
      h('h2', null, 'Search studies'),
      h('div', { class: 'loop-row' }, h('label', { class: 'field' }, 'Patient', patient), h('label', { class: 'field' }, 'Study date', date), h('label', { class: 'field' }, 'Modality', modality), h('label', { class: 'field' }, 'Accession', accession), h('label', { class: 'field' }, 'Description', description)),
      h('button', { class: 'btn primary', type: 'submit', 'data-testid': 'pacs-search-go' }, 'Search'),
      error,
    )
  }

  private showStudies(studies: Study[]): void {
    if (!studies.length) return void this.results.append(h('p', { class: 'muted', 'data-testid': 'pacs-no-studies' }, 'No study matches.'))
    for (const s of studies) {
      const series = h('div', { class: 'pacs-series' })
      this.results.append(
        h(
          'div',
          { class: 'pacs-study', 'data-testid': `pacs-study-${s.study_uid}` },
          h('b', null, `${s.study_date || '—'} · ${s.patient_name || s.patient_id} · ${s.description || '(no description)'}`),
          h('span', { class: 'muted' }, ` ${s.accession ? `acc ${s.accession} · ` : ''}${s.modalities.join('/')} · ${s.series ?? '?'} series`),
          h('button', { class: 'btn small', 'data-testid': `pacs-series-${s.study_uid}`, onclick: () => void this.showSeries(s.study_uid, series) }, 'Series'),
          series,
        ),
      )
    }
  }

  private async showSeries(studyUid: string, into: HTMLElement): Promise<void> {
    clear(into)
    try {
      const out = await api.get<{ items: Series[] }>(`/api/projects/${this.project.id}/pacs/studies/${encodeURIComponent(studyUid)}/series`)
      into.append(
        h(
          'ul',
          null,
          out.items.map((s) =>
            h(
              'li',
              { class: s.chosen ? 'chosen' : s.eligible ? '' : 'muted', 'data-testid': `pacs-series-row-${s.series_uid}`, 'data-chosen': String(s.chosen) },
              seriesLine(s),
              s.chosen ? h('b', null, ' ← the rules’ pick') : null,
              s.reason ? h('span', { class: 'muted' }, ` (${s.reason})`) : null,
              s.scan_id !== null ? h('a', { href: `#/scan/${s.scan_id}` }, ` scan #${s.scan_id}`) : null,
              s.eligible && s.scan_id === null ? h('button', { class: 'btn small', 'data-testid': `pacs-retrieve-${s.series_uid}`, onclick: () => void this.retrieve(studyUid, s.series_uid) }, 'Retrieve') : null,
            ),
          ),
        ),
      )
    } catch (err) {
      into.append(h('p', { class: 'form-error' }, errorText(err)))
    }
  }

  private async retrieve(studyUid: string, seriesUid: string): Promise<void> {
    try {
      const out = await api.post<RetrieveOut>(`/api/projects/${this.project.id}/pacs/retrievals`, { json: { study_uid: studyUid, series_uid: seriesUid } })
      toast(retrieveWords(out), 'ok')
      if (out.job_id !== null) this.follow(out.job_id)
    } catch (err) {
      toast(errorText(err), 'error', 6000)
    }
  }

  private stowForm(): HTMLElement {
    const scan = h('input', { type: 'number', min: '1', placeholder: 'scan id', 'data-testid': 'pacs-stow-scan' })
    const error = h('p', { class: 'form-error', hidden: true, 'data-testid': 'pacs-stow-error' })
    const send = async (): Promise<void> => {
      const id = Number(scan.value)
      error.hidden = Number.isInteger(id) && id > 0
      if (!error.hidden) return void (error.textContent = 'Type the id of a scan with an approved version.')
      try {
        const out = await api.post<StowOut>(`/api/scans/${id}/pacs/stow`, { json: {} })
        this.follow(out.job_id)
      } catch (err) {
        error.textContent = errorText(err)
        error.hidden = false
      }
    }
    return h(
      'form',
      { class: 'loop-section', 'data-testid': 'pacs-stow', onsubmit: (e: Event) => (e.preventDefault(), void send()) },
      h('h2', null, 'Send an approved version as DICOM SEG'),
      h('div', { class: 'loop-row' }, h('label', { class: 'field' }, 'Scan', scan), h('button', { class: 'btn', type: 'submit', 'data-testid': 'pacs-stow-go' }, 'STOW')),
      error,
    )
  }

  private follow(jobId: number): void {
    const line = h('li', { 'data-testid': `pacs-job-${jobId}` }, `#${jobId} queued`)
    this.jobs.prepend(line)
    const tick = async (): Promise<void> => {
      if (!line.isConnected) return
      const j = await api.get<Job>(`/api/jobs/${jobId}`).catch(() => null)
      if (j) {
        line.dataset.status = j.status
        line.textContent = `#${j.id} ${j.kind} · ${j.status}${j.status === 'running' ? ` ${Math.round(j.progress * 100)}%` : ''}${j.scan_id ? ` · scan #${j.scan_id}` : ''}${j.error ? ` · ${j.error}` : ''}`
      }
      if (!j || j.status === 'queued' || j.status === 'running') window.setTimeout(() => void tick(), POLL_MS)
    }
    window.setTimeout(() => void tick(), POLL_MS)
  }
}
