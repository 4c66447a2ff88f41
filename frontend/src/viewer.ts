/**
 * The NiiVue wrapper: CT volume, the read-only label overlay of the other structures, one extra overlay
 * (attention heat map or version difference), the drawing layer holding the active structure, layouts,
 * window/level, crosshair readout and pointer → voxel mapping.
 */

import { DRAG_MODE, NVImage, Niivue, SLICE_TYPE, cmapper } from '@niivue/niivue'
import { hexToRgb, type LabelColor } from './core/colors'
import { Geometry, type Vec3 } from './core/geometry'
import type { Grid } from './core/tools'
import { FIT, type Pan, type Vec3mm, clampSlice, dragPan, normalAxis, zoomAbout } from './core/zoom'

export interface WindowPreset {
  key: string
  name: string
  width: number
  level: number
}

export const PRESETS: WindowPreset[] = [
  { key: 'abdomen', name: 'Abdomen', width: 400, level: 40 },
  { key: 'pancreas', name: 'Pancreas', width: 350, level: 50 },
  { key: 'liver', name: 'Liver', width: 150, level: 30 },
  { key: 'bone', name: 'Bone', width: 1800, level: 400 },
  { key: 'lung', name: 'Lung', width: 1500, level: -600 },
]

export type Layout = 'axial' | 'coronal' | 'sagittal' | 'multiplanar' | '3d'

/** Mouse buttons: left moves the crosshair, right drags window/level; the middle button's pan is ours (navigation). */
const MOUSE = {
  leftButton: { primary: DRAG_MODE.crosshair, withCtrl: DRAG_MODE.crosshair },
  rightButton: DRAG_MODE.contrast,
  centerButton: DRAG_MODE.none,
}
const CROSSHAIR_RGB = [0.15, 0.75, 1]

const SLICE_OF: Record<Layout, SLICE_TYPE> = {
  axial: SLICE_TYPE.AXIAL,
  coronal: SLICE_TYPE.CORONAL,
  sagittal: SLICE_TYPE.SAGITTAL,
  multiplanar: SLICE_TYPE.MULTIPLANAR,
  '3d': SLICE_TYPE.RENDER,
}

export interface Readout {
  ras: Vec3
  ijk: Vec3
  mm: Vec3
  hu: number
  label: number
  drawn: number
}

export class Viewer {
  readonly nv: Niivue
  readonly canvas: HTMLCanvasElement
  ct: NVImage | null = null
  labels: NVImage | null = null
  extra: NVImage | null = null
  geometry: Geometry | null = null
  nativeDims: Vec3 = [0, 0, 0]
  nativeSpacing: Vec3 = [1, 1, 1]
  affine: number[] = []
  layout: Layout = 'axial'
  window = { width: 400, level: 40 }
  onLocation: (() => void) | null = null
  onWindow: (() => void) | null = null
  /** Called after every NiiVue redraw (slice, zoom, pan, layout, resize): overlays placed over the canvas follow. */
  onDraw: (() => void) | null = null
  private gridCache: Grid | null = null
  private drawOpacity = 0.65

  constructor(canvas: HTMLCanvasElement) {
    this.canvas = canvas
    this.nv = new Niivue({
      backColor: [0.04, 0.05, 0.07, 1],
      crosshairColor: [...CROSSHAIR_RGB, 0.6],
      crosshairWidth: 0.6,
      crosshairWidthUnit: 'mm',
      isRadiologicalConvention: true,
      dragAndDropEnabled: false,
      drawingEnabled: false,
      isColorbar: false,
      isOrientCube: false,
      show3Dcrosshair: true,
      loadingText: '',
      // Orientation letters on all four sides, large and bright enough to read at a glance.
      fontMinPx: 17,
      fontSizeScaling: 0.35,
      fontColor: [1, 0.86, 0.35, 1],
      showAllOrientationMarkers: true,
      mouseEventConfig: MOUSE,
      multiplanarForceRender: true,
      viewModeHotKey: '',
      clipPlaneHotKey: '',
      dragMode: DRAG_MODE.contrast,
      yoke3Dto2DZoom: false,
      maxDrawUndoBitmaps: 2,
      isNearestInterpolation: false,
      logLevel: 'error',
    })
    this.nv.onLocationChange = () => this.onLocation?.()
    const drawScene = this.nv.drawScene.bind(this.nv)
    this.nv.drawScene = () => {
      const out = drawScene()
      this.onDraw?.()
      return out
    }
    this.nv.onIntensityChange = (volume: NVImage) => {
      if (volume !== this.ct || !this.ct) return
      const lo = this.ct.cal_min ?? 0
      const hi = this.ct.cal_max ?? 0
      this.window = { width: Math.round(hi - lo), level: Math.round((hi + lo) / 2) }
      this.onWindow?.()
    }
  }

  /** Release the WebGL context and NiiVue's listeners (leaving the workspace). */
  destroy(): void {
    this.nv.cleanup()
    this.nv.gl?.getExtension('WEBGL_lose_context')?.loseContext()
  }

  async attach(): Promise<void> {
    await this.nv.attachToCanvas(this.canvas)
    this.nv.setSliceType(SLICE_TYPE.AXIAL)
  }

  /** Load the CT (NIfTI bytes, stored order) and draw the first slice; `affine` is the scan's 4×4. */
  /** Milliseconds spent in each step of the last loadCT (decode, GPU upload). */
  loadMarks = { decode: 0, upload: 0 }

  async loadCT(bytes: ArrayBuffer, name: string, affine: number[][], spacing: number[]): Promise<void> {
    const t0 = performance.now()
    const lo = this.window.level - this.window.width / 2
    const hi = this.window.level + this.window.width / 2
    const image = await NVImage.loadFromUrl({
      url: bytes,
      name: name.endsWith('.nii.gz') ? name : `${name}.nii.gz`,
      colormap: 'gray',
      cal_min: lo,
      cal_max: hi,
      trustCalMinMax: true,
    })
    const t1 = performance.now()
    const dims = image.hdr!.dims
    this.nativeDims = [dims[1], dims[2], Math.max(1, dims[3])]
    this.nativeSpacing = [spacing[0], spacing[1], spacing[2]]
    this.affine = affine.flat()
    this.geometry = new Geometry(this.nativeDims, image.permRAS!)
    this.checkGeometry(image)
    this.ct = image
    image.cal_min = lo
    image.cal_max = hi
    this.nv.addVolume(image)
    this.loadMarks = { decode: t1 - t0, upload: performance.now() - t1 }
  }

  /** Our RAS ↔ stored mapping must agree with NiiVue's own (img2RASstep/start): a wrong one would save edits elsewhere. */
  private checkGeometry(image: NVImage): void {
    const g = this.geometry!
    const dims = image.dimsRAS!
    if (dims[1] !== g.rasDims[0] || dims[2] !== g.rasDims[1] || dims[3] !== g.rasDims[2]) {
      throw new Error(`RAS grid mismatch: NiiVue ${dims.slice(1, 4)} vs ${g.rasDims}`)
    }
    const step = image.img2RASstep
    const start = image.img2RASstart
    if (!step || !start) return
    const [dx, dy, dz] = g.rasDims
    for (const [x, y, z] of [
      [0, 0, 0],
      [dx - 1, 0, 0],
      [0, dy - 1, 0],
      [0, 0, dz - 1],
      [dx - 1, dy - 1, dz - 1],
      [Math.floor(dx / 3), Math.floor(dy / 2), Math.floor((2 * dz) / 3)],
    ]) {
      const theirs = start[0] + x * step[0] + start[1] + y * step[1] + start[2] + z * step[2]
      const ours = g.nativeIndexOfRas(g.rasIndex(x, y, z))
      if (theirs !== ours) throw new Error(`voxel order mismatch at RAS ${x},${y},${z}: NiiVue ${theirs}, ours ${ours}`)
    }
  }

  /** The empty drawing layer (after the first slice is on screen: it costs a full-size texture). */
  prepareDrawing(): void {
    this.nv.createEmptyDrawing()
    this.nv.setDrawOpacity(this.drawOpacity)
  }

  /** HU values and spacing in RAS order, for the tools (computed once, after the first slice is shown). */
  get grid(): Grid {
    if (!this.gridCache) {
      const ct = this.ct!
      const raw = ct.img2RAS()
      const slope = ct.hdr!.scl_slope && isFinite(ct.hdr!.scl_slope) ? ct.hdr!.scl_slope : 1
      const inter = isFinite(ct.hdr!.scl_inter) ? ct.hdr!.scl_inter : 0
      const hu = new Float32Array(raw.length)
      for (let i = 0; i < raw.length; i++) hu[i] = raw[i] * slope + inter
      const g = this.geometry!
      const spacing: Vec3 = [0, 0, 0]
      for (let p = 0; p < 3; p++) spacing[p] = this.nativeSpacing[g.axisOf[p]]
      this.gridCache = { dims: g.rasDims, spacing, hu }
    }
    return this.gridCache
  }

  setWindow(width: number, level: number): void {
    this.window = { width: Math.max(1, Math.round(width)), level: Math.round(level) }
    if (!this.ct) return
    this.ct.cal_min = this.window.level - this.window.width / 2
    this.ct.cal_max = this.window.level + this.window.width / 2
    this.nv.updateGLVolume()
    this.onWindow?.()
  }

  setLayout(layout: Layout): void {
    this.layout = layout
    this.nv.setSliceType(SLICE_OF[layout])
  }

  setRadiological(on: boolean): void {
    this.nv.setRadiologicalConvention(on)
  }

  get radiological(): boolean {
    return this.nv.getRadiologicalConvention()
  }

  /** Build an overlay NVImage from stored-order uint8 voxels in the scan's geometry. */
  async overlayFromNative(data: Uint8Array, name: string): Promise<NVImage> {
    const bytes = NVImage.createNiftiArray(this.nativeDims, this.nativeSpacing, this.affine, 2, data)
    const copy = new Uint8Array(bytes.length)
    copy.set(bytes)
    return NVImage.loadFromUrl({ url: copy.buffer, name: `${name}.nii` })
  }

  private labelLut(colors: LabelColor[]): {
    R: number[]
    G: number[]
    B: number[]
    A: number[]
    I: number[]
    labels: string[]
  } {
    const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [''] }
    for (const c of colors) {
      cm.R.push(c.rgb[0])
      cm.G.push(c.rgb[1])
      cm.B.push(c.rgb[2])
      cm.A.push(Math.round(Math.max(0, Math.min(1, c.alpha)) * 255))
      cm.I.push(c.value)
      cm.labels.push(c.name)
    }
    return cm
  }

  /** Show (or replace) the read-only label overlay from stored-order label values (one GPU refresh). */
  async setLabels(nativeLabels: Uint8Array, colors: LabelColor[]): Promise<void> {
    if (this.labels && this.labels.img && this.labels.img.length === nativeLabels.length) {
      ;(this.labels.img as Uint8Array).set(nativeLabels)
      this.labels.setColormapLabel(this.labelLut(colors))
      this.nv.updateGLVolume()
      return
    }
    if (this.labels) this.nv.removeVolume(this.labels)
    this.labels = await this.overlayFromNative(nativeLabels, 'labels')
    this.labels.opacity = 1
    this.labels.setColormapLabel(this.labelLut(colors))
    this.nv.addVolume(this.labels)
    this.reorderVolumes()
  }

  /** New colours/visibility for the label overlay (a GPU refresh of the overlay layers). */
  setLabelColors(colors: LabelColor[]): void {
    if (!this.labels) return
    this.labels.setColormapLabel(this.labelLut(colors))
    this.nv.updateGLVolume()
  }

  /** The extra overlay: attention heat map or a difference map (label colours), or none. */
  async setExtra(nativeData: Uint8Array | null, colors: LabelColor[] = []): Promise<void> {
    if (this.extra) {
      this.nv.removeVolume(this.extra)
      this.extra = null
    }
    if (nativeData) {
      this.extra = await this.overlayFromNative(nativeData, 'extra')
      this.extra.opacity = 1
      this.extra.setColormapLabel(this.labelLut(colors))
      this.nv.addVolume(this.extra)
      this.reorderVolumes()
    } else this.nv.updateGLVolume()
  }

  /** The extra overlay's layer opacity (the heat slider): a GPU refresh, no reload. */
  setExtraOpacity(opacity: number): void {
    if (!this.extra) return
    this.extra.opacity = Math.max(0, Math.min(1, opacity))
    this.nv.updateGLVolume()
  }

  private reorderVolumes(): void {
    // CT first, labels, then the extra overlay on top.
    const order = [this.ct, this.labels, this.extra].filter((v): v is NVImage => !!v)
    order.forEach((v, i) => {
      if (this.nv.volumes[i] !== v) this.nv.setVolume(v, i)
    })
  }

  /** Put a RAS bitmap in the drawing layer (the active structure), in the given colour. */
  setDrawing(bitmap: Uint8Array, color: string, opacity: number): void {
    const [r, g, b] = hexToRgb(color)
    this.nv.drawLut = cmapper.makeDrawLut({
      R: [0, r, 255],
      G: [0, g, 255],
      B: [0, b, 0],
      A: [0, 255, 255],
      I: [0, 1, 2],
      labels: ['', 'active', 'seed'],
    })
    this.nv.drawBitmap = bitmap
    this.drawOpacity = opacity
    // The opacity is set without NiiVue's setDrawOpacity, which draws a frame of its own: one frame, after the
    // upload (a frame costs more than the upload with a software GPU).
    this.nv.drawOpacity = opacity
    this.nv.refreshDrawing(true)
  }

  setDrawOpacity(opacity: number): void {
    this.drawOpacity = opacity
    this.nv.setDrawOpacity(opacity)
  }

  refreshDrawing(): void {
    this.nv.refreshDrawing(true)
  }

  /** The RAS voxel and the 2D plane under a client point, or null (outside, or the 3D tile). */
  voxelAt(clientX: number, clientY: number): { vox: Vec3; plane: number } | null {
    if (!this.ct) return null
    const rect = this.canvas.getBoundingClientRect()
    const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1
    const x = (clientX - rect.left) * dpr
    const y = (clientY - rect.top) * dpr
    const tile = this.nv.tileIndex(x, y)
    if (tile < 0) return null
    const plane = this.nv.screenSlices[tile].axCorSag
    if (plane > SLICE_TYPE.SAGITTAL) return null
    const frac = this.nv.screenXY2TextureFrac(x, y, tile, true)
    if (frac[0] < 0) return null
    const v = this.nv.frac2vox(frac)
    return { vox: [v[0], v[1], v[2]], plane }
  }

  /** The client point where a RAS voxel centre is drawn in a 2D view (for tests and the benchmark). */
  clientPointOf(vox: Vec3, plane: number): { x: number; y: number } | null {
    // Project the voxel centre onto the tile showing that plane (whatever slice it shows now).
    const frac = this.nv.vox2frac([vox[0], vox[1], vox[2]])
    const mm = this.nv.frac2mm(frac)
    for (const tile of this.nv.screenSlices) {
      if (tile.axCorSag !== plane || tile.fovMM.length < 2) continue
      let xyz = [mm[0], mm[1], mm[2]]
      if (plane === SLICE_TYPE.CORONAL) xyz = [mm[0], mm[2], mm[1]]
      if (plane === SLICE_TYPE.SAGITTAL) xyz = [mm[1], mm[2], mm[0]]
      const fx = (xyz[0] - tile.leftTopMM[0]) / tile.fovMM[0]
      const fy = (xyz[1] - tile.leftTopMM[1]) / tile.fovMM[1]
      if (fx < 0 || fx > 1 || fy < 0 || fy > 1) continue
      const ltwh = tile.leftTopWidthHeight.slice()
      let sx = fx
      if (ltwh[2] < 0) {
        ltwh[0] += ltwh[2]
        ltwh[2] = -ltwh[2]
        sx = 1 - fx
      }
      const px = ltwh[0] + sx * ltwh[2]
      const py = ltwh[1] + (1 - fy) * ltwh[3]
      const rect = this.canvas.getBoundingClientRect()
      const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1
      return { x: rect.left + px / dpr, y: rect.top + py / dpr }
    }
    return null
  }

  // ---------------------------------------------------------------- zoom, pan, slices, crosshair

  /** The shared 2D zoom and pan (NiiVue's pan2Dxyzmm: every 2D tile, so the MPR views move together). */
  get pan(): Pan {
    const p = this.nv.scene.pan2Dxyzmm
    return [p[0], p[1], p[2], p[3]]
  }

  get zoom(): number {
    return this.nv.scene.pan2Dxyzmm[3]
  }

  /** Set zoom and pan through NiiVue's own API (it redraws). */
  setPan(pan: Pan): void {
    this.nv.setPan2Dxyzmm([pan[0], pan[1], pan[2], pan[3]])
  }

  /** The world point (mm) under a client point of a 2D tile, even outside the volume; null elsewhere. */
  mmAt(clientX: number, clientY: number): { mm: Vec3mm; tile: number } | null {
    if (!this.ct) return null
    const rect = this.canvas.getBoundingClientRect()
    const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1
    const x = (clientX - rect.left) * dpr
    const y = (clientY - rect.top) * dpr
    const tile = this.nv.tileIndex(x, y)
    if (tile < 0 || this.nv.screenSlices[tile].axCorSag > SLICE_TYPE.SAGITTAL) return null
    const frac = this.nv.screenXY2TextureFrac(x, y, tile, false)
    if (frac[0] === -1 && frac[1] === -1 && frac[2] === -1) return null
    const mm = this.nv.frac2mm(frac)
    return { mm: [mm[0], mm[1], mm[2]], tile }
  }

  /** The crosshair's world point (mm). */
  crosshairMM(): Vec3mm {
    const mm = this.nv.frac2mm(this.nv.scene.crosshairPos)
    return [mm[0], mm[1], mm[2]]
  }

  /** Zoom to `zoom` about a client point (the point under it stays put), or about the crosshair. */
  zoomTo(zoom: number, client: { x: number; y: number } | null = null): void {
    const at = client ? this.mmAt(client.x, client.y) : null
    this.setPan(zoomAbout(this.pan, at ? at.mm : this.crosshairMM(), zoom))
  }

  /** One step of a pan drag: the grabbed world point goes under the pointer (same tile). */
  dragTo(grabbed: Vec3mm, tile: number, clientX: number, clientY: number): void {
    const at = this.mmAt(clientX, clientY)
    if (!at || at.tile !== tile) return
    this.setPan(dragPan(this.pan, grabbed, at.mm))
  }

  /** Whole slice in view, no pan. */
  fit(): void {
    this.setPan([...FIT])
  }

  /** Show or hide the crosshair lines (2D and 3D). */
  setCrosshairVisible(on: boolean): void {
    this.nv.opts.show3Dcrosshair = on
    this.nv.setCrosshairColor([...CROSSHAIR_RGB, on ? 0.6 : 0])
  }

  /** Number of slices along a plane's normal, and the crosshair's slice there. */
  sliceCount(plane: number): number {
    return this.geometry ? this.geometry.rasDims[normalAxis(plane)] : 0
  }

  sliceIndex(plane: number): number {
    return this.crosshairVox()[normalAxis(plane)]
  }

  /** Move the crosshair to a slice of a plane (the slice slider). */
  setSlice(plane: number, index: number): void {
    if (!this.geometry) return
    const axis = normalAxis(plane)
    const vox = this.crosshairVox()
    const next = clampSlice(index, this.geometry.rasDims[axis])
    if (vox[axis] === next) return
    vox[axis] = next
    this.moveTo(vox)
  }

  crosshairVox(): Vec3 {
    const v = this.nv.frac2vox(this.nv.scene.crosshairPos)
    return [v[0], v[1], v[2]]
  }

  moveTo(vox: Vec3): void {
    this.nv.scene.crosshairPos = this.nv.vox2frac([vox[0], vox[1], vox[2]])
    this.nv.createOnLocationChange()
    this.nv.updateGLVolume()
  }

  /** Move the crosshair one slice along the plane's normal (the view under the pointer, or axial). */
  step(plane: number, delta: number): void {
    const xyz: Vec3 = [0, 0, 0]
    xyz[2 - plane] = delta
    this.nv.moveCrosshairInVox(xyz[0], xyz[1], xyz[2])
  }

  readout(activeBitmap: Uint8Array | null): Readout | null {
    if (!this.ct || !this.geometry) return null
    const ras = this.crosshairVox()
    const g = this.geometry
    const ijk = g.rasToNativeIJK(ras[0], ras[1], ras[2])
    const mm4 = this.nv.frac2mm(this.nv.scene.crosshairPos, 0, true)
    const i = g.rasIndex(ras[0], ras[1], ras[2])
    const hu = this.gridCache ? this.gridCache.hu[i] : this.huAt(ras)
    let label = 0
    if (this.labels?.img) label = this.labels.img[g.nativeIndexOfRas(i)]
    return {
      ras,
      ijk,
      mm: [mm4[0], mm4[1], mm4[2]],
      hu,
      label,
      drawn: activeBitmap ? activeBitmap[i] : 0,
    }
  }

  private huAt(ras: Vec3): number {
    const ct = this.ct!
    const g = this.geometry!
    const n = g.nativeIndexOfRas(g.rasIndex(ras[0], ras[1], ras[2]))
    const slope = ct.hdr!.scl_slope && isFinite(ct.hdr!.scl_slope) ? ct.hdr!.scl_slope : 1
    const inter = isFinite(ct.hdr!.scl_inter) ? ct.hdr!.scl_inter : 0
    return ct.img![n] * slope + inter
  }

  /**
   * Draw one frame and wait until the GPU has really rendered it (a one-pixel readback is a sync point:
   * WebGL calls are queued, and a software GPU may still be busy long after drawScene returns).
   */
  async frame(): Promise<number> {
    this.nv.drawScene()
    const submitted = performance.now()
    const gl = this.nv.gl
    gl.bindFramebuffer(gl.FRAMEBUFFER, null)
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4))
    await new Promise<void>((resolve) => requestAnimationFrame(() => resolve()))
    return submitted
  }
}
