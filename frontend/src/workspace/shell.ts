/**
 * The workspace's frame: header (case, status pill, draft note), tool bar, view bar, the stage over NiiVue's
 * canvas (brush ring, comment markers, mode banner, loading progress), readout, and the side tabs. The pill and
 * the draft note follow the store.
 */

import { api } from '../api/client'
import type { Scan } from '../api/types'
import { clear, h } from '../dom'
import type { ShellElements, TabId } from './context'
import type { SaveState, WorkspaceStore } from './state'

const SAVE_LABELS: Record<SaveState, string> = {
  loading: 'Loading…',
  saved: 'All changes saved',
  dirty: 'Unsaved changes',
  saving: 'Saving…',
  conflict: 'Conflict: action needed',
  offline: 'Offline: edits kept locally',
  readonly: 'Read-only',
  locked: 'Locked',
  error: 'Error',
}

const TABS: [TabId, string][] = [
  ['structures', 'Structures'],
  ['versions', 'Versions'],
  ['attention', 'Attention'],
  ['review', 'Review'],
]

/** Build the frame into `root` (emptied first); the review's task bar, panel and marker layer go in their places. */
export function buildShell(root: HTMLElement, review: { bar: HTMLElement; panel: HTMLElement; markers: HTMLElement; banner?: HTMLElement }): ShellElements {
  clear(root)
  const canvas = h('canvas', { 'data-testid': 'viewer-canvas', tabindex: '0' })
  const cursor = h('div', { class: 'brush-cursor', hidden: true })
  const banner = h('div', { class: 'banner', hidden: true, 'data-testid': 'mode-banner' })
  const progressLabel = h('div', { class: 'loading-label' }, 'Loading…')
  const progressBar = h('div', { class: 'progress-bar' })
  const loading = h('div', { class: 'loading', 'data-testid': 'loading' }, progressLabel, h('div', { class: 'progress' }, progressBar))
  const stage = h('div', { class: 'stage', 'data-testid': 'viewer-stage' }, canvas, cursor, review.markers, banner, loading)
  const el: ShellElements = {
    root,
    header: h('header', { class: 'topbar' }),
    pill: h('span', { class: 'pill', 'data-testid': 'save-status' }, '…'),
    draft: h('span', { class: 'draft-info', 'data-testid': 'draft-status' }),
    toolbar: h('aside', { class: 'toolbar', 'data-testid': 'toolbar' }),
    viewbar: h('div', { class: 'viewbar' }),
    stage,
    canvas,
    cursor,
    banner,
    loading,
    progressLabel,
    progressBar,
    readout: h('div', { class: 'readout', 'data-testid': 'readout' }, '—'),
    side: h('aside', { class: 'side' }),
    tabStructures: h('div', { class: 'tab-body', 'data-testid': 'panel-structures' }),
    tabVersions: h('div', { class: 'tab-body', 'data-testid': 'panel-versions', hidden: true }),
    tabAttention: h('div', { class: 'tab-body', 'data-testid': 'panel-attention', hidden: true }),
  }
  root.append(
    el.header,
    review.bar,
    ...(review.banner ? [review.banner] : []),
    h('main', { class: 'workspace' }, el.toolbar, h('section', { class: 'viewer-pane' }, el.viewbar, stage, h('div', { class: 'viewer-foot' }, el.readout)), el.side),
  )
  const bodies: Record<TabId, HTMLElement> = {
    structures: el.tabStructures,
    versions: el.tabVersions,
    attention: el.tabAttention,
    review: review.panel,
  }
  const bar = h(
    'div',
    { class: 'tabs' },
    TABS.map(([id, label]) =>
      h(
        'button',
        {
          class: id === 'structures' ? 'on' : '',
          'data-testid': `tab-${id}`,
          onclick: (e: Event) => {
            for (const b of bar.querySelectorAll('button')) b.classList.remove('on')
            ;(e.currentTarget as HTMLElement).classList.add('on')
            for (const [k, body] of Object.entries(bodies)) body.hidden = k !== id
          },
        },
        label,
      ),
    ),
  )
  el.side.append(bar, el.tabStructures, el.tabVersions, el.tabAttention, review.panel)
  return el
}

export function showTab(el: ShellElements, id: TabId): void {
  el.side.querySelector<HTMLElement>(`[data-testid=tab-${id}]`)!.click()
}

/** The header once the scan is known: case id and its metadata, the pill and draft note, help, the user. */
export function renderHeader(el: ShellElements, s: Scan, onHelp: () => void): void {
  const meta = [
    s.orientation,
    s.shape.join('×'),
    s.spacing.map((x) => x.toFixed(2)).join('×') + ' mm',
    s.phase,
    s.site,
    s.tumor === true ? 'tumour' : s.tumor === false ? 'no tumour' : null,
  ].filter(Boolean)
  clear(el.header)
  el.header.append(
    h('a', { class: 'brand', href: '#/' }, h('span', { class: 'logo' }, '◐'), 'maskloop'),
    h('a', { class: 'crumb', href: '#/', 'data-testid': 'back-to-worklist' }, '← Worklist'),
    h('span', { class: 'case', 'data-testid': 'case-id' }, s.case_id),
    h('span', { class: 'case-meta' }, meta.join(' · ')),
    h('span', { class: 'spacer' }),
    el.pill,
    el.draft,
    h('button', { class: 'btn plain', title: 'Keyboard shortcuts (?)', 'data-testid': 'help', onclick: onHelp }, '?'),
    h('span', { class: 'user' }, api.user?.display_name || api.user?.email || ''),
  )
}

/** The status pill, the tab title and the draft note follow the store; returns a redraw of the pill and title. */
export function watchStatus(el: ShellElements, store: WorkspaceStore, caseId: () => string | undefined): () => void {
  const showState = (): void => {
    const { saveState, saveText } = store.get()
    el.pill.textContent = saveText ?? SAVE_LABELS[saveState]
    el.pill.dataset.state = saveState
    document.title = `${saveState === 'dirty' || saveState === 'offline' ? '● ' : ''}${caseId() ?? 'scan'} — maskloop`
  }
  store.watch((s) => [s.saveState, s.saveText] as const, showState, { equals: (a, b) => a[0] === b[0] && a[1] === b[1], immediate: true })
  store.watch(
    (s) => s.draftInfo,
    (text) => {
      el.draft.textContent = text
      el.draft.dataset.saved = text.startsWith('Draft saved') ? 'server' : text ? 'local' : ''
    },
  )
  return showState
}
