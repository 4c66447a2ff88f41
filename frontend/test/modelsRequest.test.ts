import { describe, expect, it } from 'vitest'
import { DEFAULT_TRAIN_FORM, decisionLine, gateOfRefusal, gateView, rollbackReason, roundOfJob, trainRequest, validationSummary } from '../src/models/request'
import type { ModelDecision, TrainingRound } from '../src/models/request'

describe('validation of a version', () => {
  it('reads an interactive model’s clicks-to-Dice curves per structure', () => {
    const summary = validationSummary({
      mean_dice: 0.88,
      clicks_to_dice_90: 2.5,
      per_structure: {
        liver: { dice_3_clicks: 0.95, curve: [0.9, 0.94, 0.95] },
        aorta: { dice_3_clicks: 0.86, curve: [0.8, 0.85, 0.86, 'x'] },
      },
    })
    expect(summary.interactive).toBe(true)
    expect(summary.mean).toBe(0.88)
    expect(summary.clicksToDice90).toBe(2.5)
    expect(summary.structures.map((s) => s.structure)).toEqual(['aorta', 'liver'])
    expect(summary.structures[0]).toEqual({ structure: 'aorta', dice: 0.86, curve: [0.8, 0.85, 0.86] })
  })

  it('prefers validation.clicker and reads plain per-structure Dice; the mean falls back to their average', () => {
    expect(validationSummary({ clicker: { per_structure: { spleen: { curve: [0.5, 0.7, 0.9, 0.92] } } } }).structures[0].dice).toBe(0.9)
    const plain = validationSummary({ per_structure: { liver: 0.9, spleen: 0.8 } })
    expect(plain.interactive).toBe(false)
    expect(plain.mean).toBeCloseTo(0.85)
    expect(validationSummary({})).toEqual({ mean: null, structures: [], interactive: false, clicksToDice90: null })
  })
})

const gate = {
  passed: false,
  heldout_scans: 6,
  mean_new: 0.81,
  mean_previous: 0.8,
  structures: [
    { structure: 'liver', previous: 0.9, new: 0.93, delta: 0.03, ok: true },
    { structure: 'postcava', previous: 0.7, new: 0.638, delta: -0.062, ok: false },
  ],
  failures: ['postcava lost 0.062 Dice'],
}

describe('promotion gate', () => {
  it('shows each structure’s old and new Dice from a 409 body or a decision', () => {
    const view = gateOfRefusal({ detail: 'promotion refused', error: 'conflict', details: { gate } })!
    expect(view.passed).toBe(false)
    expect(view.rows[1]).toEqual({ structure: 'postcava', previous: 0.7, next: 0.638, delta: -0.062, ok: false })
    expect(view.failures).toEqual(['postcava lost 0.062 Dice'])
    expect(gateView({})).toBeNull()
    expect(gateOfRefusal({ detail: 'no gate' })).toBeNull()
  })

  it('words a decision with version numbers', () => {
    const d = { kind: 'rollback', from_version_id: 12, to_version_id: 10 } as ModelDecision
    expect(decisionLine(d, new Map([[10, 1], [12, 3]]))).toBe('rollback v3 → v1')
  })
})

describe('training and rollback requests', () => {
  it('builds the train body: every approved version by default, or listed ids (at least two)', () => {
    expect(trainRequest(DEFAULT_TRAIN_FORM).body).toEqual({ epochs: 20, heldout_fraction: 0.25, seed: 0, init: 'promoted' })
    expect(trainRequest({ ...DEFAULT_TRAIN_FORM, versions: 'ids', ids: '4, 5 5;9' }).body?.label_version_ids).toEqual([4, 5, 9])
    expect(trainRequest({ ...DEFAULT_TRAIN_FORM, versions: 'ids', ids: '' }).error).toMatch(/List/)
    expect(trainRequest({ ...DEFAULT_TRAIN_FORM, versions: 'ids', ids: '4' }).error).toMatch(/at least 2/)
    expect(trainRequest({ ...DEFAULT_TRAIN_FORM, epochs: '0' }).error).toMatch(/Epochs/)
    expect(trainRequest({ ...DEFAULT_TRAIN_FORM, heldout: '1' }).error).toMatch(/held-out/)
  })

  it('requires a rollback reason', () => {
    expect(rollbackReason('   ').error).toMatch(/reason/)
    expect(rollbackReason(' worse on small livers ').body).toEqual({ reason: 'worse on small livers' })
  })

  it('finds the round of a training job', () => {
    const rounds = [{ job_id: 3, decision: 'kept' }, { job_id: 7, decision: 'promoted' }] as TrainingRound[]
    expect(roundOfJob(rounds, 7)?.decision).toBe('promoted')
    expect(roundOfJob(rounds, 9)).toBeNull()
  })
})
