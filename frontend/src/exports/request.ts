/**
 * The exports form as data (no DOM): its defaults from `GET /api/projects/{id}/export-options`, the request body
 * it sends to `POST /api/projects/{id}/exports`, the words for each option, and the short dataset card a finished
 * job's `result` carries. Unit-tested under Node (test/exportRequest.test.ts).
 */

import type { components } from '../api/schema'

export type ExportOptions = components['schemas']['ExportOptionsOut']
export type ExportRequest = components['schemas']['ExportRequest']
export type TestSplitMode = ExportRequest['test_split']

/** Which scans: every scan, the scans of one split (a metadata filter), or listed scan ids. */
export type ScanChoice = { kind: 'all' } | { kind: 'split'; split: string } | { kind: 'ids'; text: string }

/** What the form holds; numbers and ids stay as typed until the body is built. */
export interface ExportForm {
  format: string
  version: string
  testSplit: string
  ignoreLabel: boolean
  nnunetLabels: string
  datasetId: string
  datasetName: string
  folderName: string
  allStructures: boolean
  structures: string[]
  scans: ScanChoice
}

export type Built<T> = { body: T; error?: undefined } | { body?: undefined; error: string }

export const FORMAT_LABELS: Record<string, string> = {
  pants: 'PanTS (one folder per case)',
  nnunet: 'nnU-Net v2 (DatasetXXX_Name)',
  msd: 'Medical Segmentation Decathlon',
  'dicom-seg': 'DICOM SEG',
}

export const TEST_SPLIT_LABELS: Record<string, string> = {
  separate: 'in their own test folders (imagesTs/labelsTs, ImageTe/LabelTe)',
  exclude: 'left out (listed in the dataset card)',
  merge: 'merged into the training folders (the card says so)',
}

export const NNUNET_LABEL_LABELS: Record<string, string> = {
  'paint-order': 'one label per structure (documented paint order)',
  regions: 'regions (lossless, overlapping structures)',
}

const FOLDER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/

/** The words for a version choice ('approved', 'head', 'model:<name>'). */
export function versionLabel(version: string): string {
  if (version === 'approved') return 'Last approved version (scans never approved are skipped and listed in the card)'
  if (version === 'head') return 'Latest (head) version'
  if (version.startsWith('model:')) return `Predictions of model ${version.slice('model:'.length)} (its promoted version)`
  return version
}

/** A split's name as shown ('' is the scans with no split). */
export function splitName(split: string): string {
  return split === '' ? 'no split' : split
}

/** "train 7 · test 2 · no split 1": the project's scans per split. */
export function splitCounts(splits: Record<string, number>): string {
  const entries = Object.entries(splits)
  return entries.length ? entries.map(([split, n]) => `${splitName(split)} ${n}`).join(' · ') : 'no scans'
}

/** The form as the options advertise it by default: all scans and structures, the API's default choices. */
export function defaultExportForm(options: ExportOptions): ExportForm {
  return {
    format: options.formats[0] ?? 'pants',
    version: options.default_version,
    testSplit: options.default_test_split,
    ignoreLabel: options.ignore_label_default,
    nnunetLabels: options.nnunet_label_modes[0] ?? 'paint-order',
    datasetId: '1',
    datasetName: '',
    folderName: '',
    allStructures: true,
    structures: [],
    scans: { kind: 'all' },
  }
}

/** Scan ids typed as "12, 15 18"; an error message when one is not a positive whole number. */
export function parseIds(text: string, what = 'Scan ids'): number[] | string {
  const parts = text.split(/[\s,;]+/).filter(Boolean)
  const ids = parts.map(Number)
  if (ids.some((n) => !Number.isInteger(n) || n <= 0)) return `${what} must be whole numbers separated by commas.`
  return [...new Set(ids)]
}

/** The request body of the form, or the first thing to fix. */
export function exportRequest(form: ExportForm): Built<ExportRequest> {
  const testSplit = form.testSplit as TestSplitMode
  if (!['separate', 'exclude', 'merge'].includes(testSplit)) return { error: `Unknown test split handling “${form.testSplit}”.` }
  const nnunet = form.format === 'nnunet'
  const datasetId = nnunet ? Number(form.datasetId) : 1
  if (!Number.isInteger(datasetId) || datasetId < 1 || datasetId > 999) return { error: 'The nnU-Net dataset id must be a whole number from 1 to 999.' }
  const body: ExportRequest = {
    format: form.format,
    version: form.version,
    test_split: testSplit,
    ignore_label: form.ignoreLabel,
    nnunet_labels: form.nnunetLabels,
    dataset_id: datasetId,
  }
  if (nnunet && form.datasetName.trim()) body.dataset_name = form.datasetName.trim()
  const folder = form.folderName.trim()
  if (!nnunet && folder) {
    if (!FOLDER_NAME.test(folder)) return { error: 'The folder name takes letters, digits, “.”, “_” and “-” (no path), starting with a letter or digit.' }
    body.folder_name = folder
  }
  if (!form.allStructures) {
    if (!form.structures.length) return { error: 'Choose at least one structure (or tick “All structures”).' }
    body.structures = [...form.structures]
  }
  if (form.scans.kind === 'split') body.filter = { split: form.scans.split }
  else if (form.scans.kind === 'ids') {
    const ids = parseIds(form.scans.text)
    if (typeof ids === 'string') return { error: ids }
    if (!ids.length) return { error: 'List the scan ids to export (or choose all scans).' }
    body.scan_ids = ids
  }
  return { body }
}

/** One line of the dataset card a finished export job keeps in `result` (see backend export_summary). */
export interface CardLine {
  key: string
  label: string
  value: string
}

function num(x: unknown): number | null {
  return typeof x === 'number' && Number.isFinite(x) ? x : null
}

/** The short dataset card of a finished export job's `result`: counts per folder, skipped scans, ignore label. */
export function cardLines(result: Record<string, unknown>): CardLine[] {
  const lines: CardLine[] = []
  const exported = num(result.scans_exported)
  const test = num(result.test_cases) ?? 0
  if (exported !== null) lines.push({ key: 'exported', label: 'Scans exported', value: `${exported} (training folders ${exported - test}, test folders ${test})` })
  if (typeof result.test_split === 'string') lines.push({ key: 'test-split', label: 'Test split', value: `${result.test_split}: ${TEST_SPLIT_LABELS[result.test_split] ?? ''}`.trim() })
  const skipped = num(result.scans_skipped)
  if (skipped !== null) {
    const reasons = Array.isArray(result.skipped)
      ? [...new Set(result.skipped.map((s) => String((s as { reason?: unknown }).reason ?? '')).filter(Boolean))]
      : []
    lines.push({ key: 'skipped', label: 'Scans skipped', value: skipped ? `${skipped} (${reasons.slice(0, 3).join('; ')})` : '0' })
  }
  const missing = num(result.cases_with_missing_structures)
  if (missing !== null) {
    const ignore = result.ignore_label as { name?: string; value?: number } | null | undefined
    const how = ignore && typeof ignore === 'object' ? `label ${ignore.value} “${ignore.name ?? 'ignore'}” where a structure is missing` : 'no ignore label'
    lines.push({ key: 'missing', label: 'Cases with a missing structure', value: `${missing} · ${how}` })
  }
  if (Array.isArray(result.paint_order) && result.paint_order.length)
    lines.push({ key: 'paint-order', label: 'Paint order (later wins)', value: result.paint_order.map(String).join(' → ') })
  const files = num(result.file_count)
  const bytes = num(result.archive_bytes)
  if (files !== null) lines.push({ key: 'files', label: 'Files', value: `${files}${bytes !== null ? ` · ${fmtSize(bytes)}` : ''} (README.md card, cases.csv, SHA256SUMS inside)` })
  if (typeof result.archive_digest === 'string') lines.push({ key: 'sha256', label: 'Archive SHA-256', value: result.archive_digest })
  return lines
}

function fmtSize(n: number): string {
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`
  return `${(n / 1024 ** 3).toFixed(2)} GiB`
}
