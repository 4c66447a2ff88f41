/**
 * The "new evaluation" form as data (no DOM): its defaults from `GET /api/projects/{id}/evaluation-options`
 * (the project's metric definition, NSD tolerance and detection volume threshold, the splits with ground truth,
 * the model versions with predictions) and the body it sends to `POST /api/projects/{id}/evaluations`.
 * Unit-tested under Node (test/evaluationRequest.test.ts).
 */

import type { components } from '../api/schema'

export type EvaluationOptions = components['schemas']['EvaluationOptionsOut']
export type EvaluationCreate = components['schemas']['EvaluationCreate']
export type MetricDefinition = NonNullable<EvaluationCreate['metric_definition']>

/** One entry of `model_versions` (the API types it as an open object). */
export interface ModelVersionOption {
  model_version_id: number
  model: string
  version: number
  promoted: boolean
  predicted_scans: number
}

/** One entry of `splits` ('all' last). */
export interface SplitOption {
  split: string
  scans: number
  approved_scans: number
}

/** What is evaluated: a model version's predictions, or label versions listed by id. */
export type Source = { kind: 'model'; modelVersionId: number | null } | { kind: 'versions'; text: string }

export interface DetectionForm {
  lesionStructure: string
  minVolume: string
  confidence: string
  localisation: string
  minDice: string
}

/** What the form holds; numbers stay as typed until the body is built. */
export interface EvaluationForm {
  name: string
  source: Source
  split: string
  allStructures: boolean
  structures: string[]
  metricDefinition: string
  /** The NSD tolerance in mm of every structure without its own. */
  tolerance: string
  /** Per-structure NSD tolerances in mm ('' = the default one). */
  tolerances: Record<string, string>
  detection: DetectionForm
}

export type Built<T> = { body: T; error?: undefined } | { body?: undefined; error: string }

const DEFINITIONS: readonly string[] = ['deepmind', 'lorensen', 'monai']
const LOCALISATIONS: readonly string[] = ['overlap', 'dice']

export function modelVersions(options: EvaluationOptions): ModelVersionOption[] {
  return options.model_versions as unknown as ModelVersionOption[]
}

export function splitOptions(options: EvaluationOptions): SplitOption[] {
  return options.splits as unknown as SplitOption[]
}

/** "test · 4 scans, 3 with ground truth". */
export function splitLabel(s: SplitOption): string {
  return `${s.split === 'all' ? 'all splits' : s.split} · ${s.scans} scan${s.scans === 1 ? '' : 's'}, ${s.approved_scans} with ground truth`
}

/** "classical-hu v2 (promoted) · predicted 3 scans". */
export function modelVersionLabel(m: ModelVersionOption): string {
  return `${m.model} v${m.version}${m.promoted ? ' (promoted)' : ''} · predicted ${m.predicted_scans} scan${m.predicted_scans === 1 ? '' : 's'}`
}

function asNumber(x: unknown): number | null {
  return typeof x === 'number' && Number.isFinite(x) ? x : null
}

/** The NSD tolerance a project default states: one number, or {structure or 'default': mm}. */
export function splitTolerance(value: unknown, fallback: number): { tolerance: number; tolerances: Record<string, number> } {
  const one = asNumber(value)
  if (one !== null) return { tolerance: one, tolerances: {} }
  if (value && typeof value === 'object') {
    const tolerances: Record<string, number> = {}
    let tolerance = fallback
    for (const [key, mm] of Object.entries(value as Record<string, unknown>)) {
      const n = asNumber(mm)
      if (n === null) continue
      if (key === 'default') tolerance = n
      else tolerances[key] = n
    }
    return { tolerance, tolerances }
  }
  return { tolerance: fallback, tolerances: {} }
}

/** The lesion structure detection looks at: pancreatic_lesion if the schema has it, else a lesion/tumour, else the first. */
export function lesionStructure(structures: string[]): string {
  if (structures.includes('pancreatic_lesion')) return 'pancreatic_lesion'
  return structures.find((s) => /lesion|tumou?r/i.test(s)) ?? structures[0] ?? 'pancreatic_lesion'
}

/** The split preselected: 'test' when it has ground truth, else the first split with some, else 'all'. */
export function defaultSplit(splits: SplitOption[]): string {
  const usable = splits.filter((s) => s.approved_scans > 0)
  return (usable.find((s) => s.split === 'test') ?? usable.find((s) => s.split !== 'all') ?? { split: 'all' }).split
}

/** The form as the options advertise it by default: the project's defaults, the promoted model version. */
export function defaultEvaluationForm(options: EvaluationOptions): EvaluationForm {
  const defaults = options.defaults as Record<string, unknown>
  const documented = options.documented_defaults as Record<string, unknown>
  const versions = modelVersions(options)
  const chosen = versions.find((m) => m.promoted) ?? versions[0] ?? null
  const { tolerance, tolerances } = splitTolerance(defaults.nsd_tolerance_mm, asNumber(documented.nsd_tolerance_mm) ?? 1)
  const definition =
    String(defaults.metric_definition ?? '') || options.metric_definitions.find((d) => d.default)?.name || 'deepmind'
  const minVolume = asNumber(defaults.detection_min_volume_mm3) ?? asNumber(documented.detection_min_volume_mm3)
  return {
    name: '',
    source: { kind: 'model', modelVersionId: chosen ? chosen.model_version_id : null },
    split: defaultSplit(splitOptions(options)),
    allStructures: true,
    structures: [],
    metricDefinition: definition,
    tolerance: String(tolerance),
    tolerances: Object.fromEntries(Object.entries(tolerances).map(([k, v]) => [k, String(v)])),
    detection: {
      lesionStructure: lesionStructure(options.structures),
      minVolume: minVolume === null ? '' : String(minVolume),
      confidence: '0.5',
      localisation: 'overlap',
      minDice: '0.1',
    },
  }
}

/** A number typed in a field, checked against a range; an error message otherwise. */
function field(text: string, what: string, check: (n: number) => boolean, rule: string): number | string {
  const n = Number(text.trim())
  if (!text.trim() || !Number.isFinite(n) || !check(n)) return `${what} must be ${rule}.`
  return n
}

/** The request body of the form, or the first thing to fix. */
export function evaluationRequest(form: EvaluationForm): Built<EvaluationCreate> {
  if (!form.split) return { error: 'Choose a split.' }
  if (!DEFINITIONS.includes(form.metricDefinition)) return { error: `Unknown metric definition “${form.metricDefinition}”.` }
  const body: EvaluationCreate = { name: form.name.trim(), split: form.split, metric_definition: form.metricDefinition as MetricDefinition }
  if (form.source.kind === 'model') {
    if (form.source.modelVersionId === null) return { error: 'Choose a model version (pre-annotate scans with a model first).' }
    body.model_version_id = form.source.modelVersionId
  } else {
    const parts = form.source.text.split(/[\s,;]+/).filter(Boolean)
    const ids = parts.map(Number)
    if (!ids.length) return { error: 'List the label version ids to evaluate.' }
    if (ids.some((n) => !Number.isInteger(n) || n <= 0)) return { error: 'Label version ids must be whole numbers separated by commas.' }
    body.version_ids = [...new Set(ids)]
  }
  if (!form.allStructures) {
    if (!form.structures.length) return { error: 'Choose at least one structure (or tick “All structures”).' }
    body.structures = [...form.structures]
  }
  const tolerance = field(form.tolerance, 'The NSD tolerance', (n) => n > 0, 'a distance in mm above 0')
  if (typeof tolerance === 'string') return { error: tolerance }
  const own: Record<string, number> = {}
  for (const [name, text] of Object.entries(form.tolerances)) {
    if (!text.trim() || (!form.allStructures && !form.structures.includes(name))) continue
    const mm = field(text, `The NSD tolerance of ${name}`, (n) => n > 0, 'a distance in mm above 0')
    if (typeof mm === 'string') return { error: mm }
    own[name] = mm
  }
  body.nsd_tolerance_mm = Object.keys(own).length ? { default: tolerance, ...own } : tolerance
  const d = form.detection
  if (!d.lesionStructure) return { error: 'Choose the lesion structure of tumour detection.' }
  if (!LOCALISATIONS.includes(d.localisation)) return { error: `Unknown localisation “${d.localisation}”.` }
  const volume = d.minVolume.trim() ? field(d.minVolume, 'The minimum lesion volume', (n) => n >= 0 && n <= 1e6, 'from 0 to 1000000 mm³') : null
  if (typeof volume === 'string') return { error: volume }
  const confidence = field(d.confidence, 'The confidence threshold', (n) => n >= 0 && n <= 1, 'from 0 to 1')
  if (typeof confidence === 'string') return { error: confidence }
  const minDice = field(d.minDice, 'The minimum Dice', (n) => n >= 0 && n < 1, 'from 0 up to (not including) 1')
  if (typeof minDice === 'string') return { error: minDice }
  body.detection = {
    lesion_structure: d.lesionStructure,
    min_volume_mm3: volume,
    confidence_threshold: confidence,
    localisation: d.localisation,
    min_dice: minDice,
  }
  return { body }
}
