/**
 * Shared pieces of the lead pages (dashboard, audit log, evaluations, exports): the project in the URL, who may
 * see which page, the top navigation (Worklist · Dashboard · Audit · Evaluations · Exports) and the "not allowed"
 * panel.
 *
 * Lead-page URLs carry their state in the hash query: `#/audit?project=1&action=task.submit&page=2`.
 */

import { ApiError, api } from './api/client'
import { clear, h } from './dom'
import type { Project } from './api/types'

const PROJECT_KEY = 'maskloop.project'

export type LeadPage = 'worklist' | 'dashboard' | 'audit' | 'evaluations' | 'exports' | 'models' | 'loop' | 'pacs' | 'imports'

/** Project roles that may read the audit log (backend PERMISSIONS: `read_audit`). */
const AUDIT_ROLES = new Set(['lead', 'admin'])
/** Project roles that see the dashboard and evaluation reports (lead/admin; reviewers read the dashboard too). */
const DASHBOARD_ROLES = new Set(['lead', 'admin', 'reviewer'])
const EVALUATION_ROLES = new Set(['lead', 'admin', 'reviewer'])
/** Project roles that may start exports (backend PERMISSIONS: `run_jobs`). */
const EXPORT_ROLES = new Set(['lead', 'admin'])

export function canSee(page: LeadPage, project: Project | null): boolean {
  if (page === 'worklist') return true
  if (!project) return false
  if (api.user?.is_admin) return true
  if (page === 'audit') return AUDIT_ROLES.has(project.role)
  if (page === 'models' || page === 'loop' || page === 'pacs') return EXPORT_ROLES.has(project.role)
  // Dataset imports: backend permission `import` (leads and admins).
  if (page === 'imports') return EXPORT_ROLES.has(project.role)
  if (page === 'dashboard') return DASHBOARD_ROLES.has(project.role)
  if (page === 'exports') return EXPORT_ROLES.has(project.role)
  return EVALUATION_ROLES.has(project.role)
}

/** Whether the caller may start jobs in the project (exports, evaluations; backend `run_jobs`). */
export function canRunJobs(project: Project | null): boolean {
  return !!project && (!!api.user?.is_admin || EXPORT_ROLES.has(project.role))
}

/** The hash path and its query: `#/audit?x=1` → ['/audit', {x: '1'}]. */
export function hashParts(hash = location.hash): [string, URLSearchParams] {
  const raw = hash.replace(/^#/, '') || '/'
  const at = raw.indexOf('?')
  return at < 0 ? [raw, new URLSearchParams()] : [raw.slice(0, at), new URLSearchParams(raw.slice(at + 1))]
}

/** Write the page's state into the URL without adding a history entry or re-routing. */
export function replaceQuery(path: string, params: URLSearchParams): void {
  const query = params.toString()
  history.replaceState(null, '', `#${path}${query ? '?' + query : ''}`)
}

let projectsCache: { token: string; projects: Promise<Project[]> } | null = null

/** The caller's projects (cached per session token for the life of the page). */
export function myProjects(): Promise<Project[]> {
  const token = api.session?.token ?? ''
  if (!projectsCache || projectsCache.token !== token) {
    const projects = api.get<Project[]>('/api/projects')
    projectsCache = { token, projects }
    projects.catch(() => {
      projectsCache = null
    })
  }
  return projectsCache.projects
}

/** The project named in the URL (`?project=`), else the one last used in the worklist, else the first. */
export function pickProject(projects: Project[], params: URLSearchParams): Project | null {
  const wanted = Number(params.get('project') ?? localStorage.getItem(PROJECT_KEY))
  return projects.find((p) => p.id === wanted) ?? projects[0] ?? null
}

export function rememberProject(project: Project): void {
  localStorage.setItem(PROJECT_KEY, String(project.id))
}

const NAV: [LeadPage, string, string][] = [
  ['worklist', 'Worklist', '#/'],
  ['dashboard', 'Dashboard', '#/dashboard'],
  ['audit', 'Audit', '#/audit'],
  ['evaluations', 'Evaluations', '#/evaluations'],
  ['exports', 'Exports', '#/exports'],
  ['models', 'Models', '#/models'],
  ['loop', 'Loop', '#/loop'],
  ['pacs', 'PACS', '#/pacs'],
  ['imports', 'Imports', '#/imports'],
]

/** The navigation links the caller may use in this project (only the worklist for annotators). */
export function navLinks(active: LeadPage, project: Project | null): HTMLElement {
  const links = NAV.filter(([page]) => canSee(page, project))
  return h(
    'nav',
    { class: 'lead-nav', 'data-testid': 'lead-nav', hidden: links.length <= 1 },
    links.map(([page, label, href]) =>
      h(
        'a',
        {
          href: page === 'worklist' || !project ? href : `${href}?project=${project.id}`,
          class: page === active ? 'on' : '',
          'aria-current': page === active ? 'page' : undefined,
          'data-testid': `nav-${page}`,
        },
        label,
      ),
    ),
  )
}

/** Put the lead navigation into the worklist's top bar and keep it in step with its project picker. */
export async function mountWorklistNav(root: HTMLElement): Promise<void> {
  const topbar = root.querySelector<HTMLElement>('.topbar')
  if (!topbar) return
  const projects = await myProjects().catch(() => [] as Project[])
  const place = (): void => {
    const select = topbar.querySelector<HTMLSelectElement>('[data-testid=project-select]')
    const project = projects.find((p) => p.id === Number(select?.value)) ?? pickProject(projects, new URLSearchParams())
    topbar.querySelector('.lead-nav')?.remove()
    const nav = navLinks('worklist', project)
    const brand = topbar.querySelector('.brand')
    if (brand) brand.after(nav)
    else topbar.prepend(nav)
  }
  place()
  topbar.addEventListener('change', (e) => {
    if ((e.target as HTMLElement).matches('[data-testid=project-select]')) place()
  })
}

/** The top bar of a lead page: brand, navigation, project picker (navigates), user, sign out. */
/** The right end of every top bar: a spacer, who is signed in, and "Sign out". */
export function accountControls(): HTMLElement[] {
  return [
    h('span', { class: 'spacer' }),
    h('span', { class: 'user', 'data-testid': 'user-name' }, api.user?.display_name || api.user?.email || ''),
    h(
      'button',
      {
        class: 'btn plain',
        'data-testid': 'logout',
        onclick: () => {
          void api.logout()
          location.hash = '#/login'
        },
      },
      'Sign out',
    ),
  ]
}

export function leadHeader(active: LeadPage, projects: Project[], project: Project | null): HTMLElement {
  const path = { worklist: '/', dashboard: '/dashboard', audit: '/audit', evaluations: '/evaluations', exports: '/exports', models: '/models', loop: '/loop', pacs: '/pacs', imports: '/imports' }[active]
  return h(
    'header',
    { class: 'topbar' },
    h('a', { class: 'brand', href: '#/' }, h('span', { class: 'logo' }, '◐'), 'maskloop'),
    navLinks(active, project),
    projects.length
      ? h(
          'select',
          {
            class: 'project',
            'data-testid': 'project-select',
            onchange: (e: Event) => {
              const id = Number((e.target as HTMLSelectElement).value)
              const chosen = projects.find((p) => p.id === id)
              if (chosen) rememberProject(chosen)
              location.hash = `#${path}?project=${id}`
            },
          },
          projects.map((p) => h('option', { value: String(p.id), selected: p.id === project?.id }, `${p.name} (${p.role})`)),
        )
      : null,
    ...accountControls(),
  )
}

/** The clear refusal shown on a direct URL to a page the caller's role may not see. */
export function notAllowed(body: HTMLElement, what: string, project: Project | null, page: LeadPage = 'audit'): void {
  clear(body)
  const who = page === 'audit' || page === 'exports' || page === 'models' || page === 'loop' || page === 'pacs' || page === 'imports' ? 'project leads and admins' : 'project leads, reviewers and admins'
  body.append(
    h(
      'div',
      { class: 'not-allowed', 'data-testid': 'not-allowed', role: 'alert' },
      h('h1', null, 'Not allowed'),
      h(
        'p',
        null,
        project
          ? `The ${what} is for ${who}. Your role in “${project.name}” is ${project.role}.`
          : `The ${what} is for ${who}, and you are not a member of any project.`,
      ),
      h('p', null, h('a', { href: '#/', 'data-testid': 'back-to-worklist' }, 'Back to the worklist')),
    ),
  )
}

/** Common frame of a lead page: header + scrolling body; returns the body (or null when not allowed). */
export async function openLeadPage(
  root: HTMLElement,
  page: LeadPage,
  what: string,
): Promise<{ body: HTMLElement; project: Project; params: URLSearchParams } | null> {
  clear(root)
  const [, params] = hashParts()
  const body = h('main', { class: 'lead-body', 'data-testid': `${page}-page` }, h('div', { class: 'muted pad' }, 'Loading…'))
  root.append(leadHeader(page, [], null), body)
  const projects = await myProjects()
  const project = pickProject(projects, params)
  root.querySelector('.topbar')!.replaceWith(leadHeader(page, projects, project))
  if (!project || !canSee(page, project)) {
    notAllowed(body, what, project, page)
    return null
  }
  return { body, project, params }
}

export function fmtNum(value: number | null | undefined, digits = 0): string {
  if (value === null || value === undefined || Number.isNaN(value)) return '—'
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

export function fmtDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return '—'
  if (seconds < 90) return `${Math.round(seconds)} s`
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`
  return `${(seconds / 86400).toFixed(1)} d`
}

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
