import { describe, expect, it } from 'vitest'
import { createStore, sameItems } from '../src/store'

describe('store', () => {
  it('calls a watcher once per change of its slice, with the previous value', () => {
    const store = createStore({ a: 1, b: 'x', list: [1, 2] })
    const seen: [number, number][] = []
    store.watch(
      (s) => s.a,
      (v, prev) => seen.push([v, prev]),
    )
    store.set({ b: 'y' })
    store.set({ a: 1 })
    store.set({ a: 2 })
    store.update((s) => ({ a: s.a + 1 }))
    expect(seen).toEqual([
      [2, 1],
      [3, 2],
    ])
    expect(store.get()).toEqual({ a: 3, b: 'y', list: [1, 2] })
  })

  it('supports tuple selectors with custom equality, immediate calls and unsubscribing', () => {
    const store = createStore({ a: 1, b: 2, c: 3 })
    let calls = 0
    const stop = store.watch((s) => [s.a, s.b] as const, () => calls++, { equals: sameItems, immediate: true })
    expect(calls).toBe(1)
    store.set({ c: 4 })
    expect(calls).toBe(1)
    store.set({ b: 5 })
    expect(calls).toBe(2)
    stop()
    store.set({ a: 9 })
    expect(calls).toBe(2)
  })

  it('a watcher that sets the store sees a consistent state, and others see the final value once', () => {
    const store = createStore({ tool: 'brush', locked: false })
    const tools: string[] = []
    store.watch(
      (s) => s.locked,
      (locked) => {
        if (locked) store.set({ tool: 'navigate' })
      },
    )
    store.watch(
      (s) => s.tool,
      (tool) => tools.push(tool),
    )
    store.set({ locked: true })
    expect(store.get().tool).toBe('navigate')
    expect(tools).toEqual(['navigate'])
  })

  it('does not notify when nothing changed', () => {
    const obj = { x: 1 }
    const store = createStore({ obj })
    let calls = 0
    store.watch(
      (s) => s.obj,
      () => calls++,
    )
    store.set({ obj })
    expect(calls).toBe(0)
    store.set({ obj: { x: 1 } })
    expect(calls).toBe(1)
  })
})
