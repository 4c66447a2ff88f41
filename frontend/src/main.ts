/**
 * Entry point: hash routes (#/login, #/ worklist, #/scan/{id}; lead pages #/dashboard, #/audit, #/evaluations, #/exports in
 * leadRoutes.ts) and the `window.maskloop` test hook.
 */

import './style.css'
import { api } from './api/client'
import { clear, h } from './dom'
import type { Vec3 } from './core/geometry'
import type { ToolId } from './core/shortcuts'
import type { Layout } from './viewer'
import { Workspace } from './workspace/workspace'
import { Worklist, reauthDialog, renderLogin } from './worklist'
import { leadPage, mountWorklistNav } from './leadRoutes'
import { exportsHook } from './exports'

const root = document.getElementById('app')!
let workspace: Workspace | null = null
/** Bumped on every navigation: a slow page that finishes after the user moved on must not mark itself ready. */
let routeSeq = 0

api.reauthenticate = reauthDialog

async function route(): Promise<void> {
  const hash = location.hash || '#/'
  const seq = ++routeSeq
  if (workspace) {
    workspace.dispose()
    workspace = null
  }
  root.dataset.ready = ''
  if (!api.session) {
    if (hash !== '#/login') sessionStorage.setItem('maskloop.next', hash)
    renderLogin(root, () => {
      const next = sessionStorage.getItem('maskloop.next') || '#/'
      sessionStorage.removeItem('maskloop.next')
      if (location.hash === next) route().catch(showError)
      else location.hash = next
    })
    return
  }
  const scan = /^#\/scan\/(\d+)/.exec(hash)
  if (scan) {
    root.className = 'app workspace-app'
    workspace = new Workspace(root, Number(scan[1]))
    await workspace.open()
    return
  }
  if (hash === '#/login') {
    location.hash = '#/'
    return
  }
  const lead = leadPage(root, hash)
  if (lead) {
    root.className = 'app lead-app'
    await lead.open()
    if (seq === routeSeq) root.dataset.ready = 'true'
    return
  }
  root.className = 'app'
  const list = new Worklist(root)
  await list.open()
  if (seq === routeSeq) await mountWorklistNav(root)
  if (seq === routeSeq) root.dataset.ready = 'true'
}

function showError(err: unknown): void {
  console.error(err)
  clear(root)
  root.append(
    h(
      'div',
      { class: 'fatal', 'data-testid': 'fatal' },
      h('h1', null, 'Something went wrong'),
      h('p', null, (err as Error).message ?? String(err)),
      h('p', null, h('a', { href: '#/' }, 'Back to the worklist')),
    ),
  )
}

/** Take up the session from the refresh cookie (the access token lives in page memory only), then route. */
async function start(): Promise<void> {
  await api.restore()
  window.addEventListener('hashchange', () => route().catch(showError))
  await route()
}

start().catch(showError)

function ws(): Workspace {
  if (!workspace) throw new Error('no scan is open')
  return workspace
}

/** Hooks for the browser tests and the benchmark (no effect on normal use). */
const hook = {
  get ready(): boolean {
    return root.dataset.ready === 'true'
  },
  state: () => ws().testState(),
  voxelAt: (x: number, y: number) => ws().viewer.voxelAt(x, y),
  clientPointOf: (ras: Vec3, plane = 0) => ws().viewer.clientPointOf(ras, plane),
  crosshair: () => ws().viewer.crosshairVox(),
  moveTo: (ras: Vec3) => ws().viewer.moveTo(ras),
  toNative: (ras: Vec3) => ws().viewer.geometry!.rasToNativeIJK(ras[0], ras[1], ras[2]),
  toRAS: (ijk: Vec3) => ws().viewer.geometry!.nativeToRasXYZ(ijk[0], ijk[1], ijk[2]),
  /** Stored-order (i, j, k) of every voxel set in the active structure's working copy but not in its base. */
  changedVoxels(name?: string): { added: Vec3[]; removed: Vec3[] } {
    const w = ws()
    const structure = name ?? w.store.get().active!
    const a = w.session.edited.get(structure)
    const b = w.session.base.get(structure)
    const out = { added: [] as Vec3[], removed: [] as Vec3[] }
    if (!a || !b) return out
    const g = w.viewer.geometry!
    for (let i = 0; i < a.length; i++) {
      if (a[i] === b[i]) continue
      const [x, y, z] = g.rasCoords(i)
      ;(a[i] ? out.added : out.removed).push(g.rasToNativeIJK(x, y, z))
    }
    return out
  },
  setActive: (name: string) => ws().editor.setActive(name),
  setTool: (tool: ToolId) => ws().toolbar.setTool(tool),
  setBrush: (mm: number) => ws().toolbar.setBrush(mm),
  setLayout: (layout: Layout) => ws().viewbar.setLayout(layout),
  paint: (name: string, ras: Vec3[], value = 1) => ws().editor.paintVoxels(name, ras, value),
  paintNative(name: string, ijk: Vec3[], value = 1) {
    const g = ws().viewer.geometry!
    return ws().editor.paintVoxels(
      name,
      ijk.map((v) => g.nativeToRasXYZ(v[0], v[1], v[2])),
      value,
    )
  },
  save: async (message = '') => (await ws().saving.save(message))?.id ?? null,
  compare: (a: number, b: number) => ws().versions.compare(a, b),
  corruptToken: () => api.corruptToken(),
  /** Review workflow: report the active editing time now, renew the lease now. */
  flushActivity: () => ws().review.flushActivity(),
  heartbeat: () => ws().review.beat(),
  /** The exports page: its jobs and the last archive a Download button fetched (name, size). */
  exports() {
    const p = exportsHook.page
    return p ? { jobs: p.jobs.map((j) => ({ id: j.id, status: j.status })), lastDownload: p.lastDownload } : null
  },
  /** Structure display: the colours shown, the outlined structures, the overlay's outline voxels; the overwrite policy. */
  display() {
    const w = ws()
    const img = w.viewer.labels?.img
    let outlineVoxels = 0
    if (img) for (let i = 0; i < img.length; i++) if (img[i] >= 128) outlineVoxels++
    return {
      colors: Object.fromEntries(w.structures.map((s) => [s.name, s.color])),
      outlined: w.editor.display.outlined(),
      outlineVoxels,
      rim: w.viewer.nv.drawRimOpacity,
      overwrite: w.store.get().overwrite,
    }
  },
  /** Review comments drawn on the image: place them now and list where (client px, per 2D plane). */
  commentMarkers() {
    const m = ws().review.markers
    m.update()
    return m.placed
  },
}

declare global {
  interface Window {
    maskloop: typeof hook
  }
}
window.maskloop = hook
