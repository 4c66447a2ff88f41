/** Client-only shapes: the draft format (the server stores it as opaque JSON) and a conflict's error details. */

/** One structure's unsaved change: the stored-order box that differs from the base, bit-packed and gzipped. */
export interface DraftBox {
  origin: [number, number, number]
  size: [number, number, number]
  encoding: 'bits+gzip'
  data: string
}

export interface DraftPayload {
  format: 'maskloop-draft/1'
  base_version_id: number | null
  branch: boolean
  active: string | null
  updated_at: string
  structures: Record<string, DraftBox>
}

/** The `details` of a 409 stale-base conflict (the error body is {detail, error: 'conflict', details}). */
export interface ConflictBody {
  base_version_id: number | null
  head_version_id: number | null
  head_author: string | null
  head_message: string | null
  head_created_at: string | null
}
