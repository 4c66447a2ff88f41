/**
 * The "new export" form: every choice `GET /api/projects/{id}/export-options` advertises (format, version policy,
 * where the test split goes, nnU-Net labels and ignore label, dataset id/name or folder name) plus the structures
 * of the schema and which scans. It reads itself into an `ExportForm`; request.ts turns that into the body.
 */

import type { Project, SchemaOut } from '../api/types'
import { pretty } from '../core/structures'
import { h } from '../dom'
import {
  type ExportForm,
  type ExportOptions,
  FORMAT_LABELS,
  NNUNET_LABEL_LABELS,
  TEST_SPLIT_LABELS,
  defaultExportForm,
  splitCounts,
  splitName,
  versionLabel,
} from './request'

export interface ExportFormView {
  element: HTMLElement
  read(): ExportForm
  /** Show a message under the form (null hides it). */
  showError(text: string | null): void
  setBusy(busy: boolean): void
}

/** The short words of the test-split choices (the title and the card say more). */
const TEST_SPLIT_CHOICES: Record<string, string> = {
  separate: 'Separate: own test folders',
  exclude: 'Exclude: leave test scans out',
  merge: 'Merge into the training folders',
}

function select(testid: string, values: string[], label: (v: string) => string, chosen: string): HTMLSelectElement {
  return h(
    'select',
    { 'data-testid': testid, name: testid },
    values.map((v) => h('option', { value: v, selected: v === chosen }, label(v))),
  )
}

/** Build the form; `submit` gets called with the form's values when the lead presses "Start export". */
export function exportForm(options: ExportOptions, schema: SchemaOut, project: Project, submit: (form: ExportForm) => void): ExportFormView {
  const initial = defaultExportForm(options)
  const format = select('export-format', options.formats, (v) => FORMAT_LABELS[v] ?? v, initial.format)
  const version = select('export-version', options.versions, versionLabel, initial.version)
  const testSplit = select('export-test-split', options.test_split_modes, (v) => TEST_SPLIT_CHOICES[v] ?? v, initial.testSplit)
  testSplit.title = options.test_split_modes.map((v) => `${v}: test-split scans ${TEST_SPLIT_LABELS[v] ?? v}`).join('\n')
  const labels = select('export-nnunet-labels', options.nnunet_label_modes, (v) => NNUNET_LABEL_LABELS[v] ?? v, initial.nnunetLabels)
  const ignore = h('input', { type: 'checkbox', checked: initial.ignoreLabel, 'data-testid': 'export-ignore-label' })
  const datasetId = h('input', { type: 'number', min: '1', max: '999', value: initial.datasetId, 'data-testid': 'export-dataset-id' })
  const datasetName = h('input', { type: 'text', placeholder: project.slug, maxlength: '80', 'data-testid': 'export-dataset-name' })
  const folderName = h('input', { type: 'text', placeholder: `${project.slug}-<format>`, maxlength: '100', 'data-testid': 'export-folder-name' })
  const nnunet = h(
    'div',
    { class: 'export-nnunet', hidden: true, 'data-testid': 'export-nnunet-options' },
    h('label', { class: 'field' }, 'nnU-Net labels', labels),
    h('label', { class: 'field' }, 'Dataset id', datasetId),
    h('label', { class: 'field' }, 'Dataset name', datasetName),
    h(
      'label',
      { class: 'check', title: 'In a case where a structure is missing, every voxel not labelled with another structure becomes “ignore” (declared in dataset.json).' },
      ignore,
      ' Ignore label where a structure is missing',
    ),
  )
  const folder = h('label', { class: 'field' }, 'Folder name (the archive’s top level)', folderName)
  const note = h('p', { class: 'muted small export-format-note', 'data-testid': 'export-format-note' })
  const sync = (): void => {
    const isNnunet = format.value === 'nnunet'
    nnunet.hidden = !isNnunet
    folder.hidden = isNnunet
    note.textContent =
      format.value === 'msd'
        ? 'MSD has no ignore label: a missing structure is painted as background, and the dataset card lists those cases.'
        : format.value === 'pants'
          ? 'PanTS keeps one mask file per structure: a missing structure simply has no file.'
          : format.value === 'dicom-seg'
            ? 'One SEG segment per structure; a missing structure has no segment.'
            : ''
  }
  format.addEventListener('change', sync)
  sync()

  const all = h('input', { type: 'checkbox', checked: true, 'data-testid': 'export-all-structures' })
  const boxes = schema.structures.map((s) => h('input', { type: 'checkbox', value: s.name, 'data-testid': `export-structure-${s.name}` }))
  const list = h(
    'div',
    { class: 'export-structures', hidden: true },
    boxes.map((box, i) => h('label', { class: 'check' }, box, ` ${pretty(schema.structures[i].name)}`)),
  )
  all.addEventListener('change', () => (list.hidden = all.checked))

  const named = Object.keys(options.splits).filter((s) => s !== '')
  const scanKind = h(
    'select',
    { 'data-testid': 'export-scans' },
    h('option', { value: 'all' }, `All scans (${options.scans})`),
    named.length ? h('option', { value: 'split' }, 'The scans of one split') : null,
    h('option', { value: 'ids' }, 'Scan ids…'),
  )
  const split = select('export-split', named, (s) => `${splitName(s)} (${options.splits[s]} scans)`, named.includes('test') ? 'test' : (named[0] ?? ''))
  const scanIds = h('input', { type: 'text', placeholder: 'e.g. 12, 15, 18', 'data-testid': 'export-scan-ids' })
  const splitField = h('label', { class: 'field', hidden: true }, 'Split', split)
  const idsField = h('label', { class: 'field', hidden: true }, 'Scan ids', scanIds)
  const syncScans = (): void => {
    splitField.hidden = scanKind.value !== 'split'
    idsField.hidden = scanKind.value !== 'ids'
  }
  scanKind.addEventListener('change', syncScans)
  // Typing ids chooses "Scan ids" (the list is what the lead means).
  scanIds.addEventListener('input', () => {
    if (scanIds.value.trim()) scanKind.value = 'ids'
  })

  const start = h('button', { class: 'btn primary', type: 'submit', 'data-testid': 'export-start' }, 'Start export')
  const errorBox = h('div', { class: 'form-error', 'data-testid': 'export-error', role: 'alert', hidden: true })
  const read = (): ExportForm => ({
    format: format.value,
    version: version.value,
    testSplit: testSplit.value,
    ignoreLabel: ignore.checked,
    nnunetLabels: labels.value,
    datasetId: datasetId.value,
    datasetName: datasetName.value,
    folderName: folderName.value,
    allStructures: all.checked,
    structures: boxes.filter((b) => b.checked).map((b) => b.value),
    scans: scanKind.value === 'split' ? { kind: 'split', split: split.value } : scanKind.value === 'ids' ? { kind: 'ids', text: scanIds.value } : { kind: 'all' },
  })
  const form = h(
    'form',
    { class: 'export-form', 'data-testid': 'export-form' },
    h('label', { class: 'field' }, 'Format', format),
    h('label', { class: 'field' }, 'Version of each scan', version),
    h('label', { class: 'field' }, 'Test split', testSplit),
    folder,
    nnunet,
    note,
    h('div', { class: 'field export-structures-field' }, h('label', { class: 'check' }, all, ' All structures of the schema'), list),
    h('label', { class: 'field' }, 'Scans', scanKind),
    splitField,
    idsField,
    h('div', { class: 'decision-bar' }, start),
    errorBox,
  )
  form.addEventListener('submit', (e) => {
    e.preventDefault()
    submit(read())
  })
  const element = h(
    'section',
    { class: 'eval-section' },
    h('h2', null, 'New export'),
    h(
      'p',
      { class: 'muted small', 'data-testid': 'export-project-counts' },
      `Scans per split: ${splitCounts(options.splits)}. ${options.approved_scans} of ${options.scans} scans have an approved version.`,
    ),
    form,
  )
  return {
    element,
    read,
    showError(text) {
      errorBox.hidden = !text
      errorBox.textContent = text ?? ''
    },
    setBusy(busy) {
      start.disabled = busy
    },
  }
}
