/**
 * Saving versions: the save dialog (with the pre-save hierarchy check, hierarchyCheck.ts), a patch save of the
 * changed boxes on the session's base (retried with one idempotency key), the 409 conflict dialog (rebase onto
 * the head, or save as a branch), refusals that keep the edit as a draft, and discarding the unsaved edit.
 */

import { ApiError, OfflineError, SAVE_RETRY, api, isTransient, withRetry } from '../api/client'
import type { Version } from '../api/types'
import { type UnsettledSave, randomKey, sameSave } from '../core/patch'
import { pretty } from '../core/structures'
import { dialog, fmtTime, h, toast } from '../dom'
import type { ConflictBody } from '../types'
import type { SavingPort, WorkspaceContext } from './context'
import { HierarchyCheck } from './hierarchyCheck'

export class Saving implements SavingPort {
  private readonly ctx: WorkspaceContext
  saving = false
  /** The last save whose outcome is unknown; saving the same edit again reuses its idempotency key. */
  private unsettled: UnsettledSave | null = null
  /** The last successful save (the test hook and the benchmark read its size). */
  lastSave: { bodyBytes: number; versionId: number; boxes: number } | null = null

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
  }

  async save(message?: string): Promise<Version | null> {
    const { ctx } = this
    const session = ctx.session
    if (ctx.store.get().mode.kind !== 'edit' || !session) return null
    if (this.saving) return null
    if (!session.hasChanges) {
      toast('Nothing to save', 'info', 1500)
      return null
    }
    const lock = ctx.lockReason()
    if (lock) {
      toast(`${lock.text}: not saved (your edit is kept as a draft)`, 'warn', 6000)
      return null
    }
    if (message === undefined) {
      // The pre-save check: parts outside their parent, with one-click fixes; it warns, saving stays possible.
      const issues = await ctx.editor.hierarchyIssues().catch((err: unknown) => {
        console.warn('hierarchy check failed', err)
        return []
      })
      const check = new HierarchyCheck(ctx, issues)
      const input = h('textarea', { rows: '3', placeholder: 'What did you change? (optional)', 'data-testid': 'save-message' })
      const changed = (): string => `Changed: ${ctx.session.dirty.map(pretty).join(', ')}. Only the changed boxes are sent.`
      const summary = h('p', { class: 'muted' }, changed())
      const saveLabel = ctx.review.myReading ? 'Save my reading' : session.branch ? 'Save on branch' : session.baseVersionId === null ? 'Save first version' : 'Save'
      const anyway = (n: number): string => (n ? `${saveLabel} anyway` : saveLabel)
      const choice = await dialog(
        'Save a new version',
        h('div', null, summary, check.count ? check.element : null, input),
        [
          { label: 'Cancel', value: '', testid: 'save-cancel' },
          { label: anyway(check.count), value: 'save', kind: 'primary', testid: 'save-confirm' },
        ],
        {
          testid: 'save-dialog',
          onOpen: (root) => {
            check.onChange = (issues) => {
              summary.textContent = changed()
              const button = root.querySelector<HTMLElement>('[data-testid=save-confirm]')
              if (button) button.textContent = anyway(issues.length)
            }
          },
        },
      )
      if (choice !== 'save') return null
      message = input.value.trim()
    }
    await ctx.editor.settled()
    if (!(await ctx.review.ensureLease(true))) {
      toast(`${ctx.lockReason()?.text ?? 'Someone else holds the edit lease'}: not saved (your edit is kept as a draft)`, 'warn', 6000)
      return null
    }
    return this.commit(message, ctx.session.branch || !!ctx.review.myReading)
  }

  private async commit(message: string, branch: boolean): Promise<Version | null> {
    const { ctx } = this
    const session = ctx.session
    const boxes = session.patchBoxes()
    if (!boxes.length) {
      toast('Nothing to save', 'info')
      return null
    }
    const base = session.baseVersionId
    // One idempotency key per save: every retry sends it, so a save committed but unacknowledged (the
    // connection broke) is answered with its version by the server, never stored twice.
    const prior = this.unsettled
    const key = prior && sameSave(prior, base, branch, boxes) ? prior.key : randomKey()
    const plan = session.encodePatch(boxes, message, branch, key)
    this.saving = true
    ctx.setSaveState('saving', branch ? 'Saving on a branch…' : 'Saving…')
    try {
      const version = await withRetry(
        () => api.post<Version>(`/api/scans/${ctx.scanId}/versions/patch`, { body: plan.body, headers: { 'Content-Type': plan.contentType } }),
        SAVE_RETRY,
        (n) => ctx.setSaveState('saving', `No answer from the server: retrying the save (${n}/${SAVE_RETRY.attempts - 1})…`),
      )
      this.unsettled = null
      this.lastSave = { bodyBytes: plan.bodyBytes, versionId: version.id, boxes: plan.boxes.length }
      this.saving = false
      session.markSaved(version.id, branch)
      ctx.store.set({ baseVersion: version })
      ctx.editor.clearOverlayCache()
      await ctx.drafts.clear(true)
      if (!branch) ctx.store.set({ headVersionId: version.id })
      await ctx.loadVersions()
      ctx.setSaveState('saved', branch ? `Saved on branch #${version.id}` : `Saved version #${version.id}`)
      toast(`Saved version #${version.id}${branch ? ' (branch)' : ''}`, 'ok')
      await ctx.review.refreshTask().catch(() => undefined)
      return version
    } catch (err) {
      this.saving = false
      this.unsettled = isTransient(err) ? { key, baseVersionId: base, branch, boxes } : null
      // The error body keeps a conflict's fields under `details` ({detail, error, details}).
      const conflict = err instanceof ApiError ? (err.body.details as Record<string, unknown> | undefined) : undefined
      if (err instanceof ApiError && err.status === 409 && err.body.error === 'conflict' && conflict && 'head_version_id' in conflict) {
        return this.onConflict(message, conflict as unknown as ConflictBody)
      }
      if (err instanceof ApiError && (err.status === 409 || err.status === 403)) {
        // Approved meanwhile, someone else's lease, or no right to write: keep the edit, show why.
        await ctx.review.refreshTask().catch(() => undefined)
        await ctx.drafts.saveLocal()
        const lock = ctx.lockReason()
        ctx.setSaveState(lock?.state ?? 'error', lock ? lock.text : `Not saved: ${err.message}`)
        toast(`Not saved: ${err.message}. Your edit is kept as a draft.`, 'error', 8000)
        return null
      }
      if (err instanceof OfflineError) {
        ctx.setSaveState('offline', 'Offline: not saved, edit kept')
        await ctx.drafts.saveLocal()
        toast('The server cannot be reached. Your edit is kept in this browser; save again when back online.', 'error', 6000)
        return null
      }
      ctx.setSaveState('error', 'Save failed: edit kept')
      toast(`Save failed: ${(err as Error).message}. Your edit is kept.`, 'error', 8000)
      return null
    }
  }

  private async onConflict(message: string, body: ConflictBody): Promise<Version | null> {
    const { ctx } = this
    ctx.setSaveState('conflict')
    const who = body.head_author ?? 'a model or another user'
    const choice = await dialog(
      'This scan was saved by someone else meanwhile',
      h(
        'div',
        null,
        h(
          'p',
          { 'data-testid': 'conflict-who' },
          h('b', null, who),
          ` saved version #${body.head_version_id}`,
          body.head_message ? [' — “', h('i', null, body.head_message), '”'] : null,
          ` at ${fmtTime(body.head_created_at)}.`,
        ),
        h('p', null, `Your edit of ${ctx.session.dirty.map(pretty).join(', ')} (based on #${body.base_version_id}) is kept and not saved yet.`),
        h('ul', { class: 'muted' }, [
          h('li', null, h('b', null, 'Rebase'), `: re-apply your changed boxes onto #${body.head_version_id} and save on top of it.`),
          h('li', null, h('b', null, 'Branch'), `: save your edit as a branch of #${body.base_version_id}; the head stays #${body.head_version_id}.`),
        ]),
      ),
      [
        { label: 'Keep editing', value: 'cancel', testid: 'conflict-cancel' },
        { label: 'Save as branch', value: 'branch', testid: 'conflict-branch' },
        { label: `Rebase onto #${body.head_version_id} & save`, value: 'rebase', kind: 'primary', testid: 'conflict-rebase' },
      ],
      { testid: 'conflict-dialog', dismissable: false },
    )
    if (choice === 'rebase' && body.head_version_id !== null) {
      const head = body.head_version_id
      ctx.setSaveState('saving', 'Rebasing…')
      await ctx.session.rebase(head)
      await ctx.loadVersions()
      ctx.store.set({ baseVersion: ctx.store.get().versions.find((v) => v.id === head) ?? null, headVersionId: head })
      ctx.editor.clearOverlayCache()
      const active = ctx.store.get().active
      if (active) await ctx.editor.setActive(active)
      return this.commit(message, false)
    }
    if (choice === 'branch') return this.commit(message, true)
    ctx.setSaveState('dirty', 'Unsaved changes (conflict pending)')
    return null
  }

  async discard(): Promise<void> {
    const { ctx } = this
    if (!ctx.session?.hasChanges) return
    const choice = await dialog('Discard unsaved changes?', `Your changes to ${ctx.session.dirty.join(', ')} will be lost (drafts included).`, [
      { label: 'Keep them', value: '', testid: 'discard-cancel' },
      { label: 'Discard', value: 'discard', kind: 'danger', testid: 'discard-confirm' },
    ])
    if (choice !== 'discard') return
    ctx.session.discard()
    ctx.viewer.refreshDrawing()
    await ctx.editor.composeOverlay()
    await ctx.drafts.clear(false)
  }
}
