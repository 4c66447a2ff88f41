/**
 * The versions tab and the read-only modes: the scan's versions (lineage, author, message, changed structures),
 * viewing one version, comparing two (Dice per structure, a difference overlay per structure: green added, red
 * removed), and the banner over the image that says which mode is on.
 */

import { api } from '../api/client'
import type { DiffOut, Version } from '../api/types'
import { pretty } from '../core/structures'
import { components } from '../core/tools'
import { clear, fmtTime, h } from '../dom'
import { sameItems } from '../store'
import type { WorkspaceContext } from './context'
import { fetchMaskRAS } from './masks'
import type { WorkspaceState } from './state'

/** Where a version came from: its parent, or every reader version a fusion combined. */
function lineageText(v: Version): string {
  const inputs = v.input_version_ids ?? []
  if (inputs.length > 1) return ` · fusion of ${inputs.map((id) => `#${id}`).join(', ')}`
  return v.parent_id ? ` · from #${v.parent_id}` : ''
}

/** The banner over the image: the read-only mode, a blinded reading, or a branch being edited ('' for none). */
export function bannerText(s: Readonly<WorkspaceState>): string {
  const mode = s.mode
  if (mode.kind === 'view') return `Viewing version #${mode.versionId} (read-only)`
  if (mode.kind === 'compare')
    return `Comparing #${mode.a} → #${mode.b}${mode.structure ? ` · ${pretty(mode.structure)}: green added, red removed` : ''}`
  if (s.reading) return `Your blinded reading: saves go to your own branch; submit it when done`
  if (s.branch) return `Editing on branch #${s.sessionBase} (the head is #${s.headVersionId})`
  return ''
}

export class Versions {
  private readonly ctx: WorkspaceContext

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    ctx.store.watch(
      (s) => [s.versions, s.mode, s.diff, s.sessionBase, s.headVersionId] as const,
      () => this.render(),
      { equals: sameItems },
    )
    ctx.store.watch(bannerText, (text) => this.renderBanner(text), { immediate: true })
  }

  private renderBanner(text: string): void {
    const banner = this.ctx.el.banner
    clear(banner)
    banner.hidden = !text
    if (!text) return
    banner.append(h('span', null, text))
    if (this.ctx.store.get().mode.kind !== 'edit')
      banner.append(h('button', { class: 'btn small', 'data-testid': 'back-to-edit', onclick: () => this.backToEdit() }, 'Back to editing (Esc)'))
  }

  render(): void {
    const { ctx } = this
    const body = ctx.el.tabVersions
    clear(body)
    const { versions, mode, diff, headVersionId: headId } = ctx.store.get()
    const baseId = ctx.session?.baseVersionId
    const fail = (err: unknown): void => ctx.fail(err)
    const newest = [...versions].reverse()
    const byId = new Map(versions.map((v) => [v.id, v]))
    const aDefault =
      mode.kind === 'compare'
        ? mode.a
        : (newest.find((v) => v.kind === 'model')?.id ?? (headId !== null ? byId.get(headId)?.parent_id : null) ?? newest.at(-1)?.id)
    const bDefault = mode.kind === 'compare' ? mode.b : headId
    const option = (v: Version, selected: unknown): HTMLOptionElement => h('option', { value: String(v.id), selected: v.id === selected }, `#${v.id} ${v.kind}`)
    const selA = h('select', { 'data-testid': 'compare-a' }, newest.map((v) => option(v, aDefault)))
    const selB = h('select', { 'data-testid': 'compare-b' }, newest.map((v) => option(v, bDefault)))
    body.append(
      h(
        'div',
        { class: 'compare-bar' },
        h('span', null, 'Compare'),
        selA,
        h('span', null, '→'),
        selB,
        h('button', { class: 'btn', 'data-testid': 'compare-run', onclick: () => this.compare(Number(selA.value), Number(selB.value)).catch(fail) }, 'Compare'),
      ),
    )
    if (diff && mode.kind === 'compare') body.append(this.diffTable(diff))
    const list = h('div', { class: 'versions', 'data-testid': 'version-list' })
    for (const v of newest) {
      const changed = v.structures.filter((s) => s.changed)
      const who = v.author.display_name ?? (v.author.model_version_id ? `model v${v.author.model_version_id}` : 'unknown')
      const viewing = mode.kind === 'view' && mode.versionId === v.id
      list.append(
        h(
          'div',
          { class: `version ${v.id === baseId ? 'base' : ''} ${viewing ? 'viewing' : ''}`, 'data-testid': `version-${v.id}` },
          h(
            'div',
            { class: 'vhead' },
            h('b', null, `#${v.id}`),
            h('span', { class: `kind ${v.kind}` }, v.kind === 'model' ? 'AI' : v.kind),
            v.id === headId ? h('span', { class: 'tag head' }, 'HEAD') : null,
            v.is_branch ? h('span', { class: 'tag branch' }, 'branch') : null,
            v.id === baseId ? h('span', { class: 'tag base' }, 'editing') : null,
            h('span', { class: 'spacer' }),
            h('button', { class: 'btn small', 'data-testid': `view-version-${v.id}`, onclick: () => this.viewVersion(v.id).catch(fail) }, 'View'),
          ),
          h('div', { class: 'vmeta' }, `${who} · ${fmtTime(v.created_at)}${lineageText(v)}`),
          v.message ? h('div', { class: 'vmsg' }, v.message) : null,
          h(
            'div',
            { class: 'vchanges' },
            changed.length > 6 && v.parent_id === null
              ? `${changed.length} structures`
              : changed.map((s) => h('span', { class: 'chip' }, `${pretty(s.name)} ${s.voxel_count.toLocaleString()}`)),
          ),
        ),
      )
    }
    body.append(list)
  }

  private diffTable(diff: DiffOut): HTMLElement {
    const mode = this.ctx.store.get().mode
    const rows = diff.structures.filter((s) => s.added || s.removed || s.voxels_a || s.voxels_b)
    const selected = mode.kind === 'compare' ? mode.structure : null
    return h(
      'div',
      { class: 'diff', 'data-testid': 'diff-table' },
      h('div', { class: 'diff-title' }, `#${diff.version_a} → #${diff.version_b}: Dice per structure (click a row for its difference overlay)`),
      h(
        'table',
        null,
        h('tr', null, h('th', null, 'structure'), h('th', null, 'Dice'), h('th', null, '+ added'), h('th', null, '− removed')),
        rows.map((s) =>
          h(
            'tr',
            {
              class: `${s.added || s.removed ? 'changed' : ''} ${selected === s.structure ? 'sel' : ''}`,
              'data-testid': `diff-row-${s.structure}`,
              onclick: () => this.showDiff(s.structure).catch((err: unknown) => this.ctx.fail(err)),
            },
            h('td', null, pretty(s.structure)),
            h('td', { 'data-testid': `dice-${s.structure}`, 'data-dice': s.dice === null ? '' : String(s.dice) }, s.dice === null ? 'n/a' : s.dice.toFixed(4)),
            h('td', { class: 'add' }, s.added ? `+${s.added.toLocaleString()}` : '0'),
            h('td', { class: 'rem' }, s.removed ? `−${s.removed.toLocaleString()}` : '0'),
          ),
        ),
      ),
    )
  }

  /** Show a version read-only: its structures in the overlay, the drawing layer hidden, tools off. */
  async viewVersion(id: number): Promise<void> {
    const { ctx } = this
    ctx.store.set({ mode: { kind: 'view', versionId: id } })
    const labels = await ctx.editor.combinedMap(id, null)
    await ctx.viewer.setLabels(labels, ctx.editor.colors())
    await ctx.viewer.setExtra(null)
    ctx.viewer.setDrawOpacity(0)
    ctx.setSaveState('readonly', `Read-only: version #${id}`)
  }

  async compare(a: number, b: number): Promise<DiffOut> {
    const { ctx } = this
    const diff = await api.get<DiffOut>(`/api/versions/${b}/diff?against=${a}`)
    ctx.store.set({ diff, mode: { kind: 'compare', a, b, structure: null } })
    const labels = await ctx.editor.combinedMap(b, null)
    await ctx.viewer.setLabels(labels, ctx.editor.colors())
    ctx.viewer.setDrawOpacity(0)
    ctx.setSaveState('readonly', `Comparing #${a} → #${b}`)
    const first = diff.structures.filter((s) => s.added || s.removed).sort((x, y) => y.added + y.removed - (x.added + x.removed))[0]
    if (first) await this.showDiff(first.structure)
    else await ctx.viewer.setExtra(null)
    ctx.showTab('versions')
    return diff
  }

  /** The difference overlay of one structure: green added (in b, not a), red removed (in a, not b). */
  async showDiff(structure: string): Promise<void> {
    const { ctx } = this
    const mode = ctx.store.get().mode
    if (mode.kind !== 'compare') return
    const { a, b } = mode
    ctx.store.set({ mode: { ...mode, structure } })
    const g = ctx.viewer.geometry!
    const [ma, mb] = await Promise.all([fetchMaskRAS(g, a, structure), fetchMaskRAS(g, b, structure)])
    const ras = new Uint8Array(g.voxels)
    let first = -1
    for (let i = 0; i < ras.length; i++) {
      if (mb[i] && !ma[i]) ras[i] = 1
      else if (ma[i] && !mb[i]) ras[i] = 2
      else continue
      if (first < 0) first = i
    }
    const native = new Uint8Array(g.voxels)
    g.toNative(ras, native)
    await ctx.viewer.setExtra(native, [
      { value: 1, rgb: [64, 220, 110], alpha: 0.95, name: 'added' },
      { value: 2, rgb: [255, 70, 70], alpha: 0.95, name: 'removed' },
    ])
    if (first >= 0) {
      const comps = components(g.rasDims, ras)
      if (comps.length) ctx.viewer.moveTo(comps[0].center)
    }
  }

  /** Leave a version view or comparison and go back to the edit (which was kept in memory). */
  async backToEdit(): Promise<void> {
    const { ctx } = this
    if (ctx.store.get().mode.kind === 'edit') return
    ctx.store.set({ mode: { kind: 'edit' } })
    await ctx.viewer.setExtra(null)
    ctx.attention.hidden()
    const active = ctx.store.get().active
    if (active) await ctx.editor.setActive(active)
    ctx.onSessionChange()
    if (!ctx.session.hasChanges && !ctx.lockReason()) ctx.setSaveState('saved')
  }
}
