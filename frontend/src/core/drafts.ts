/** Which kept draft to offer when a scan opens: pure rules over the browser's copy and the server's. */

import type { DraftPayload } from '../types'

export type DraftSource = 'this browser' | 'server' | 'server and this browser'

/** A draft this client can restore: its format, and at least one structure. */
export function isRestorable(d: unknown): d is DraftPayload {
  const p = d as DraftPayload | null | undefined
  return !!p && p.format === 'maskloop-draft/1' && Object.keys(p.structures ?? {}).length > 0
}

/** The newest restorable draft of the two and where it is kept, or null. */
export function pickDraft(local: unknown, server: unknown): { draft: DraftPayload; source: DraftSource } | null {
  const candidates = [local, server].filter(isRestorable)
  if (!candidates.length) return null
  const draft = candidates.sort((a, b) => Date.parse(b.updated_at) - Date.parse(a.updated_at))[0]
  const source: DraftSource = draft === server ? (isRestorable(local) ? 'server and this browser' : 'server') : 'this browser'
  return { draft, source }
}

/** The structure to make active after restoring a draft: the one it was editing, else its first. */
export function draftActive(draft: DraftPayload, structureNames: string[]): string {
  return draft.active && structureNames.includes(draft.active) ? draft.active : Object.keys(draft.structures)[0]
}
