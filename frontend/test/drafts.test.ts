import { describe, expect, it } from 'vitest'
import { draftActive, isRestorable, pickDraft } from '../src/core/drafts'
import type { DraftPayload } from '../src/types'

function draft(updated: string, structures: string[] = ['liver'], active: string | null = null): DraftPayload {
  const box = { origin: [0, 0, 0] as [number, number, number], size: [1, 1, 1] as [number, number, number], encoding: 'bits+gzip' as const, data: '' }
  return {
    format: 'maskloop-draft/1',
    base_version_id: 3,
    branch: false,
    active,
    updated_at: updated,
    structures: Object.fromEntries(structures.map((s) => [s, box])),
  }
}

describe('drafts', () => {
  it('restores only this format with at least one structure', () => {
    expect(isRestorable(draft('2024-01-01T00:00:00Z'))).toBe(true)
    expect(isRestorable(draft('2024-01-01T00:00:00Z', []))).toBe(false)
    expect(isRestorable({ ...draft('2024-01-01T00:00:00Z'), format: 'other' })).toBe(false)
    expect(isRestorable(null)).toBe(false)
    expect(isRestorable({})).toBe(false)
  })

  it('offers the newest draft and says where it is kept', () => {
    const older = draft('2024-01-01T10:00:00Z')
    const newer = draft('2024-01-01T11:00:00Z')
    expect(pickDraft(null, null)).toBeNull()
    expect(pickDraft(newer, null)).toEqual({ draft: newer, source: 'this browser' })
    expect(pickDraft(null, newer)).toEqual({ draft: newer, source: 'server' })
    expect(pickDraft(older, newer)).toEqual({ draft: newer, source: 'server and this browser' })
    expect(pickDraft(newer, older)).toEqual({ draft: newer, source: 'this browser' })
    expect(pickDraft({ junk: true }, older)).toEqual({ draft: older, source: 'server' })
  })

  it('activates the structure the draft was editing when the schema has it', () => {
    expect(draftActive(draft('2024-01-01T00:00:00Z', ['spleen', 'liver'], 'liver'), ['liver', 'spleen'])).toBe('liver')
    expect(draftActive(draft('2024-01-01T00:00:00Z', ['spleen'], 'gone'), ['liver', 'spleen'])).toBe('spleen')
    expect(draftActive(draft('2024-01-01T00:00:00Z', ['spleen'], null), ['liver', 'spleen'])).toBe('spleen')
  })
})
