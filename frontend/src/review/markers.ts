/**
 * Review comments drawn on the image: a ring at the comment's voxel in every 2D view whose slice contains it
 * (a flag in the view's corner for a comment pinned to a slice only), the text on hover (title) and on click
 * (a small popup with "resolve"). The markers are DOM elements on a layer over NiiVue's canvas, placed with
 * the viewer's voxel → client mapping after every redraw (slice change, zoom, pan, layout, resize).
 *
 * Comments are stored in the scan's own voxel order (NIfTI i, j, k); the viewer works in NiiVue's RAS order.
 */

import { clear, fmtTime, h } from '../dom'
import type { Vec3 } from '../core/geometry'
import type { CommentOut } from '../api/types'
import type { Viewer } from '../viewer'

/** NiiVue's 2D planes (SLICE_TYPE): axial, coronal, sagittal; the RAS axis normal to plane p is 2 - p. */
const PLANES = [0, 1, 2]

export interface PlacedMarker {
  id: number
  plane: number
  kind: 'voxel' | 'slice'
  x: number
  y: number
}

export class CommentMarkers {
  readonly layer: HTMLElement
  private popup: HTMLElement
  private viewer: Viewer | null = null
  private comments: CommentOut[] = []
  /** "Show comments on image" and "include resolved" (unresolved only by default). */
  show = true
  includeResolved = false
  private openId: number | null = null
  private pending = false
  /** Ticks of the popup's "resolved" box whose request is still in flight: a redraw meanwhile keeps showing them. */
  private resolving = new Map<number, boolean>()
  placed: PlacedMarker[] = []
  /** Called when the popup's "resolved" box is ticked. */
  onResolve: ((c: CommentOut, resolved: boolean) => void) | null = null
  /** Whether the popup offers "resolved" (not for viewers). */
  canResolve: () => boolean = () => true
  /** Called when the popup's "Go to" is pressed. */
  onGoTo: ((c: CommentOut) => void) | null = null
  /** Called after the markers are placed (every redraw: slice, crosshair, zoom, pan, layout). */
  onPlaced: (() => void) | null = null

  constructor() {
    this.layer = h('div', { class: 'comment-layer', 'data-testid': 'comment-layer' })
    this.popup = h('div', { class: 'comment-popup', 'data-testid': 'comment-popup', hidden: true, role: 'dialog' })
    this.layer.addEventListener('pointerdown', (e) => e.stopPropagation())
  }

  attach(viewer: Viewer): void {
    this.viewer = viewer
    this.schedule()
  }

  setComments(comments: CommentOut[]): void {
    this.comments = comments
    this.resolving.clear()
    if (this.openId !== null && !comments.some((c) => c.id === this.openId)) this.openId = null
    this.schedule()
  }

  setShow(show: boolean, includeResolved = this.includeResolved): void {
    this.show = show
    this.includeResolved = includeResolved
    if (!show) this.openId = null
    this.schedule()
  }

  /** The comments the layer draws (shown, with a location, unresolved unless asked). */
  get visibleComments(): CommentOut[] {
    if (!this.show) return []
    return this.comments.filter(
      (c) => (this.includeResolved || !c.resolved) && (c.voxel || (c.slice_axis !== null && c.slice_axis !== undefined && c.slice_index !== null && c.slice_index !== undefined)),
    )
  }

  /** Re-place the markers after the next frame (coalesced: NiiVue redraws many times during a drag). */
  schedule(): void {
    if (this.pending) return
    this.pending = true
    requestAnimationFrame(() => {
      this.pending = false
      this.update()
    })
  }

  /** Place the markers now. */
  update(): void {
    const v = this.viewer
    clear(this.layer)
    this.placed = []
    const g = v?.geometry
    if (!v || !g || !v.ct || !this.layer.isConnected) return
    const cross = v.crosshairVox()
    const rect = this.layer.getBoundingClientRect()
    const tiles = v.nv.screenSlices ?? []
    const dpr = v.nv.uiData.dpr ?? window.devicePixelRatio ?? 1
    const canvasRect = v.canvas.getBoundingClientRect()
    for (const c of this.visibleComments) {
      if (c.voxel) {
        const ras: Vec3 = g.nativeToRasXYZ(c.voxel[0], c.voxel[1], c.voxel[2])
        for (const plane of PLANES) {
          if (!tiles.some((t) => t.axCorSag === plane)) continue
          const normal = 2 - plane
          if (ras[normal] !== cross[normal]) continue
          const at = v.clientPointOf(ras, plane)
          if (!at) continue
          this.place(c, plane, 'voxel', at.x - rect.left, at.y - rect.top)
        }
      } else {
        // A slice-only comment: a flag in the corner of the view whose normal is that stored axis.
        const rasAxis = g.axisOf.indexOf(c.slice_axis!)
        const plane = 2 - rasAxis
        const ijk = g.rasToNativeIJK(cross[0], cross[1], cross[2])
        if (ijk[c.slice_axis!] !== c.slice_index) continue
        const tile = tiles.find((t) => t.axCorSag === plane)
        if (!tile) continue
        const [l, t, w] = tile.leftTopWidthHeight
        const left = Math.min(l, l + w)
        const x = canvasRect.left - rect.left + left / dpr + 14
        const y = canvasRect.top - rect.top + t / dpr + 14 + 22 * this.placed.filter((p) => p.kind === 'slice' && p.plane === plane).length
        this.place(c, plane, 'slice', x, y)
      }
    }
    this.layer.append(this.popup)
    this.renderPopup()
    this.onPlaced?.()
  }

  private place(c: CommentOut, plane: number, kind: 'voxel' | 'slice', x: number, y: number): void {
    this.placed.push({ id: c.id, plane, kind, x, y })
    const marker = h(
      'button',
      {
        class: `comment-marker ${kind} ${c.resolved ? 'resolved' : ''} ${this.openId === c.id ? 'open' : ''}`,
        'data-testid': `comment-marker-${c.id}`,
        'data-plane': String(plane),
        'data-kind': kind,
        title: `${c.text}${c.author?.username ? ` — ${c.author.username}` : ''}`,
        'aria-label': `Comment: ${c.text}`,
        style: { left: `${x}px`, top: `${y}px` },
        onclick: (e: Event) => {
          e.stopPropagation()
          this.openId = this.openId === c.id ? null : c.id
          this.update()
        },
      },
      kind === 'slice' ? '⚑' : '',
    )
    this.layer.append(marker)
  }

  private renderPopup(): void {
    const popup = this.popup
    clear(popup)
    const c = this.openId === null ? undefined : this.comments.find((x) => x.id === this.openId)
    const at = c ? this.placed.find((p) => p.id === c.id) : undefined
    if (!c || !at) {
      popup.hidden = true
      return
    }
    popup.hidden = false
    popup.dataset.comment = String(c.id)
    Object.assign(popup.style, { left: `${at.x + 14}px`, top: `${at.y - 10}px` })
    const where = [
      c.structure ? c.structure.replace(/_/g, ' ') : null,
      c.voxel ? `voxel ${c.voxel.join(', ')}` : `slice ${c.slice_index}`,
    ].filter(Boolean)
    popup.append(
      h('div', { class: 'ctext', 'data-testid': 'comment-popup-text' }, c.text),
      h('div', { class: 'vmeta' }, `${c.author?.username ?? 'someone'} · ${fmtTime(c.created_at)} · ${where.join(' · ')}`),
      h(
        'div',
        { class: 'cbar' },
        this.onResolve && this.canResolve()
          ? h(
              'label',
              { class: 'check' },
              h('input', {
                type: 'checkbox',
                checked: this.resolving.get(c.id) ?? c.resolved,
                'data-testid': 'comment-popup-resolved',
                onchange: (e: Event) => {
                  const resolved = (e.target as HTMLInputElement).checked
                  this.resolving.set(c.id, resolved)
                  this.onResolve?.(c, resolved)
                },
              }),
              ' resolved',
            )
          : null,
        this.onGoTo ? h('button', { class: 'btn small plain', onclick: () => this.onGoTo?.(c) }, 'Go to') : null,
        h(
          'button',
          {
            class: 'btn small plain',
            'data-testid': 'comment-popup-close',
            onclick: () => {
              this.openId = null
              this.update()
            },
          },
          'Close',
        ),
      ),
    )
  }

  /** Open (or close with null) a comment's popup, as a click on its marker does. */
  open(id: number | null): void {
    this.openId = id
    this.update()
  }
}
