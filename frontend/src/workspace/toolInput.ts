/**
 * Pointer input on the image: a stroke of the chosen tool on the active structure (brush, eraser, filled outline,
 * flood fill, grow-cut), each finished stroke one undo step; the brush-sized ring under the pointer; a click of the
 * AI refine tool (aiRefine.ts: inside, or Shift+click outside); the scissors' outline points (scissors.ts).
 */

import type { Vec3 } from '../core/geometry'
import { type HuRange, fillPolygon, floodFill2D, growCut, paintDisc, paintSegment } from '../core/tools'
import { toast } from '../dom'
import { AiRefine } from './aiRefine'
import type { WorkspaceContext } from './context'
import { Scissors } from './scissors'

export class ToolInput {
  private readonly ctx: WorkspaceContext
  /** The HU range painting is limited to, or null (the tool bar's switch). */
  private readonly huRange: () => HuRange | null
  private stroke: { plane: number; last: Vec3; pts: Vec3[] } | null = null
  /** The AI refine tool: its clicks go to the click-guided model, its status sits on the stage. */
  readonly aiRefine: AiRefine
  /** The scissors: outline points, the cut's options and its preview. */
  readonly scissors: Scissors

  constructor(ctx: WorkspaceContext, huRange: () => HuRange | null) {
    this.ctx = ctx
    this.huRange = huRange
    this.aiRefine = new AiRefine(ctx)
    this.scissors = new Scissors(ctx)
  }

  private get tool(): string {
    return this.ctx.store.get().tool
  }

  private get brushMm(): number {
    return this.ctx.store.get().brushMm
  }

  /** Listen on the stage (capture phase, so NiiVue does not also move the crosshair on a stroke). */
  bind(stage: HTMLElement): void {
    const { ctx } = this
    const down = (e: MouseEvent): void => {
      const viewer = ctx.viewer
      if (this.tool === 'navigate' || e.button !== 0 || e.ctrlKey || e.metaKey || ctx.store.get().spacePan || !viewer?.ct) return
      if ((e.target as HTMLElement | null)?.closest?.('.comment-layer')) return // a comment marker or its popup
      if ((e.target as HTMLElement | null)?.closest?.('.ai-refine-status')) return // the AI refine status and its button
      if ((e.target as HTMLElement | null)?.closest?.('.scissors-panel')) return // the scissors' options and buttons
      const hit = viewer.voxelAt(e.clientX, e.clientY)
      if (!hit) return
      e.stopPropagation()
      e.preventDefault()
      if (ctx.editor.refuseEdit()) return
      if (ctx.session.busy || !ctx.session.edited.has(ctx.store.get().active!)) return
      if (this.tool === 'airefine') {
        this.aiRefine.click(hit.vox, !e.shiftKey).catch((err: unknown) => ctx.fail(err))
        return
      }
      if (this.tool === 'scissors') {
        this.scissors.pointerDown(e)
        return
      }
      ctx.review.ensureLease().catch((err: unknown) => ctx.fail(err))
      this.start(hit.vox, hit.plane, e.shiftKey)
      if (this.stroke) {
        window.addEventListener('mousemove', move, true)
        window.addEventListener('mouseup', up, true)
      }
    }
    const move = (e: MouseEvent): void => {
      if (!this.stroke) return
      e.stopPropagation()
      e.preventDefault()
      const hit = ctx.viewer.voxelAt(e.clientX, e.clientY)
      this.moveCursor(e)
      if (!hit || hit.plane !== this.stroke.plane) return
      this.continue(hit.vox)
    }
    const up = (e: MouseEvent): void => {
      window.removeEventListener('mousemove', move, true)
      window.removeEventListener('mouseup', up, true)
      if (!this.stroke) return
      e.stopPropagation()
      e.preventDefault()
      this.end()
    }
    const hover = (e: MouseEvent): void => {
      if (!this.stroke) this.moveCursor(e)
    }
    stage.addEventListener('mousedown', down, true)
    stage.addEventListener('mousemove', hover)
    stage.addEventListener('mouseleave', () => (ctx.el.cursor.hidden = true))
    stage.addEventListener('contextmenu', (e) => e.preventDefault())
  }

  /** A ring the size of the brush under the pointer. */
  private moveCursor(e: MouseEvent): void {
    const { ctx } = this
    const cursor = ctx.el.cursor
    const viewer = ctx.viewer
    if ((this.tool !== 'brush' && this.tool !== 'eraser') || ctx.store.get().spacePan || !viewer?.geometry) {
      cursor.hidden = true
      return
    }
    const hit = viewer.voxelAt(e.clientX, e.clientY)
    if (!hit) {
      cursor.hidden = true
      return
    }
    const u = hit.plane === 2 ? 1 : 0
    const next: Vec3 = [...hit.vox]
    next[u] += next[u] + 1 < viewer.geometry.rasDims[u] ? 1 : -1
    const a = viewer.clientPointOf(hit.vox, hit.plane)
    const b = viewer.clientPointOf(next, hit.plane)
    if (!a || !b) {
      cursor.hidden = true
      return
    }
    const pxPerVoxel = Math.hypot(a.x - b.x, a.y - b.y)
    const spacing = viewer.grid.spacing[u]
    const d = Math.max(4, (this.brushMm / spacing) * pxPerVoxel)
    const rect = ctx.el.stage.getBoundingClientRect()
    cursor.hidden = false
    cursor.style.width = `${d}px`
    cursor.style.height = `${d}px`
    cursor.style.left = `${e.clientX - rect.left - d / 2}px`
    cursor.style.top = `${e.clientY - rect.top - d / 2}px`
    cursor.dataset.tool = this.tool
  }

  private start(vox: Vec3, plane: number, shift: boolean): void {
    const { ctx } = this
    const g = ctx.viewer.grid
    const bm = ctx.session.begin(ctx.store.get().active!)
    const tool = this.tool
    const hu = this.huRange()
    switch (tool) {
      case 'brush':
      case 'eraser':
        paintDisc(g, bm, vox, plane, this.brushMm, tool === 'brush' ? 1 : 0, tool === 'brush' ? hu : null)
        this.stroke = { plane, last: vox, pts: [vox] }
        ctx.viewer.refreshDrawing()
        return
      case 'outline':
        this.stroke = { plane, last: vox, pts: [vox] }
        paintDisc(g, bm, vox, plane, 0, 1, null)
        ctx.viewer.refreshDrawing()
        return
      case 'fill': {
        const result = floodFill2D(g, bm, vox, plane, hu, shift)
        if (result === 'leaks') toast('That region is not enclosed on this slice: close the outline first, or turn on the HU range', 'warn')
        this.finish(result === 'erased' ? 'clear region' : 'flood fill')
        return
      }
      case 'growcut': {
        const { width, level } = ctx.viewer.window
        const added = growCut(g, bm, vox, plane, {
          radiusMm: Math.max(30, this.brushMm * 3),
          depthMm: Math.max(10, this.brushMm),
          seedMm: this.brushMm,
          window: [level - width / 2, level + width / 2],
        })
        toast(`Grow-cut added ${added.toLocaleString()} voxels`, 'info', 2000)
        this.finish('grow-cut')
        return
      }
      default:
        ctx.session.cancel()
    }
  }

  private continue(vox: Vec3): void {
    const { ctx } = this
    const s = this.stroke!
    if (vox[0] === s.last[0] && vox[1] === s.last[1] && vox[2] === s.last[2]) return
    const g = ctx.viewer.grid
    const bm = ctx.session.edited.get(ctx.store.get().active!)!
    if (this.tool === 'brush' || this.tool === 'eraser') {
      const value = this.tool === 'brush' ? 1 : 0
      paintSegment(g, bm, s.last, vox, s.plane, this.brushMm, value, value ? this.huRange() : null)
    } else if (this.tool === 'outline') {
      paintSegment(g, bm, s.last, vox, s.plane, 0, 1, null)
    }
    s.last = vox
    s.pts.push(vox)
    ctx.viewer.refreshDrawing()
  }

  private end(): void {
    const { ctx } = this
    const s = this.stroke!
    this.stroke = null
    if (this.tool === 'outline') {
      const bm = ctx.session.edited.get(ctx.store.get().active!)!
      ctx.session.revert()
      if (s.pts.length >= 3) fillPolygon(ctx.viewer.grid, bm, s.pts, s.plane, this.huRange())
      this.finish('filled outline')
      return
    }
    this.finish(this.tool === 'eraser' ? 'erase' : 'brush')
  }

  private finish(label: string): void {
    this.ctx.session.commit(label)
    this.ctx.viewer.refreshDrawing()
  }
}
