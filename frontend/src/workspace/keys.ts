/** Keyboard shortcuts of the workspace (the table in core/shortcuts.ts) and the help panel listing them. */

import { ACTIONS, TOOLS, type ToolId } from '../core/shortcuts'
import { dialog, h } from '../dom'
import type { Layout } from '../viewer'
import type { WorkspaceContext } from './context'
import { planeOf } from './state'

/** What the shortcuts act on besides the shared context (the tool bar, the view bar, the versions tab). */
export interface KeyTargets {
  setTool(tool: ToolId): void
  setBrush(mm: number): void
  setHu(on: boolean): void
  setLayout(layout: Layout): void
  setLabelsOn(on: boolean): void
  setRadiological(on: boolean): void
  cyclePreset(dir: number): void
  cycleStructure(dir: number): void
  backToEdit(): Promise<void>
  /** Zoom steps about the pointer (or the crosshair), fit, the crosshair lines, space held for a pan drag. */
  zoomBy(steps: number): void
  fit(): void
  toggleCrosshair(): void
  holdSpace(): void
}

/** Navigation keys (listed in the help next to the shared table). */
export const NAV_KEYS: [string, string][] = [
  ['Ctrl+wheel / pinch', 'Zoom about the pointer (all 2D views together)'],
  ['+ / −', 'Zoom in / out about the pointer'],
  ['0', 'Fit: whole slice, no pan'],
  ['Middle-drag / Space+drag', 'Pan'],
  ['X', 'Show / hide the crosshair'],
]

const LAYOUT_KEYS: Layout[] = ['axial', 'coronal', 'sagittal', 'multiplanar', '3d']

export function showHelp(): void {
  const body = h(
    'div',
    { class: 'help', 'data-testid': 'help-panel' },
    h('table', null, [
      ...TOOLS.map((t) => h('tr', null, h('td', null, h('kbd', null, t.key)), h('td', null, h('b', null, t.label), ' — ', t.help))),
      ...ACTIONS.map((a) => h('tr', null, h('td', null, h('kbd', null, a.keys)), h('td', null, a.label))),
      ...NAV_KEYS.map(([keys, label]) => h('tr', null, h('td', null, h('kbd', null, keys)), h('td', null, label))),
    ]),
    h(
      'p',
      { class: 'muted' },
      'Only the active structure is edited; the others are shown read-only, so overlapping structures stay intact. ',
      'Edits are autosaved as a draft (server and this browser) until you save a version.',
    ),
  )
  dialog('Keyboard shortcuts', body, [{ label: 'Close', value: 'close', kind: 'primary' }], { testid: 'help-dialog' }).catch(() => undefined)
}

/** The document's keydown handler while a scan is open. */
export function keyHandler(ctx: WorkspaceContext, to: KeyTargets): (e: KeyboardEvent) => void {
  const fail = (err: unknown): void => ctx.fail(err)
  return (e: KeyboardEvent): void => {
    const t = e.target as HTMLElement | null
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT') && e.key !== 'Escape') return
    if (document.querySelector('.backdrop')) return
    if (!ctx.viewer?.ct || !ctx.session) return
    const { brushMm, huOn, labelsOn } = ctx.store.get()
    const ctrl = e.ctrlKey || e.metaKey
    const k = e.key
    const lower = k.toLowerCase()
    const tool = TOOLS.find((x) => x.key.toLowerCase() === lower)
    let handled = true
    if (ctrl && lower === 'z' && !e.shiftKey) ctx.editor.undo()
    else if (ctrl && (lower === 'y' || (lower === 'z' && e.shiftKey))) ctx.editor.redo()
    else if (ctrl && lower === 's') ctx.saving.save().catch(fail)
    else if (ctrl || e.altKey) {
      if (e.altKey && (k === 'ArrowUp' || k === 'ArrowDown')) to.cycleStructure(k === 'ArrowUp' ? -1 : 1)
      else handled = false
    } else if (k === ' ') to.holdSpace()
    else if (k === '+' || k === '=') to.zoomBy(1)
    else if (k === '-' || k === '_') to.zoomBy(-1)
    else if (k === '0') to.fit()
    else if (lower === 'x' && !tool) to.toggleCrosshair()
    else if (tool) to.setTool(tool.id)
    else if (lower === 'h') to.setHu(!huOn)
    else if (lower === 'i') ctx.editor.interpolate()
    else if (k === '[') to.setBrush(brushMm - (brushMm > 10 ? 2 : 1))
    else if (k === ']') to.setBrush(brushMm + (brushMm >= 10 ? 2 : 1))
    else if (['1', '2', '3', '4', '5'].includes(k)) to.setLayout(LAYOUT_KEYS[Number(k) - 1])
    else if (lower === 'w') to.cyclePreset(e.shiftKey ? -1 : 1)
    else if (lower === 'r') to.setRadiological(!ctx.viewer.radiological)
    else if (lower === 'l') to.setLabelsOn(!labelsOn)
    else if (lower === 'a') ctx.attention.toggle().catch(fail)
    else if (lower === 'n') ctx.attention.next().catch(fail)
    else if ((k === 'ArrowUp' || k === 'PageUp') && t !== ctx.el.canvas) ctx.viewer.step(planeOf(ctx.viewer.layout), 1)
    else if ((k === 'ArrowDown' || k === 'PageDown') && t !== ctx.el.canvas) ctx.viewer.step(planeOf(ctx.viewer.layout), -1)
    else if (k === '?') showHelp()
    else if (k === 'Escape') to.backToEdit().catch(fail)
    else handled = false
    if (handled) e.preventDefault()
  }
}
