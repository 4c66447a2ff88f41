/**
 * Drafts: the unsaved edit of a scan, kept twice — in this browser (IndexedDB, with a localStorage fallback
 * written synchronously when the tab closes) and on the server (PUT /api/scans/{id}/draft) — so a crash, a
 * closed tab or an expired token loses nothing.
 */

import { ApiError, api } from './api/client'
import type { DraftOut } from './api/types'
import type { DraftPayload } from './types'

const DB_NAME = 'maskloop'
const STORE = 'drafts'
const LS_PREFIX = 'maskloop.draft.'

function key(userId: number, scanId: number): string {
  return `${userId}:${scanId}`
}

let dbPromise: Promise<IDBDatabase | null> | null = null

function openDb(): Promise<IDBDatabase | null> {
  if (!dbPromise) {
    dbPromise = new Promise((resolve) => {
      if (!('indexedDB' in window)) {
        resolve(null)
        return
      }
      const req = indexedDB.open(DB_NAME, 1)
      req.onupgradeneeded = () => req.result.createObjectStore(STORE)
      req.onsuccess = () => resolve(req.result)
      req.onerror = () => resolve(null)
      req.onblocked = () => resolve(null)
    })
  }
  return dbPromise
}

async function idb<T>(mode: IDBTransactionMode, fn: (store: IDBObjectStore) => IDBRequest): Promise<T | null> {
  const db = await openDb()
  if (!db) return null
  return new Promise((resolve) => {
    const tx = db.transaction(STORE, mode)
    const req = fn(tx.objectStore(STORE))
    req.onsuccess = () => resolve((req.result as T) ?? null)
    req.onerror = () => resolve(null)
  })
}

export const localDrafts = {
  async save(userId: number, scanId: number, payload: DraftPayload): Promise<void> {
    const stored = await idb('readwrite', (s) => s.put(payload, key(userId, scanId)))
    if (stored === null) localStorage.setItem(LS_PREFIX + key(userId, scanId), JSON.stringify(payload))
    else localStorage.removeItem(LS_PREFIX + key(userId, scanId))
  },

  /** Synchronous copy for `beforeunload` / `pagehide`, when an async write might not finish. */
  saveNow(userId: number, scanId: number, payload: DraftPayload): void {
    try {
      localStorage.setItem(LS_PREFIX + key(userId, scanId), JSON.stringify(payload))
    } catch {
      // Quota: the IndexedDB copy written a moment ago still holds the edit.
    }
  },

  async load(userId: number, scanId: number): Promise<DraftPayload | null> {
    const fromDb = await idb<DraftPayload>('readonly', (s) => s.get(key(userId, scanId)))
    const raw = localStorage.getItem(LS_PREFIX + key(userId, scanId))
    const fromLs = raw ? (JSON.parse(raw) as DraftPayload) : null
    if (fromDb && fromLs) return Date.parse(fromLs.updated_at) > Date.parse(fromDb.updated_at) ? fromLs : fromDb
    return fromDb ?? fromLs
  },

  async remove(userId: number, scanId: number): Promise<void> {
    localStorage.removeItem(LS_PREFIX + key(userId, scanId))
    await idb('readwrite', (s) => s.delete(key(userId, scanId)))
  },

  /** Scan ids with a local draft of this user (for the worklist badge). */
  async scans(userId: number): Promise<Set<number>> {
    const keys = (await idb<IDBValidKey[]>('readonly', (s) => s.getAllKeys())) ?? []
    const out = new Set<number>()
    const prefix = `${userId}:`
    for (const k of keys) if (typeof k === 'string' && k.startsWith(prefix)) out.add(Number(k.slice(prefix.length)))
    for (let i = 0; i < localStorage.length; i++) {
      const k = localStorage.key(i)
      if (k?.startsWith(LS_PREFIX + prefix)) out.add(Number(k.slice((LS_PREFIX + prefix).length)))
    }
    return out
  },
}

export const serverDrafts = {
  async save(scanId: number, payload: DraftPayload): Promise<DraftOut> {
    return api.put<DraftOut>(`/api/scans/${scanId}/draft`, {
      json: { base_version_id: payload.base_version_id, payload },
    })
  },

  async load(scanId: number): Promise<DraftOut | null> {
    try {
      return await api.get<DraftOut>(`/api/scans/${scanId}/draft`)
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 403)) return null
      throw err
    }
  },

  async remove(scanId: number): Promise<void> {
    try {
      await api.delete(`/api/scans/${scanId}/draft`)
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 403)) return
      throw err
    }
  },
}
