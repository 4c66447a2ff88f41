/**
 * A small typed store: one state object, shallow `set` patches, and `watch` subscriptions on a selected slice
 * (called synchronously, once per change of that slice). Views subscribe to the slice they draw instead of being
 * re-rendered by hand after every action. No DOM: unit-tested under Node.
 */

export type Equality<T> = (a: T, b: T) => boolean

export interface WatchOptions<T> {
  /** When two selected values count as the same (default `Object.is`). */
  equals?: Equality<T>
  /** Call the listener once now with the current value (default false). */
  immediate?: boolean
}

/** The read side: what views and narrow interfaces depend on. */
export interface ReadableStore<S extends object> {
  get(): Readonly<S>
  /** Call `fn(value, previous)` whenever `select(state)` changes; returns the unsubscribe function. */
  watch<T>(select: (state: Readonly<S>) => T, fn: (value: T, previous: T) => void, options?: WatchOptions<T>): () => void
}

export interface Store<S extends object> extends ReadableStore<S> {
  /** Merge a patch into the state (keys whose value is identical are ignored) and notify the watchers it affects. */
  set(patch: Partial<S>): void
  /** `set` with a patch computed from the current state. */
  update(fn: (state: Readonly<S>) => Partial<S>): void
}

interface Watcher<S, T> {
  select: (state: S) => T
  fn: (value: T, previous: T) => void
  equals: Equality<T>
  last: T
  active: boolean
}

export function createStore<S extends object>(initial: S): Store<S> {
  let state: S = { ...initial }
  const watchers = new Set<Watcher<S, unknown>>()

  function notify(): void {
    for (const w of [...watchers]) {
      if (!w.active) continue
      const value = w.select(state)
      if (w.equals(w.last, value)) continue
      const previous = w.last
      w.last = value
      w.fn(value, previous)
    }
  }

  return {
    get: () => state,
    set(patch) {
      let changed = false
      for (const key of Object.keys(patch) as (keyof S)[]) {
        if (!Object.is(state[key], patch[key])) {
          changed = true
          break
        }
      }
      if (!changed) return
      state = { ...state, ...patch }
      notify()
    },
    update(fn) {
      this.set(fn(state))
    },
    watch<T>(select: (state: Readonly<S>) => T, fn: (value: T, previous: T) => void, options: WatchOptions<T> = {}) {
      const w: Watcher<S, T> = { select, fn, equals: options.equals ?? Object.is, last: select(state), active: true }
      watchers.add(w as Watcher<S, unknown>)
      if (options.immediate) fn(w.last, w.last)
      return () => {
        w.active = false
        watchers.delete(w as Watcher<S, unknown>)
      }
    },
  }
}

/** Element-wise `Object.is` of two arrays (a watcher that selects a tuple of values). */
export function sameItems<T extends readonly unknown[]>(a: T, b: T): boolean {
  return a.length === b.length && a.every((x, i) => Object.is(x, b[i]))
}
