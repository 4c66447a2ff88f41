/** Shapes of the JSON the backend answers with (backend/<domain>/schemas.py). */

export interface User {
  id: number
  email: string
  display_name: string
  is_admin: boolean
  is_service: boolean
  is_active: boolean
}

export interface TokenOut {
  access_token: string
  token_type: string
  expires_at: string | null
  user: User
}

export interface Project {
  id: number
  slug: string
  name: string
  description: string
  role: string
  created_at: string
  settings: Record<string, unknown>
}

export interface Structure {
  id: number
  label_value: number
  name: string
  position: number
  color: string
  group: string
  inside: string | null
  aliases: string[]
}

export interface SchemaOut {
  name: string
  structures: Structure[]
}

export interface Scan {
  id: number
  project_id: number
  case_id: string
  split: string | null
  shape: number[]
  spacing: number[]
  affine: number[][]
  orientation: string
  slice_count: number
  slice_thickness: number | null
  site: string | null
  phase: string | null
  sex: string | null
  age: number | null
  manufacturer: string | null
  tumor: boolean | null
  lesion_instances: number | null
  image_bytes: number
  head_version_id: number | null
  created_at: string
}

export interface ScanPage {
  items: Scan[]
  total: number
  page: number
  page_size: number
}

export interface Facets {
  facets: Record<string, Record<string, number>>
}

export interface ScanPriority {
  scan_id: number
  case_id: string
  score: number
}

export interface Priority {
  scan_id: number
  case_id: string
  structure: string
  priority: number
  attention_voxels: number
}

export interface VersionStructure {
  name: string
  label_value: number
  status: string
  voxel_count: number
  volume_ml: number
  changed: boolean
}

export interface Version {
  id: number
  scan_id: number
  parent_id: number | null
  /** a fusion's input versions, in the readers' order (parent_id is the first) */
  input_version_ids?: number[]
  kind: string
  author: { user_id: number | null; display_name: string | null; model_version_id: number | null }
  message: string
  created_at: string
  is_head: boolean
  is_branch: boolean
  new_bytes: number
  structures: VersionStructure[]
}

export interface StructureDiff {
  structure: string
  status_a: string
  status_b: string
  voxels_a: number
  voxels_b: number
  intersection: number
  added: number
  removed: number
  dice: number | null
}

export interface DiffOut {
  version_a: number
  version_b: number
  structures: StructureDiff[]
}

export interface DraftOut {
  scan_id: number
  base_version_id: number | null
  updated_at: string
  payload_bytes: number
  payload: DraftPayload
  base_is_head: boolean
}

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

/** A project member (GET /api/projects/{id}/members). */
export interface Member {
  user_id: number
  email: string
  display_name: string
  role: string
}

/** One audit event (GET /api/projects/{id}/audit). */
export interface AuditEvent {
  id: number
  at: string
  actor_user_id: number | null
  project_id: number | null
  scan_id: number | null
  action: string
  entity_type: string
  entity_id: string
  details: Record<string, unknown>
}

export interface AuditPage {
  items: AuditEvent[]
  total: number
  page: number
  page_size: number
}

/** The review workflow (backend/workflow/schemas.py). */
export type TaskState =
  | 'new'
  | 'pre_annotated'
  | 'annotating'
  | 'submitted'
  | 'in_review'
  | 'changes_requested'
  | 'approved'
  | 'adjudication'

export interface UserRef {
  id: number
  username: string
}

export interface TaskLease {
  user_id: number
  username: string
  expires_at: string
}

export interface TaskOut {
  scan_id: number
  case_id: string
  state: TaskState
  review_level: number
  review_level_name?: string | null
  review_levels: string[]
  priority: number
  assignee: UserRef | null
  reviewer: UserRef | null
  lease: TaskLease | null
  site: string | null
  phase: string | null
  tumor: boolean | null
  open_findings: number
  active_seconds: number
  head_version_id: number | null
  submitted_version_id: number | null
  approved_version_id: number | null
  updated_at: string
  allowed_actions: string[]
}

export interface TaskPage {
  items: TaskOut[]
  total: number
  page: number
  page_size: number
}

export interface CommentIn {
  version_id?: number | null
  structure?: string | null
  slice_axis?: number | null
  slice_index?: number | null
  voxel?: [number, number, number] | null
  text: string
}

export interface CommentOut extends CommentIn {
  id: number
  author: UserRef | null
  created_at: string
  resolved: boolean
  review_id: number | null
}

export interface ReviewOut {
  id: number
  scan_id: number
  version_id: number
  decision: 'approve' | 'request_changes'
  message: string
  review_level: number
  reviewer: UserRef | null
  created_at: string
  comments?: CommentOut[]
}

export interface FindingOut {
  id: number
  scan_id: number
  version_id: number | null
  rule: string
  structure: string | null
  severity: 'info' | 'warning' | 'error'
  message: string
  details: Record<string, unknown>
  status: 'open' | 'resolved' | 'dismissed'
  created_at: string
}

export interface ReaderSetMemberOut {
  user_id: number
  display_name: string
  submitted: boolean
  version_id: number | null
  submitted_at: string | null
}

export interface ReaderSetOut {
  id: number
  scan_id: number
  base_version_id: number | null
  status: string
  members: ReaderSetMemberOut[]
  agreement?: Record<string, unknown>
}
