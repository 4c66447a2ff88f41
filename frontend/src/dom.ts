/** Tiny DOM helpers: element builder, modal dialogs, toasts. No framework. */

type Child = Node | string | number | null | undefined | false
type Attrs = Record<string, unknown>

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag)
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue
      if (key.startsWith('on') && typeof value === 'function') {
        el.addEventListener(key.slice(2).toLowerCase(), value as EventListener)
      } else if (key === 'class') {
        el.className = String(value)
      } else if (key === 'style' && typeof value === 'object') {
        Object.assign(el.style, value)
      } else if (key === 'dataset' && typeof value === 'object') {
        Object.assign(el.dataset, value)
      } else if (key in el && typeof value !== 'string') {
        ;(el as unknown as Record<string, unknown>)[key] = value
      } else if (key === 'value' || key === 'checked' || key === 'disabled') {
        ;(el as unknown as Record<string, unknown>)[key] = value
      } else {
        el.setAttribute(key, value === true ? '' : String(value))
      }
    }
  }
  append(el, children)
  return el
}

function append(el: Element, children: (Child | Child[])[]): void {
  for (const child of children) {
    if (Array.isArray(child)) append(el, child)
    else if (child === null || child === undefined || child === false) continue
    else el.append(child instanceof Node ? child : String(child))
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild)
}

export function fmtTime(iso: string | null | undefined): string {
  if (!iso) return '—'
  const d = new Date(iso.endsWith('Z') || iso.includes('+') ? iso : iso + 'Z')
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' })
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`
  return `${(n / 1024 / 1024).toFixed(1)} MiB`
}

export interface DialogButton {
  label: string
  value: string
  kind?: 'primary' | 'danger' | 'plain'
  testid?: string
}

/** A modal dialog; resolves with the chosen button's value ('' when dismissed with Escape, if allowed). */
export function dialog(
  title: string,
  body: Node | string,
  buttons: DialogButton[],
  opts: { testid?: string; dismissable?: boolean; onOpen?: (root: HTMLElement) => void } = {},
): Promise<string> {
  return new Promise((resolve) => {
    const close = (value: string): void => {
      backdrop.remove()
      document.removeEventListener('keydown', onKey, true)
      resolve(value)
    }
    const onKey = (e: KeyboardEvent): void => {
      e.stopPropagation()
      if (e.key === 'Escape' && opts.dismissable !== false) close('')
    }
    const box = h(
      'div',
      { class: 'dialog', role: 'dialog', 'aria-modal': 'true', 'data-testid': opts.testid ?? 'dialog' },
      h('h2', null, title),
      h('div', { class: 'dialog-body' }, body),
      h(
        'div',
        { class: 'dialog-buttons' },
        buttons.map((b) =>
          h(
            'button',
            {
              class: `btn ${b.kind ?? 'plain'}`,
              'data-testid': b.testid ?? `dialog-${b.value}`,
              onclick: () => close(b.value),
            },
            b.label,
          ),
        ),
      ),
    )
    const backdrop = h('div', { class: 'backdrop' }, box)
    document.body.append(backdrop)
    document.addEventListener('keydown', onKey, true)
    opts.onOpen?.(box)
    const first = box.querySelector<HTMLElement>('input, textarea, button.primary')
    first?.focus()
  })
}

let toastHost: HTMLElement | null = null

export function toast(message: string, kind: 'info' | 'ok' | 'warn' | 'error' = 'info', ms = 4000): void {
  if (!toastHost) {
    toastHost = h('div', { class: 'toasts', 'aria-live': 'polite' })
    document.body.append(toastHost)
  }
  const el = h('div', { class: `toast ${kind}`, 'data-testid': 'toast' }, message)
  toastHost.append(el)
  window.setTimeout(() => el.remove(), ms)
}
