/**
 * The PACS page as data (no DOM): the source body (the password sent only when typed, never shown back), the QIDO
 * search query with the server's own rules checked first, and the series the choice rules picked. Unit-tested
 * under Node (test/pacsRequest.test.ts).
 */

import type { components } from '../api/schema'

export type PacsSource = components['schemas']['PacsSourceOut']
export type PacsSourceIn = components['schemas']['PacsSourceIn']
export type Study = components['schemas']['StudyOut']
export type Series = components['schemas']['SeriesOut']
export type RetrieveOut = components['schemas']['RetrieveOut']
export type StowOut = components['schemas']['StowOut']

export type Built<T> = { body: T; error?: undefined } | { body?: undefined; error: string }

export interface SourceForm {
  baseUrl: string
  username: string
  password: string
  deidentify: boolean
}

/** The PUT body of the source; an empty password field keeps the stored one (it is never shown back). */
export function sourceBody(form: SourceForm): Built<PacsSourceIn> {
  const url = form.baseUrl.trim()
  if (!/^https?:\/\/[^\s/]+/.test(url)) return { error: 'The DICOMweb base URL must start with http:// or https://.' }
  const body: PacsSourceIn = { base_url: url, deidentify: form.deidentify, username: form.username.trim() || null }
  if (form.password) body.password = form.password
  return { body }
}

export interface SearchForm {
  patient: string
  studyDate: string
  modality: string
  accession: string
  description: string
}

const NO_BACKSLASH = /\\/
const DATE = /^(\d{8})?-?(\d{8})?$/

/** A date typed as 2024-01-31 or 20240131 (or a range of them) in the DICOM form YYYYMMDD[-YYYYMMDD]. */
export function dicomDate(text: string): string {
  return text.trim().replace(/(\d{4})-(\d{2})-(\d{2})/g, '$1$2$3').replace(/\s*(to|–|—)\s*/g, '-').replace(/\s+/g, '')
}

/** The QIDO search query; the patient field is an id when it has digits and no spaces, else a name. */
export function searchQuery(form: SearchForm): Built<URLSearchParams> {
  const params = new URLSearchParams()
  const fields: [string, string, number][] = [
    ['patient', form.patient.trim(), 64],
    ['accession', form.accession.trim(), 16],
    ['description', form.description.trim(), 64],
  ]
  for (const [name, value, max] of fields) {
    if (NO_BACKSLASH.test(value)) return { error: `The ${name} may not contain a backslash.` }
    if (value.length > max) return { error: `The ${name} takes at most ${max} characters.` }
  }
  const patient = form.patient.trim()
  if (patient) params.set(/\d/.test(patient) && !/\s/.test(patient) ? 'patient_id' : 'patient_name', patient)
  const date = dicomDate(form.studyDate)
  if (date) {
    if (!DATE.test(date) || date === '-') return { error: 'The study date is YYYYMMDD (or 2024-01-31), or a range YYYYMMDD-YYYYMMDD.' }
    params.set('study_date', date)
  }
  const modality = form.modality.trim().toUpperCase()
  if (modality && !/^[A-Z0-9]{1,16}$/.test(modality)) return { error: 'The modality is a DICOM code such as CT.' }
  params.set('modality', modality)
  if (form.accession.trim()) params.set('accession', form.accession.trim())
  if (form.description.trim()) params.set('description', form.description.trim())
  return { body: params }
}

/** The series the choice rules pick (the server marks it `chosen`), or null when none is eligible. */
export function chosenSeries(series: Series[]): Series | null {
  return series.find((s) => s.chosen) ?? null
}

/** One line for a series: "#3 CT · 120 slices · 1.25 mm · venous". */
export function seriesLine(s: Series): string {
  return [
    `#${s.number ?? '?'} ${s.modality}`,
    s.description,
    `${s.instances} slices`,
    s.slice_thickness_mm !== null ? `${s.slice_thickness_mm} mm` : null,
    s.phase,
  ]
    .filter(Boolean)
    .join(' · ')
}

/** The words of a retrieval's outcome. */
export function retrieveWords(r: RetrieveOut): string {
  if (r.outcome === 'exists') return `Already imported as scan #${r.scan_id}.`
  if (r.outcome === 'in_progress') return `Already being retrieved (job #${r.job_id}).`
  return `Retrieving series ${r.series_number ?? ''} (${r.instances} instances) as job #${r.job_id}.`
}
