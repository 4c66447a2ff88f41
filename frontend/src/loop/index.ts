/**
 * `#/loop`: a lead drives the loop for one scan or every scan matching the worklist's filters: launch
 * pre-annotation (a chosen model) and attention maps, follow the jobs, and assign the scans to an annotator.
 */

import { api } from '../api/client'
import type { Member, Project, Scan, ScanPage } from '../api/types'
import { clear, h, toast } from '../dom'
import { errorText, openLeadPage } from '../lead'
import type { Job, ModelOut } from '../models/request'
import { type LoopFilters, type Target, assignmentBody, attentionBody, preannotateBody, savedFilters, scanQuery, targetWords } from './request'

const POLL_MS = 1500
const FILTER_KEY = 'maskloop.filters'

export class LoopPage {
  readonly root: HTMLElement
  private project!: Project
  private filters: LoopFilters = savedFilters(null)
  private matching: Scan[] = []
  private total = 0
  /** Numbers each scan-list request: an answer to an older filter that arrives late is dropped. */
  private listRequest = 0
  private readonly jobsList = h('ul', { class: 'loop-jobs', 'data-testid': 'loop-jobs' })
  private readonly scanSelect = h('select', { 'data-testid': 'loop-scan' })
  private readonly targetKind = h(
    'select',
    { 'data-testid': 'loop-target' },
    h('option', { value: 'one' }, 'One scan'),
    h('option', { value: 'matching' }, 'All scans matching the filters'),
  )
  private readonly matchInfo = h('p', { class: 'muted', 'data-testid': 'loop-matching' })
  private readonly error = h('p', { class: 'form-error', hidden: true, 'data-testid': 'loop-error' })
  private readonly assigned = h('p', { class: 'ok', hidden: true, 'data-testid': 'loop-assigned' })

  constructor(root: HTMLElement) {
    this.root = root
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'loop', 'loop page')
    if (!frame) return
    const { body, project } = frame
    this.project = project
    this.filters = savedFilters(sessionStorage.getItem(FILTER_KEY))
    const [models, members] = await Promise.all([
      api.get<ModelOut[]>(`/api/projects/${project.id}/models`),
      api.get<Member[]>(`/api/projects/${project.id}/members`).catch(() => [] as Member[]),
    ])
    if (!body.isConnected) return
    clear(body)
    const model = h(
      'select',
      { 'data-testid': 'loop-model' },
      models.map((m) => h('option', { value: m.name, disabled: !m.promoted_version }, `${m.name}${m.promoted_version ? ` (v${m.promoted_version.number})` : ' (no promoted version)'}`)),
    )
    const annotator = h(
      'select',
      { 'data-testid': 'loop-assignee' },
      h('option', { value: '' }, 'Nobody (unassign)'),
      members.map((m) => h('option', { value: String(m.user_id), selected: m.role === 'annotator' }, `${m.display_name || m.email} (${m.role})`)),
    )
    const filterInputs = (['site', 'phase', 'tumor', 'split', 'q'] as const).map((key) => {
      const input =
        key === 'tumor'
          ? h('select', { 'data-testid': `loop-filter-${key}` }, ['', 'true', 'false'].map((v) => h('option', { value: v, selected: this.filters.tumor === v }, v === '' ? 'any' : v === 'true' ? 'with tumour' : 'without tumour')))
          : h('input', { type: 'text', value: this.filters[key], 'data-testid': `loop-filter-${key}` })
      input.addEventListener('change', () => {
        this.filters = { ...this.filters, [key]: input.value.trim() }
        void this.loadMatching()
      })
      return h('label', { class: 'field' }, { site: 'Site', phase: 'Phase', tumor: 'Tumour', split: 'Split', q: 'Case id' }[key], input)
    })
    const sync = (): void => {
      this.scanSelect.disabled = this.targetKind.value !== 'one'
    }
    this.targetKind.addEventListener('change', sync)
    sync()
    body.append(
      h('div', { class: 'wl-head' }, h('h1', null, 'Loop'), h('p', { class: 'muted' }, 'Pre-annotate, compute attention maps and assign scans — one, or all that match the worklist filters.')),
      h('section', { class: 'loop-section', 'data-testid': 'loop-filters' }, h('h2', null, 'Scans'), h('div', { class: 'loop-row' }, filterInputs), h('div', { class: 'loop-row' }, h('label', { class: 'field' }, 'Apply to', this.targetKind), h('label', { class: 'field' }, 'Scan', this.scanSelect)), this.matchInfo),
      h(
        'section',
        { class: 'loop-section' },
        h('h2', null, 'AI'),
        h(
          'div',
          { class: 'loop-row' },
          h('label', { class: 'field' }, 'Model', model),
          h('button', { class: 'btn primary', 'data-testid': 'loop-preannotate', onclick: () => void this.launch('preannotate', model.value) }, 'Pre-annotate'),
          h('button', { class: 'btn', 'data-testid': 'loop-attention', onclick: () => void this.launch('attention', '') }, 'Compute attention'),
        ),
      ),
      h(
        'section',
        { class: 'loop-section' },
        h('h2', null, 'Assignment'),
        h('div', { class: 'loop-row' }, h('label', { class: 'field' }, 'Annotator', annotator), h('button', { class: 'btn primary', 'data-testid': 'loop-assign', onclick: () => void this.assign(annotator.value) }, 'Assign')),
        this.assigned,
      ),
      this.error,
      h('section', { class: 'loop-section' }, h('h2', null, 'Jobs launched here'), this.jobsList),
    )
    await this.loadMatching()
  }

  private async loadMatching(): Promise<void> {
    const request = ++this.listRequest
    const page = await api.get<ScanPage>(`/api/projects/${this.project.id}/scans?${scanQuery(this.filters)}`)
    if (request !== this.listRequest) return
    this.matching = page.items
    this.total = page.total
    clear(this.scanSelect)
    this.scanSelect.append(...page.items.map((s) => h('option', { value: String(s.id) }, `${s.case_id} (#${s.id})`)))
    this.matchInfo.textContent = targetWords(this.filters, this.total)
    sessionStorage.setItem(FILTER_KEY, JSON.stringify({ ...JSON.parse(sessionStorage.getItem(FILTER_KEY) ?? '{}'), ...this.filters }))
  }

  private target(): Target | null {
    if (this.targetKind.value === 'matching') return { kind: 'matching', filters: { ...this.filters } }
    const id = Number(this.scanSelect.value)
    return id > 0 ? { kind: 'one', scanId: id } : null
  }

  private fail(text: string | null): void {
    this.error.hidden = text === null
    this.error.textContent = text ?? ''
  }

  private async launch(kind: 'preannotate' | 'attention', model: string): Promise<void> {
    const target = this.target()
    if (!target) return this.fail('Choose a scan (no scan matches the filters).')
    this.fail(null)
    try {
      const json = kind === 'preannotate' ? preannotateBody(target, { name: model }) : attentionBody(target)
      const jobs = await api.post<Job[]>(`/api/projects/${this.project.id}/${kind}`, { json })
      toast(`${jobs.length} ${kind === 'preannotate' ? 'pre-annotation' : 'attention'} job${jobs.length === 1 ? '' : 's'} queued`, 'ok')
      for (const job of jobs) this.follow(job)
    } catch (err) {
      this.fail(errorText(err))
    }
  }

  private async assign(userValue: string): Promise<void> {
    const target = this.target()
    if (!target) return this.fail('Choose a scan (no scan matches the filters).')
    this.fail(null)
    try {
      let ids = target.kind === 'one' ? [target.scanId] : this.matching.map((s) => s.id)
      if (target.kind === 'matching' && this.total > this.matching.length) ids = await this.allMatchingIds()
      const body = assignmentBody(ids, userValue ? Number(userValue) : null)
      if (typeof body === 'string') return this.fail(body)
      const out = await api.post<{ updated: number }>(`/api/projects/${this.project.id}/assignments`, { json: body })
      this.assigned.textContent = `Assigned ${out.updated} scan${out.updated === 1 ? '' : 's'}.`
      this.assigned.hidden = false
      toast(`${out.updated} scan${out.updated === 1 ? '' : 's'} assigned`, 'ok')
    } catch (err) {
      this.fail(errorText(err))
    }
  }

  private async allMatchingIds(): Promise<number[]> {
    const ids: number[] = []
    for (let page = 1; ; page++) {
      const got = await api.get<ScanPage>(`/api/projects/${this.project.id}/scans?${scanQuery(this.filters, page)}`)
      ids.push(...got.items.map((s) => s.id))
      if (!got.items.length || ids.length >= got.total) return ids
    }
  }

  /** A job's line, refreshed until it finished. */
  private follow(job: Job): void {
    const line = h('li', { 'data-testid': `loop-job-${job.id}`, 'data-status': job.status, 'data-kind': job.kind })
    const paint = (j: Job): void => {
      line.dataset.status = j.status
      line.textContent = `#${j.id} ${j.kind} · scan ${j.scan_id ?? '—'} · ${j.status}${j.status === 'running' ? ` ${Math.round(j.progress * 100)}%` : ''}${j.error ? ` · ${j.error}` : ''}`
    }
    paint(job)
    this.jobsList.prepend(line)
    const tick = async (): Promise<void> => {
      if (!line.isConnected) return
      const now = await api.get<Job>(`/api/jobs/${job.id}`).catch(() => null)
      if (now) paint(now)
      if (!now || now.status === 'queued' || now.status === 'running') window.setTimeout(() => void tick(), POLL_MS)
    }
    window.setTimeout(() => void tick(), POLL_MS)
  }
}
