/**
 * The HTTP client: the access token in page memory only (never in localStorage), a session restored and
 * refreshed through the httpOnly refresh cookie (+ CSRF header), a sign-in prompt on 401 (the request is
 * retried once signed in, so an edit in flight is never dropped), an online/offline signal, and bounded
 * retries with backoff for idempotent saves.
 */

import type { components } from './schema'
import type { TokenOut, User } from './types'

type OperationResult = components['schemas']['OperationResult']

/** Where older builds kept the session (token included): removed on load. */
const LEGACY_SESSION_KEY = 'maskloop.session'
/** The readable double-submit cookie the server sets next to its httpOnly refresh cookie. */
const CSRF_COOKIE = 'maskloop_csrf'

export interface SessionData {
  token: string
  expiresAt: string | null
  user: User
}

/** Login and cookie-session answers also carry the CSRF token (equal to the `maskloop_csrf` cookie). */
interface SessionTokenOut extends TokenOut {
  csrf_token?: string
}

export class ApiError extends Error {
  readonly status: number
  readonly body: Record<string, unknown>
  /** Seconds from a Retry-After header (429/503), else null. */
  readonly retryAfter: number | null
  constructor(status: number, body: Record<string, unknown>, message: string, retryAfter: number | null = null) {
    super(message)
    this.status = status
    this.body = body
    this.retryAfter = retryAfter
  }
}

/** The network failed (server unreachable, offline): nothing was stored, try again later. */
export class OfflineError extends Error {}

/** A cookie's value, or null. */
export function readCookie(name: string): string | null {
  for (const part of document.cookie.split(';')) {
    const eq = part.indexOf('=')
    if (eq > 0 && part.slice(0, eq).trim() === name) return decodeURIComponent(part.slice(eq + 1).trim())
  }
  return null
}

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  attempts: number
  baseDelayMs: number
  maxDelayMs: number
}

/** Version saves: 5 attempts over about 8 s (0.5, 1, 2, 4 s apart, ±20 %), longer when the server asks. */
export const SAVE_RETRY: RetryPolicy = { attempts: 5, baseDelayMs: 500, maxDelayMs: 8000 }

/** Taking up the cookie session on page load: 4 attempts over about 3 s. */
export const RESTORE_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 400, maxDelayMs: 2000 }

/**
 * Whether a failed request's outcome is unknown or the refusal passing: the connection broke (the server may
 * have committed it) or the server was briefly unavailable. Only these are retried, with the same key.
 */
export function isTransient(err: unknown): boolean {
  return err instanceof OfflineError || (err instanceof ApiError && [502, 503, 504].includes(err.status))
}

/** The wait before retrying after failed attempt number `attempt` (1-based): exponential, capped, jittered. */
export function retryDelay(policy: RetryPolicy, attempt: number, err: unknown): number {
  const backoff = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1))
  const hinted = err instanceof ApiError && err.retryAfter !== null ? Math.min(policy.maxDelayMs, err.retryAfter * 1000) : 0
  // Jitter spreads the retries of many browsers after a shared outage.
  return Math.max(backoff, hinted) * (0.8 + 0.4 * Math.random())
}

/**
 * Run an idempotent request (one whose retries carry the same idempotency key) until it succeeds, fails for
 * good, or the attempts run out; a browser that knows it is offline stops at once (the caller keeps the key).
 */
export async function withRetry<T>(
  attempt: (n: number) => Promise<T>,
  policy: RetryPolicy = SAVE_RETRY,
  onRetry?: (n: number, err: unknown, delayMs: number) => void,
): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt(n)
    } catch (err) {
      if (n >= policy.attempts || !isTransient(err) || !navigator.onLine) throw err
      const delay = retryDelay(policy, n, err)
      onRetry?.(n, err, delay)
      await new Promise((resolve) => window.setTimeout(resolve, delay))
    }
  }
}

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
  private cookieInFlight: Promise<boolean> | null = null

  constructor() {
    try {
      localStorage.removeItem(LEGACY_SESSION_KEY)
    } catch {
      // Storage disabled: nothing was kept there either.
    }
    window.addEventListener('online', () => this.setOnline(true))
    window.addEventListener('offline', () => this.setOnline(false))
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

  private store(out: SessionTokenOut): void {
    this.session = { token: out.access_token, expiresAt: out.expires_at, user: out.user }
    this.scheduleRefresh()
    this.emit()
  }

  async login(email: string, password: string): Promise<User> {
    const resp = await this.send('POST', '/api/auth/login', { json: { email, password }, reauth: false }, false)
    const out = (await resp.json()) as SessionTokenOut
    this.store(out)
    return out.user
  }

  /** On page load: take up the browser's session from its refresh cookie, if any; returns the user or null. */
  async restore(): Promise<User | null> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.fromCookie()
        break
      } catch (err) {
        // A busy database (503) or a dropped connection passes: retry a few times before giving up, so a
        // reload during someone else's save does not ask a signed-in user for the password again.
        if (isTransient(err) && attempt < RESTORE_RETRY.attempts) {
          await new Promise((done) => window.setTimeout(done, retryDelay(RESTORE_RETRY, attempt, err)))
          continue
        }
        // Offline or a lasting server fault: start signed out; signing in works again once the server answers.
        console.warn('session not restored:', (err as Error).message)
        break
      }
    }
    return this.user
  }

  /**
   * Get a fresh access token with the refresh cookie (POST /api/auth/session, CSRF header from the readable
   * cookie). False when there is no cookie session (none, expired, revoked); offline errors propagate.
   */
  private fromCookie(): Promise<boolean> {
    if (!this.cookieInFlight) {
      const run = async (): Promise<boolean> => {
        // Read inside the lock: another tab may just have renewed the cookies.
        const csrf = readCookie(CSRF_COOKIE)
        if (!csrf) return false
        try {
          const resp = await this.send('POST', '/api/auth/session', { headers: { 'X-CSRF-Token': csrf }, reauth: false }, false)
          this.store((await resp.json()) as SessionTokenOut)
          return true
        } catch (err) {
          if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return false
          throw err
        }
      }
      // Tabs of this origin renew one at a time (Web Locks, where available), so cookie rotation never races.
      const locks = (navigator as Navigator & { locks?: LockManager }).locks
      const attempt = locks ? locks.request('maskloop.session', run).then((ok) => ok) : run()
      this.cookieInFlight = attempt.finally(() => {
        this.cookieInFlight = null
      })
    }
    return this.cookieInFlight!
  }

  /** Sign out: forget the token at once, then end the server session (revokes it, clears both cookies). */
  async logout(): Promise<void> {
    const token = this.session?.token
    this.session = null
    if (this.refreshTimer !== null) window.clearTimeout(this.refreshTimer)
    this.refreshTimer = null
    this.emit()
    const headers: Record<string, string> = {}
    if (token) headers.Authorization = `Bearer ${token}`
    const csrf = readCookie(CSRF_COOKIE)
    if (csrf) headers['X-CSRF-Token'] = csrf
    try {
      await fetch('/api/auth/logout', { method: 'POST', headers, credentials: 'same-origin', keepalive: true })
    } catch {
      // Offline: the token is gone from this page; the server session ends at its expiry.
    }
  }

  /** Renew the access token through the refresh cookie; false when the cookie session is over. */
  async refresh(): Promise<boolean> {
    if (!this.session) return false
    return this.fromCookie()
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

  /** Force the access token to be refused (test hook: the next request gets 401). */
  corruptToken(): void {
    if (this.session) this.session = { ...this.session, token: this.session.token + 'x' }
  }

  /** After a 401: renew silently from the cookie when its session lives, else ask to sign in (once for all). */
  private async reauth(): Promise<void> {
    if (!this.reauthInFlight) {
      this.reauthInFlight = (async () => {
        if (await this.fromCookie().catch(() => false)) return
        if (!this.reauthenticate) throw new ApiError(401, {}, 'signed out')
        await this.reauthenticate()
      })().finally(() => {
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
      resp = await fetch(path, { method, headers, body, signal: opts.signal, credentials: 'same-origin' })
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
      let parsed: Record<string, unknown>
      try {
        parsed = (await resp.json()) as Record<string, unknown>
      } catch {
        parsed = {}
      }
      const detail = typeof parsed.detail === 'string' ? parsed.detail : resp.statusText
      const retryAfter = Number(resp.headers.get('Retry-After') ?? NaN)
      throw new ApiError(resp.status, parsed, `${resp.status}: ${detail}`, Number.isFinite(retryAfter) ? retryAfter : null)
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

  /** Run an editor operation (a preview: nothing is saved) on the masks a multipart body carries (core/operations.ts). */
  async operation(scanId: number, plan: { body: BodyInit; contentType: string }, signal?: AbortSignal): Promise<OperationResult> {
    return this.post<OperationResult>(`/api/scans/${scanId}/operations`, { body: plan.body, headers: { 'Content-Type': plan.contentType }, signal })
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
