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
