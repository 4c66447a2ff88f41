import { describe, expect, it } from 'vitest'
import {
  type CaseCounts,
  type ImportCase,
  type ImportLaunch,
  type ImportRun,
  canResume,
  caseDetails,
  fewNames,
  fmtEta,
  folderName,
  launchBody,
  launchWords,
  pageLine,
  progressOf,
  reportQuery,
  runIdOf,
  runStateLine,
  totalsLine,
} from '../src/imports/report'

const counts = (over: Partial<CaseCounts> = {}): CaseCounts => ({ pending: 0, running: 0, imported: 0, skipped: 0, failed: 0, total: 0, ...over })

const run = (over: Partial<ImportRun> = {}): ImportRun => ({
  id: 4,
  project_id: 1,
  root: '/data/imports/PanTS/',
  status: 'finished',
  counts: counts({ imported: 2, failed: 1, total: 3 }),
  launches: 1,
  created_by: 2,
  created_at: '2026-12-06T13:00:00Z',
  launched_at: '2026-12-06T13:00:00Z',
  finished_at: '2026-12-06T13:01:00Z',
  eta_s: null,
  ...over,
})

const aCase = (over: Partial<ImportCase> = {}): ImportCase => ({
  case_id: 'PanTS_00000002',
  split: 'train',
  status: 'failed',
  file: 'ImageTr/PanTS_00000002/ct.nii.gz',
  reason: 'ct.nii.gz: gzip stream is truncated',
  scan_id: null,
  job_id: 9,
  attempts: 1,
  missing_structures: [],
  unknown_files: [],
  timings: {},
  worker: null,
  started_at: null,
  finished_at: null,
  ...over,
})

describe('import launch', () => {
  it('sends the trimmed folder and refuses an empty or oversized one', () => {
    expect(launchBody('  PanTS ').body).toEqual({ path: 'PanTS' })
    expect(launchBody('   ').error).toMatch(/dataset folder/)
    expect(launchBody('a'.repeat(1001)).error).toMatch(/1000/)
    expect(launchBody('a'.repeat(1000)).body?.path).toHaveLength(1000)
  })

  it('words a start and a resume', () => {
    const out = (over: Partial<ImportLaunch>): ImportLaunch => ({ ...run(), resumed: false, queued: 3, in_progress: 0, found: 3, ...over })
    expect(launchWords(out({}))).toBe('Started import #4: 3 case folders found, 3 queued.')
    expect(launchWords(out({ resumed: true, queued: 1, in_progress: 2, found: 1 }))).toBe('Resumed import #4: 1 case folder found, 1 queued, 2 still importing.')
    expect(launchWords(out({ resumed: true, queued: 0 }))).toMatch(/nothing left to retry/)
  })
})

describe('import progress', () => {
  it('counts finished cases of every kind as done', () => {
    expect(progressOf(counts({ imported: 2, skipped: 1, failed: 1, pending: 3, running: 1, total: 8 }))).toEqual({ done: 4, total: 8, fraction: 0.5, percent: 50 })
    // 100 % only when every case is finished.
    expect(progressOf(counts({ imported: 199, running: 1, total: 200 })).percent).toBe(99)
    expect(progressOf(counts()).fraction).toBe(1)
  })

  it('lists the totals, imported and failed always', () => {
    expect(totalsLine(counts({ imported: 2, failed: 1, total: 3 }))).toBe('2 imported · 1 failed of 3')
    expect(totalsLine(counts({ imported: 1, skipped: 2, pending: 3, running: 1, total: 7 }))).toBe('1 imported · 2 skipped · 0 failed · 3 pending · 1 running of 7')
  })

  it('says how a run stands', () => {
    expect(runStateLine(run())).toBe('finished · 1 failed')
    expect(runStateLine(run({ counts: counts({ imported: 3, total: 3 }) }))).toBe('finished')
    expect(runStateLine(run({ status: 'running', counts: counts({ imported: 1, pending: 2, total: 4, failed: 1 }), eta_s: 150 }))).toBe('running · 50 % · about 2.5 min left')
    expect(runStateLine(run({ status: 'running', counts: counts({ pending: 3, total: 3 }) }))).toBe('running · 0 %')
    expect(fmtEta(44.6)).toBe('45 s')
    expect(fmtEta(7200)).toBe('2.0 h')
    expect(fmtEta(3 * 86400)).toBe('3.0 d')
    expect(fmtEta(null)).toBe('—')
  })

  it('offers a re-run only for a finished run with failures', () => {
    expect(canResume(run())).toBe(true)
    expect(canResume(run({ status: 'running' }))).toBe(false)
    expect(canResume(run({ counts: counts({ imported: 3, total: 3 }) }))).toBe(false)
  })
})

describe('import report', () => {
  it('filters by status and pages within the server’s limits', () => {
    expect(reportQuery('failed', 0, 200).toString()).toBe('status=failed&offset=0&limit=200')
    expect(reportQuery('all', 400, 200).toString()).toBe('offset=400&limit=200')
    expect(reportQuery('all', -3, 99999).toString()).toBe('offset=0&limit=5000')
  })

  it('names the page and the case details', () => {
    expect(pageLine({ offset: 0, total: 0, cases: [] })).toBe('No case')
    expect(pageLine({ offset: 200, total: 1234, cases: Array(200).fill(aCase()) })).toBe('Cases 201–400 of 1,234')
    expect(caseDetails(aCase())).toBe('ct.nii.gz: gzip stream is truncated')
    expect(caseDetails(aCase({ status: 'imported', reason: null, missing_structures: ['spleen'], unknown_files: ['x.nii.gz'], attempts: 2 }))).toBe(
      'missing: spleen · unknown files: x.nii.gz · 2 attempts',
    )
  })

  it('shortens long name lists', () => {
    expect(fewNames(['a', 'b', 'c', 'd', 'e'])).toBe('a, b, c, d, e')
    expect(fewNames(['a', 'b', 'c', 'd', 'e', 'f', 'g'])).toBe('a, b, c, d +3 more')
    expect(caseDetails(aCase({ status: 'imported', reason: null, missing_structures: ['a', 'b', 'c', 'd', 'e', 'f'] }))).toBe('missing: a, b, c, d +2 more')
  })

  it('reads the folder name and the run in the URL', () => {
    expect(folderName(run().root)).toBe('PanTS')
    expect(folderName('C:\\data\\ds')).toBe('ds')
    expect(runIdOf(new URLSearchParams('project=1&run=12'))).toBe(12)
    expect(runIdOf(new URLSearchParams('run=abc'))).toBeNull()
    expect(runIdOf(new URLSearchParams(''))).toBeNull()
  })
})
