/**
 * The loop page as data (no DOM): the worklist's filters (kept in sessionStorage by the worklist) turned into the
 * scan list's query and the jobs API's `filter`, and the bodies of pre-annotation, attention and assignment for one
 * scan or every scan matching the filters. Unit-tested under Node (test/loopRequest.test.ts).
 */

import type { components } from '../api/schema'

export type ScanFilterIn = components['schemas']['ScanFilterIn']
export type PreannotateRequest = components['schemas']['PreannotateRequest']
export type AttentionRequest = components['schemas']['AttentionRequest']
export type AssignmentIn = components['schemas']['AssignmentIn']

/** The worklist filters the loop page shares (site, phase, tumour 'true'/'false'/'' , case id search, split). */
export interface LoopFilters {
  site: string
  phase: string
  tumor: string
  q: string
  split: string
}

export const NO_FILTERS: LoopFilters = { site: '', phase: '', tumor: '', q: '', split: '' }

/** The filters the worklist saved (`sessionStorage['maskloop.filters']`), the unknown parts ignored. */
export function savedFilters(raw: string | null): LoopFilters {
  if (!raw) return { ...NO_FILTERS }
  try {
    const saved = JSON.parse(raw) as Record<string, unknown>
    const pick = (k: keyof LoopFilters): string => (typeof saved[k] === 'string' ? (saved[k] as string).trim() : '')
    return { site: pick('site'), phase: pick('phase'), tumor: pick('tumor'), q: pick('q'), split: pick('split') }
  } catch {
    return { ...NO_FILTERS }
  }
}

/** Whether any filter is set. */
export function hasFilters(f: LoopFilters): boolean {
  return Object.values(f).some((v) => v !== '')
}

/** The scan list's query for the filters (`GET /api/projects/{id}/scans?…`). */
export function scanQuery(f: LoopFilters, page = 1, pageSize = 500): URLSearchParams {
  const params = new URLSearchParams()
  for (const key of ['site', 'phase', 'tumor', 'q', 'split'] as const) if (f[key]) params.set(key, f[key])
  params.set('page', String(page))
  params.set('page_size', String(pageSize))
  return params
}

/** The jobs API's scan filter, or null when no filter is set. */
export function filterIn(f: LoopFilters): ScanFilterIn | null {
  if (!hasFilters(f)) return null
  const out: ScanFilterIn = {}
  if (f.site) out.site = f.site
  if (f.phase) out.phase = f.phase
  if (f.split) out.split = f.split
  if (f.q) out.q = f.q
  if (f.tumor === 'true' || f.tumor === 'false') out.tumor = f.tumor === 'true'
  return out
}

/** Which scans an action takes: one scan, or every scan matching the filters (every scan when none is set). */
export type Target = { kind: 'one'; scanId: number } | { kind: 'matching'; filters: LoopFilters }

/** The pre-annotation body for a target with a model (by name) or a model version (by id). */
export function preannotateBody(target: Target, model: { name?: string; versionId?: number }): PreannotateRequest {
  const body: PreannotateRequest = selection(target)
  if (model.versionId !== undefined) body.model_version_id = model.versionId
  else if (model.name) body.model = model.name
  return body
}

/** The attention body for a target (the server takes the latest ≥ 2 model predictions of each scan). */
export function attentionBody(target: Target): AttentionRequest {
  return selection(target)
}

function selection(target: Target): { scan_ids?: number[]; filter?: ScanFilterIn; all: boolean } {
  if (target.kind === 'one') return { scan_ids: [target.scanId], all: false }
  const filter = filterIn(target.filters)
  return filter ? { filter, all: false } : { all: true }
}

/** The assignment body: the scans to an annotator (null unassigns); an error when there is nothing to assign. */
export function assignmentBody(scanIds: number[], userId: number | null, role: 'annotator' | 'reviewer' = 'annotator'): AssignmentIn | string {
  const ids = [...new Set(scanIds)].filter((n) => Number.isInteger(n) && n > 0)
  if (!ids.length) return 'No scan matches: nothing to assign.'
  return { scan_ids: ids, user_id: userId, role }
}

/** "3 scans matching site = A · tumour" / "all 12 scans": the words of a target. */
export function targetWords(f: LoopFilters, count: number | null): string {
  const parts = [f.site && `site ${f.site}`, f.phase && `phase ${f.phase}`, f.tumor && (f.tumor === 'true' ? 'with tumour' : 'without tumour'), f.split && `split ${f.split}`, f.q && `case id “${f.q}”`].filter(Boolean)
  const n = count === null ? '' : `${count} `
  return parts.length ? `${n}scan${count === 1 ? '' : 's'} matching ${parts.join(' · ')}` : `all ${n}scans`
}
