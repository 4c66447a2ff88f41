/**
 * The tool bar: tools, brush size, the HU-range constraint, undo/redo/interpolate, save and discard. It follows
 * the store (the chosen tool, the brush size, the HU switch) and is disabled with the reason shown while the
 * workspace is read-only (the navigate tool stays usable).
 */

import { sameLock } from '../core/access'
import { TOOLS, type ToolId } from '../core/shortcuts'
import type { HuRange } from '../core/tools'
import { clear, h, toast } from '../dom'
import type { WorkspaceContext } from './context'

export class Toolbar {
  private readonly ctx: WorkspaceContext

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    const { store, el } = ctx
    store.watch(
      (s) => s.tool,
      (tool) => {
        this.render()
        el.stage.dataset.tool = tool
        el.cursor.hidden = true
      },
    )
    store.watch(
      (s) => s.brushMm,
      (mm) => {
        const label = el.toolbar.querySelector('[data-testid=brush-size-label]')
        if (label) label.textContent = `${mm} mm`
        const input = el.toolbar.querySelector<HTMLInputElement>('[data-testid=brush-size]')
        if (input && Number(input.value) !== mm) input.value = String(mm)
      },
    )
    store.watch(
      (s) => s.huOn,
      (on) => {
        const box = el.toolbar.querySelector<HTMLInputElement>('[data-testid=hu-toggle]')
        if (box) box.checked = on
      },
    )
    store.watch(
      (s) => s.access,
      () => this.lock(),
      { equals: sameLock },
    )
  }

  setTool(tool: ToolId): void {
    const lock = this.ctx.lockReason()
    if (lock && tool !== 'navigate') {
      toast(lock.text, 'warn', 2500)
      return
    }
    this.ctx.store.set({ tool })
  }

  setBrush(mm: number): void {
    this.ctx.store.set({ brushMm: Math.max(1, Math.min(60, Math.round(mm))) })
  }

  setHu(on: boolean): void {
    this.ctx.store.set({ huOn: on })
    const { hu } = this.ctx.store.get()
    toast(on ? `HU range ${hu.lo}…${hu.hi} constrains brush, outline and fill` : 'HU range off', 'info', 1800)
  }

  /** The HU range painting is limited to, or null when the constraint is off. */
  huRange(): HuRange | null {
    const { huOn, hu } = this.ctx.store.get()
    return huOn ? { lo: Math.min(hu.lo, hu.hi), hi: Math.max(hu.lo, hu.hi) } : null
  }

  /** Disable every editing control while the workspace is read-only (the navigate tool stays usable). */
  private lock(): void {
    const lock = this.ctx.lockReason()
    const tb = this.ctx.el.toolbar
    tb.classList.toggle('locked', !!lock)
    for (const el of tb.querySelectorAll<HTMLButtonElement | HTMLInputElement>('button, input')) el.disabled = !!lock && el.dataset.testid !== 'tool-navigate'
    tb.querySelector('[data-testid=lock-reason]')?.remove()
    if (lock) tb.prepend(h('div', { class: 'lock-reason', 'data-testid': 'lock-reason' }, lock.text))
  }

  render(): void {
    const { ctx } = this
    const { tool, brushMm, huOn, hu } = ctx.store.get()
    const tb = ctx.el.toolbar
    const setHu = (patch: Partial<HuRange>): void => ctx.store.set({ hu: { ...ctx.store.get().hu, ...patch } })
    clear(tb)
    tb.append(
      h('div', { class: 'tb-title' }, 'Tools'),
      ...TOOLS.map((t) =>
        h(
          'button',
          {
            class: `tool ${tool === t.id ? 'on' : ''}`,
            title: `${t.label} (${t.key}) — ${t.help}`,
            'data-testid': `tool-${t.id}`,
            'aria-pressed': String(tool === t.id),
            onclick: () => this.setTool(t.id),
          },
          h('span', { class: 'icon' }, t.icon),
          h('span', { class: 'tl' }, t.label),
          h('kbd', null, t.key),
        ),
      ),
      h('div', { class: 'tb-title' }, 'Brush'),
      h(
        'label',
        { class: 'field' },
        h('span', null, 'Size ', h('b', { 'data-testid': 'brush-size-label' }, `${brushMm} mm`)),
        h('input', {
          type: 'range',
          min: '1',
          max: '60',
          step: '1',
          value: String(brushMm),
          'data-testid': 'brush-size',
          oninput: (e: Event) => this.setBrush(Number((e.target as HTMLInputElement).value)),
        }),
      ),
      h(
        'label',
        { class: 'check' },
        h('input', {
          type: 'checkbox',
          checked: huOn,
          'data-testid': 'hu-toggle',
          onchange: (e: Event) => this.setHu((e.target as HTMLInputElement).checked),
        }),
        ' HU range ',
        h('kbd', null, 'H'),
      ),
      h(
        'div',
        { class: 'hu-range' },
        h('input', {
          type: 'number',
          value: String(hu.lo),
          'data-testid': 'hu-lo',
          title: 'lowest HU painted',
          onchange: (e: Event) => setHu({ lo: Number((e.target as HTMLInputElement).value) }),
        }),
        h('span', null, '…'),
        h('input', {
          type: 'number',
          value: String(hu.hi),
          'data-testid': 'hu-hi',
          title: 'highest HU painted',
          onchange: (e: Event) => setHu({ hi: Number((e.target as HTMLInputElement).value) }),
        }),
      ),
      h('div', { class: 'tb-title' }, 'Edit'),
      h('button', { class: 'btn', 'data-testid': 'undo', title: 'Undo (Ctrl+Z)', onclick: () => ctx.editor.undo() }, '↶ Undo'),
      h('button', { class: 'btn', 'data-testid': 'redo', title: 'Redo (Ctrl+Y)', onclick: () => ctx.editor.redo() }, '↷ Redo'),
      h(
        'button',
        { class: 'btn', 'data-testid': 'interpolate', title: 'Interpolate between painted slices (I)', onclick: () => ctx.editor.interpolate() },
        '⇕ Interpolate',
      ),
      h('div', { class: 'spacer' }),
      h('button', { class: 'btn primary save', 'data-testid': 'save', title: 'Save a new version (Ctrl+S)', onclick: () => ctx.saving.save() }, 'Save version'),
      h('button', { class: 'btn danger', 'data-testid': 'discard', title: 'Throw away unsaved changes', onclick: () => ctx.saving.discard() }, 'Discard'),
    )
    this.lock()
  }
}
