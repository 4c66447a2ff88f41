/** A minimal NIfTI-1 reader for the masks and label maps the server sends (stored order, x fastest). */

import { gunzipSync } from 'fflate'

export interface NiftiVolume {
  dims: [number, number, number]
  datatype: number
  /** Voxel values in stored order (x fastest), scaled to numbers. */
  data: Uint8Array | Uint16Array | Int16Array | Float32Array | Int32Array
}

export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length > 2 && bytes[0] === 0x1f && bytes[1] === 0x8b
}

export function parseNifti(input: ArrayBuffer | Uint8Array): NiftiVolume {
  let bytes = input instanceof Uint8Array ? input : new Uint8Array(input)
  if (isGzip(bytes)) bytes = gunzipSync(bytes)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let little = true
  if (view.getInt32(0, true) !== 348) {
    if (view.getInt32(0, false) !== 348) throw new Error('not a NIfTI-1 file')
    little = false
  }
  const dims: [number, number, number] = [
    view.getInt16(42, little),
    Math.max(1, view.getInt16(44, little)),
    Math.max(1, view.getInt16(46, little)),
  ]
  const datatype = view.getInt16(70, little)
  const voxOffset = Math.max(352, Math.round(view.getFloat32(108, little)))
  const n = dims[0] * dims[1] * dims[2]
  const start = bytes.byteOffset + voxOffset
  const buf = bytes.buffer.slice(start, start + n * bytesPer(datatype))
  let data: NiftiVolume['data']
  switch (datatype) {
    case 2:
      data = new Uint8Array(buf)
      break
    case 4:
      data = little ? new Int16Array(buf) : swap16(new Int16Array(buf))
      break
    case 512:
      data = little ? new Uint16Array(buf) : (swap16(new Int16Array(buf)) as unknown as Uint16Array)
      break
    case 8:
      data = new Int32Array(buf)
      break
    case 16:
      data = new Float32Array(buf)
      break
    default:
      throw new Error(`unsupported NIfTI datatype ${datatype}`)
  }
  return { dims, datatype, data }
}

function bytesPer(datatype: number): number {
  switch (datatype) {
    case 2:
      return 1
    case 4:
    case 512:
      return 2
    case 8:
    case 16:
      return 4
    default:
      throw new Error(`unsupported NIfTI datatype ${datatype}`)
  }
}

function swap16(a: Int16Array): Int16Array {
  for (let i = 0; i < a.length; i++) {
    const v = a[i] & 0xffff
    a[i] = ((v & 0xff) << 8) | (v >> 8)
  }
  return a
}
