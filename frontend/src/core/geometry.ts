/**
 * Voxel order bookkeeping between the scan's stored NIfTI order and NiiVue's RAS order.
 *
 * NiiVue reorients every volume to RAS internally: `permRAS` says, for each RAS axis p, which stored axis
 * (1-based, negative when flipped) feeds it. Its drawing bitmap is a flat uint8 array over the RAS grid
 * (`dimsRAS`), x fastest. The server speaks the stored order (x fastest too, the NIfTI order): mask
 * downloads and patch boxes. Everything here is pure arithmetic on lookup tables; no NiiVue import.
 */

export type Vec3 = [number, number, number]

export interface Box {
  origin: Vec3
  size: Vec3
}

export class Geometry {
  /** Stored (native) dimensions, NIfTI order. */
  readonly nativeDims: Vec3
  /** Dimensions of the RAS grid NiiVue draws on. */
  readonly rasDims: Vec3
  readonly permRAS: Vec3
  readonly voxels: number
  /** For each RAS axis p: the stored axis that feeds it (0-based) and whether it runs backwards. */
  readonly axisOf: Vec3
  readonly flipOf: [boolean, boolean, boolean]
  /** rasToNative index: lut[p][r] summed over p. */
  private readonly r2n: [Int32Array, Int32Array, Int32Array]
  /** nativeToRas index: lut[a][c] summed over stored axes a. */
  private readonly n2r: [Int32Array, Int32Array, Int32Array]

  constructor(nativeDims: Vec3, permRAS: number[]) {
    this.nativeDims = [nativeDims[0], nativeDims[1], nativeDims[2]]
    this.permRAS = [permRAS[0], permRAS[1], permRAS[2]]
    const axisOf: Vec3 = [0, 0, 0]
    const flipOf: [boolean, boolean, boolean] = [false, false, false]
    for (let p = 0; p < 3; p++) {
      axisOf[p] = Math.abs(permRAS[p]) - 1
      flipOf[p] = permRAS[p] < 0
    }
    if (new Set(axisOf).size !== 3 || axisOf.some((a) => a < 0 || a > 2)) {
      throw new Error(`invalid permRAS ${JSON.stringify(permRAS)}`)
    }
    this.axisOf = axisOf
    this.flipOf = flipOf
    this.rasDims = [nativeDims[axisOf[0]], nativeDims[axisOf[1]], nativeDims[axisOf[2]]]
    this.voxels = nativeDims[0] * nativeDims[1] * nativeDims[2]
    const nativeStride: Vec3 = [1, nativeDims[0], nativeDims[0] * nativeDims[1]]
    const rasStride: Vec3 = [1, this.rasDims[0], this.rasDims[0] * this.rasDims[1]]
    const r2n: Int32Array[] = []
    const n2r: Int32Array[] = [new Int32Array(0), new Int32Array(0), new Int32Array(0)]
    for (let p = 0; p < 3; p++) {
      const n = this.rasDims[p]
      const a = axisOf[p]
      const lutR = new Int32Array(n)
      const lutN = new Int32Array(n)
      for (let r = 0; r < n; r++) {
        const c = flipOf[p] ? n - 1 - r : r
        lutR[r] = c * nativeStride[a]
        lutN[c] = r * rasStride[p]
      }
      r2n.push(lutR)
      n2r[a] = lutN
    }
    this.r2n = r2n as [Int32Array, Int32Array, Int32Array]
    this.n2r = n2r as [Int32Array, Int32Array, Int32Array]
  }

  /** Is the stored order already RAS (no reordering at all)? */
  get isIdentity(): boolean {
    return this.permRAS[0] === 1 && this.permRAS[1] === 2 && this.permRAS[2] === 3
  }

  rasIndex(x: number, y: number, z: number): number {
    return x + y * this.rasDims[0] + z * this.rasDims[0] * this.rasDims[1]
  }

  rasCoords(index: number): Vec3 {
    const dx = this.rasDims[0]
    const dxy = dx * this.rasDims[1]
    const z = Math.floor(index / dxy)
    const rem = index - z * dxy
    const y = Math.floor(rem / dx)
    return [rem - y * dx, y, z]
  }

  /** Stored-order (i, j, k) of a RAS voxel. */
  rasToNativeIJK(x: number, y: number, z: number): Vec3 {
    const out: Vec3 = [0, 0, 0]
    const r = [x, y, z]
    for (let p = 0; p < 3; p++) {
      const a = this.axisOf[p]
      out[a] = this.flipOf[p] ? this.rasDims[p] - 1 - r[p] : r[p]
    }
    return out
  }

  /** RAS (x, y, z) of a stored-order voxel. */
  nativeToRasXYZ(i: number, j: number, k: number): Vec3 {
    const c = [i, j, k]
    const out: Vec3 = [0, 0, 0]
    for (let p = 0; p < 3; p++) {
      const v = c[this.axisOf[p]]
      out[p] = this.flipOf[p] ? this.rasDims[p] - 1 - v : v
    }
    return out
  }

  nativeIndexOfRas(rasIndex: number): number {
    const [x, y, z] = this.rasCoords(rasIndex)
    return this.r2n[0][x] + this.r2n[1][y] + this.r2n[2][z]
  }

  /** Reorder a stored-order array into RAS order (a copy, same element type). */
  toRAS<T extends ArrayLike<number> & { length: number }>(native: T, out: Uint8Array | Float32Array | Int16Array): void {
    if (native.length < this.voxels) throw new Error('array smaller than the volume')
    const [dx, dy, dz] = this.rasDims
    const [lx, ly, lz] = this.r2n
    let o = 0
    for (let z = 0; z < dz; z++) {
      const oz = lz[z]
      for (let y = 0; y < dy; y++) {
        const oy = oz + ly[y]
        for (let x = 0; x < dx; x++) out[o++] = native[oy + lx[x]]
      }
    }
  }

  /** Reorder a RAS array into the stored order. */
  toNative(ras: Uint8Array, out: Uint8Array): void {
    const [dx, dy, dz] = this.rasDims
    const [lx, ly, lz] = this.r2n
    let o = 0
    for (let z = 0; z < dz; z++) {
      const oz = lz[z]
      for (let y = 0; y < dy; y++) {
        const oy = oz + ly[y]
        for (let x = 0; x < dx; x++) out[oy + lx[x]] = ras[o++]
      }
    }
  }

  /** The stored-order bounding box of the voxels where two RAS bitmaps differ (as 0/non-0), or null. */
  changedBox(edited: Uint8Array, base: Uint8Array): Box | null {
    const lo: Vec3 = [Infinity, Infinity, Infinity]
    const hi: Vec3 = [-1, -1, -1]
    const [dx, dy, dz] = this.rasDims
    let i = 0
    let any = false
    for (let z = 0; z < dz; z++) {
      for (let y = 0; y < dy; y++) {
        for (let x = 0; x < dx; x++, i++) {
          if ((edited[i] > 0) === (base[i] > 0)) continue
          any = true
          const n = this.rasToNativeIJK(x, y, z)
          for (let a = 0; a < 3; a++) {
            if (n[a] < lo[a]) lo[a] = n[a]
            if (n[a] > hi[a]) hi[a] = n[a]
          }
        }
      }
    }
    if (!any) return null
    return { origin: [lo[0], lo[1], lo[2]], size: [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1] }
  }

  /** The voxels of a stored-order box read from a RAS bitmap, as 0/1 bytes in NIfTI order (x fastest). */
  extractBox(ras: Uint8Array, box: Box): Uint8Array {
    const [ox, oy, oz] = box.origin
    const [sx, sy, sz] = box.size
    const out = new Uint8Array(sx * sy * sz)
    const [nx, ny, nz] = this.n2r
    let o = 0
    for (let k = 0; k < sz; k++) {
      const rk = nz[oz + k]
      for (let j = 0; j < sy; j++) {
        const rj = rk + ny[oy + j]
        for (let i = 0; i < sx; i++) out[o++] = ras[rj + nx[ox + i]] > 0 ? 1 : 0
      }
    }
    return out
  }

  /**
   * The stored-order bounding box of a RAS bitmap's non-zero voxels, or null when it is empty. One pass that
   * reads each row only up to its first and from its end down to its last non-zero voxel (four voxels a read
   * where the rows allow): the editor asks this of a whole-volume mask on every operation.
   */
  nonzeroBox(ras: Uint8Array): Box | null {
    const [dx, dy, dz] = this.rasDims
    const words = dx % 4 === 0 && ras.byteOffset % 4 === 0 ? new Uint32Array(ras.buffer, ras.byteOffset, ras.length >> 2) : null
    const step = words ? 4 : 1
    const row = dx / step
    let loX = dx
    let hiX = -1
    let loY = dy
    let hiY = -1
    let loZ = dz
    let hiZ = -1
    for (let z = 0; z < dz; z++) {
      for (let y = 0; y < dy; y++) {
        const start = (z * dy + y) * row
        const end = start + row
        let first = start
        if (words) {
          while (first < end && words[first] === 0) first++
        } else {
          while (first < end && ras[first] === 0) first++
        }
        if (first === end) continue
        let last = end - 1
        if (words) {
          while (words[last] === 0) last--
        } else {
          while (ras[last] === 0) last--
        }
        // Words to voxels: the first and last non-zero byte inside the first and last non-zero word.
        let a = (first - start) * step
        let b = (last - start) * step + step - 1
        const base = (z * dy + y) * dx
        while (ras[base + a] === 0) a++
        while (ras[base + b] === 0) b--
        if (a < loX) loX = a
        if (b > hiX) hiX = b
        if (y < loY) loY = y
        if (y > hiY) hiY = y
        if (z < loZ) loZ = z
        hiZ = z
      }
    }
    if (hiX < 0) return null
    // A RAS box is a stored-order box (the axes are only permuted and flipped): map both corners.
    const c0 = this.rasToNativeIJK(loX, loY, loZ)
    const c1 = this.rasToNativeIJK(hiX, hiY, hiZ)
    return {
      origin: [Math.min(c0[0], c1[0]), Math.min(c0[1], c1[1]), Math.min(c0[2], c1[2])],
      size: [Math.abs(c0[0] - c1[0]) + 1, Math.abs(c0[1] - c1[1]) + 1, Math.abs(c0[2] - c1[2]) + 1],
    }
  }

  /**
   * Where the rows of a stored-order box lie in the RAS bitmap: the RAS index of each row's first voxel (i = 0),
   * rows in NIfTI order (j, then k), and the RAS step from one voxel of a row to the next (the stored i axis is
   * one RAS axis, maybe flipped: a constant step).
   */
  private boxRows(box: Box): { starts: Int32Array; step: number } {
    const [ox, oy, oz] = box.origin
    const [sx, sy, sz] = box.size
    const [nx, ny, nz] = this.n2r
    const starts = new Int32Array(sy * sz)
    for (let k = 0, r = 0; k < sz; k++) for (let j = 0; j < sy; j++, r++) starts[r] = nz[oz + k] + ny[oy + j] + nx[ox]
    return { starts, step: sx > 1 ? nx[ox + 1] - nx[ox] : 1 }
  }

  /**
   * The voxels of a stored-order box read from a RAS bitmap (non-zero → 1), bit-packed least significant bit
   * first in NIfTI order: `packBitsLittle(extractBox(ras, box))` in one pass, eight voxels a byte where a row
   * allows, without the byte-per-voxel copy.
   */
  packBox(ras: Uint8Array, box: Box): Uint8Array {
    const sx = box.size[0]
    const out = new Uint8Array((sx * box.size[1] * box.size[2] + 7) >> 3)
    const { starts, step } = this.boxRows(box)
    // (-v >>> 31) is 1 for any voxel value 1..255 and 0 for 0, without a branch.
    let acc = 0
    let bit = 0
    let o = 0
    for (let r = 0; r < starts.length; r++) {
      let p = starts[r]
      let left = sx
      while (left > 0 && bit !== 0) {
        acc |= (-ras[p] >>> 31) << bit
        p += step
        left--
        if (++bit === 8) {
          out[o++] = acc
          acc = 0
          bit = 0
        }
      }
      for (; left >= 8; left -= 8, p += 8 * step) {
        out[o++] =
          (-ras[p] >>> 31) |
          ((-ras[p + step] >>> 31) << 1) |
          ((-ras[p + 2 * step] >>> 31) << 2) |
          ((-ras[p + 3 * step] >>> 31) << 3) |
          ((-ras[p + 4 * step] >>> 31) << 4) |
          ((-ras[p + 5 * step] >>> 31) << 5) |
          ((-ras[p + 6 * step] >>> 31) << 6) |
          ((-ras[p + 7 * step] >>> 31) << 7)
      }
      for (; left > 0; left--, p += step) {
        acc |= (-ras[p] >>> 31) << bit
        if (++bit === 8) {
          out[o++] = acc
          acc = 0
          bit = 0
        }
      }
    }
    if (bit) out[o] = acc
    return out
  }

  /**
   * Write a stored-order box of bit-packed voxels (`packBox`'s layout) into a RAS bitmap: a set bit becomes 1,
   * or `added` where the bitmap held 0 (the preview's colour of new voxels); a clear bit becomes 0. Returns how
   * many voxels changed (as 0 / non-0). One pass over the box, eight voxels at once where they already hold their
   * bits: no unpacked copy, no read-back.
   */
  applyBits(ras: Uint8Array, box: Box, bits: Uint8Array, added = 1): number {
    const sx = box.size[0]
    if (bits.length < (sx * box.size[1] * box.size[2] + 7) >> 3) throw new Error('fewer bits than the box holds')
    const { starts, step } = this.boxRows(box)
    let changed = 0
    const put = (p: number, on: number): void => {
      const old = ras[p]
      if (on) {
        if (old === 0) {
          ras[p] = added
          changed++
        } else if (old !== 1) ras[p] = 1
      } else if (old !== 0) {
        ras[p] = 0
        changed++
      }
    }
    let o = 0
    for (let r = 0; r < starts.length; r++) {
      let p = starts[r]
      let left = sx
      for (; left > 0 && (o & 7) !== 0; left--, o++, p += step) put(p, (bits[o >> 3] >> (o & 7)) & 1)
      for (; left >= 8; left -= 8, o += 8, p += 8 * step) {
        const want = bits[o >> 3]
        const v0 = ras[p]
        const v1 = ras[p + step]
        const v2 = ras[p + 2 * step]
        const v3 = ras[p + 3 * step]
        const v4 = ras[p + 4 * step]
        const v5 = ras[p + 5 * step]
        const v6 = ras[p + 6 * step]
        const v7 = ras[p + 7 * step]
        // Eight voxels that are all 0/1 and already equal to their bits: nothing to write (the usual case).
        if ((v0 | v1 | v2 | v3 | v4 | v5 | v6 | v7) <= 1) {
          if ((v0 | (v1 << 1) | (v2 << 2) | (v3 << 3) | (v4 << 4) | (v5 << 5) | (v6 << 6) | (v7 << 7)) === want) continue
        }
        for (let q = 0; q < 8; q++) put(p + q * step, (want >> q) & 1)
      }
      for (; left > 0; left--, o++, p += step) put(p, (bits[o >> 3] >> (o & 7)) & 1)
    }
    return changed
  }

  /** Write a stored-order box of 0/1 bytes (NIfTI order) into a RAS bitmap. */
  applyBox(ras: Uint8Array, box: Box, voxels: Uint8Array): void {
    const [ox, oy, oz] = box.origin
    const [sx, sy, sz] = box.size
    const [nx, ny, nz] = this.n2r
    let o = 0
    for (let k = 0; k < sz; k++) {
      const rk = nz[oz + k]
      for (let j = 0; j < sy; j++) {
        const rj = rk + ny[oy + j]
        for (let i = 0; i < sx; i++) ras[rj + nx[ox + i]] = voxels[o++] ? 1 : 0
      }
    }
  }
}

/** Pack 0/1 bytes into bits, least significant bit first (numpy packbits bitorder="little"). */
export function packBitsLittle(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array((bytes.length + 7) >> 3)
  for (let i = 0; i < bytes.length; i++) if (bytes[i]) out[i >> 3] |= 1 << (i & 7)
  return out
}

export function unpackBitsLittle(bits: Uint8Array, count: number): Uint8Array {
  const out = new Uint8Array(count)
  for (let i = 0; i < count; i++) out[i] = (bits[i >> 3] >> (i & 7)) & 1
  return out
}

export function countNonzero(a: Uint8Array): number {
  let n = 0
  for (let i = 0; i < a.length; i++) if (a[i]) n++
  return n
}
