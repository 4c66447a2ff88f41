/**
 * Navigation over the image: zoom with ctrl+wheel (and a trackpad pinch, which the browser sends as ctrl+wheel)
 * or the keys about the pointer, pan with a middle-button drag or a space+drag, fit, the crosshair switch. Zoom and
 * pan are NiiVue's shared 2D pan (`Viewer.setPan`), so the MPR views stay in step; the store's `zoom` follows
 * every redraw (also NiiVue's own changes).
 */

import type { Vec3mm } from '../core/zoom'
import { stepZoom, wheelSteps } from '../core/zoom'
import type { WorkspaceContext } from './context'

export class Navigation {
  private readonly ctx: WorkspaceContext
  /** The last pointer position over the stage (keys zoom about it), or null when the pointer is elsewhere. */
  private pointer: { x: number; y: number } | null = null
  private drag: { grabbed: Vec3mm; tile: number } | null = null

  constructor(ctx: WorkspaceContext) {
    this.ctx = ctx
    ctx.store.watch(
      (s) => s.crosshair,
      (on) => ctx.viewer?.setCrosshairVisible(on),
    )
    ctx.store.watch(
      (s) => s.spacePan,
      (on) => (on ? (ctx.el.stage.dataset.pan = 'ready') : delete ctx.el.stage.dataset.pan),
    )
  }

  /** The viewer redrew: the store's zoom follows it. */
  onDraw(): void {
    const zoom = this.ctx.viewer?.zoom
    if (zoom !== undefined && isFinite(zoom)) this.ctx.store.set({ zoom: Math.round(zoom * 1000) / 1000 })
  }

  /** `steps` zoom steps in (positive) or out, about the pointer when it is over a slice, else the crosshair. */
  zoomBy(steps: number): void {
    const viewer = this.ctx.viewer
    if (!viewer?.ct) return
    viewer.zoomTo(stepZoom(viewer.zoom, steps), this.pointer)
  }

  fit(): void {
    this.ctx.viewer?.fit()
  }

  toggleCrosshair(): void {
    this.ctx.store.set({ crosshair: !this.ctx.store.get().crosshair })
  }

  /** Listen on the stage (capture phase: NiiVue never sees a ctrl+wheel or a pan drag). */
  bind(stage: HTMLElement): () => void {
    const { ctx } = this
    const wheel = (e: WheelEvent): void => {
      if (!(e.ctrlKey || e.metaKey) || !ctx.viewer?.ct) return
      if (!ctx.viewer.mmAt(e.clientX, e.clientY)) return // the 3D tile: NiiVue's own wheel
      e.preventDefault()
      e.stopPropagation()
      this.pointer = { x: e.clientX, y: e.clientY }
      ctx.viewer.zoomTo(stepZoom(ctx.viewer.zoom, wheelSteps(e.deltaY, e.deltaMode)), this.pointer)
    }
    const move = (e: MouseEvent): void => {
      if (!this.drag) return
      e.preventDefault()
      e.stopPropagation()
      ctx.viewer.dragTo(this.drag.grabbed, this.drag.tile, e.clientX, e.clientY)
    }
    const up = (e: MouseEvent): void => {
      window.removeEventListener('mousemove', move, true)
      window.removeEventListener('mouseup', up, true)
      if (!this.drag) return
      e.preventDefault()
      e.stopPropagation()
      this.drag = null
      if (ctx.store.get().spacePan) ctx.el.stage.dataset.pan = 'ready'
      else delete ctx.el.stage.dataset.pan
    }
    const down = (e: MouseEvent): void => {
      const pan = e.button === 1 || (e.button === 0 && ctx.store.get().spacePan)
      if (!pan || !ctx.viewer?.ct) return
      if ((e.target as HTMLElement | null)?.closest?.('.comment-layer')) return
      const at = ctx.viewer.mmAt(e.clientX, e.clientY)
      if (!at) return
      e.preventDefault()
      e.stopPropagation()
      this.drag = { grabbed: at.mm, tile: at.tile }
      ctx.el.stage.dataset.pan = 'dragging'
      window.addEventListener('mousemove', move, true)
      window.addEventListener('mouseup', up, true)
    }
    const track = (e: MouseEvent): void => {
      this.pointer = { x: e.clientX, y: e.clientY }
    }
    const leave = (): void => {
      this.pointer = null
    }
    // Middle-click would start the browser's autoscroll.
    const aux = (e: MouseEvent): void => {
      if (e.button === 1) e.preventDefault()
    }
    const keyup = (e: KeyboardEvent): void => {
      if (e.key === ' ' && ctx.store.get().spacePan) {
        ctx.store.set({ spacePan: false })
        e.preventDefault()
      }
    }
    const blur = (): void => ctx.store.set({ spacePan: false })
    stage.addEventListener('wheel', wheel, { capture: true, passive: false })
    stage.addEventListener('mousedown', down, true)
    stage.addEventListener('mousemove', track, { passive: true })
    stage.addEventListener('mouseleave', leave)
    stage.addEventListener('auxclick', aux)
    document.addEventListener('keyup', keyup)
    window.addEventListener('blur', blur)
    return () => {
      document.removeEventListener('keyup', keyup)
      window.removeEventListener('blur', blur)
      window.removeEventListener('mousemove', move, true)
      window.removeEventListener('mouseup', up, true)
    }
  }

  /** Space pressed (from the key handler): a left drag pans until it is released. */
  holdSpace(): void {
    this.ctx.store.set({ spacePan: true })
  }
}
