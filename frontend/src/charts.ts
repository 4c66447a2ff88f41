/**
 * Small hand-made SVG charts for the lead pages (no chart library): horizontal bars, stacked bars, vertical
 * bars/histograms and lines. Every chart comes with its numbers as a table underneath ("Data"), so the values
 * stay readable without the picture (screen readers, copy-paste, tests).
 */

import { h } from './dom'

const SVG = 'http://www.w3.org/2000/svg'

type SvgChild = SVGElement | string | null | undefined | false

/** An SVG element builder (attributes as strings or numbers). */
export function s(tag: string, attrs: Record<string, string | number | null | undefined> = {}, ...children: (SvgChild | SvgChild[])[]): SVGElement {
  const el = document.createElementNS(SVG, tag) as SVGElement
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue
    // Styles through the CSSOM: a style attribute would be refused by the Content-Security-Policy.
    if (key === 'style') el.style.cssText = String(value)
    else el.setAttribute(key, String(value))
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue
    el.append(typeof child === 'string' ? document.createTextNode(child) : child)
  }
  return el
}

/** Colours of a qualitative series (calm, distinguishable on the dark panel). */
export const PALETTE = ['#3fb6ff', '#3ecf8e', '#f2b441', '#c9b5ff', '#ff7b7b', '#5fd4d4', '#e58a3a', '#9aa7ff', '#d65db1', '#a3c45a']

export function color(i: number): string {
  return PALETTE[i % PALETTE.length]
}

export interface TableSpec {
  head: string[]
  rows: (string | number | Node)[][]
  testid?: string
}

/** A compact numbers table (the text form of a chart, or a table in its own right). */
export function dataTable(spec: TableSpec): HTMLTableElement {
  return h(
    'table',
    { class: 'data-table', 'data-testid': spec.testid },
    h('thead', null, h('tr', null, spec.head.map((t, i) => h('th', { class: i ? 'num' : '' }, t)))),
    h(
      'tbody',
      null,
      spec.rows.map((row) =>
        h(
          'tr',
          null,
          row.map((cell, i) => h('td', { class: i ? 'num' : '' }, cell instanceof Node ? cell : String(cell))),
        ),
      ),
    ),
  )
}

/** A chart with its data table folded underneath. */
export function figure(chart: Element | null, table: TableSpec | null, testid?: string, open = false): HTMLElement {
  return h(
    'figure',
    { class: 'chart', 'data-testid': testid },
    chart,
    table ? h('details', { class: 'chart-data', open }, h('summary', null, 'Data'), dataTable(table)) : null,
  )
}

export function legend(items: { label: string; color: string; value?: string; testid?: string }[]): HTMLElement {
  return h(
    'div',
    { class: 'legend' },
    items.map((it) =>
      h(
        'span',
        { class: 'legend-item', 'data-testid': it.testid },
        h('i', { style: { background: it.color } }),
        it.label,
        it.value !== undefined ? h('b', null, it.value) : null,
      ),
    ),
  )
}

function niceMax(value: number): number {
  if (value <= 0) return 1
  const exp = 10 ** Math.floor(Math.log10(value))
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= value) return m * exp
  return 10 * exp
}

/** An axis maximum: integer data gets a multiple of 4 (so the quarter ticks are whole numbers). */
function axisMax(values: number[]): number {
  const max = Math.max(0, ...values)
  if (values.every(Number.isInteger)) return Math.max(4, Math.ceil(max / 4) * 4)
  return niceMax(max)
}

function fmt(value: number): string {
  if (Number.isInteger(value)) return value.toLocaleString('en-US')
  return Math.abs(value) >= 100 ? value.toFixed(0) : Math.abs(value) >= 10 ? value.toFixed(1) : value.toFixed(2)
}

export interface Bar {
  label: string
  value: number | null
  /** Optional second mark drawn as a tick (e.g. a 90th percentile next to a median). */
  tick?: number | null
  color?: string
  title?: string
}

/** Horizontal bars, one row per category, value printed at the bar's end. */
export function hbars(bars: Bar[], opts: { max?: number; format?: (v: number) => string; width?: number } = {}): SVGElement {
  const width = opts.width ?? 560
  const labelW = Math.min(190, Math.max(70, ...bars.map((b) => b.label.length * 6.6 + 10)))
  const valueW = 64
  const rowH = 20
  const height = Math.max(1, bars.length) * rowH + 6
  const max = opts.max ?? niceMax(Math.max(0, ...bars.map((b) => Math.max(b.value ?? 0, b.tick ?? 0))))
  const plotW = width - labelW - valueW
  const f = opts.format ?? fmt
  return s(
    'svg',
    { viewBox: `0 0 ${width} ${height}`, class: 'svg-chart', role: 'img', width: '100%', style: `max-width: ${width}px` },
    bars.map((b, i) => {
      const y = i * rowH + 3
      const w = b.value === null ? 0 : Math.max(b.value > 0 ? 1 : 0, (b.value / max) * plotW)
      return s(
        'g',
        { 'data-label': b.label, 'data-value': b.value ?? '' },
        s('title', {}, b.title ?? `${b.label}: ${b.value === null ? 'n/a' : f(b.value)}`),
        s('text', { x: labelW - 6, y: y + 13, 'text-anchor': 'end', class: 'axis-label' }, b.label),
        s('rect', { x: labelW, y: y + 2, width: plotW, height: rowH - 6, class: 'track' }),
        s('rect', { x: labelW, y: y + 2, width: w, height: rowH - 6, fill: b.color ?? color(0), rx: 2 }),
        b.tick !== undefined && b.tick !== null
          ? s('rect', { x: labelW + (b.tick / max) * plotW - 1, y, width: 2, height: rowH - 2, class: 'tick-mark' })
          : null,
        s('text', { x: labelW + plotW + 6, y: y + 13, class: 'value-label' }, b.value === null ? '—' : f(b.value)),
      )
    }),
  )
}

export interface StackRow {
  label: string
  parts: Record<string, number>
}

/** Horizontal stacked bars (one row per group; segments in `keys` order), scaled to the largest row total. */
export function stackedBars(rows: StackRow[], keys: string[], colors: Record<string, string>, opts: { width?: number; normalise?: boolean } = {}): SVGElement {
  const width = opts.width ?? 560
  const labelW = Math.min(170, Math.max(60, ...rows.map((r) => r.label.length * 6.6 + 10)))
  const valueW = 52
  const rowH = 24
  const height = Math.max(1, rows.length) * rowH + 4
  const totals = rows.map((r) => keys.reduce((acc, k) => acc + (r.parts[k] ?? 0), 0))
  const max = Math.max(1, ...totals)
  const plotW = width - labelW - valueW
  return s(
    'svg',
    { viewBox: `0 0 ${width} ${height}`, class: 'svg-chart', role: 'img', width: '100%', style: `max-width: ${width}px` },
    rows.map((r, i) => {
      const y = i * rowH + 2
      const scale = opts.normalise ? (totals[i] ? plotW / totals[i] : 0) : plotW / max
      let x = labelW
      const segs = keys.map((k) => {
        const v = r.parts[k] ?? 0
        if (!v) return null
        const w = v * scale
        const seg = s(
          'rect',
          { x, y: y + 3, width: Math.max(0.5, w), height: rowH - 8, fill: colors[k] ?? '#888', 'data-key': k, 'data-value': v },
          s('title', {}, `${r.label} · ${k.replace(/_/g, ' ')}: ${v}`),
        )
        x += w
        return seg
      })
      return s(
        'g',
        { 'data-label': r.label, 'data-total': totals[i] },
        s('text', { x: labelW - 6, y: y + 15, 'text-anchor': 'end', class: 'axis-label' }, r.label),
        s('rect', { x: labelW, y: y + 3, width: plotW, height: rowH - 8, class: 'track' }),
        segs,
        s('text', { x: width - valueW + 6, y: y + 15, class: 'value-label' }, fmt(totals[i])),
      )
    }),
  )
}

export interface Column {
  label: string
  value: number
  title?: string
  color?: string
}

/** Vertical bars (a histogram when the labels are bin edges), with a y axis. */
export function columns(cols: Column[], opts: { width?: number; height?: number; yLabel?: string; format?: (v: number) => string } = {}): SVGElement {
  const width = opts.width ?? 560
  const height = opts.height ?? 180
  const left = 40
  const bottom = 30
  const top = opts.yLabel ? 22 : 10
  const plotW = width - left - 8
  const plotH = height - top - bottom
  const max = axisMax(cols.map((c) => c.value))
  const step = plotW / Math.max(1, cols.length)
  const f = opts.format ?? fmt
  const every = Math.max(1, Math.ceil(cols.length / Math.floor(plotW / 46)))
  return s(
    'svg',
    { viewBox: `0 0 ${width} ${height}`, class: 'svg-chart', role: 'img', width: '100%', style: `max-width: ${width}px` },
    yAxis(max, left, top, plotW, plotH, f),
    cols.map((c, i) => {
      const bh = (c.value / max) * plotH
      const x = left + i * step
      return s(
        'g',
        { 'data-label': c.label, 'data-value': c.value },
        s('title', {}, c.title ?? `${c.label}: ${f(c.value)}`),
        s('rect', { x: x + step * 0.12, y: top + plotH - bh, width: step * 0.76, height: Math.max(0, bh), fill: c.color ?? color(0), rx: 1.5 }),
        i % every === 0 ? s('text', { x: x + step / 2, y: height - bottom + 14, 'text-anchor': 'middle', class: 'axis-label' }, c.label) : null,
      )
    }),
    opts.yLabel ? s('text', { x: 4, y: 11, class: 'axis-label small' }, opts.yLabel) : null,
  )
}

function yAxis(max: number, left: number, top: number, plotW: number, plotH: number, f: (v: number) => string): SVGElement {
  const ticks = [0, 0.25, 0.5, 0.75, 1]
  return s(
    'g',
    { class: 'axis' },
    ticks.map((t) => {
      const y = top + plotH - t * plotH
      return s(
        'g',
        {},
        s('line', { x1: left, x2: left + plotW, y1: y, y2: y, class: 'grid' }),
        s('text', { x: left - 4, y: y + 4, 'text-anchor': 'end', class: 'axis-label' }, f(t * max)),
      )
    }),
  )
}

export interface Series {
  name: string
  values: (number | null)[]
  color?: string
}

/** Lines over shared x labels (gaps where a value is null), with dots and a y axis. */
export function lines(xLabels: string[], series: Series[], opts: { width?: number; height?: number; yMax?: number; yMin?: number; format?: (v: number) => string; zeroDots?: boolean } = {}): SVGElement {
  const width = opts.width ?? 560
  const height = opts.height ?? 200
  const left = 44
  const bottom = 30
  const top = 10
  const plotW = width - left - 14
  const plotH = height - top - bottom
  const all = series.flatMap((sr) => sr.values.filter((v): v is number => v !== null))
  const yMin = opts.yMin ?? 0
  const yMax = opts.yMax ?? axisMax(all)
  const span = yMax - yMin || 1
  const f = opts.format ?? fmt
  const xAt = (i: number): number => left + (xLabels.length <= 1 ? plotW / 2 : (i / (xLabels.length - 1)) * plotW)
  const yAt = (v: number): number => top + plotH - ((v - yMin) / span) * plotH
  const every = Math.max(1, Math.ceil(xLabels.length / Math.floor(plotW / 60)))
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((t) => yMin + t * span)
  return s(
    'svg',
    { viewBox: `0 0 ${width} ${height}`, class: 'svg-chart', role: 'img', width: '100%', style: `max-width: ${width}px` },
    s(
      'g',
      { class: 'axis' },
      ticks.map((v) =>
        s(
          'g',
          {},
          s('line', { x1: left, x2: left + plotW, y1: yAt(v), y2: yAt(v), class: 'grid' }),
          s('text', { x: left - 4, y: yAt(v) + 4, 'text-anchor': 'end', class: 'axis-label' }, f(v)),
        ),
      ),
      xLabels.map((label, i) =>
        i % every === 0 ? s('text', { x: xAt(i), y: height - bottom + 14, 'text-anchor': 'middle', class: 'axis-label' }, label) : null,
      ),
    ),
    series.map((sr, si) => {
      const c = sr.color ?? color(si)
      const segments: string[] = []
      let current = ''
      sr.values.forEach((v, i) => {
        if (v === null) {
          if (current) segments.push(current)
          current = ''
          return
        }
        current += `${current ? 'L' : 'M'}${xAt(i).toFixed(1)},${yAt(v).toFixed(1)}`
      })
      if (current) segments.push(current)
      return s(
        'g',
        { 'data-series': sr.name },
        segments.map((d) => s('path', { d, fill: 'none', stroke: c, 'stroke-width': 2 })),
        sr.values.map((v, i) =>
          v === null || (v === 0 && opts.zeroDots === false)
            ? null
            : s('circle', { cx: xAt(i), cy: yAt(v), r: 3, fill: c }, s('title', {}, `${sr.name} · ${xLabels[i]}: ${f(v)}`)),
        ),
      )
    }),
  )
}
