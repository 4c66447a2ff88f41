import { describe, expect, it } from 'vitest'
import {
  type EvaluationOptions,
  defaultEvaluationForm,
  defaultSplit,
  evaluationRequest,
  lesionStructure,
  modelVersionLabel,
  splitLabel,
  splitTolerance,
} from '../src/evaluation/request'

function options(over: Partial<EvaluationOptions> = {}): EvaluationOptions {
  return {
    metric_definitions: [
      { name: 'deepmind', description: 'area-weighted surfels', default: true },
      { name: 'lorensen', description: 'closed marching cubes', default: false },
      { name: 'monai', description: 'boundary voxels', default: false },
    ],
    defaults: { nsd_tolerance_mm: 1, detection_min_volume_mm3: 50, metric_definition: 'deepmind' },
    documented_defaults: { nsd_tolerance_mm: 1, detection_min_volume_mm3: 50, metric_definition: 'deepmind' },
    empty_policy: 'DSC 1 when both are empty',
    splits: [
      { split: 'test', scans: 2, approved_scans: 2 },
      { split: 'train', scans: 6, approved_scans: 1 },
      { split: 'all', scans: 8, approved_scans: 3 },
    ],
    structures: ['liver', 'pancreas', 'pancreatic_lesion'],
    model_versions: [
      { model_version_id: 7, model: 'unet', version: 1, promoted: false, predicted_scans: 3 },
      { model_version_id: 9, model: 'unet', version: 2, promoted: true, predicted_scans: 2 },
    ],
    ...over,
  }
}

describe('evaluation form → request body', () => {
  it('starts from the project defaults: the promoted version, the test split, its metric definition', () => {
    const form = defaultEvaluationForm(options())
    expect(form.source).toEqual({ kind: 'model', modelVersionId: 9 })
    expect(form.split).toBe('test')
    expect(evaluationRequest(form)).toEqual({
      body: {
        name: '',
        split: 'test',
        metric_definition: 'deepmind',
        model_version_id: 9,
        nsd_tolerance_mm: 1,
        detection: { lesion_structure: 'pancreatic_lesion', min_volume_mm3: 50, confidence_threshold: 0.5, localisation: 'overlap', min_dice: 0.1 },
      },
    })
  })

  it('maps chosen structures, a definition, per-structure tolerances and detection settings', () => {
    const form = {
      ...defaultEvaluationForm(options()),
      name: ' unet v1 on train ',
      source: { kind: 'model' as const, modelVersionId: 7 },
      split: 'train',
      allStructures: false,
      structures: ['liver', 'pancreas'],
      metricDefinition: 'monai',
      tolerance: '2',
      // A tolerance of a structure not evaluated is left out.
      tolerances: { liver: '', pancreas: '3.5', pancreatic_lesion: '9' },
      detection: { lesionStructure: 'pancreatic_lesion', minVolume: '', confidence: '0.3', localisation: 'dice', minDice: '0.25' },
    }
    expect(evaluationRequest(form).body).toEqual({
      name: 'unet v1 on train',
      split: 'train',
      metric_definition: 'monai',
      model_version_id: 7,
      structures: ['liver', 'pancreas'],
      nsd_tolerance_mm: { default: 2, pancreas: 3.5 },
      detection: { lesion_structure: 'pancreatic_lesion', min_volume_mm3: null, confidence_threshold: 0.3, localisation: 'dice', min_dice: 0.25 },
    })
  })

  it('evaluates label versions by id', () => {
    const form = { ...defaultEvaluationForm(options()), source: { kind: 'versions' as const, text: '41, 57 41' }, split: 'all' }
    const body = evaluationRequest(form).body!
    expect(body.version_ids).toEqual([41, 57])
    expect(body.model_version_id).toBeUndefined()
  })

  it('keeps a per-structure project default and takes its default entry', () => {
    const form = defaultEvaluationForm(options({ defaults: { nsd_tolerance_mm: { default: 1.5, pancreas: 2 }, metric_definition: 'lorensen' } }))
    expect(form.tolerance).toBe('1.5')
    expect(form.tolerances).toEqual({ pancreas: '2' })
    expect(form.metricDefinition).toBe('lorensen')
    expect(form.detection.minVolume).toBe('50')
    expect(evaluationRequest(form).body!.nsd_tolerance_mm).toEqual({ default: 1.5, pancreas: 2 })
  })

  it('refuses what the server would refuse, with a message', () => {
    const base = defaultEvaluationForm(options())
    const bad = (patch: Record<string, unknown>): string | undefined => evaluationRequest({ ...base, ...patch }).error
    expect(bad({ source: { kind: 'model', modelVersionId: null } })).toMatch(/model version/)
    expect(bad({ source: { kind: 'versions', text: '' } })).toMatch(/label version ids/)
    expect(bad({ source: { kind: 'versions', text: '4, -1' } })).toMatch(/whole numbers/)
    expect(bad({ allStructures: false, structures: [] })).toMatch(/at least one structure/)
    expect(bad({ tolerance: '0' })).toMatch(/NSD tolerance/)
    expect(bad({ tolerance: '' })).toMatch(/NSD tolerance/)
    expect(bad({ tolerances: { liver: '-2' } })).toMatch(/tolerance of liver/)
    expect(bad({ metricDefinition: 'hausdorff' })).toMatch(/metric definition/)
    expect(bad({ split: '' })).toMatch(/split/)
    expect(bad({ detection: { ...base.detection, minVolume: '-1' } })).toMatch(/minimum lesion volume/)
    expect(bad({ detection: { ...base.detection, confidence: '1.5' } })).toMatch(/confidence/)
    expect(bad({ detection: { ...base.detection, minDice: '1' } })).toMatch(/minimum Dice/)
    expect(bad({ detection: { ...base.detection, localisation: 'centroid' } })).toMatch(/localisation/)
  })
})

describe('evaluation choices', () => {
  it('prefers the test split with ground truth, then another split, then all', () => {
    expect(defaultSplit([{ split: 'test', scans: 2, approved_scans: 0 }, { split: 'val', scans: 1, approved_scans: 1 }, { split: 'all', scans: 3, approved_scans: 1 }])).toBe('val')
    expect(defaultSplit([{ split: 'all', scans: 3, approved_scans: 0 }])).toBe('all')
  })

  it('finds a lesion structure and reads project tolerances', () => {
    expect(lesionStructure(['liver', 'kidney_tumor'])).toBe('kidney_tumor')
    expect(lesionStructure(['liver'])).toBe('liver')
    expect(splitTolerance(undefined, 1)).toEqual({ tolerance: 1, tolerances: {} })
    expect(splitTolerance({ liver: 3 }, 1)).toEqual({ tolerance: 1, tolerances: { liver: 3 } })
  })

  it('words splits and model versions', () => {
    expect(splitLabel({ split: 'test', scans: 1, approved_scans: 1 })).toBe('test · 1 scan, 1 with ground truth')
    expect(splitLabel({ split: 'all', scans: 8, approved_scans: 3 })).toBe('all splits · 8 scans, 3 with ground truth')
    expect(modelVersionLabel({ model_version_id: 9, model: 'unet', version: 2, promoted: true, predicted_scans: 2 })).toBe('unet v2 (promoted) · predicted 2 scans')
  })
})
