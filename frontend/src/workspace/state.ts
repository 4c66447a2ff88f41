/** The workspace's state: one typed store the panels, bars and the status pill subscribe to. */

import type { DiffOut, Priority, Version } from '../api/types'
import type { LockReason } from '../core/access'
import type { OverwritePolicy } from '../core/hierarchy'
import type { ToolId } from '../core/shortcuts'
import type { HuRange } from '../core/tools'
import { type Store, createStore } from '../store'
import type { Layout } from '../viewer'

export type Mode = { kind: 'edit' } | { kind: 'view'; versionId: number } | { kind: 'compare'; a: number; b: number; structure: string | null }

export type SaveState = 'loading' | 'saved' | 'dirty' | 'saving' | 'conflict' | 'offline' | 'readonly' | 'locked' | 'error'

export interface StructureView {
  visible: boolean
  opacity: number
  /** Drawn as an outline instead of filled. */
  outline?: boolean
  /** Never changed by any tool (brush, eraser, operations, AI refine, interpolation, the hierarchy, overwrite). */
  locked?: boolean
}

/** The attention overlay as the panel shows it (the heat volume itself stays with the attention module). */
export interface AttentionView {
  on: boolean
  structure: string | null
  regions: number
  /** The region last jumped to (-1: none yet). */
  index: number
}

export interface WorkspaceState {
  /** The caller's role in the scan's project (viewer: read-only). */
  role: string
  mode: Mode
  saveState: SaveState
  /** The pill's text when not the state's default. */
  saveText: string | null
  /** The structure being edited, and the same once its mask, drawing layer and overlay are in place. */
  active: string | null
  activeLoaded: string | null
  tool: ToolId
  brushMm: number
  huOn: boolean
  hu: HuRange
  labelsOn: boolean
  layout: Layout
  /** The 2D zoom factor (1: the whole slice fits its tile), the crosshair lines shown, space held (drag pans). */
  zoom: number
  crosshair: boolean
  spacePan: boolean
  /** Visibility and opacity per structure; replaced (not mutated) on every change. */
  views: ReadonlyMap<string, StructureView>
  versions: Version[]
  /** The version the edit session started from (the last save, a restored draft's base, or the head). */
  baseVersion: Version | null
  headVersionId: number | null
  /** The edit session as the views see it: bumped on every change of its working copies. */
  sessionRev: number
  sessionBase: number | null
  branch: boolean
  dirty: readonly string[]
  /** The last comparison (shown while comparing). */
  diff: DiffOut | null
  draftInfo: string
  /** Why the caller may not edit now (role, task state, someone else's lease), or null. */
  access: LockReason | null
  /** The caller reads this scan blinded in an open reader set. */
  reading: boolean
  attention: AttentionView
  attentionOpacity: number
  priorities: Priority[]
  /** Every structure drawn as an outline; a parent drawn as an outline under its (present) parts. */
  outlineAll: boolean
  parentOutline: boolean
  /** Whether an edit that adds voxels erases the other structures there (off / all / visible ones); per user. */
  overwrite: OverwritePolicy
}

export type WorkspaceStore = Store<WorkspaceState>

/** The 2D plane a layout edits in (0 axial, 1 coronal, 2 sagittal; MPR and 3D edit axially). */
export function planeOf(layout: Layout): number {
  return layout === 'coronal' ? 1 : layout === 'sagittal' ? 2 : 0
}

export function createWorkspaceStore(): WorkspaceStore {
  return createStore<WorkspaceState>({
    role: 'annotator',
    mode: { kind: 'edit' },
    saveState: 'loading',
    saveText: null,
    active: null,
    activeLoaded: null,
    // Scans open in Navigate: a stray click must not paint.
    tool: 'navigate',
    brushMm: 10,
    huOn: false,
    hu: { lo: -100, hi: 250 },
    labelsOn: true,
    layout: 'axial',
    zoom: 1,
    crosshair: true,
    spacePan: false,
    views: new Map(),
    versions: [],
    baseVersion: null,
    headVersionId: null,
    sessionRev: 0,
    sessionBase: null,
    branch: false,
    dirty: [],
    diff: null,
    draftInfo: '',
    access: null,
    reading: false,
    attention: { on: false, structure: null, regions: 0, index: -1 },
    attentionOpacity: 0.7,
    priorities: [],
    outlineAll: false,
    parentOutline: true,
    overwrite: 'off',
  })
}
