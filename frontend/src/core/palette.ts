/**
 * Structure colours: CIEDE2000 distances, hue families, the default palette (curated for the PanTS schema, picked
 * greedily for other names) and the rule that decides whether a schema's own colours are distinct enough to be
 * shown as they are. Adjacent structures (anatomical neighbours, a part and its parent, parts of one parent,
 * left and right of a pair) never share a hue family.
 */

import { hexToRgb } from './colors'

export type Lab = [number, number, number]

/** The thresholds the default palette meets (Vitest checks them). */
export const PALETTE_MIN = { any: 12, adjacent: 20, hueGap: 30 }
/** The looser thresholds a schema's own colours must meet to be shown as they are. */
export const SCHEMA_MIN = { any: 8, adjacent: 15, hueGap: 25 }
/** Below this chroma (CIELCh) a colour counts as grey: it belongs to no hue family. */
export const ACHROMATIC_CHROMA = 15
/** The colour a structure gets when its schema gives none (the backend's default). */
export const PLACEHOLDER = '#888888'

/**
 * The PanTS schema's colours (also backend/projects/pants_schema.json): chosen by a search over an sRGB grid for the
 * largest smallest CIEDE2000 distance under the adjacency rule, then adjusted by hand (arteries red, veins blue,
 * lesion magenta, pancreas yellow).
 */
export const PANTS_PALETTE: Readonly<Record<string, string>> = {
  adrenal_gland_left: '#3388ff',
  adrenal_gland_right: '#00cc88',
  aorta: '#c41e1e',
  bladder: '#eba747',
  celiac_artery: '#c2ebad',
  colon: '#00bbcc',
  common_bile_duct: '#148fb8',
  duodenum: '#ff3355',
  femur_left: '#f2ead3',
  femur_right: '#9fb3c8',
  gall_bladder: '#5ca329',
  kidney_left: '#ffb399',
  kidney_right: '#aabf40',
  liver: '#a35c29',
  lung_left: '#66fff2',
  lung_right: '#33bbff',
  pancreas: '#f5e000',
  pancreas_body: '#eb7047',
  pancreas_head: '#29a38f',
  pancreas_tail: '#00ff55',
  pancreatic_duct: '#8066ff',
  postcava: '#0033cc',
  prostate: '#d4ff00',
  spleen: '#c985e0',
  stomach: '#2966a3',
  superior_mesenteric_artery: '#aa00cc',
  veins: '#99e6ff',
  pancreatic_lesion: '#ff00cc',
}

/** Anatomical neighbours of the PanTS schema (pairs that touch or overlap in an abdominal CT). */
export const PANTS_NEIGHBOURS: readonly (readonly [string, string])[] = [
  ['liver', 'gall_bladder'], ['liver', 'kidney_right'], ['liver', 'adrenal_gland_right'], ['liver', 'postcava'],
  ['liver', 'stomach'], ['liver', 'duodenum'], ['liver', 'lung_right'], ['liver', 'common_bile_duct'], ['liver', 'colon'],
  ['liver', 'veins'], ['liver', 'pancreas'],
  ['spleen', 'stomach'], ['spleen', 'kidney_left'], ['spleen', 'pancreas_tail'], ['spleen', 'pancreas'], ['spleen', 'colon'],
  ['spleen', 'lung_left'], ['spleen', 'adrenal_gland_left'], ['spleen', 'veins'],
  ['kidney_left', 'adrenal_gland_left'], ['kidney_left', 'colon'], ['kidney_left', 'pancreas_tail'], ['kidney_left', 'pancreas'],
  ['kidney_right', 'adrenal_gland_right'], ['kidney_right', 'colon'], ['kidney_right', 'duodenum'], ['kidney_right', 'postcava'],
  ['adrenal_gland_left', 'aorta'], ['adrenal_gland_right', 'postcava'], ['adrenal_gland_left', 'pancreas'],
  ['aorta', 'celiac_artery'], ['aorta', 'superior_mesenteric_artery'], ['aorta', 'postcava'], ['aorta', 'veins'],
  ['celiac_artery', 'superior_mesenteric_artery'], ['celiac_artery', 'pancreas_body'], ['celiac_artery', 'pancreas'],
  ['celiac_artery', 'stomach'],
  ['superior_mesenteric_artery', 'veins'], ['superior_mesenteric_artery', 'pancreas'], ['superior_mesenteric_artery', 'pancreas_head'],
  ['superior_mesenteric_artery', 'pancreas_body'], ['superior_mesenteric_artery', 'duodenum'],
  ['postcava', 'veins'], ['postcava', 'duodenum'], ['postcava', 'pancreas_head'], ['postcava', 'pancreas'],
  ['veins', 'pancreas'], ['veins', 'pancreas_head'], ['veins', 'pancreas_body'], ['veins', 'pancreas_tail'],
  ['veins', 'pancreatic_lesion'], ['veins', 'stomach'],
  ['stomach', 'pancreas'], ['stomach', 'pancreas_body'], ['stomach', 'pancreas_tail'], ['stomach', 'colon'], ['stomach', 'duodenum'],
  ['stomach', 'lung_left'], ['stomach', 'gall_bladder'],
  ['duodenum', 'pancreas'], ['duodenum', 'pancreas_head'], ['duodenum', 'gall_bladder'], ['duodenum', 'colon'],
  ['duodenum', 'common_bile_duct'], ['duodenum', 'pancreatic_lesion'], ['duodenum', 'pancreatic_duct'],
  ['colon', 'pancreas'], ['colon', 'pancreas_tail'], ['colon', 'gall_bladder'], ['colon', 'bladder'],
  ['gall_bladder', 'common_bile_duct'],
  ['common_bile_duct', 'pancreas'], ['common_bile_duct', 'pancreas_head'], ['common_bile_duct', 'pancreatic_duct'],
  ['common_bile_duct', 'pancreatic_lesion'], ['common_bile_duct', 'postcava'],
  ['pancreatic_lesion', 'pancreatic_duct'],
  ['bladder', 'prostate'], ['bladder', 'femur_left'], ['bladder', 'femur_right'], ['prostate', 'femur_left'], ['prostate', 'femur_right'],
  // Not neighbours, but confused at a glance (issue 13): the lesion must never look like lung, nor spleen like kidney.
  ['lung_left', 'pancreatic_lesion'], ['lung_right', 'pancreatic_lesion'], ['spleen', 'kidney_right'],
]

export interface Colored {
  name: string
  inside: string | null
  color: string
}

// ---------------------------------------------------------------- colour science

function linear(c: number): number {
  const v = c / 255
  return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4
}

/** CIELAB (D65) of an sRGB hex colour. */
export function hexToLab(hex: string): Lab {
  const [r, g, b] = hexToRgb(hex).map(linear)
  const x = (r * 0.4124564 + g * 0.3575761 + b * 0.1804375) / 0.95047
  const y = r * 0.2126729 + g * 0.7151522 + b * 0.072175
  const z = (r * 0.0193339 + g * 0.119192 + b * 0.9503041) / 1.08883
  const f = (t: number): number => (t > 216 / 24389 ? Math.cbrt(t) : ((24389 / 27) * t + 16) / 116)
  const fx = f(x)
  const fy = f(y)
  const fz = f(z)
  return [116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)]
}

/** Lightness, chroma and hue angle (degrees) of a hex colour. */
export function hexToLch(hex: string): [number, number, number] {
  const [l, a, b] = hexToLab(hex)
  return [l, Math.hypot(a, b), ((Math.atan2(b, a) * 180) / Math.PI + 360) % 360]
}

/** CIEDE2000 colour difference of two CIELAB colours (Sharma, Wu and Dalal 2005). */
export function deltaE2000(lab1: Lab, lab2: Lab): number {
  const rad = Math.PI / 180
  const [l1, a1, b1] = lab1
  const [l2, a2, b2] = lab2
  const cBar = (Math.hypot(a1, b1) + Math.hypot(a2, b2)) / 2
  const g = 0.5 * (1 - Math.sqrt(cBar ** 7 / (cBar ** 7 + 25 ** 7)))
  const ap1 = (1 + g) * a1
  const ap2 = (1 + g) * a2
  const cp1 = Math.hypot(ap1, b1)
  const cp2 = Math.hypot(ap2, b2)
  const hueOf = (b: number, a: number): number => {
    if (b === 0 && a === 0) return 0
    const hh = Math.atan2(b, a) / rad
    return hh < 0 ? hh + 360 : hh
  }
  const hp1 = hueOf(b1, ap1)
  const hp2 = hueOf(b2, ap2)
  const dL = l2 - l1
  const dC = cp2 - cp1
  let dh = 0
  if (cp1 * cp2 !== 0) {
    dh = hp2 - hp1
    if (dh > 180) dh -= 360
    else if (dh < -180) dh += 360
  }
  const dH = 2 * Math.sqrt(cp1 * cp2) * Math.sin((dh * rad) / 2)
  const lBar = (l1 + l2) / 2
  const cpBar = (cp1 + cp2) / 2
  let hBar = hp1 + hp2
  if (cp1 * cp2 !== 0) {
    if (Math.abs(hp1 - hp2) > 180) hBar = hBar < 360 ? hBar + 360 : hBar - 360
    hBar /= 2
  }
  const t =
    1 - 0.17 * Math.cos((hBar - 30) * rad) + 0.24 * Math.cos(2 * hBar * rad) + 0.32 * Math.cos((3 * hBar + 6) * rad) - 0.2 * Math.cos((4 * hBar - 63) * rad)
  const dTheta = 30 * Math.exp(-(((hBar - 275) / 25) ** 2))
  const rc = 2 * Math.sqrt(cpBar ** 7 / (cpBar ** 7 + 25 ** 7))
  const sl = 1 + (0.015 * (lBar - 50) ** 2) / Math.sqrt(20 + (lBar - 50) ** 2)
  const sc = 1 + 0.045 * cpBar
  const sh = 1 + 0.015 * cpBar * t
  const rt = -Math.sin(2 * dTheta * rad) * rc
  return Math.sqrt((dL / sl) ** 2 + (dC / sc) ** 2 + (dH / sh) ** 2 + rt * (dC / sc) * (dH / sh))
}

/** CIEDE2000 difference of two hex colours. */
export function colorDistance(a: string, b: string): number {
  return deltaE2000(hexToLab(a), hexToLab(b))
}

/** Both colours are chromatic and their hues lie within `gap` degrees: one hue family. */
export function sameHueFamily(a: string, b: string, gap = PALETTE_MIN.hueGap): boolean {
  const [, c1, h1] = hexToLch(a)
  const [, c2, h2] = hexToLch(b)
  if (c1 < ACHROMATIC_CHROMA || c2 < ACHROMATIC_CHROMA) return false
  const d = Math.abs(h1 - h2)
  return Math.min(d, 360 - d) < gap
}

// ---------------------------------------------------------------- adjacency and checks

/**
 * The pairs of structures that must look clearly different: PanTS neighbours, a part and its parent, parts of
 * one parent, and the left and right of a pair (`kidney_left` / `kidney_right`).
 */
export function adjacentPairs(structures: readonly { name: string; inside: string | null }[]): [string, string][] {
  const names = new Set(structures.map((s) => s.name))
  const seen = new Set<string>()
  const out: [string, string][] = []
  const add = (a: string, b: string): void => {
    if (a === b || !names.has(a) || !names.has(b)) return
    const key = a < b ? `${a}\n${b}` : `${b}\n${a}`
    if (seen.has(key)) return
    seen.add(key)
    out.push([a, b])
  }
  for (const [a, b] of PANTS_NEIGHBOURS) add(a, b)
  for (const s of structures) {
    if (s.inside) add(s.name, s.inside)
    for (const t of structures) if (s.inside && t.inside === s.inside) add(s.name, t.name)
    const side = /^(.*)_(left|right)$/.exec(s.name)
    if (side) add(s.name, `${side[1]}_${side[2] === 'left' ? 'right' : 'left'}`)
  }
  return out
}

export interface PaletteProblem {
  a: string
  b: string
  distance: number
  why: 'too close' | 'adjacent too close' | 'adjacent share a hue family'
}

/** The pairs of a colouring that break the thresholds (every pair, then the adjacent pairs). */
export function paletteProblems(
  colors: ReadonlyMap<string, string>,
  pairs: readonly (readonly [string, string])[],
  min: { any: number; adjacent: number; hueGap: number } = PALETTE_MIN,
): PaletteProblem[] {
  const names = [...colors.keys()]
  const labs = new Map(names.map((n) => [n, hexToLab(colors.get(n)!)]))
  const out: PaletteProblem[] = []
  for (let i = 0; i < names.length; i++) {
    for (let j = i + 1; j < names.length; j++) {
      const d = deltaE2000(labs.get(names[i])!, labs.get(names[j])!)
      if (d < min.any) out.push({ a: names[i], b: names[j], distance: d, why: 'too close' })
    }
  }
  for (const [a, b] of pairs) {
    if (!colors.has(a) || !colors.has(b)) continue
    const d = deltaE2000(labs.get(a)!, labs.get(b)!)
    if (d < min.adjacent) out.push({ a, b, distance: d, why: 'adjacent too close' })
    else if (sameHueFamily(colors.get(a)!, colors.get(b)!, min.hueGap)) out.push({ a, b, distance: d, why: 'adjacent share a hue family' })
  }
  return out
}

// ---------------------------------------------------------------- defaults

function hsl(h: number, s: number, l: number): string {
  const k = (n: number): number => (n + h / 30) % 12
  const a = s * Math.min(l, 1 - l)
  const f = (n: number): number => l - a * Math.max(-1, Math.min(k(n) - 3, Math.min(9 - k(n), 1)))
  return `#${[f(0), f(8), f(4)].map((x) => Math.round(x * 255).toString(16).padStart(2, '0')).join('')}`
}

let candidates: { hex: string; lab: Lab }[] | null = null

/** The colours a name outside the curated palette may get: vivid and light enough to read on CT greys. */
function candidatePool(): { hex: string; lab: Lab }[] {
  if (!candidates) {
    candidates = []
    for (let h = 0; h < 360; h += 10) for (const s of [0.7, 1]) for (const l of [0.45, 0.6, 0.75]) candidates.push({ hex: hsl(h, s, l), lab: hexToLab(hsl(h, s, l)) })
  }
  return candidates
}

/**
 * The default colour of every structure: the curated colour of a PanTS name, else the candidate farthest
 * (CIEDE2000) from the colours given so far that differs in hue family from its adjacent structures.
 * Deterministic: schema order decides.
 */
export function defaultColors(structures: readonly { name: string; inside: string | null }[]): Map<string, string> {
  const out = new Map<string, string>()
  for (const s of structures) if (PANTS_PALETTE[s.name]) out.set(s.name, PANTS_PALETTE[s.name])
  const neighbours = new Map<string, string[]>()
  for (const [a, b] of adjacentPairs(structures)) {
    neighbours.set(a, [...(neighbours.get(a) ?? []), b])
    neighbours.set(b, [...(neighbours.get(b) ?? []), a])
  }
  for (const s of structures) {
    if (out.has(s.name)) continue
    const given = [...out.values()].map(hexToLab)
    const near = (neighbours.get(s.name) ?? []).filter((n) => out.has(n)).map((n) => out.get(n)!)
    let best = candidatePool()[0]
    let bestScore = -Infinity
    for (const c of candidatePool()) {
      let score = given.length ? Math.min(...given.map((g) => deltaE2000(g, c.lab))) : 100
      if (near.some((n) => sameHueFamily(n, c.hex) || colorDistance(n, c.hex) < PALETTE_MIN.adjacent)) score -= 1000
      if (score > bestScore) {
        bestScore = score
        best = c
      }
    }
    out.set(s.name, best.hex)
  }
  return out
}

/**
 * The colours to show: the schema's own when every structure carries one (not the placeholder) and they meet the
 * schema thresholds; otherwise the default palette for all, so that a schema whose organs share a hue (the old
 * PanTS colours: pancreas, parts, duodenum and liver all orange) is shown in distinct colours.
 */
export function displayColors(structures: readonly Colored[]): { colors: Map<string, string>; source: 'schema' | 'default' } {
  const own = new Map(structures.map((s) => [s.name, (s.color || PLACEHOLDER).toLowerCase()]))
  const complete = structures.every((s) => /^#[0-9a-f]{6}$/i.test(s.color) && s.color.toLowerCase() !== PLACEHOLDER)
  if (complete && !paletteProblems(own, adjacentPairs(structures), SCHEMA_MIN).length) return { colors: own, source: 'schema' }
  return { colors: defaultColors(structures), source: 'default' }
}
