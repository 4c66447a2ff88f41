/**
 * `#/models`: the project's models and their versions (weights status, validation: mean Dice, a per-structure table
 * and, for interactive models, a clicks-to-Dice chart per structure), promote and roll back (reason required) with
 * the promotion gate's per-structure old/new Dice, the decision list, and training launched and watched until its
 * round's decision appears.
 */

import { ApiError, api } from '../api/client'
import type { Project } from '../api/types'
import { dataTable, lines } from '../charts'
import { pretty } from '../core/structures'
import { clear, fmtTime, h, toast } from '../dom'
import { canRunJobs, errorText, openLeadPage } from '../lead'
import {
  DEFAULT_TRAIN_FORM,
  type GateView,
  type Job,
  type ModelDecision,
  type ModelOut,
  type ModelVersion,
  type TrainForm,
  type TrainingRound,
  decisionLine,
  delta,
  dice,
  gateOfRefusal,
  gateView,
  jobActive,
  rollbackReason,
  roundOfJob,
  trainRequest,
  validationSummary,
} from './request'

const POLL_MS = 2000

/** The gate's per-structure previous/new Dice as a table. */
export function gateTable(gate: GateView, testid: string): HTMLElement {
  return h(
    'div',
    { class: 'gate', 'data-testid': testid, 'data-passed': String(gate.passed) },
    h(
      'p',
      { class: gate.passed ? 'ok' : 'form-error' },
      `${gate.passed ? 'Gate passed' : 'Gate refused'}: held-out mean Dice ${dice(gate.meanPrevious)} → ${dice(gate.meanNew)}` +
        (gate.heldoutScans !== null ? ` on ${gate.heldoutScans} scans` : ''),
    ),
    gate.failures.length ? h('ul', { class: 'gate-failures' }, gate.failures.map((f) => h('li', null, f))) : null,
    dataTable({
      head: ['Structure', 'Old Dice', 'New Dice', 'Δ', 'OK'],
      rows: gate.rows.map((r) => [pretty(r.structure), dice(r.previous), dice(r.next), delta(r.delta), r.ok ? '✓' : '✗']),
      testid: `${testid}-table`,
    }),
  )
}

/** The validation of a version: mean, per-structure table, click curves. */
function validationBlock(v: ModelVersion): HTMLElement {
  const summary = validationSummary(v.validation)
  if (!summary.structures.length && summary.mean === null) return h('span', { class: 'muted' }, 'No validation metrics.')
  const head = summary.interactive ? ['Structure', 'Dice after 3 clicks', 'Clicks 1…10'] : ['Structure', 'Dice']
  const rows = summary.structures.map((s) =>
    summary.interactive ? [pretty(s.structure), dice(s.dice), s.curve.map((x) => x.toFixed(2)).join(' ')] : [pretty(s.structure), dice(s.dice)],
  )
  const curves = summary.interactive
    ? h(
        'div',
        { class: 'click-curves', 'data-testid': `click-curves-${v.id}` },
        summary.structures
          .filter((s) => s.curve.length)
          .map((s) =>
            h(
              'figure',
              { class: 'click-curve', 'data-testid': `click-curve-${v.id}-${s.structure}` },
              h('figcaption', null, pretty(s.structure)),
              lines(
                s.curve.map((_, i) => String(i + 1)),
                [{ name: s.structure, values: s.curve }],
                { width: 220, height: 120, yMin: 0, yMax: 1, format: (x) => x.toFixed(2) },
              ),
            ),
          ),
      )
    : null
  return h(
    'details',
    { class: 'validation', 'data-testid': `validation-${v.id}` },
    h(
      'summary',
      null,
      `mean Dice ${dice(summary.mean)}`,
      summary.clicksToDice90 !== null ? ` · ${summary.clicksToDice90} clicks to Dice 0.90` : '',
    ),
    dataTable({ head, rows, testid: `validation-table-${v.id}` }),
    curves,
  )
}

export class ModelsPage {
  readonly root: HTMLElement
  private project!: Project
  private body!: HTMLElement
  private timers = new Set<number>()

  constructor(root: HTMLElement) {
    this.root = root
  }

  async open(): Promise<void> {
    const frame = await openLeadPage(this.root, 'models', 'models page')
    if (!frame) return
    this.project = frame.project
    this.body = frame.body
    await this.render()
  }

  private async render(): Promise<void> {
    const models = await api.get<ModelOut[]>(`/api/projects/${this.project.id}/models`)
    if (!this.body.isConnected) return
    clear(this.body)
    this.body.append(
      h(
        'div',
        { class: 'wl-head' },
        h('h1', null, 'Models'),
        h('p', { class: 'muted' }, 'Versions, their validation, promotion (gated per structure), rollback and training.'),
        h('a', { href: `#/loop?project=${this.project.id}`, 'data-testid': 'models-to-loop' }, 'Pre-annotation, attention and assignment →'),
      ),
    )
    if (!models.length) this.body.append(h('p', { class: 'muted', 'data-testid': 'models-empty' }, 'No models registered in this project.'))
    for (const model of models) {
      const section = h('section', { class: 'model-card', 'data-testid': `model-${model.name}`, 'data-model-id': String(model.id) })
      this.body.append(section)
      void this.fillModel(section, model)
    }
  }

  private async fillModel(section: HTMLElement, model: ModelOut): Promise<void> {
    const [versions, decisions] = await Promise.all([
      api.get<ModelVersion[]>(`/api/models/${model.id}/versions`),
      api.get<ModelDecision[]>(`/api/models/${model.id}/decisions`),
    ])
    const numbers = new Map(versions.map((v) => [v.id, v.number]))
    const mayAct = canRunJobs(this.project)
    const message = h('div', { class: 'model-message', 'data-testid': `model-message-${model.name}` })
    // A refresh keeps the training form (and the job it watches).
    const kept = section.querySelector<HTMLElement>('.train-form')
    clear(section)
    section.append(
      h(
        'h2',
        null,
        model.name,
        h('span', { class: 'muted small' }, ` ${model.architecture} · ${model.structures.length} structures · promotion ${model.promotion_policy}`),
      ),
      h(
        'table',
        { class: 'data-table model-versions', 'data-testid': `versions-${model.name}` },
        h('thead', null, h('tr', null, ['Version', 'Status', 'Weights', 'Validation', 'Created', ''].map((t) => h('th', null, t)))),
        h(
          'tbody',
          null,
          [...versions].reverse().map((v) => this.versionRow(model, v, versions, mayAct, message)),
        ),
      ),
      message,
      this.decisionList(model, decisions, numbers),
    )
    if (mayAct) section.append(kept ?? this.trainForm(model))
  }

  private versionRow(model: ModelOut, v: ModelVersion, all: ModelVersion[], mayAct: boolean, message: HTMLElement): HTMLElement {
    const promoted = all.find((x) => x.is_promoted)
    const older = promoted !== undefined && v.number < promoted.number
    const actions: HTMLElement[] = []
    if (mayAct && !v.is_promoted && v.weights_status === 'valid') {
      if (older)
        actions.push(h('button', { class: 'btn small', 'data-testid': `rollback-${v.id}`, onclick: () => this.askRollback(model, v, message) }, 'Roll back to this'))
      else actions.push(h('button', { class: 'btn small primary', 'data-testid': `promote-${v.id}`, onclick: () => void this.promote(model, v, message) }, 'Promote'))
    }
    return h(
      'tr',
      { 'data-testid': `version-${v.id}`, 'data-number': String(v.number), 'data-promoted': String(v.is_promoted) },
      h('td', { class: 'case' }, `v${v.number}`),
      h('td', null, v.is_promoted ? h('span', { class: 'status-chip succeeded', 'data-testid': `promoted-${v.id}` }, 'promoted') : h('span', { class: 'muted' }, '—')),
      h('td', null, h('span', { class: `status-chip ${v.weights_status === 'valid' ? 'succeeded' : v.weights_status === 'invalid' ? 'failed' : 'queued'}` }, v.weights_status)),
      h('td', null, validationBlock(v)),
      h('td', { class: 'nowrap' }, fmtTime(v.created_at)),
      h('td', { class: 'nowrap' }, actions),
    )
  }

  private async promote(model: ModelOut, v: ModelVersion, message: HTMLElement): Promise<void> {
    clear(message)
    try {
      await api.post<ModelVersion>(`/api/model-versions/${v.id}/promote`, { json: { reason: '' } })
      toast(`${model.name} v${v.number} promoted`, 'ok')
      await this.refreshModel(model)
    } catch (err) {
      const gate = err instanceof ApiError ? gateOfRefusal(err.body) : null
      message.append(h('p', { class: 'form-error', 'data-testid': `promote-error-${model.name}` }, errorText(err)))
      if (gate) message.append(gateTable(gate, `refused-gate-${model.name}`))
    }
  }

  private askRollback(model: ModelOut, v: ModelVersion, message: HTMLElement): void {
    clear(message)
    const reason = h('input', { type: 'text', maxlength: '1000', placeholder: 'Why roll back (recorded with the decision)', 'data-testid': `rollback-reason-${model.name}` })
    const error = h('p', { class: 'form-error', hidden: true, 'data-testid': `rollback-error-${model.name}` })
    const go = async (): Promise<void> => {
      const built = rollbackReason(reason.value)
      if (built.error !== undefined) {
        error.textContent = built.error
        error.hidden = false
        return
      }
      try {
        await api.post<ModelVersion>(`/api/model-versions/${v.id}/rollback`, { json: built.body })
        toast(`${model.name} rolled back to v${v.number}`, 'ok')
        await this.refreshModel(model)
      } catch (err) {
        error.textContent = errorText(err)
        error.hidden = false
      }
    }
    message.append(
      h(
        'form',
        { class: 'rollback-form', 'data-testid': `rollback-form-${model.name}`, onsubmit: (e: Event) => (e.preventDefault(), void go()) },
        h('label', { class: 'field' }, `Roll ${model.name} back to v${v.number}: reason`, reason),
        h('button', { class: 'btn danger', type: 'submit', 'data-testid': `rollback-confirm-${model.name}` }, 'Roll back'),
        error,
      ),
    )
    reason.focus()
  }

  private async refreshModel(model: ModelOut): Promise<void> {
    const section = this.body.querySelector<HTMLElement>(`[data-model-id="${model.id}"]`)
    if (section) await this.fillModel(section, model)
  }

  private decisionList(model: ModelOut, decisions: ModelDecision[], numbers: Map<number, number>): HTMLElement {
    return h(
      'details',
      { class: 'decisions', open: decisions.length > 0, 'data-testid': `decisions-${model.name}` },
      h('summary', null, `Decisions (${decisions.length})`),
      decisions.length
        ? h(
            'ol',
            { class: 'decision-list' },
            [...decisions].reverse().map((d) => {
              const gate = gateView(d.gate)
              return h(
                'li',
                { 'data-testid': `decision-${d.id}`, 'data-kind': d.kind },
                h('b', null, decisionLine(d, numbers)),
                ` · ${fmtTime(d.created_at)}`,
                d.reason ? h('span', { class: 'decision-reason' }, ` · “${d.reason}”`) : null,
                gate ? gateTable(gate, `decision-gate-${d.id}`) : null,
              )
            }),
          )
        : h('p', { class: 'muted' }, 'No promotions or rollbacks yet.'),
    )
  }

  private trainForm(model: ModelOut): HTMLElement {
    const f: TrainForm = { ...DEFAULT_TRAIN_FORM }
    const versions = h(
      'select',
      { 'data-testid': `train-versions-${model.name}` },
      h('option', { value: 'approved' }, 'Every approved version'),
      h('option', { value: 'ids' }, 'Approved label version ids…'),
    )
    const ids = h('input', { type: 'text', placeholder: '12, 15, 18', hidden: true, 'data-testid': `train-ids-${model.name}` })
    versions.addEventListener('change', () => (ids.hidden = versions.value !== 'ids'))
    const epochs = h('input', { type: 'number', min: '1', max: '1000', value: f.epochs, 'data-testid': `train-epochs-${model.name}` })
    const heldout = h('input', { type: 'number', min: '0.05', max: '0.95', step: '0.05', value: f.heldout, 'data-testid': `train-heldout-${model.name}` })
    const error = h('p', { class: 'form-error', hidden: true, 'data-testid': `train-error-${model.name}` })
    const watch = h('div', { class: 'train-watch', 'data-testid': `train-watch-${model.name}` })
    const submit = async (): Promise<void> => {
      const built = trainRequest({ ...f, versions: versions.value as TrainForm['versions'], ids: ids.value, epochs: epochs.value, heldout: heldout.value })
      error.hidden = built.error === undefined
      if (built.error !== undefined) {
        error.textContent = built.error
        return
      }
      try {
        const job = await api.post<Job>(`/api/projects/${this.project.id}/models/${model.id}/train`, { json: built.body })
        this.watchTraining(model, job, watch)
      } catch (err) {
        error.textContent = errorText(err)
        error.hidden = false
      }
    }
    return h(
      'form',
      { class: 'train-form', 'data-testid': `train-form-${model.name}`, onsubmit: (e: Event) => (e.preventDefault(), void submit()) },
      h('h3', null, 'Train a new version'),
      h('label', { class: 'field' }, 'Training data', versions, ids),
      h('label', { class: 'field' }, 'Epochs', epochs),
      h('label', { class: 'field' }, 'Held-out fraction', heldout),
      h('button', { class: 'btn primary', type: 'submit', 'data-testid': `train-start-${model.name}` }, 'Start training'),
      error,
      watch,
    )
  }

  /** Follow a training job; once it finished, show its round's decision and gate, and refresh the versions. */
  private watchTraining(model: ModelOut, job: Job, watch: HTMLElement): void {
    clear(watch)
    const line = h('p', { 'data-testid': `train-job-${model.name}`, 'data-status': job.status }, `Training job #${job.id}: ${job.status}`)
    watch.append(line)
    const tick = async (): Promise<void> => {
      if (!watch.isConnected) return
      const now = await api.get<Job>(`/api/jobs/${job.id}`).catch(() => job)
      line.dataset.status = now.status
      line.textContent = `Training job #${now.id}: ${now.status}${now.status === 'running' ? ` ${Math.round(now.progress * 100)}%` : ''}${now.message ? ` · ${now.message}` : ''}`
      if (now.error) line.append(h('span', { class: 'form-error' }, ` ${now.error}`))
      if (jobActive(now)) {
        this.later(tick)
        return
      }
      const rounds = await api.get<TrainingRound[]>(`/api/models/${model.id}/rounds`).catch(() => [] as TrainingRound[])
      const round = roundOfJob(rounds, now.id)
      if (round) {
        watch.append(
          h('p', { 'data-testid': `train-decision-${model.name}`, 'data-decision': round.decision }, `Decision: ${round.decision}${round.promoted ? ' (promoted)' : ''}`),
        )
        const gate = gateView(round.gate)
        if (gate) watch.append(gateTable(gate, `train-gate-${model.name}`))
      }
      await this.refreshModel(model)
    }
    this.later(tick)
  }

  private later(fn: () => Promise<void>): void {
    const id = window.setTimeout(() => {
      this.timers.delete(id)
      void fn()
    }, POLL_MS)
    this.timers.add(id)
  }
}
