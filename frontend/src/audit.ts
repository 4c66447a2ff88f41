/**
 * The audit log page for leads (`#/audit?project=&actor=&scan=&action=&since=&until=&page=`): who did what to
 * which scan and when, newest first, filtered by person, scan (case id), action and time range. Every filter
 * lives in the URL, so a filtered view can be bookmarked or sent to a colleague.
 *
 * The "Reads" tab (`&view=reads`, with `kind=` instead of `action=`) shows the separate, append-only read log:
 * who opened which scan's volume, a mask, a combined label map or an export archive, when and from where.
 */

import { api } from './api/client'
import { clear, fmtTime, h } from './dom'
import { fmtNum, openLeadPage } from './lead'
import type { AuditEvent, AuditPage, Member, Project, Scan, ScanPage } from './api/types'

const PAGE_SIZE = 50

/** One served read (GET /api/projects/{id}/audit/reads). */
interface ReadEvent {
  id: number
  at: string
  user_id: number | null
  project_id: number
  scan_id: number | null
  kind: string
  object_id: string
  detail: string
  digest: string | null
  client: string | null
  not_modified: boolean
}

interface ReadPage {
  items: ReadEvent[]
  total: number
  page: number
  page_size: number
}

/** What the read log records, with the label shown in the Kind filter. */
const READ_KINDS: [string, string][] = [
  ['', 'any read'],
  ['volume', 'scan volume'],
  ['mask', 'mask'],
  ['combined', 'combined label map'],
  ['export', 'export download'],
  ['attention', 'attention map'],
  ['prediction', 'prediction map'],
]

/** A short description of what one read served. */
function readWhat(e: ReadEvent): string {
  switch (e.kind) {
    case 'volume':
      return 'CT volume'
    case 'mask':
      return `version ${e.object_id} · ${e.detail}`
    case 'combined':
      return `version ${e.object_id} combined${e.detail ? ` (${e.detail})` : ''}`
    case 'export':
      return `export job ${e.object_id}${e.detail ? ` · ${e.detail}` : ''}`
    default:
      return `${e.object_id}${e.detail ? ` · ${e.detail}` : ''}`
  }
}

/** Actions the backend records (free text is accepted too: the list only helps typing). */
const KNOWN_ACTIONS = [
  'label_version.create',
  'scan.import',
  'task.pre_annotate',
  'task.start',
  'task.submit',
  'task.start_review',
  'task.approve',
  'task.request_changes',
  'task.reopen',
  'task.adjudicate',
  'task.resolve',
  'task.assign',
  'task.claim',
  'task.lease_release',
  'comment.create',
  'comment.resolve',
  'comment.reopen',
  'reader_set.create',
  'reader_set.submit',
  'reader_set.complete',
  'reader_set.fuse',
  'qa.run',
  'qa.finding.resolved',
  'qa.finding.dismissed',
  'job.create',
  'job.succeeded',
  'job.failed',
  'job.cancelled',
  'evaluation.create',
  'model.create',
  'model_version.create',
  'model_version.promote',
  'membership.set',
  'membership.remove',
  'project.create',
  'project.settings',
]

const RANGES: [string, string, number][] = [
  ['', 'any time', 0],
  ['1h', 'last hour', 3600],
  ['24h', 'last 24 hours', 86400],
  ['7d', 'last 7 days', 7 * 86400],
  ['30d', 'last 30 days', 30 * 86400],
]

/** `2026-11-29T01:00:00.000Z` → the `datetime-local` value in this browser's time zone. */
function toLocalInput(iso: string | null): string {
  if (!iso) return ''
  const d = new Date(iso)
  if (Number.isNaN(d.getTime())) return ''
  const pad = (n: number): string => String(n).padStart(2, '0')
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`
}

function fromLocalInput(value: string): string {
  if (!value) return ''
  const d = new Date(value)
  return Number.isNaN(d.getTime()) ? '' : d.toISOString()
}

/** `from`/`to` of a workflow transition as "annotating → submitted", then the other keys (nulls left out). */
function detailText(details: Record<string, unknown>): string {
  const parts: string[] = []
  const rest = { ...details }
  if (typeof rest.from === 'string' && typeof rest.to === 'string') {
    parts.push(`${rest.from.replace(/_/g, ' ')} → ${rest.to.replace(/_/g, ' ')}`)
    delete rest.from
    delete rest.to
  }
  for (const [k, v] of Object.entries(rest)) {
    if (v === null || v === undefined || v === '') continue
    parts.push(`${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
  }
  return parts.join(' · ')
}

export class AuditLog {
  readonly root: HTMLElement
  private project!: Project
  private params!: URLSearchParams
  private members: Member[] = []
  private caseIds = new Map<number, string>()

  constructor(root: HTMLElement) {
    this.root = root
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'audit', 'audit log')
    if (!frame) return
    const { body, project, params } = frame
    this.project = project
    this.params = params
    this.members = await api.get<Member[]>(`/api/projects/${project.id}/members`)
    if (this.reads) return this.openReads(body)
    const { query, caseId, scanMissing } = await this.filterQuery('actor_user_id', 'action')
    const result: AuditPage = scanMissing
      ? { items: [], total: 0, page: 1, page_size: PAGE_SIZE }
      : await api.get<AuditPage>(`/api/projects/${project.id}/audit?${query}`)
    await this.loadCaseIds(result.items)
    if (!body.isConnected) return
    clear(body)
    body.append(
      h(
        'div',
        { class: 'wl-head' },
        h('h1', null, 'Audit log'),
        h('p', { class: 'muted' }, 'Every save, transition, review, import and job in this project, newest first. Filters stay in the address bar.'),
      ),
      this.tabs(),
      this.filters(),
      scanMissing ? h('div', { class: 'error', 'data-testid': 'audit-scan-missing' }, `No scan with case id “${caseId}” in this project.`) : '',
      this.summary(result),
      this.table(result.items),
      this.pager(result) ?? '',
    )
  }

  /**
   * The API query of the page's filters (both views share person, scan, time and paging; the person goes as
   * `actorParam`, the view's own filter as `ownFilter`); a case id that matches no scan is reported, not sent.
   */
  private async filterQuery(
    actorParam: string,
    ownFilter: string,
  ): Promise<{ query: URLSearchParams; caseId: string; scanMissing: boolean }> {
    const params = this.params
    const query = new URLSearchParams({ page: String(this.page), page_size: String(PAGE_SIZE) })
    const actor = params.get('actor')
    if (actor) query.set(actorParam, actor)
    if (params.get(ownFilter)) query.set(ownFilter, params.get(ownFilter)!)
    const since = this.since()
    if (since) query.set('since', since)
    if (params.get('until')) query.set('until', params.get('until')!)
    const caseId = params.get('scan')?.trim() ?? ''
    let scanMissing = false
    if (caseId) {
      const scanId = await this.findScan(caseId)
      if (scanId === null) scanMissing = true
      else query.set('scan_id', String(scanId))
    }
    return { query, caseId, scanMissing }
  }

  /** The read log view: who opened which volume, mask or export (same person, scan and time filters). */
  private async openReads(body: HTMLElement): Promise<void> {
    const { query, caseId, scanMissing } = await this.filterQuery('user_id', 'kind')
    const result: ReadPage = scanMissing
      ? { items: [], total: 0, page: 1, page_size: PAGE_SIZE }
      : await api.get<ReadPage>(`/api/projects/${this.project.id}/audit/reads?${query}`)
    await this.loadCaseIds(result.items)
    if (!body.isConnected) return
    clear(body)
    body.append(
      h(
        'div',
        { class: 'wl-head' },
        h('h1', null, 'Audit log'),
        h('p', { class: 'muted' }, 'Who opened which scan volume, mask or export, when and from where, newest first. The read log cannot be edited.'),
      ),
      this.tabs(),
      this.filters(),
      scanMissing ? h('div', { class: 'error', 'data-testid': 'audit-scan-missing' }, `No scan with case id “${caseId}” in this project.`) : '',
      this.summary(result, 'read'),
      this.readTable(result.items),
      this.pager(result) ?? '',
    )
  }

  private get reads(): boolean {
    return this.params.get('view') === 'reads'
  }

  /** Changes | Reads: the person, scan and time filters carry over; action/kind and the page do not. */
  private tabs(): HTMLElement {
    const to = (view: string): void => {
      const next = new URLSearchParams(this.params)
      next.set('project', String(this.project.id))
      for (const key of ['view', 'action', 'kind', 'page']) next.delete(key)
      if (view) next.set('view', view)
      location.hash = `#/audit?${next}`
    }
    return h(
      'div',
      { class: 'tabs', 'data-testid': 'audit-tabs' },
      h('button', { class: this.reads ? '' : 'on', 'data-testid': 'audit-tab-changes', onclick: () => to('') }, 'Changes'),
      h('button', { class: this.reads ? 'on' : '', 'data-testid': 'audit-tab-reads', onclick: () => to('reads') }, 'Reads'),
    )
  }

  private get page(): number {
    return Math.max(1, Number(this.params.get('page')) || 1)
  }

  /** The lower time bound: an explicit `since`, else the preset range (`range=24h`) counted back from now. */
  private since(): string {
    const explicit = this.params.get('since')
    if (explicit) return explicit
    const range = RANGES.find(([key]) => key && key === this.params.get('range'))
    return range ? new Date(Date.now() - range[2] * 1000).toISOString() : ''
  }

  private async findScan(caseId: string): Promise<number | null> {
    const found = await api.get<ScanPage>(`/api/projects/${this.project.id}/scans?q=${encodeURIComponent(caseId)}&page_size=50`)
    const exact = found.items.find((s) => s.case_id === caseId) ?? (found.items.length === 1 ? found.items[0] : null)
    if (exact) this.caseIds.set(exact.id, exact.case_id)
    return exact ? exact.id : null
  }

  /** Case ids for the scans on this page (one small request per scan not yet known, four at a time). */
  private async loadCaseIds(items: { scan_id: number | null; details?: Record<string, unknown> }[]): Promise<void> {
    for (const e of items) {
      const fromDetails = e.details?.case_id
      if (e.scan_id !== null && typeof fromDetails === 'string') this.caseIds.set(e.scan_id, fromDetails)
    }
    const todo = [...new Set(items.map((e) => e.scan_id).filter((id): id is number => id !== null && !this.caseIds.has(id)))]
    const workers = Array.from({ length: 4 }, async () => {
      for (;;) {
        const id = todo.shift()
        if (id === undefined) return
        try {
          this.caseIds.set(id, (await api.get<Scan>(`/api/scans/${id}`)).case_id)
        } catch {
          this.caseIds.set(id, `#${id} (deleted)`)
        }
      }
    })
    await Promise.all(workers)
  }

  /** Navigate to the same page with one filter changed (back to page 1). */
  private go(changes: Record<string, string>): void {
    const next = new URLSearchParams(this.params)
    next.set('project', String(this.project.id))
    for (const [key, value] of Object.entries(changes)) {
      if (value) next.set(key, value)
      else next.delete(key)
    }
    if (!('page' in changes)) next.delete('page')
    location.hash = `#/audit?${next}`
  }

  private person(userId: number | null): string {
    if (userId === null) return 'system'
    const m = this.members.find((x) => x.user_id === userId)
    return m ? m.display_name || m.email : `user #${userId}`
  }

  private filters(): HTMLElement {
    const p = this.params
    const actor = h(
      'select',
      { 'data-testid': 'audit-filter-person', onchange: (e: Event) => this.go({ actor: (e.target as HTMLSelectElement).value }) },
      h('option', { value: '' }, 'anyone'),
      this.members.map((m) =>
        h('option', { value: String(m.user_id), selected: p.get('actor') === String(m.user_id) }, `${m.display_name || m.email} (${m.role})`),
      ),
    )
    const actions = h('datalist', { id: 'audit-actions' }, KNOWN_ACTIONS.map((a) => h('option', { value: a })))
    const action = h('input', {
      type: 'search',
      list: 'audit-actions',
      placeholder: 'any action',
      value: p.get('action') ?? '',
      'data-testid': 'audit-filter-action',
      onchange: (e: Event) => this.go({ action: (e.target as HTMLInputElement).value.trim() }),
    })
    const kind = h(
      'select',
      { 'data-testid': 'audit-filter-kind', onchange: (e: Event) => this.go({ kind: (e.target as HTMLSelectElement).value }) },
      READ_KINDS.map(([key, label]) => h('option', { value: key, selected: (p.get('kind') ?? '') === key }, label)),
    )
    const scan = h('input', {
      type: 'search',
      placeholder: 'case id',
      value: p.get('scan') ?? '',
      'data-testid': 'audit-filter-scan',
      onchange: (e: Event) => this.go({ scan: (e.target as HTMLInputElement).value.trim() }),
    })
    const range = h(
      'select',
      { 'data-testid': 'audit-filter-range', onchange: (e: Event) => this.go({ range: (e.target as HTMLSelectElement).value, since: '' }) },
      RANGES.map(([key, label]) => h('option', { value: key, selected: (p.get('range') ?? '') === key && !p.get('since') }, label)),
      p.get('since') ? h('option', { value: '', selected: true }, 'custom') : null,
    )
    const since = h('input', {
      type: 'datetime-local',
      value: toLocalInput(p.get('since')),
      'data-testid': 'audit-filter-since',
      onchange: (e: Event) => this.go({ since: fromLocalInput((e.target as HTMLInputElement).value), range: '' }),
    })
    const until = h('input', {
      type: 'datetime-local',
      value: toLocalInput(p.get('until')),
      'data-testid': 'audit-filter-until',
      onchange: (e: Event) => this.go({ until: fromLocalInput((e.target as HTMLInputElement).value) }),
    })
    const any = ['actor', 'action', 'kind', 'scan', 'range', 'since', 'until'].some((k) => p.get(k))
    const cleared = `#/audit?project=${this.project.id}${this.reads ? '&view=reads' : ''}`
    return h(
      'div',
      { class: 'filters', 'data-testid': 'audit-filters' },
      h('label', { class: 'filter' }, 'Person', actor),
      this.reads ? h('label', { class: 'filter' }, 'Kind', kind) : h('label', { class: 'filter' }, 'Action', action, actions),
      h('label', { class: 'filter' }, 'Scan', scan),
      h('label', { class: 'filter' }, 'Time', range),
      h('label', { class: 'filter' }, 'From', since),
      h('label', { class: 'filter' }, 'Until', until),
      any
        ? h(
            'button',
            { class: 'btn small', 'data-testid': 'audit-clear', onclick: () => (location.hash = cleared) },
            'Clear filters',
          )
        : null,
    )
  }

  private summary(result: { total: number; page: number; page_size: number }, noun = 'event'): HTMLElement {
    const first = result.total ? (result.page - 1) * result.page_size + 1 : 0
    const last = Math.min(result.total, result.page * result.page_size)
    return h(
      'p',
      { class: 'muted audit-summary' },
      h('span', { 'data-testid': 'audit-total', 'data-total': String(result.total) }, `${fmtNum(result.total)} ${noun}${result.total === 1 ? '' : 's'}`),
      result.total ? ` · showing ${first}–${last}` : '',
    )
  }

  private table(items: AuditEvent[]): HTMLElement {
    if (!items.length) return h('div', { class: 'empty', 'data-testid': 'audit-empty' }, 'No events match these filters.')
    return h(
      'table',
      { class: 'worklist audit', 'data-testid': 'audit-table' },
      h('thead', null, h('tr', null, ['Time', 'Person', 'Action', 'Scan', 'Details'].map((t) => h('th', null, t)))),
      h(
        'tbody',
        null,
        items.map((e) =>
          h(
            'tr',
            { 'data-testid': 'audit-row', 'data-event': String(e.id), 'data-action': e.action, 'data-actor': String(e.actor_user_id ?? '') },
            h('td', { class: 'nowrap', title: e.at }, fmtTime(e.at)),
            h('td', { class: 'nowrap' }, this.person(e.actor_user_id)),
            h('td', null, h('code', { class: `action ${e.action.split('.')[0]}` }, e.action)),
            h(
              'td',
              { class: 'nowrap' },
              e.scan_id === null ? '—' : h('a', { href: `#/scan/${e.scan_id}`, 'data-testid': 'audit-scan-link' }, this.caseIds.get(e.scan_id) ?? `#${e.scan_id}`),
            ),
            h(
              'td',
              { class: 'details', title: JSON.stringify(e.details, null, 1) },
              h('span', { class: 'muted' }, `${e.entity_type} ${e.entity_id}`),
              Object.keys(e.details ?? {}).length ? ` · ${detailText(e.details)}` : '',
            ),
          ),
        ),
      ),
    )
  }

  private readTable(items: ReadEvent[]): HTMLElement {
    if (!items.length) return h('div', { class: 'empty', 'data-testid': 'audit-empty' }, 'No reads match these filters.')
    return h(
      'table',
      { class: 'worklist audit', 'data-testid': 'audit-reads-table' },
      h('thead', null, h('tr', null, ['Time', 'Person', 'Read', 'Scan', 'What', 'From'].map((t) => h('th', null, t)))),
      h(
        'tbody',
        null,
        items.map((e) =>
          h(
            'tr',
            { 'data-testid': 'audit-read-row', 'data-event': String(e.id), 'data-kind': e.kind, 'data-user': String(e.user_id ?? '') },
            h('td', { class: 'nowrap', title: e.at }, fmtTime(e.at)),
            h('td', { class: 'nowrap' }, this.person(e.user_id)),
            h('td', null, h('code', { class: `action read-${e.kind}` }, e.kind)),
            h(
              'td',
              { class: 'nowrap' },
              e.scan_id === null ? '—' : h('a', { href: `#/scan/${e.scan_id}`, 'data-testid': 'audit-scan-link' }, this.caseIds.get(e.scan_id) ?? `#${e.scan_id}`),
            ),
            h('td', { class: 'details', title: e.digest ? `sha256 ${e.digest}` : '' }, readWhat(e)),
            h('td', { class: 'nowrap muted' }, `${e.client ?? '—'}${e.not_modified ? ' · from cache' : ''}`),
          ),
        ),
      ),
    )
  }

  private pager(result: { total: number; page: number; page_size: number }): HTMLElement | null {
    const pages = Math.max(1, Math.ceil(result.total / result.page_size))
    if (pages <= 1) return null
    return h(
      'div',
      { class: 'pager', 'data-testid': 'audit-pager' },
      h('button', { class: 'btn small', disabled: this.page <= 1, 'data-testid': 'audit-prev', onclick: () => this.go({ page: String(this.page - 1) }) }, '‹ Newer'),
      h('span', { 'data-testid': 'audit-page-number' }, `page ${this.page} of ${pages}`),
      h('button', { class: 'btn small', disabled: this.page >= pages, 'data-testid': 'audit-next', onclick: () => this.go({ page: String(this.page + 1) }) }, 'Older ›'),
    )
  }
}
