/**
 * The structures tab: the schema's structures by group, the active one, voxel counts and mL (live for loaded
 * structures, else the base version's), unsaved-change dots, visibility, opacity, outline and lock per structure,
 * visibility per group; the display switches (outline all, parents as outline) and the overwrite policy; the
 * Tools panel of the active structure (toolsPanel.ts) below the list.
 */

import type { Structure } from '../api/types'
import { OVERWRITE_POLICIES, type OverwritePolicy } from '../core/hierarchy'
import { groupStructures, pretty } from '../core/structures'
import { clear, h } from '../dom'
import type { WorkspaceContext } from './context'
import type { StructureView } from './state'
import { ToolsPanel } from './toolsPanel'

const POLICY_TEXT: Record<OverwritePolicy, string> = { off: 'off', all: 'all others', visible: 'visible others' }

export class StructuresPanel {
  private readonly ctx: WorkspaceContext
  /** The active structure's tools (margin, islands, smoothing, logical, interpolation, statistics, sphere). */
  readonly tools: ToolsPanel

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    this.tools = new ToolsPanel(ctx)
    // Redrawn once a structure is active and loaded, when the base version changes (a save, a rebase) and when
    // the set of structures with unsaved changes does (a first stroke, a discard).
    ctx.store.watch(
      (s) => s.activeLoaded,
      (name) => {
        if (name) this.render()
      },
    )
    ctx.store.watch(
      (s) => s.baseVersion,
      () => this.render(),
    )
    ctx.store.watch(
      (s) => s.dirty.join(),
      () => this.render(),
    )
    ctx.store.watch(
      (s) => `${s.outlineAll}|${s.parentOutline}|${s.overwrite}`,
      () => this.render(),
    )
    // Every edit, undo or restore: the active count and the unsaved dots.
    ctx.store.watch(
      (s) => s.sessionRev,
      () => this.refresh(),
    )
  }

  private get voxelMl(): number {
    const [a, b, c] = this.ctx.scan.spacing
    return (a * b * c) / 1000
  }

  private versionRow(name: string): { status: string; voxel_count: number } | undefined {
    return this.ctx.store.get().baseVersion?.structures.find((s) => s.name === name)
  }

  private count(name: string): number | null {
    const live = this.ctx.session?.count(name)
    if (live !== null && live !== undefined) return live
    const row = this.versionRow(name)
    return row && row.status === 'present' ? row.voxel_count : row ? 0 : null
  }

  render(): void {
    const { ctx } = this
    if (!ctx.schema) return
    const body = ctx.el.tabStructures
    clear(body)
    const active = ctx.store.get().active
    body.append(h('div', { class: 'active-info', 'data-testid': 'active-structure' }, active ? ['Editing ', h('b', null, pretty(active))] : 'No structure selected'))
    body.append(this.switches())
    const views = ctx.store.get().views
    for (const [g, members] of groupStructures(ctx.structures)) {
      const allVisible = members.every((s) => views.get(s.name)!.visible)
      body.append(
        h(
          'div',
          { class: 'group-head' },
          h('span', null, g),
          h('input', {
            type: 'checkbox',
            checked: allVisible,
            title: `show / hide every ${g} structure`,
            'data-testid': `group-visible-${g}`,
            onchange: (e: Event) => {
              const on = (e.target as HTMLInputElement).checked
              this.setViews(members.map((s) => s.name), { visible: on })
              this.render()
            },
          }),
        ),
      )
      for (const s of members) body.append(this.row(s))
    }
    body.append(this.tools.element)
  }

  /** Outline all, parents as outline, and the overwrite policy (stored per user in this browser). */
  private switches(): HTMLElement {
    const { ctx } = this
    const { outlineAll, parentOutline, overwrite } = ctx.store.get()
    const check = (label: string, title: string, testid: string, on: boolean, set: (on: boolean) => void): HTMLElement =>
      h(
        'label',
        { class: 'switch', title },
        h('input', { type: 'checkbox', checked: on, 'data-testid': testid, onchange: (e: Event) => set((e.target as HTMLInputElement).checked) }),
        ` ${label}`,
      )
    return h(
      'div',
      { class: 'structure-switches' },
      check('outline all', 'draw every structure as an outline', 'outline-all', outlineAll, (on) => ctx.store.set({ outlineAll: on })),
      check('parents as outline', 'draw a parent (pancreas) as an outline around its parts', 'parent-outline', parentOutline, (on) => ctx.store.set({ parentOutline: on })),
      h(
        'label',
        { class: 'switch', title: 'whether painting a structure erases the other structures there (like Slicer’s “overwrite other segments”); locked structures never change' },
        'overwrite ',
        h(
          'select',
          {
            'data-testid': 'overwrite-policy',
            onchange: (e: Event) => ctx.editor.setOverwrite((e.target as HTMLSelectElement).value as OverwritePolicy),
          },
          OVERWRITE_POLICIES.map((p) => h('option', { value: p, selected: p === overwrite }, POLICY_TEXT[p])),
        ),
      ),
    )
  }

  private setViews(names: string[], patch: Partial<StructureView>): void {
    const views = new Map(this.ctx.store.get().views)
    for (const name of names) views.set(name, { ...views.get(name)!, ...patch })
    this.ctx.store.set({ views })
  }

  private row(s: Structure): HTMLElement {
    const { ctx } = this
    const active = ctx.store.get().active
    const view = ctx.store.get().views.get(s.name)!
    const count = this.count(s.name)
    const dirty = ctx.session?.isDirty(s.name)
    const missing = this.versionRow(s.name)?.status === 'missing' && !dirty
    const activate = (): void => {
      ctx.editor.setActive(s.name).catch((err: unknown) => ctx.fail(err))
    }
    return h(
      'div',
      {
        class: `srow ${active === s.name ? 'active' : ''} ${missing ? 'missing' : ''} ${view.locked ? 'locked' : ''}`,
        'data-testid': `structure-row-${s.name}`,
        title: s.inside ? `${s.name} (inside ${s.inside})` : s.name,
        onclick: (e: Event) => {
          if ((e.target as HTMLElement).closest('input, button')) return
          activate()
        },
      },
      h('input', { type: 'radio', name: 'active-structure', checked: active === s.name, 'data-testid': `activate-${s.name}`, onchange: activate }),
      h('button', {
        class: `swatch ${view.outline ? 'hollow' : ''}`,
        style: view.outline ? { borderColor: s.color } : { background: s.color, borderColor: s.color },
        title: view.outline ? 'drawn as an outline (click: filled)' : 'filled (click: draw as an outline)',
        'aria-pressed': String(!!view.outline),
        'data-testid': `outline-${s.name}`,
        onclick: () => {
          this.setViews([s.name], { outline: !view.outline })
          this.render()
        },
      }),
      h('span', { class: 'sname' }, s.inside ? '↳ ' : '', pretty(s.name), dirty ? h('span', { class: 'dot', title: 'unsaved change' }, ' ●') : null),
      h(
        'span',
        { class: 'scount', 'data-testid': `structure-count-${s.name}`, 'data-voxels': count === null ? '' : String(count) },
        missing ? 'missing' : count === null ? '—' : `${count.toLocaleString()} vx`,
      ),
      h('span', { class: 'sml' }, count === null || missing ? '' : `${(count * this.voxelMl).toFixed(1)} mL`),
      h('input', {
        type: 'checkbox',
        class: 'eye',
        checked: view.visible,
        title: 'visible',
        'data-testid': `visible-${s.name}`,
        onchange: (e: Event) => this.setViews([s.name], { visible: (e.target as HTMLInputElement).checked }),
      }),
      h('input', {
        type: 'range',
        class: 'opacity',
        min: '0',
        max: '1',
        step: '0.05',
        value: String(view.opacity),
        title: 'opacity',
        'data-testid': `opacity-${s.name}`,
        oninput: (e: Event) => this.setViews([s.name], { opacity: Number((e.target as HTMLInputElement).value) }),
      }),
      h(
        'button',
        {
          class: `tog lock ${view.locked ? 'on' : ''}`,
          title: view.locked ? 'locked: no tool changes it (click to unlock)' : 'lock: no tool will change it',
          'aria-pressed': String(!!view.locked),
          'data-testid': `lock-${s.name}`,
          onclick: () => {
            this.setViews([s.name], { locked: !view.locked })
            this.render()
          },
        },
        h('span', { class: 'padlock' }),
      ),
    )
  }

  /** The active structure's count and every row's unsaved dot, without redrawing the list. */
  refresh(): void {
    const { ctx } = this
    const active = ctx.store.get().active
    const body = ctx.el.tabStructures
    if (active) {
      const cell = body.querySelector<HTMLElement>(`[data-testid=structure-count-${active}]`)
      const count = this.count(active)
      if (cell && count !== null) {
        cell.textContent = `${count.toLocaleString()} vx`
        cell.dataset.voxels = String(count)
        const ml = cell.nextElementSibling as HTMLElement | null
        if (ml) ml.textContent = `${(count * this.voxelMl).toFixed(1)} mL`
      }
    }
    const dirtyNames = ctx.store.get().dirty
    for (const row of body.querySelectorAll<HTMLElement>('.srow')) {
      const name = row.dataset.testid!.replace('structure-row-', '')
      const dot = row.querySelector('.dot')
      if (dirtyNames.includes(name) && !dot) row.querySelector('.sname')!.append(h('span', { class: 'dot', title: 'unsaved change' }, ' ●'))
      if (!dirtyNames.includes(name) && dot) dot.remove()
    }
  }
}
