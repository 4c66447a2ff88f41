/**
 * The autosaved draft of the unsaved edit: in this browser ~250 ms after a change (IndexedDB, and localStorage
 * synchronously when the tab closes) and on the server ~1.2 s after (retried while offline); offered back when
 * the scan opens again.
 */

import { OfflineError, api } from '../api/client'
import { draftActive, pickDraft } from '../core/drafts'
import { pretty } from '../core/structures'
import { dialog, fmtTime, h, toast } from '../dom'
import { localDrafts, serverDrafts } from '../draftStorage'
import type { DraftPayload } from '../types'
import type { DraftPort, WorkspaceContext } from './context'

export class DraftSync implements DraftPort {
  private readonly ctx: WorkspaceContext
  private localTimer: number | null = null
  private serverTimer: number | null = null
  private serverDraftExists = false

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
  }

  dispose(): void {
    if (this.localTimer !== null) window.clearTimeout(this.localTimer)
    if (this.serverTimer !== null) window.clearTimeout(this.serverTimer)
  }

  schedule(): void {
    this.dispose()
    this.localTimer = window.setTimeout(() => void this.saveLocal(), 250)
    this.serverTimer = window.setTimeout(() => void this.saveServer(), 1200)
  }

  private payload(): DraftPayload | null {
    return this.ctx.session?.draftPayload(this.ctx.store.get().active) ?? null
  }

  async saveLocal(): Promise<void> {
    const user = api.user
    if (!user || !this.ctx.session) return
    const payload = this.payload()
    if (payload) await localDrafts.save(user.id, this.ctx.scanId, payload)
    else await localDrafts.remove(user.id, this.ctx.scanId)
  }

  flushLocal(): void {
    const user = api.user
    const payload = this.payload()
    if (user && payload) localDrafts.saveNow(user.id, this.ctx.scanId, payload)
  }

  private async saveServer(): Promise<void> {
    if (!this.ctx.session || this.ctx.saving.saving) return
    const payload = this.payload()
    try {
      if (payload) {
        await serverDrafts.save(this.ctx.scanId, payload)
        this.serverDraftExists = true
        this.setInfo(`Draft saved ${new Date().toLocaleTimeString()} · server + this browser`)
      } else if (this.serverDraftExists) {
        await serverDrafts.remove(this.ctx.scanId)
        this.serverDraftExists = false
        this.setInfo('')
      } else this.setInfo('')
    } catch (err) {
      if (err instanceof OfflineError) {
        this.setInfo('Draft kept in this browser (server unreachable)')
        this.serverTimer = window.setTimeout(() => void this.saveServer(), 10_000)
      } else {
        this.setInfo(`Draft kept in this browser (server: ${(err as Error).message})`)
      }
    }
  }

  private setInfo(text: string): void {
    this.ctx.store.set({ draftInfo: text })
  }

  async clear(resetInfo: boolean): Promise<void> {
    const user = api.user
    if (user) await localDrafts.remove(user.id, this.ctx.scanId)
    await serverDrafts.remove(this.ctx.scanId).catch(() => undefined)
    this.serverDraftExists = false
    if (resetInfo) this.setInfo('')
  }

  /** Offer the newest draft (this browser or the server); returns the structure it was editing. */
  async offer(): Promise<string | null> {
    const { ctx } = this
    const user = api.user
    if (!user) return null
    const local = await localDrafts.load(user.id, ctx.scanId)
    let server: unknown
    try {
      server = (await serverDrafts.load(ctx.scanId))?.payload ?? null
    } catch {
      server = null
    }
    if (server) this.serverDraftExists = true
    const picked = pickDraft(local, server)
    if (!picked) return null
    const { draft, source } = picked
    const head = ctx.store.get().headVersionId
    const onHead = draft.base_version_id === head
    const names = Object.keys(draft.structures).map(pretty)
    const choice = await dialog(
      'Restore your unsaved edit?',
      h(
        'div',
        null,
        h('p', null, `An unsaved edit of ${names.join(', ')} from ${fmtTime(draft.updated_at)} was kept (${source}).`),
        h(
          'p',
          { class: onHead ? 'muted' : 'warn' },
          onHead
            ? `It is based on version #${draft.base_version_id}, the current head.`
            : `It is based on version #${draft.base_version_id}; the scan has moved on to #${head}. ` +
                'It opens on its own base; saving will offer to rebase it onto the head or save it as a branch.',
        ),
      ),
      [
        { label: 'Discard it', value: 'discard', kind: 'danger', testid: 'draft-discard' },
        { label: 'Restore', value: 'restore', kind: 'primary', testid: 'draft-restore' },
      ],
      { testid: 'draft-dialog', dismissable: false },
    )
    if (choice !== 'restore') {
      await localDrafts.remove(user.id, ctx.scanId)
      await serverDrafts.remove(ctx.scanId).catch(() => undefined)
      this.serverDraftExists = false
      return null
    }
    if (draft.base_version_id !== ctx.session.baseVersionId) {
      ctx.newSession(draft.base_version_id)
      ctx.store.set({ baseVersion: ctx.store.get().versions.find((v) => v.id === draft.base_version_id) ?? null })
    }
    await ctx.session.restoreDraft(draft)
    toast(`Restored your unsaved edit of ${names.join(', ')}`, 'ok')
    return draftActive(
      draft,
      ctx.structures.map((s) => s.name),
    )
  }
}
