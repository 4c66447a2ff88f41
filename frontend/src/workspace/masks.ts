/** Masks from the server in NiiVue's RAS order: the edit session's loader and the difference overlay's input. */

import { ApiError, api } from '../api/client'
import type { Geometry } from '../core/geometry'
import { parseNifti } from '../core/nifti'

/** One structure's mask of a version in RAS order (all zeros when recorded as missing). */
export async function fetchMaskRAS(geometry: Geometry, versionId: number, structure: string): Promise<Uint8Array> {
  const out = new Uint8Array(geometry.voxels)
  let bytes: ArrayBuffer
  try {
    bytes = await api.bytes(`/api/versions/${versionId}/masks/${encodeURIComponent(structure)}`)
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return out
    throw err
  }
  const vol = parseNifti(bytes)
  if (vol.dims[0] * vol.dims[1] * vol.dims[2] !== geometry.voxels) throw new Error(`mask ${structure} has the wrong size`)
  const native = new Uint8Array(geometry.voxels)
  for (let i = 0; i < native.length; i++) native[i] = vol.data[i] > 0 ? 1 : 0
  geometry.toRAS(native, out)
  return out
}
