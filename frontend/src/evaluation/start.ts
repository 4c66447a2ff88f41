/**
 * The "new evaluation" form of `#/evaluations`: what `GET /api/projects/{id}/evaluation-options` advertises — the
 * model versions with predictions (or label versions by id), the splits with their ground truth, the structures,
 * the metric definition of NSD and HD95 with the project's default, the NSD tolerance (one, or per structure) and
 * the tumour-detection settings — read into an `EvaluationForm`; request.ts turns it into the body of
 * `POST /api/projects/{id}/evaluations`.
 */

import { pretty } from '../core/structures'
import { h } from '../dom'
import {
  type EvaluationForm,
  type EvaluationOptions,
  defaultEvaluationForm,
  modelVersionLabel,
  modelVersions,
  splitLabel,
  splitOptions,
} from './request'

export interface EvaluationFormView {
  element: HTMLElement
  read(): EvaluationForm
  showError(text: string | null): void
  setBusy(busy: boolean): void
}

const VERSIONS = 'versions'

/** Build the form; `submit` gets the form's values when the lead presses "Start evaluation". */
export function evaluationForm(options: EvaluationOptions, submit: (form: EvaluationForm) => void): EvaluationFormView {
  const initial = defaultEvaluationForm(options)
  const versions = modelVersions(options)
  const name = h('input', { type: 'text', maxlength: '200', placeholder: 'e.g. “model v3 on test”', 'data-testid': 'eval-name' })
  const source = h(
    'select',
    { 'data-testid': 'eval-source' },
    versions.map((m) =>
      h(
        'option',
        { value: String(m.model_version_id), selected: initial.source.kind === 'model' && initial.source.modelVersionId === m.model_version_id },
        `Model ${modelVersionLabel(m)}`,
      ),
    ),
    h('option', { value: VERSIONS, selected: !versions.length }, 'Label versions by id…'),
  )
  const versionIds = h('input', { type: 'text', placeholder: 'label version ids, e.g. 41, 57', 'data-testid': 'eval-version-ids' })
  const idsField = h('label', { class: 'field' }, 'Label versions (one per scan)', versionIds)
  const noModels = versions.length
    ? null
    : h('p', { class: 'muted small', 'data-testid': 'eval-no-models' }, 'No model version has predictions yet: pre-annotate scans with a model, or evaluate label versions by id.')
  const syncSource = (): void => {
    idsField.hidden = source.value !== VERSIONS
  }
  source.addEventListener('change', syncSource)
  syncSource()

  const split = h(
    'select',
    { 'data-testid': 'eval-split' },
    splitOptions(options).map((s) =>
      h('option', { value: s.split, selected: s.split === initial.split, disabled: s.approved_scans === 0 }, splitLabel(s)),
    ),
  )

  const all = h('input', { type: 'checkbox', checked: true, 'data-testid': 'eval-all-structures' })
  const boxes = options.structures.map((s) => h('input', { type: 'checkbox', value: s, 'data-testid': `eval-structure-${s}` }))
  const list = h(
    'div',
    { class: 'export-structures', hidden: true },
    boxes.map((box, i) => h('label', { class: 'check' }, box, ` ${pretty(options.structures[i])}`)),
  )
  all.addEventListener('change', () => (list.hidden = all.checked))

  const definition = h(
    'select',
    { 'data-testid': 'eval-metric-definition' },
    options.metric_definitions.map((d) =>
      h('option', { value: d.name, selected: d.name === initial.metricDefinition }, `${d.name}${d.name === initial.metricDefinition ? ' (project default)' : ''}`),
    ),
  )
  const described = h('p', { class: 'muted small', 'data-testid': 'eval-definition-text' })
  const syncDefinition = (): void => {
    const d = options.metric_definitions.find((x) => x.name === definition.value)
    described.textContent = d ? `NSD and HD95 ${d.name}: ${d.description}. HD95 is the 95th percentile of the two directed surface distances, in mm.` : ''
  }
  definition.addEventListener('change', syncDefinition)
  syncDefinition()

  const tolerance = h('input', { type: 'number', min: '0', step: 'any', value: initial.tolerance, 'data-testid': 'eval-tolerance' })
  const own = options.structures.map((s) =>
    h('input', { type: 'number', min: '0', step: 'any', value: initial.tolerances[s] ?? '', placeholder: 'default', 'data-testid': `eval-tolerance-${s}` }),
  )
  const ownRows = own.map((input, i) => h('label', null, h('span', null, pretty(options.structures[i])), input))
  const perStructure = h(
    'details',
    { class: 'field eval-tolerances', open: Object.keys(initial.tolerances).length > 0 },
    h('summary', null, 'NSD tolerance per structure (mm)'),
    h('div', { class: 'eval-tolerance-grid' }, ownRows),
  )
  // Only the structures evaluated have a tolerance to set.
  const syncTolerances = (): void => {
    ownRows.forEach((row, i) => (row.hidden = !all.checked && !boxes[i].checked))
  }
  all.addEventListener('change', syncTolerances)
  boxes.forEach((box) => box.addEventListener('change', syncTolerances))

  const d = initial.detection
  const lesion = h(
    'select',
    { 'data-testid': 'eval-lesion-structure' },
    options.structures.map((s) => h('option', { value: s, selected: s === d.lesionStructure }, pretty(s))),
  )
  const minVolume = h('input', { type: 'number', min: '0', max: '1000000', step: 'any', value: d.minVolume, 'data-testid': 'eval-min-volume' })
  const confidence = h('input', { type: 'number', min: '0', max: '1', step: 'any', value: d.confidence, 'data-testid': 'eval-confidence' })
  const localisation = h(
    'select',
    { 'data-testid': 'eval-localisation' },
    h('option', { value: 'overlap', selected: d.localisation === 'overlap' }, 'overlap (any shared voxel)'),
    h('option', { value: 'dice', selected: d.localisation === 'dice' }, 'Dice at least the minimum'),
  )
  const minDice = h('input', { type: 'number', min: '0', max: '1', step: 'any', value: d.minDice, 'data-testid': 'eval-min-dice' })
  const detection = h(
    'details',
    { class: 'eval-detection' },
    h('summary', null, 'Tumour detection'),
    h(
      'div',
      { class: 'export-nnunet' },
      h('label', { class: 'field' }, 'Lesion structure', lesion),
      h('label', { class: 'field', title: 'predicted components smaller than this do not count (the project setting by default)' }, 'Minimum lesion volume (mm³)', minVolume),
      h('label', { class: 'field' }, 'Confidence threshold', confidence),
      h('label', { class: 'field' }, 'Localisation', localisation),
      h('label', { class: 'field' }, 'Minimum Dice (Dice localisation)', minDice),
    ),
  )

  const start = h('button', { class: 'btn primary', type: 'submit', 'data-testid': 'eval-start' }, 'Start evaluation')
  const errorBox = h('div', { class: 'form-error', 'data-testid': 'eval-error', role: 'alert', hidden: true })
  const read = (): EvaluationForm => ({
    name: name.value,
    source: source.value === VERSIONS ? { kind: 'versions', text: versionIds.value } : { kind: 'model', modelVersionId: Number(source.value) },
    split: split.value,
    allStructures: all.checked,
    structures: boxes.filter((b) => b.checked).map((b) => b.value),
    metricDefinition: definition.value,
    tolerance: tolerance.value,
    tolerances: Object.fromEntries(options.structures.map((s, i) => [s, own[i].value])),
    detection: {
      lesionStructure: lesion.value,
      minVolume: minVolume.value,
      confidence: confidence.value,
      localisation: localisation.value,
      minDice: minDice.value,
    },
  })
  const form = h(
    'form',
    { class: 'export-form eval-form', 'data-testid': 'eval-form' },
    h('label', { class: 'field' }, 'Evaluate', source),
    idsField,
    h('label', { class: 'field' }, 'Split (ground truth = approved versions)', split),
    h('label', { class: 'field' }, 'Name', name),
    noModels,
    h('div', { class: 'field export-structures-field' }, h('label', { class: 'check' }, all, ' All structures (the model’s, else the schema’s)'), list),
    h('label', { class: 'field' }, 'Metric definition (NSD and HD95)', definition),
    h('label', { class: 'field' }, 'NSD tolerance (mm)', tolerance),
    described,
    perStructure,
    detection,
    h('p', { class: 'muted small eval-empty-policy' }, `Empty masks: ${options.empty_policy}.`),
    h('div', { class: 'decision-bar' }, start),
    errorBox,
  )
  form.addEventListener('submit', (e) => {
    e.preventDefault()
    submit(read())
  })
  return {
    element: h('section', { class: 'eval-section', 'data-testid': 'eval-new' }, h('h2', null, 'New evaluation'), form),
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
