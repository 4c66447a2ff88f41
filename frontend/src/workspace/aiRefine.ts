/**
 * The "AI refine" tool of the editor. Picking it warms a worker (`POST /api/scans/{id}/interactive/warm`); a click
 * inside the active structure (Shift+click: outside) on any view asks the click-guided model
 * (`POST /api/scans/{id}/interactive`) with every click of the structure's session so far and its current mask;
 * the answer replaces the structure's mask inside the answered box as ONE undoable edit of the edit session, shown
 * at once in the drawing layer and saved only with the next save, as a patch like a stroke. A small status on the
 * stage says what happens: waiting, the time taken, or the server's refusal.
 */

import { ApiError, api } from '../api/client'
import type { components } from '../api/schema'
import { ClickHistory, answerSummary, applyClickAnswer, buildClickRequest, clickAt, limitClicks, previousOf, refineLabel } from '../core/aiRefine'
import type { Op } from '../core/editSession'
import type { Vec3 } from '../core/geometry'
import { pretty } from '../core/structures'
import { clear, h } from '../dom'
import type { WorkspaceContext } from './context'

type ClickIn = components['schemas']['ClickIn']
type ClickOut = components['schemas']['ClickOut']
type WarmOut = components['schemas']['WarmOut']

export type RefinePhase = 'idle' | 'warming' | 'ready' | 'waiting' | 'done' | 'error'

export class AiRefine {
  /** The status on the stage (shown while the tool is chosen). */
  readonly element: HTMLElement
  private readonly ctx: WorkspaceContext
  private readonly history = new ClickHistory<Op>()
  private model: WarmOut | null = null
  private warming: Promise<WarmOut | null> | null = null
  private inFlight = false
  private phase: RefinePhase = 'idle'
  private text = ''

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    this.element = h('div', { class: 'ai-refine-status', 'data-testid': 'ai-refine-status', hidden: true, dataset: { state: 'idle' } })
    ctx.el.stage.append(this.element)
    ctx.store.watch(
      (s) => s.tool,
      (tool) => {
        if (tool === 'airefine') this.warm().catch((err: unknown) => ctx.fail(err))
        this.render()
      },
    )
    ctx.store.watch(
      (s) => s.activeLoaded,
      () => this.render(),
    )
    // Undo, redo, a save, a rebase or a discard: the click sessions follow the undo stack.
    ctx.store.watch(
      (s) => s.sessionRev,
      () => {
        if (ctx.session) this.history.prune(ctx.session.undoStack, ctx.session.redoStack)
        this.render()
      },
    )
  }

  private get shown(): boolean {
    return this.ctx.store.get().tool === 'airefine'
  }

  /** Have a worker load the model and this scan's volume now; remembers the model's structures and click limit. */
  warm(): Promise<WarmOut | null> {
    if (this.model) {
      // Already known: still nudge a worker (it may have restarted), without waiting for it.
      api.post<WarmOut>(`/api/scans/${this.ctx.scanId}/interactive/warm`, { json: {} }).catch(() => undefined)
      return Promise.resolve(this.model)
    }
    if (!this.warming) {
      this.setPhase('warming', 'Loading the AI model…')
      this.warming = api
        .post<WarmOut>(`/api/scans/${this.ctx.scanId}/interactive/warm`, { json: {} })
        .then((model) => {
          this.model = model
          if (this.phase === 'warming') this.setPhase('ready', this.readyText())
          return model
        })
        .catch((err: unknown) => {
          this.setPhase('error', errorText(err))
          return null
        })
        .finally(() => {
          this.warming = null
        })
    }
    return this.warming
  }

  private readyText(): string {
    return 'Click inside the structure, Shift+click outside'
  }

  /** A click on the image (RAS voxel): ask the model and apply its answer as one undoable edit. */
  async click(ras: Vec3, positive: boolean): Promise<void> {
    const { ctx } = this
    if (this.inFlight) {
      this.setPhase('waiting', 'Still waiting for the last answer: click again once it is shown')
      return
    }
    const name = ctx.store.get().active
    if (!name || ctx.store.get().activeLoaded !== name || ctx.editor.refuseEdit()) return
    this.inFlight = true
    const started = performance.now()
    const session = ctx.session
    let begun = false
    try {
      // The server is the one judge of the structure (a model that does not know it: a 422 shown as is).
      const model = this.model ?? (await this.warm())
      const g = ctx.viewer.geometry!
      const click = clickAt(g, g.rasToNativeIJK(ras[0], ras[1], ras[2]), positive)
      this.setPhase('waiting', `Waiting for the model (${positive ? 'inside' : 'outside'} click)…`)
      if (!(await ctx.review.ensureLease())) {
        this.setPhase('error', ctx.lockReason()?.text ?? 'Someone else is editing this scan')
        return
      }
      const bm = await session.ensure(name)
      const clicks = limitClicks([...this.history.clicksFor(name, session.undoStack), click], model?.max_clicks ?? Number.MAX_SAFE_INTEGER)
      const body: ClickIn = buildClickRequest(name, clicks, previousOf(g, bm), { branch: session.branch, model: model?.model })
      const rev = ctx.store.get().sessionRev
      const answer = await api.post<ClickOut>(`/api/scans/${ctx.scanId}/interactive`, { json: body })
      const ms = performance.now() - started
      const now = ctx.store.get()
      if (ctx.session !== session || now.active !== name || now.mode.kind !== 'edit' || now.sessionRev !== rev || session.busy) {
        this.setPhase('error', `${pretty(name)} changed while the model ran: click again`)
        return
      }
      const lock = ctx.lockReason()
      if (lock) {
        this.setPhase('error', lock.text)
        return
      }
      const edited = session.begin(name)
      begun = true
      applyClickAnswer(g, edited, answer)
      const op = session.commit(refineLabel(clicks))
      begun = false
      // An answer that changes nothing is no undo step: its clicks go with the newest edit still applied.
      const anchor = op ?? session.undoStack.at(-1)
      if (anchor) this.history.record(name, anchor, clicks)
      ctx.viewer.refreshDrawing()
      this.element.dataset.ms = ms.toFixed(1)
      this.element.dataset.voxels = String(answer.voxels)
      this.setPhase('done', `${op ? 'Preview' : 'No change'}: ${answerSummary(answer, ms)}`)
    } catch (err) {
      if (begun) session.cancel()
      this.setPhase('error', errorText(err))
    } finally {
      this.inFlight = false
      this.render()
    }
  }

  /** Start the active structure's click session afresh (the answers so far stay, as ordinary edits). */
  restart(): void {
    const name = this.ctx.store.get().active
    if (!name) return
    this.history.restart(name)
    this.setPhase('ready', this.readyText())
  }

  private setPhase(phase: RefinePhase, text: string): void {
    this.phase = phase
    this.text = text
    this.render()
  }

  private render(): void {
    const { ctx } = this
    const root = this.element
    root.hidden = !this.shown
    root.dataset.state = this.phase
    if (!this.shown) return
    const name = ctx.store.get().active
    const clicks = name && ctx.session ? this.history.clicksFor(name, ctx.session.undoStack) : []
    const positive = clicks.filter((c) => c.positive).length
    root.dataset.clicks = String(clicks.length)
    clear(root)
    root.append(
      h(
        'div',
        { class: 'ai-refine-head' },
        h('b', null, 'AI refine'),
        this.model ? h('span', { class: 'muted' }, ` · ${this.model.model}`) : null,
        name ? h('span', null, ` · ${pretty(name)}`) : null,
        h('span', { class: 'muted', 'data-testid': 'ai-refine-clicks' }, ` · ${positive}+ ${clicks.length - positive}−`),
        h('button', { class: 'btn plain', 'data-testid': 'ai-refine-restart', title: 'Start new clicks on this structure (the edits stay)', onclick: () => this.restart() }, 'New clicks'),
      ),
      h('div', { class: 'ai-refine-text', 'data-testid': 'ai-refine-text' }, this.text || this.readyText()),
    )
  }
}

/** The server's refusal (its `detail`), or the error's message. */
function errorText(err: unknown): string {
  if (err instanceof ApiError) {
    const detail = err.body.detail
    return typeof detail === 'string' && detail ? detail : err.message
  }
  return err instanceof Error ? err.message : String(err)
}
