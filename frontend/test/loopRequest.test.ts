import { describe, expect, it } from 'vitest'
import { NO_FILTERS, assignmentBody, attentionBody, filterIn, preannotateBody, savedFilters, scanQuery, targetWords } from '../src/loop/request'

describe('loop requests', () => {
  it('takes the worklist’s saved filters, ignoring the rest', () => {
    const f = savedFilters(JSON.stringify({ site: ' A ', tumor: 'true', status: 'x', mine: true, q: 'P0' }))
    expect(f).toEqual({ site: 'A', phase: '', tumor: 'true', q: 'P0', split: '' })
    expect(savedFilters('{broken')).toEqual(NO_FILTERS)
    expect(savedFilters(null)).toEqual(NO_FILTERS)
  })

  it('maps filters to the scan list query and the jobs filter', () => {
    const f = { ...NO_FILTERS, site: 'A', tumor: 'false' }
    expect(scanQuery(f).toString()).toBe('site=A&tumor=false&page=1&page_size=500')
    expect(filterIn(f)).toEqual({ site: 'A', tumor: false })
    expect(filterIn(NO_FILTERS)).toBeNull()
  })

  it('builds pre-annotation and attention bodies for one scan or all matching', () => {
    expect(preannotateBody({ kind: 'one', scanId: 5 }, { name: 'classical-hu' })).toEqual({ scan_ids: [5], all: false, model: 'classical-hu' })
    expect(preannotateBody({ kind: 'matching', filters: { ...NO_FILTERS, phase: 'venous' } }, { versionId: 3 })).toEqual({
      filter: { phase: 'venous' },
      all: false,
      model_version_id: 3,
    })
    expect(attentionBody({ kind: 'matching', filters: NO_FILTERS })).toEqual({ all: true })
  })

  it('builds the assignment and refuses an empty one', () => {
    expect(assignmentBody([3, 3, 4], 7)).toEqual({ scan_ids: [3, 4], user_id: 7, role: 'annotator' })
    expect(assignmentBody([], 7)).toMatch(/nothing to assign/)
    expect(targetWords({ ...NO_FILTERS, site: 'A' }, 2)).toBe('2 scans matching site A')
    expect(targetWords(NO_FILTERS, 5)).toBe('all 5 scans')
  })
})
