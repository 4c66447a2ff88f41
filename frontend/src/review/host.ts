/**
 * What the review workflow needs of the workspace it runs in: the narrow interface review code depends on (the
 * workspace implements it; nothing here imports the workspace).
 */

import type { Vec3 } from '../core/geometry'

export type AccessState = 'edit' | 'readonly' | 'locked'

export interface ReviewHost {
  readonly scanId: number
  /** The caller's role in the scan's project ('viewer' reads only). */
  role(): string
  /** Whether there is an unsaved edit (a submission or a reading names a saved version). */
  hasUnsavedChanges(): boolean
  /** The version the edit is based on: the caller's last save, or the version the scan opened on. */
  baseVersionId(): number | null
  /** The crosshair in the scan's stored voxel order, and the stored axis normal to the current 2D view. */
  crosshair(): { voxel: Vec3; sliceAxis: 0 | 1 | 2 }
  /** Move the crosshair to a voxel in the scan's stored order. */
  moveTo(voxel: Vec3): void
  /** The structure being edited, or null. */
  activeStructure(): string | null
  /** The schema's structures (name and `inside` parent) in schema order: the comment form offers them. */
  structures(): { name: string; inside: string | null }[]
  /**
   * The structures drawn at a voxel (stored order), the active one first: those whose working copy holds the voxel
   * (unsaved edits included), then the one the overlay of the others shows there. Empty on background.
   */
  structuresAt(voxel: Vec3): string[]
  /** Make a structure of the schema the active one (names outside the schema are ignored). */
  activate(name: string): void
  /** Bring the review tab of the side panel to the front. */
  showReviewTab(): void
  /** The workspace's access now: editable, read-only or locked by someone else's lease. */
  accessState(): AccessState
}
