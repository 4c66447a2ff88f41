/**
 * 2D zoom and pan of the slice views, as NiiVue keeps them: one `pan2Dxyzmm` = [x, y, z mm, zoom] shared by every
 * 2D tile (so the MPR views stay in step). A tile draws a world point p (mm, in the tile's plane) at screen
 * position `zoom * p + pan` of its unzoomed frame, so zooming about a point keeps that point where it is on screen.
 */

export type Vec3mm = [number, number, number]
/** NiiVue's `scene.pan2Dxyzmm`: pan in mm (x, y, z) and the zoom factor. */
export type Pan = [number, number, number, number]

export const MIN_ZOOM = 0.5
export const MAX_ZOOM = 20
/** One zoom step (a key press or a wheel notch): ×1.25. */
export const STEP = 1.25
/** Fit: the whole slice in its tile, no pan. */
export const FIT: Pan = [0, 0, 0, 1]

export function clampZoom(zoom: number): number {
  if (!isFinite(zoom)) return 1
  return Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, zoom))
}

/** The zoom `steps` steps in (positive) or out (negative) from `zoom`, clamped. */
export function stepZoom(zoom: number, steps: number): number {
  return clampZoom(zoom * Math.pow(STEP, steps))
}

/**
 * Zoom steps of a wheel event: a mouse notch (deltaY ±100 px, or ±3 lines) is one step; a trackpad pinch (which
 * Chromium sends as ctrl+wheel with small deltas) zooms in proportion. Wheel up (negative deltaY) zooms in.
 */
export function wheelSteps(deltaY: number, deltaMode = 0): number {
  const px = deltaMode === 1 ? deltaY * 33 : deltaMode === 2 ? deltaY * 600 : deltaY
  const steps = -px / 100
  return Math.max(-3, Math.min(3, steps))
}

/** The pan that shows `zoom` with the world point `point` (mm) staying where it is on screen. */
export function zoomAbout(pan: Pan, point: Vec3mm, zoom: number): Pan {
  const z = clampZoom(zoom)
  const change = pan[3] - z
  return [pan[0] + change * point[0], pan[1] + change * point[1], pan[2] + change * point[2], z]
}

/**
 * The pan that brings the world point `grabbed` (mm) to where `under` (the world point under the pointer now, at
 * the current pan) is drawn: a drag that keeps the grabbed point under the pointer.
 */
export function dragPan(pan: Pan, grabbed: Vec3mm, under: Vec3mm): Pan {
  const z = pan[3]
  return [pan[0] + z * (under[0] - grabbed[0]), pan[1] + z * (under[1] - grabbed[1]), pan[2] + z * (under[2] - grabbed[2]), z]
}

/** Where a world point is drawn (the tile's unzoomed mm frame), for checks: `zoom * p + pan`. */
export function screenOf(pan: Pan, point: Vec3mm): Vec3mm {
  return [pan[3] * point[0] + pan[0], pan[3] * point[1] + pan[1], pan[3] * point[2] + pan[2]]
}

/** The RAS axis normal to a 2D plane (0 axial → z, 1 coronal → y, 2 sagittal → x). */
export function normalAxis(plane: number): 0 | 1 | 2 {
  return plane === 1 ? 1 : plane === 2 ? 0 : 2
}

/** A slice index kept inside [0, count - 1]. */
export function clampSlice(index: number, count: number): number {
  return Math.max(0, Math.min(Math.max(0, count - 1), Math.round(index)))
}
