/**
 * The HTTP client: bearer token, refresh before expiry, a sign-in prompt on 401 (the request is retried once
 * signed in, so an edit in flight is never dropped), and an online/offline signal.
 */

import type { TokenOut, User } from './types'

const SESSION_KEY = 'maskloop.session'

export interface SessionData {
  token: string
  expiresAt: string | null
  user: User
}

export class ApiError extends Error {
  readonly status: number
  readonly body: Record<string, unknown>
  constructor(status: number, body: Record<string, unknown>, message: string) {
    super(message)
    this.status = status
    this.body = body
  }
}

/** The network failed (server unreachable, offline): nothing was stored, try again later. */
export class OfflineError extends Error {}

type Listener = () => void

export interface RequestOptions {
  json?: unknown
  body?: BodyInit
  headers?: Record<string, string>
  /** Ask to sign in again on 401 and retry (default true). */
  reauth?: boolean
  signal?: AbortSignal
}

export class Api {
  session: SessionData | null = null
  online = true
  /** Shows the sign-in dialog; resolves once signed in again. Set by the app. */
  reauthenticate: (() => Promise<void>) | null = null
  private refreshTimer: number | null = null
  private listeners = new Set<Listener>()
  private reauthInFlight: Promise<void> | null = null

  constructor() {
    const stored = localStorage.getItem(SESSION_KEY)
    if (stored) {
      try {
        const parsed = JSON.parse(stored) as SessionData
        if (!parsed.expiresAt || Date.parse(parsed.expiresAt) > Date.now() + 5000) this.session = parsed
      } catch {
        localStorage.removeItem(SESSION_KEY)
      }
    }
    window.addEventListener('online', () => this.setOnline(true))
    window.addEventListener('offline', () => this.setOnline(false))
    window.addEventListener('storage', (e) => {
      // Another tab signed in or refreshed: take its token.
      if (e.key === SESSION_KEY && e.newValue) {
        this.session = JSON.parse(e.newValue) as SessionData
        this.scheduleRefresh()
        this.emit()
      }
    })
    if (this.session) this.scheduleRefresh()
  }

  onChange(fn: Listener): () => void {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }

  private emit(): void {
    for (const fn of this.listeners) fn()
  }

  setOnline(value: boolean): void {
    if (this.online !== value) {
      this.online = value
      this.emit()
    }
  }

  get user(): User | null {
    return this.session?.user ?? null
  }

  private store(out: TokenOut): void {
    this.session = { token: out.access_token, expiresAt: out.expires_at, user: out.user }
    localStorage.setItem(SESSION_KEY, JSON.stringify(this.session))
    this.scheduleRefresh()
    this.emit()
  }

  async login(email: string, password: string): Promise<User> {
    const resp = await this.send('POST', '/api/auth/login', { json: { email, password }, reauth: false }, false)
    const out = (await resp.json()) as TokenOut
    this.store(out)
    return out.user
  }

  logout(): void {
    this.session = null
    localStorage.removeItem(SESSION_KEY)
    if (this.refreshTimer !== null) window.clearTimeout(this.refreshTimer)
    this.emit()
  }

  /** Exchange the current token for a fresh one (POST /api/auth/refresh). */
  async refresh(): Promise<void> {
    if (!this.session) return
    const resp = await this.send('POST', '/api/auth/refresh', { reauth: false })
    this.store((await resp.json()) as TokenOut)
  }

  /** Refresh 5 minutes before expiry (or half-way for short tokens); retry soon when offline. */
  scheduleRefresh(): void {
    if (this.refreshTimer !== null) window.clearTimeout(this.refreshTimer)
    this.refreshTimer = null
    if (!this.session?.expiresAt) return
    const left = Date.parse(this.session.expiresAt) - Date.now()
    const lead = Math.min(5 * 60_000, left / 2)
    const wait = Math.max(1000, left - lead)
    this.refreshTimer = window.setTimeout(() => {
      this.refresh().catch((err) => {
        if (err instanceof OfflineError) this.refreshTimer = window.setTimeout(() => this.scheduleRefresh(), 30_000)
      })
    }, Math.min(wait, 2 ** 31 - 1))
  }

  /** Force the session to look expired (test hook: the next request gets 401 and asks to sign in). */
  corruptToken(): void {
    if (this.session) this.session = { ...this.session, token: this.session.token + 'x' }
  }

  private async reauth(): Promise<void> {
    if (!this.reauthenticate) throw new ApiError(401, {}, 'signed out')
    if (!this.reauthInFlight) {
      this.reauthInFlight = this.reauthenticate().finally(() => {
        this.reauthInFlight = null
      })
    }
    await this.reauthInFlight
  }

  /** Send a request; 401 asks to sign in again (once) and retries; errors become ApiError/OfflineError. */
  async send(method: string, path: string, opts: RequestOptions = {}, auth = true): Promise<Response> {
    const headers: Record<string, string> = { ...(opts.headers ?? {}) }
    let body = opts.body
    if (opts.json !== undefined) {
      headers['Content-Type'] = 'application/json'
      body = JSON.stringify(opts.json)
    }
    if (auth && this.session) headers.Authorization = `Bearer ${this.session.token}`
    let resp: Response
    try {
      resp = await fetch(path, { method, headers, body, signal: opts.signal })
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err
      this.setOnline(false)
      throw new OfflineError(`the server cannot be reached (${(err as Error).message})`)
    }
    this.setOnline(true)
    if (resp.status === 401 && auth && opts.reauth !== false) {
      await this.reauth()
      return this.send(method, path, { ...opts, reauth: false }, auth)
    }
    if (!resp.ok) {
      let parsed: Record<string, unknown> = {}
      try {
        parsed = (await resp.json()) as Record<string, unknown>
      } catch {
        parsed = {}
      }
      const detail = typeof parsed.detail === 'string' ? parsed.detail : resp.statusText
      throw new ApiError(resp.status, parsed, `${resp.status}: ${detail}`)
    }
    return resp
  }

  async get<T>(path: string, opts: RequestOptions = {}): Promise<T> {
    return (await (await this.send('GET', path, opts)).json()) as T
  }

  async post<T>(path: string, opts: RequestOptions = {}): Promise<T> {
    return (await (await this.send('POST', path, opts)).json()) as T
  }

  async put<T>(path: string, opts: RequestOptions = {}): Promise<T> {
    return (await (await this.send('PUT', path, opts)).json()) as T
  }

  async delete(path: string): Promise<void> {
    await this.send('DELETE', path)
  }

  async bytes(path: string): Promise<ArrayBuffer> {
    return (await this.send('GET', path)).arrayBuffer()
  }

  /** Download with progress (bytes received, bytes expected or 0 when unknown). */
  async download(path: string, progress: (received: number, total: number) => void): Promise<ArrayBuffer> {
    const resp = await this.send('GET', path)
    const total = Number(resp.headers.get('Content-Length') ?? 0)
    if (!resp.body) return resp.arrayBuffer()
    const reader = resp.body.getReader()
    const parts: Uint8Array[] = []
    let received = 0
    progress(0, total)
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      parts.push(value)
      received += value.length
      progress(received, total)
    }
    const out = new Uint8Array(received)
    let offset = 0
    for (const part of parts) {
      out.set(part, offset)
      offset += part.length
    }
    return out.buffer
  }
}

export const api = new Api()
