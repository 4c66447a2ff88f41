/**
 * Sign-in page and the worklist: the project's review tasks (state, assignee, lease) ranked by attention
 * priority, "my work" (assigned to me), "next task", filters. Falls back to the plain scan list on a server
 * without the review workflow.
 */

import { ApiError, api } from './api/client'
import { clear, h, toast } from './dom'
import { localDrafts } from './draftStorage'
import { accountControls } from './lead'
import { STATE_LABELS, stateBadge } from './review/labels'
import type { Facets, Project, ScanPage, ScanPriority, TaskOut, TaskPage, Version } from './api/types'

const PROJECT_KEY = 'maskloop.project'

export function renderLogin(root: HTMLElement, onDone: () => void, message = ''): void {
  clear(root)
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, 'data-testid': 'login-email' })
  const password = h('input', {
    type: 'password',
    name: 'password',
    autocomplete: 'current-password',
    required: true,
    'data-testid': 'login-password',
  })
  const error = h('div', { class: 'error', 'data-testid': 'login-error' }, message)
  const button = h('button', { class: 'btn primary', type: 'submit', 'data-testid': 'login-submit' }, 'Sign in')
  const form = h(
    'form',
    {
      class: 'login-card',
      onsubmit: async (e: Event) => {
        e.preventDefault()
        button.disabled = true
        error.textContent = ''
        try {
          await api.login(email.value.trim(), password.value)
          onDone()
        } catch (err) {
          error.textContent = err instanceof ApiError && err.status === 401 ? 'Wrong e-mail or password.' : (err as Error).message
        } finally {
          button.disabled = false
        }
      },
    },
    h('div', { class: 'login-brand' }, h('span', { class: 'logo' }, '◐'), 'maskloop'),
    h('p', { class: 'muted' }, 'CT segmentation workspace'),
    h('label', null, 'E-mail', email),
    h('label', null, 'Password', password),
    error,
    button,
  )
  root.append(h('div', { class: 'login-page' }, form))
  email.focus()
}

/** The sign-in dialog shown when the session expired mid-edit: the edit stays in memory meanwhile. */
export function reauthDialog(): Promise<void> {
  return new Promise((resolve) => {
    const emailValue = api.user?.email ?? ''
    const email = h('input', { type: 'email', value: emailValue, 'data-testid': 'reauth-email' })
    const password = h('input', { type: 'password', 'data-testid': 'reauth-password' })
    const error = h('div', { class: 'error', 'data-testid': 'reauth-error' })
    const form = h(
      'form',
      {
        class: 'dialog',
        'data-testid': 'reauth-dialog',
        onsubmit: async (e: Event) => {
          e.preventDefault()
          try {
            await api.login(email.value.trim(), password.value)
            backdrop.remove()
            toast('Signed in again: your edit was kept', 'ok')
            resolve()
          } catch (err) {
            error.textContent = err instanceof ApiError && err.status === 401 ? 'Wrong e-mail or password.' : (err as Error).message
          }
        },
      },
      h('h2', null, 'Your session expired'),
      h('p', null, 'Sign in again to continue. Your unsaved edit is kept (also as a draft in this browser).'),
      h('label', null, 'E-mail', email),
      h('label', null, 'Password', password),
      error,
      h('div', { class: 'dialog-buttons' }, h('button', { class: 'btn primary', type: 'submit', 'data-testid': 'reauth-submit' }, 'Sign in')),
    )
    const backdrop = h('div', { class: 'backdrop top' }, form)
    document.body.append(backdrop)
    ;(emailValue ? password : email).focus()
  })
}

interface Filters {
  status: string
  state: string
  mine: boolean
  site: string
  phase: string
  tumor: string
  q: string
  sort: 'priority' | 'case' | 'updated'
}

/** One worklist row, from a review task (or from a scan on a server without the workflow). */
interface Row {
  id: number
  case_id: string
  score: number | null
  rank: number | null
  head_version_id: number | null
  site: string | null
  phase: string | null
  tumor: boolean | null
  task: TaskOut | null
  extra: string
}

export class Worklist {
  readonly root: HTMLElement
  projects: Project[] = []
  project: Project | null = null
  facets: Facets['facets'] = {}
  filters: Filters = { status: '', state: '', mine: false, site: '', phase: '', tumor: '', q: '', sort: 'priority' }
  page = 1
  /** False once the server answered 404 for the worklist endpoint (no review workflow). */
  workflow = true
  private headKinds = new Map<number, string>()
  /** Numbers each load: the answer to an older filter or page that arrives late is dropped. */
  private loadRequest = 0
  private body!: HTMLElement

  constructor(root: HTMLElement) {
    this.root = root
    const saved = sessionStorage.getItem('maskloop.filters')
    if (saved) this.filters = { ...this.filters, ...(JSON.parse(saved) as Partial<Filters>) }
  }

  async open(): Promise<void> {
    clear(this.root)
    this.body = h('div', { class: 'worklist-body' }, h('div', { class: 'muted pad' }, 'Loading projects…'))
    this.root.append(this.header(), this.body)
    this.projects = await api.get<Project[]>('/api/projects')
    if (!this.body.isConnected) return // the user moved on meanwhile
    if (!this.projects.length) {
      clear(this.body)
      this.body.append(h('div', { class: 'empty' }, 'You are not a member of any project yet. Ask a project lead to add you.'))
      return
    }
    const wanted = Number(localStorage.getItem(PROJECT_KEY))
    this.project = this.projects.find((p) => p.id === wanted) ?? this.projects[0]
    this.root.querySelector('.topbar')!.replaceWith(this.header())
    await this.load()
  }

  private header(): HTMLElement {
    return h(
      'header',
      { class: 'topbar' },
      h('a', { class: 'brand', href: '#/' }, h('span', { class: 'logo' }, '◐'), 'maskloop'),
      this.projects.length
        ? h(
            'select',
            {
              class: 'project',
              'data-testid': 'project-select',
              onchange: (e: Event) => {
                this.project = this.projects.find((p) => p.id === Number((e.target as HTMLSelectElement).value)) ?? null
                if (this.project) localStorage.setItem(PROJECT_KEY, String(this.project.id))
                this.page = 1
                this.load().catch((err) => toast((err as Error).message, 'error'))
              },
            },
            this.projects.map((p) => h('option', { value: String(p.id), selected: p.id === this.project?.id }, `${p.name} (${p.role})`)),
          )
        : null,
      ...accountControls(),
    )
  }

  private saveFilters(): void {
    sessionStorage.setItem('maskloop.filters', JSON.stringify(this.filters))
  }

  async load(): Promise<void> {
    const project = this.project!
    const request = ++this.loadRequest
    const params = new URLSearchParams({ page: String(this.page), page_size: '100' })
    if (this.filters.site) params.set('site', this.filters.site)
    if (this.filters.phase) params.set('phase', this.filters.phase)
    if (this.filters.tumor) params.set('tumor', this.filters.tumor)
    if (this.filters.q) params.set('q', this.filters.q)
    const facets = api.get<Facets>(`/api/projects/${project.id}/scan-facets`)
    let rows: Row[] | null = null
    let total = 0
    let pageSize = 100
    let ranked = false
    if (this.workflow) {
      const wl = new URLSearchParams(params)
      if (this.filters.state) wl.set('state', this.filters.state)
      if (this.filters.mine) wl.set('assignee', 'me')
      wl.set('sort', this.filters.sort)
      try {
        const page = await api.get<TaskPage>(`/api/projects/${project.id}/worklist?${wl}`)
        total = page.total
        pageSize = page.page_size
        ranked = page.items.some((t) => t.priority > 0)
        rows = page.items.map((t, i) => ({
          id: t.scan_id,
          case_id: t.case_id,
          score: t.priority > 0 ? t.priority : null,
          rank: this.filters.sort === 'priority' && t.priority > 0 ? (this.page - 1) * page.page_size + i + 1 : null,
          head_version_id: t.head_version_id,
          site: t.site,
          phase: t.phase,
          tumor: t.tumor,
          task: t,
          extra: '',
        }))
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 404)) throw err
        this.workflow = false
      }
    }
    if (rows === null) {
      const [page, prio] = await Promise.all([
        api.get<ScanPage>(`/api/projects/${project.id}/scans?${params}`),
        api.get<ScanPriority[]>(`/api/projects/${project.id}/priorities/scans?page_size=500`).catch(() => [] as ScanPriority[]),
      ])
      const score = new Map(prio.map((r, i) => [r.scan_id, { score: r.score, rank: i + 1 }]))
      let items = page.items
      if (this.filters.sort === 'priority')
        items = [...items].sort((a, b) => (score.get(b.id)?.score ?? -1) - (score.get(a.id)?.score ?? -1) || a.case_id.localeCompare(b.case_id))
      total = page.total
      pageSize = page.page_size
      ranked = prio.length > 0
      rows = items.map((s) => ({
        id: s.id,
        case_id: s.case_id,
        score: score.get(s.id)?.score ?? null,
        rank: score.get(s.id)?.rank ?? null,
        head_version_id: s.head_version_id,
        site: s.site,
        phase: s.phase,
        tumor: s.tumor,
        task: null,
        extra: `${s.sex ?? '?'} / ${s.age ?? '?'} · ${s.shape.join('×')} ${s.orientation}`,
      }))
    }
    this.facets = (await facets).facets
    const drafts = api.user ? await localDrafts.scans(api.user.id) : new Set<number>()
    if (!this.body.isConnected || request !== this.loadRequest) return
    this.render(rows, total, pageSize, drafts, ranked)
    await this.loadKinds(rows)
  }

  /** Ask the server for the next task for me (highest priority, leased to me) and open it. */
  async nextTask(kind: 'annotate' | 'review'): Promise<void> {
    const resp = await api.send('POST', `/api/projects/${this.project!.id}/next-task`, { json: { kind } })
    if (resp.status === 204) {
      toast(kind === 'review' ? 'Nothing is waiting for review' : 'Nothing is waiting to be annotated', 'info')
      return
    }
    const task = (await resp.json()) as TaskOut
    location.hash = `#/scan/${task.scan_id}`
  }

  private async loadKinds(items: Row[]): Promise<void> {
    const todo = items.filter((s) => s.head_version_id !== null && !this.headKinds.has(s.head_version_id))
    const workers = Array.from({ length: 4 }, async () => {
      for (;;) {
        const scan = todo.shift()
        if (!scan) return
        try {
          const v = await api.get<Version>(`/api/versions/${scan.head_version_id}`)
          this.headKinds.set(scan.head_version_id!, v.kind)
        } catch {
          this.headKinds.set(scan.head_version_id!, 'unknown')
        }
        this.updateStatus(scan)
      }
    })
    await Promise.all(workers)
    this.applyStatusFilter()
  }

  private statusOf(scan: Row): string {
    if (scan.head_version_id === null) return 'unlabelled'
    const kind = this.headKinds.get(scan.head_version_id)
    if (!kind) return '…'
    return { model: 'AI draft', human: 'corrected', import: 'imported', fusion: 'fused' }[kind] ?? kind
  }

  private updateStatus(scan: Row): void {
    const cell = this.body.querySelector(`[data-testid=status-${scan.id}]`)
    if (cell) {
      cell.textContent = this.statusOf(scan)
      cell.className = `status ${this.statusOf(scan).replace(/\s/g, '-')}`
    }
  }

  private applyStatusFilter(): void {
    const want = this.filters.status
    for (const row of this.body.querySelectorAll<HTMLElement>('tr[data-scan]')) {
      const status = row.querySelector('.status')?.textContent ?? ''
      row.hidden = !!want && status !== want
    }
    const shown = this.body.querySelectorAll('tr[data-scan]:not([hidden])').length
    const count = this.body.querySelector('[data-testid=scan-count]')
    if (count) count.textContent = `${shown} scan${shown === 1 ? '' : 's'} shown`
  }

  private select(key: Exclude<keyof Filters, 'mine'>, label: string, options: [string, string][]): HTMLElement {
    return h(
      'label',
      { class: 'filter' },
      label,
      h(
        'select',
        {
          'data-testid': `filter-${key}`,
          onchange: (e: Event) => {
            ;(this.filters as unknown as Record<string, string>)[key] = (e.target as HTMLSelectElement).value
            this.saveFilters()
            this.page = 1
            if (key === 'status') this.applyStatusFilter()
            else this.load().catch((err) => toast((err as Error).message, 'error'))
          },
        },
        options.map(([value, text]) => h('option', { value, selected: this.filters[key] === value }, text)),
      ),
    )
  }

  private facetOptions(name: string): [string, string][] {
    const counts = this.facets[name] ?? {}
    return [['', 'any'], ...Object.entries(counts).map(([v, n]) => [v, `${v} (${n})`] as [string, string])]
  }

  private whoHolds(t: TaskOut): HTMLElement | string {
    const lease = t.lease && Date.parse(t.lease.expires_at) > Date.now() ? t.lease : null
    if (!lease) return ''
    return h('span', { class: 'tag lease', title: `edit lease until ${new Date(lease.expires_at).toLocaleTimeString()}` }, `editing: ${lease.username}`)
  }

  private render(items: Row[], total: number, pageSize: number, drafts: Set<number>, ranked: boolean): void {
    clear(this.body)
    const search = h('input', {
      type: 'search',
      placeholder: 'case id…',
      value: this.filters.q,
      'data-testid': 'filter-q',
      onchange: (e: Event) => {
        this.filters.q = (e.target as HTMLInputElement).value.trim()
        this.saveFilters()
        this.page = 1
        this.load().catch((err) => toast((err as Error).message, 'error'))
      },
    })
    const role = this.project?.role ?? ''
    const canAnnotate = ['annotator', 'lead', 'admin'].includes(role)
    const canReview = ['reviewer', 'lead', 'admin'].includes(role)
    const next = (kind: 'annotate' | 'review'): void => {
      this.nextTask(kind).catch((err) => toast((err as Error).message, 'error'))
    }
    this.body.append(
      h(
        'div',
        { class: 'wl-head' },
        h('h1', null, this.filters.mine ? 'My work' : 'Worklist'),
        h(
          'p',
          { class: 'muted' },
          ranked
            ? 'Scans ranked by attention priority (where the models disagree most), highest first.'
            : 'No attention priorities yet: scans in case-id order.',
        ),
        this.workflow
          ? h(
              'div',
              { class: 'wl-actions' },
              h(
                'label',
                { class: 'check' },
                h('input', {
                  type: 'checkbox',
                  checked: this.filters.mine,
                  'data-testid': 'filter-mine',
                  onchange: (e: Event) => {
                    this.filters.mine = (e.target as HTMLInputElement).checked
                    this.saveFilters()
                    this.page = 1
                    this.load().catch((err) => toast((err as Error).message, 'error'))
                  },
                }),
                ' My work (assigned to me)',
              ),
              canAnnotate ? h('button', { class: 'btn primary', 'data-testid': 'next-task', onclick: () => next('annotate') }, 'Next task ▸') : null,
              canReview ? h('button', { class: `btn ${canAnnotate ? '' : 'primary'}`, 'data-testid': 'next-review', onclick: () => next('review') }, 'Next review ▸') : null,
            )
          : null,
      ),
      h(
        'div',
        { class: 'filters' },
        this.workflow
          ? this.select('state', 'State', [['', 'any'], ...Object.entries(STATE_LABELS).map(([k, v]) => [k, v] as [string, string])])
          : null,
        this.select('status', 'Labels', [
          ['', 'any'],
          ['unlabelled', 'unlabelled'],
          ['AI draft', 'AI draft'],
          ['imported', 'imported'],
          ['corrected', 'corrected'],
        ]),
        this.select('site', 'Site', this.facetOptions('site')),
        this.select('phase', 'Phase', this.facetOptions('phase')),
        this.select('tumor', 'Tumour', [
          ['', 'any'],
          ['true', 'yes'],
          ['false', 'no'],
        ]),
        this.select('sort', 'Order', [
          ['priority', 'priority'],
          ['case', 'case id'],
          ...(this.workflow ? [['updated', 'last change'] as [string, string]] : []),
        ]),
        h('label', { class: 'filter' }, 'Search', search),
        h('span', { class: 'spacer' }),
        h('span', { class: 'muted', 'data-testid': 'scan-count' }, `${total} scans`),
      ),
    )
    if (!items.length) {
      this.body.append(
        h('div', { class: 'empty', 'data-testid': 'worklist-empty' }, this.filters.mine ? 'Nothing is assigned to you with these filters.' : 'No scans match these filters.'),
      )
      return
    }
    const cols = this.workflow
      ? ['rank', 'case', 'priority', 'state', 'labels', 'assignee', 'site', 'phase', 'tumour', 'QA', '']
      : ['rank', 'case', 'priority', 'labels', 'site', 'phase', 'tumour', 'sex / age · shape', '']
    const table = h(
      'table',
      { class: 'worklist', 'data-testid': 'worklist' },
      h('thead', null, h('tr', null, cols.map((t) => h('th', { class: t === 'rank' || t === 'priority' || t === 'QA' ? 'num' : '' }, t)))),
      h(
        'tbody',
        null,
        items.map((s) => {
          const t = s.task
          return h(
            'tr',
            {
              'data-scan': String(s.id),
              'data-testid': `scan-row-${s.case_id}`,
              'data-state': t?.state ?? '',
              onclick: () => (location.hash = `#/scan/${s.id}`),
            },
            h('td', { class: 'num' }, s.rank ? String(s.rank) : '—'),
            h('td', { class: 'case' }, s.case_id, drafts.has(s.id) ? h('span', { class: 'tag draft', title: 'unsaved draft in this browser' }, 'draft') : null),
            h('td', { class: 'num' }, s.score !== null ? s.score.toFixed(3) : '—'),
            t ? h('td', null, stateBadge(t.state, `state-${s.id}`)) : null,
            h('td', { class: 'status', 'data-testid': `status-${s.id}` }, this.statusOf(s)),
            t ? h('td', { 'data-testid': `assignee-${s.id}` }, t.assignee?.username ?? '—', ' ', this.whoHolds(t)) : null,
            h('td', null, s.site ?? '—'),
            h('td', null, s.phase ?? '—'),
            h('td', null, s.tumor === null ? '—' : s.tumor ? h('span', { class: 'tag tumour' }, 'tumour') : 'no'),
            t ? h('td', { class: 'num' }, t.open_findings ? h('span', { class: 'chip warn' }, String(t.open_findings)) : '—') : h('td', { class: 'muted' }, s.extra),
            h('td', null, h('a', { class: 'btn small', href: `#/scan/${s.id}`, 'data-testid': `open-${s.case_id}` }, 'Open')),
          )
        }),
      ),
    )
    this.body.append(table)
    const pages = Math.ceil(total / pageSize)
    if (pages > 1) {
      this.body.append(
        h(
          'div',
          { class: 'pager' },
          h('button', { class: 'btn small', disabled: this.page <= 1, onclick: () => this.goPage(this.page - 1) }, '‹ Prev'),
          h('span', null, `page ${this.page} of ${pages}`),
          h('button', { class: 'btn small', disabled: this.page >= pages, onclick: () => this.goPage(this.page + 1) }, 'Next ›'),
        ),
      )
    }
    this.applyStatusFilter()
  }

  private goPage(page: number): void {
    this.page = page
    this.load().catch((err) => toast((err as Error).message, 'error'))
  }
}
