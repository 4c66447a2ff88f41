/** Label colours: the entries of a label lookup table and the schema's hex colours. */

export interface LabelColor {
  value: number
  rgb: [number, number, number]
  alpha: number
  name: string
}

export function hexToRgb(hex: string): [number, number, number] {
  const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex.trim())
  if (!m) return [200, 200, 200]
  return [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)]
}
