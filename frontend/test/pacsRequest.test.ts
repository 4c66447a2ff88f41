import { describe, expect, it } from 'vitest'
import { type Series, chosenSeries, dicomDate, retrieveWords, searchQuery, seriesLine, sourceBody } from '../src/pacs/request'

const empty = { patient: '', studyDate: '', modality: 'CT', accession: '', description: '' }

describe('PACS requests', () => {
  it('sends the password only when typed', () => {
    expect(sourceBody({ baseUrl: ' http://127.0.0.1:8042/dicom-web ', username: '', password: '', deidentify: true }).body).toEqual({
      base_url: 'http://127.0.0.1:8042/dicom-web',
      deidentify: true,
      username: null,
    })
    expect(sourceBody({ baseUrl: 'http://pacs/dw', username: 'u', password: 's3cret', deidentify: false }).body?.password).toBe('s3cret')
    expect(sourceBody({ baseUrl: 'ftp://x', username: '', password: '', deidentify: false }).error).toMatch(/http/)
  })

  it('builds the QIDO query with the server’s rules', () => {
    expect(searchQuery({ ...empty, patient: 'PAT001', studyDate: '2024-01-01 to 2024-02-01', accession: 'A1' }).body?.toString()).toBe(
      'patient_id=PAT001&study_date=20240101-20240201&modality=CT&accession=A1',
    )
    expect(searchQuery({ ...empty, patient: 'Doe John', modality: 'ct', description: 'abdomen' }).body?.toString()).toBe(
      'patient_name=Doe+John&modality=CT&description=abdomen',
    )
    expect(searchQuery({ ...empty, studyDate: '2024' }).error).toMatch(/study date/)
    expect(searchQuery({ ...empty, patient: 'a\\b' }).error).toMatch(/backslash/)
    expect(searchQuery({ ...empty, modality: 'C T' }).error).toMatch(/modality/)
    expect(dicomDate('20240101-')).toBe('20240101-')
  })

  it('shows the rules’ pick and the retrieval outcome', () => {
    const base = { axial: true, description: 'venous 1mm', eligible: true, image_type: [], instances: 120, modality: 'CT', phase: 'venous', reason: null, scan_id: null, slice_thickness_mm: 1, series_uid: '1.2', number: 3 }
    const series: Series[] = [{ ...base, chosen: false, series_uid: '1.1' }, { ...base, chosen: true }]
    expect(chosenSeries(series)?.series_uid).toBe('1.2')
    expect(chosenSeries([])).toBeNull()
    expect(seriesLine(series[1])).toBe('#3 CT · venous 1mm · 120 slices · 1 mm · venous')
    expect(retrieveWords({ outcome: 'exists', scan_id: 4, job_id: null, series_uid: '1', series_number: 1, instances: 2, phase: null })).toMatch(/scan #4/)
  })
})
