/**
 * What the workspace's parts share: the store, the shell's elements, the loaded scan, the viewer and the edit
 * session, and the small interfaces the parts offer one another. Types only; every part depends on this module
 * and none on another part's file, so the parts never import each other.
 */

import type { Scan, SchemaOut, Structure, Version } from '../api/types'
import type { LockReason } from '../core/access'
import type { LabelColor } from '../core/colors'
import type { EditSession } from '../core/editSession'
import type { Disagreement, OverwritePolicy } from '../core/hierarchy'
import type { ReviewController } from '../review'
import type { Viewer } from '../viewer'
import type { SaveState, WorkspaceStore } from './state'

export interface ShellElements {
  root: HTMLElement
  header: HTMLElement
  pill: HTMLElement
  draft: HTMLElement
  toolbar: HTMLElement
  viewbar: HTMLElement
  stage: HTMLElement
  canvas: HTMLCanvasElement
  cursor: HTMLElement
  banner: HTMLElement
  loading: HTMLElement
  progressLabel: HTMLElement
  progressBar: HTMLElement
  readout: HTMLElement
  side: HTMLElement
  tabStructures: HTMLElement
  tabVersions: HTMLElement
  tabAttention: HTMLElement
}

export type TabId = 'structures' | 'versions' | 'attention' | 'review'

/** The active structure in the drawing layer, the others in the read-only overlay (editor.ts). */
export interface EditorPort {
  setActive(name: string): Promise<void>
  /** Rebuild the read-only overlay: the base version's other structures plus this session's unsaved edits. */
  composeOverlay(): Promise<void>
  /** A version's combined label map (stored order), without one structure. */
  combinedMap(versionId: number, exclude: string | null): Promise<Uint8Array>
  /** Forget the cached combined maps (a new base). */
  clearOverlayCache(): void
  /** Overlay colours of every structure (visibility, opacity, "other structures" switch). */
  colors(): LabelColor[]
  /** Refuse an edit with a message when the workspace is read-only, viewing a version, or has no active structure. */
  refuseEdit(): boolean
  undo(): void
  redo(): void
  interpolate(): void
  paintVoxels(name: string, voxels: [number, number, number][], value: number): Promise<number>
  /** The structure is locked: no tool changes it (structureRules.ts). */
  isLocked(name: string): boolean
  /** Resolves once the last edit's linked changes (parents, parts, overwritten structures) are in place. */
  settled(): Promise<void>
  /** The pre-save check: parts outside their parent among the pairs with an edited side. */
  hierarchyIssues(): Promise<Disagreement[]>
  /** One-click fix of a disagreement as one undoable edit: add to the parent, or remove from the part. */
  fixIssue(issue: Disagreement, how: 'parent' | 'part'): Promise<number>
  /** Choose the overwrite policy (kept per user in this browser). */
  setOverwrite(policy: OverwritePolicy): void
}

/** The attention heat overlay (attention.ts). */
export interface AttentionPort {
  /** Show (or hide) the attention map of a structure. */
  show(on: boolean, structure?: string | null): Promise<void>
  /** Show or hide the map (the shortcut A). */
  toggle(): Promise<void>
  /** Jump to the next attention region (largest first), showing the map first if needed. */
  next(): Promise<void>
  /** While a map is shown, switch it to the newly active structure. */
  follow(structure: string): Promise<void>
  /** The overlay was taken off the viewer (back to editing): mark the map as hidden. */
  hidden(): void
}

/** The autosaved draft (draftSync.ts). */
export interface DraftPort {
  schedule(): void
  saveLocal(): Promise<void>
  flushLocal(): void
  /** Remove the drafts (browser and server) after a save or a discard; `resetInfo` clears the header's note now. */
  clear(resetInfo: boolean): Promise<void>
}

/** Saving versions (saving.ts). */
export interface SavingPort {
  readonly saving: boolean
  save(message?: string): Promise<Version | null>
  discard(): Promise<void>
}

export interface WorkspaceContext {
  readonly scanId: number
  readonly store: WorkspaceStore
  readonly el: ShellElements
  readonly scan: Scan
  readonly schema: SchemaOut
  readonly viewer: Viewer
  readonly session: EditSession
  readonly review: ReviewController
  readonly editor: EditorPort
  readonly attention: AttentionPort
  readonly drafts: DraftPort
  readonly saving: SavingPort
  readonly structures: Structure[]
  structure(name: string): Structure
  /** Why the workspace is read-only for the caller now, or null (computed afresh at each call). */
  lockReason(): LockReason | null
  setSaveState(state: SaveState, text?: string): void
  /** The edit session changed (or the access or connectivity did): the pill and the drafts follow. */
  onSessionChange(): void
  /** Reload the scan's versions into the store. */
  loadVersions(): Promise<void>
  /** Start a fresh edit session on another base version (restoring a draft made on it). */
  newSession(baseVersionId: number | null): EditSession
  showTab(id: TabId): void
  /** Report an unexpected error (console and a toast). */
  fail(err: unknown): void
}
