/**
 * The pre-save check's part of the save dialog: every part with voxels outside its parent (among the pairs with
 * an edited side), each with two one-click fixes ("add to parent", "remove from part", one undoable edit each);
 * checked again after a fix. It warns; saving stays possible.
 */

import type { Disagreement } from '../core/hierarchy'
import { pretty } from '../core/structures'
import { clear, h } from '../dom'
import type { WorkspaceContext } from './context'

export class HierarchyCheck {
  readonly element: HTMLElement
  private readonly ctx: WorkspaceContext
  private issues: Disagreement[]
  private working = false
  /** Called after a fix with the disagreements left (the dialog's save button and summary follow). */
  onChange: ((issues: Disagreement[]) => void) | null = null

  constructor(ctx: WorkspaceContext, issues: Disagreement[]) {
    this.ctx = ctx
    this.issues = issues
    this.element = h('div', { class: 'hierarchy-check', 'data-testid': 'hierarchy-check' })
    this.render()
  }

  get count(): number {
    return this.issues.length
  }

  private render(): void {
    const root = this.element
    clear(root)
    root.dataset.issues = String(this.issues.length)
    root.classList.toggle('warn', this.issues.length > 0)
    if (!this.issues.length) {
      root.append(h('p', { class: 'ok', 'data-testid': 'hierarchy-ok' }, '✓ Every part lies inside its parent.'))
      return
    }
    const [a, b, c] = this.ctx.scan.spacing
    const ml = (a * b * c) / 1000
    root.append(
      h(
        'p',
        null,
        h('b', null, '⚠ Hierarchy: '),
        `${this.issues.length === 1 ? 'a part lies' : `${this.issues.length} parts lie`} partly outside ${this.issues.length === 1 ? 'its parent' : 'their parents'}. Fix here, or save anyway.`,
      ),
      h(
        'ul',
        null,
        this.issues.map((d) =>
          h(
            'li',
            { 'data-testid': `hierarchy-issue-${d.part}`, 'data-voxels': String(d.voxels) },
            h('span', null, h('b', null, pretty(d.part)), `: ${d.voxels.toLocaleString()} voxels (${(d.voxels * ml).toFixed(2)} mL) outside `, h('b', null, pretty(d.parent))),
            this.button(d, 'parent', `Add to ${pretty(d.parent)}`),
            this.button(d, 'part', `Remove from ${pretty(d.part)}`),
          ),
        ),
      ),
    )
  }

  private button(d: Disagreement, how: 'parent' | 'part', label: string): HTMLElement {
    const target = how === 'parent' ? d.parent : d.part
    const locked = this.ctx.editor.isLocked(target)
    return h(
      'button',
      {
        class: 'btn plain small',
        disabled: locked || this.working,
        title: locked ? `${pretty(target)} is locked` : how === 'parent' ? `the parent gets these voxels` : `the part loses these voxels`,
        'data-testid': `hierarchy-fix-${how}-${d.part}`,
        onclick: () => this.fix(d, how).catch((err: unknown) => this.ctx.fail(err)),
      },
      label,
    )
  }

  private async fix(d: Disagreement, how: 'parent' | 'part'): Promise<void> {
    if (this.working) return
    this.working = true
    this.render()
    try {
      await this.ctx.editor.fixIssue(d, how)
      this.issues = await this.ctx.editor.hierarchyIssues()
    } finally {
      this.working = false
      this.render()
    }
    this.onChange?.(this.issues)
  }
}
