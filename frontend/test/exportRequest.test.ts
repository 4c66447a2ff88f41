import { describe, expect, it } from 'vitest'
import { type ExportOptions, cardLines, defaultExportForm, exportRequest, parseIds, splitCounts, versionLabel } from '../src/exports/request'

const options: ExportOptions = {
  formats: ['pants', 'nnunet', 'msd', 'dicom-seg'],
  versions: ['approved', 'head', 'model:classical-hu'],
  default_version: 'approved',
  test_split_modes: ['separate', 'exclude', 'merge'],
  default_test_split: 'separate',
  nnunet_label_modes: ['paint-order', 'regions'],
  ignore_label_default: true,
  splits: { '': 3, test: 2, train: 6 },
  approved_scans: 4,
  scans: 11,
}

describe('export form → request body', () => {
  it('starts from the advertised defaults: last approved version, test split separate, ignore label on', () => {
    const form = defaultExportForm(options)
    expect(form.version).toBe('approved')
    expect(form.testSplit).toBe('separate')
    expect(form.ignoreLabel).toBe(true)
    expect(exportRequest(form)).toEqual({
      body: { format: 'pants', version: 'approved', test_split: 'separate', ignore_label: true, nnunet_labels: 'paint-order', dataset_id: 1 },
    })
  })

  it('maps an nnU-Net export of chosen structures and scans, with the dataset id and name', () => {
    const form = {
      ...defaultExportForm(options),
      format: 'nnunet',
      version: 'head',
      testSplit: 'exclude',
      ignoreLabel: false,
      nnunetLabels: 'regions',
      datasetId: '42',
      datasetName: '  Pancreas ',
      folderName: 'ignored-for-nnunet',
      allStructures: false,
      structures: ['liver', 'spleen'],
      scans: { kind: 'ids' as const, text: '12, 15 15;18' },
    }
    expect(exportRequest(form).body).toEqual({
      format: 'nnunet',
      version: 'head',
      test_split: 'exclude',
      ignore_label: false,
      nnunet_labels: 'regions',
      dataset_id: 42,
      dataset_name: 'Pancreas',
      structures: ['liver', 'spleen'],
      scan_ids: [12, 15, 18],
    })
  })

  it('sends a split as a scan filter and a folder name for other formats', () => {
    const form = { ...defaultExportForm(options), format: 'msd', folderName: 'my-set_1', datasetId: 'x', scans: { kind: 'split' as const, split: 'test' } }
    const body = exportRequest(form).body!
    expect(body.filter).toEqual({ split: 'test' })
    expect(body.folder_name).toBe('my-set_1')
    expect(body.dataset_id).toBe(1)
    expect(body.scan_ids).toBeUndefined()
  })

  it('refuses what the server would refuse, with a message', () => {
    const base = defaultExportForm(options)
    expect(exportRequest({ ...base, allStructures: false, structures: [] }).error).toMatch(/at least one structure/)
    expect(exportRequest({ ...base, scans: { kind: 'ids', text: '3, x' } }).error).toMatch(/whole numbers/)
    expect(exportRequest({ ...base, scans: { kind: 'ids', text: ' ' } }).error).toMatch(/List the scan ids/)
    expect(exportRequest({ ...base, format: 'nnunet', datasetId: '1000' }).error).toMatch(/1 to 999/)
    expect(exportRequest({ ...base, folderName: '../etc' }).error).toMatch(/folder name/)
    expect(exportRequest({ ...base, testSplit: 'sometimes' }).error).toMatch(/test split/)
    expect(parseIds('0')).toMatch(/whole numbers/)
    expect(parseIds('')).toEqual([])
  })

  it('words the choices', () => {
    expect(versionLabel('approved')).toMatch(/approved/)
    expect(versionLabel('model:classical-hu')).toMatch(/classical-hu/)
    expect(splitCounts(options.splits)).toBe('no split 3 · test 2 · train 6')
  })
})

describe('dataset card of a finished export', () => {
  it('counts per folder, skipped scans with their reasons, the ignore label and the archive checksum', () => {
    const lines = cardLines({
      scans_exported: 5,
      test_cases: 2,
      test_split: 'separate',
      scans_skipped: 2,
      skipped: [{ reason: 'not approved' }, { reason: 'not approved' }],
      cases_with_missing_structures: 1,
      ignore_label: { name: 'ignore', value: 9 },
      paint_order: ['liver', 'pancreas'],
      file_count: 20,
      archive_bytes: 2048,
      archive_digest: 'ab'.repeat(32),
    })
    const byKey = Object.fromEntries(lines.map((l) => [l.key, l.value]))
    expect(byKey.exported).toBe('5 (training folders 3, test folders 2)')
    expect(byKey.skipped).toBe('2 (not approved)')
    expect(byKey.missing).toBe('1 · label 9 “ignore” where a structure is missing')
    expect(byKey['paint-order']).toBe('liver → pancreas')
    expect(byKey.files).toMatch(/^20 · 2\.0 KiB/)
    expect(byKey.sha256).toBe('ab'.repeat(32))
  })

  it('leaves out what a result does not hold', () => {
    expect(cardLines({})).toEqual([])
    const lines = cardLines({ scans_exported: 1, cases_with_missing_structures: 0, ignore_label: null })
    expect(lines.map((l) => l.key)).toEqual(['exported', 'missing'])
    expect(lines[1].value).toBe('0 · no ignore label')
  })
})
