// The chat protocol v1 client (docs/protocol.md): REST calls (accounts, media uploads with
// progress and resumable uploads, signed media links, search), and one WebSocket that says
// hello (resuming the user's event stream from a cursor), matches replies to requests by id,
// hands every push to the app, keeps itself alive with pings and reconnects on its own with
// backoff, following the server's close codes.

export const PROTOCOL_VERSION = 1;

export const CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  TOO_BIG: 1009,
  REVOKED: 4001,
  ABUSE: 4002,
  SLOW: 4003,
  HANDSHAKE: 4004,
};

/** An error from the server (its stable `code`) or from the network (`offline`). */
export class ApiError extends Error {
  constructor(code, message, { retry = false, retryAfterMs = null, status = null } = {}) {
    super(message || code);
    this.code = code;
    this.retry = retry;
    this.retryAfterMs = retryAfterMs;
    this.status = status;
  }

  static fromWire(e, status = null) {
    return new ApiError(e.code, e.message, {
      retry: !!e.retry,
      retryAfterMs: e.retry_after_ms ?? null,
      status,
    });
  }
}

async function rest(method, path, { body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError('offline', 'cannot reach the server', { retry: true });
  }
  if (resp.status === 204) return null;
  let data = null;
  try {
    data = await resp.json();
  } catch {
    // not JSON: handled below
  }
  if (!resp.ok) throw httpError(resp.status, data);
  return data;
}

/** The error of a failed HTTP reply: the server's own when it sent one. */
function httpError(status, data) {
  if (data && typeof data.code === 'string') return ApiError.fromWire(data, status);
  const code =
    {
      401: 'unauthorized',
      403: 'forbidden',
      404: 'not_found',
      405: 'not_found',
      409: 'conflict',
      413: 'too_large',
      415: 'unsupported_media_type',
      429: 'rate_limited',
      503: 'unavailable',
    }[status] || (status >= 500 ? 'internal' : 'invalid_argument');
  return new ApiError(code, `HTTP ${status}`, { retry: status >= 500 || status === 429, status });
}

/**
 * An HTTP request through XMLHttpRequest, for upload progress: `onProgress(sent, total)`.
 * `signal` (an AbortSignal) cancels it with the code `aborted`.
 */
function xhr(method, path, { token, body, headers = {}, onProgress, signal } = {}) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new ApiError('aborted', 'cancelled'));
    const x = new XMLHttpRequest();
    x.open(method, path);
    if (token) x.setRequestHeader('authorization', `Bearer ${token}`);
    for (const [k, v] of Object.entries(headers)) x.setRequestHeader(k, v);
    if (onProgress) x.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : 0);
    const onAbort = () => x.abort();
    signal?.addEventListener('abort', onAbort);
    const done = () => signal?.removeEventListener('abort', onAbort);
    x.onload = () => {
      done();
      let data = null;
      try {
        data = x.responseText ? JSON.parse(x.responseText) : null;
      } catch {
        // not JSON: handled below
      }
      if (x.status >= 200 && x.status < 300) resolve(data);
      else reject(httpError(x.status, data));
    };
    x.onerror = x.ontimeout = () => {
      done();
      reject(new ApiError('offline', 'cannot reach the server', { retry: true }));
    };
    x.onabort = () => {
      done();
      reject(new ApiError('aborted', 'cancelled'));
    };
    x.send(body ?? null);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const register = (username, password) =>
  rest('POST', '/v1/register', { body: { username, password } });

export const login = (username, password) =>
  rest('POST', '/v1/login', { body: { username, password } });

export const logout = (token) => rest('POST', '/v1/logout', { token });

/** REST history of one conversation; used to tell a revoked token from a network fault. */
export const restHistory = (token, conversation, query = {}) =>
  rest('GET', `/v1/conversations/${conversation}/messages?${new URLSearchParams(query)}`, { token });

// ---- media ------------------------------------------------------------------------------

/** Files above this size go through the resumable upload. */
export const RESUMABLE_ABOVE = 8 * 1024 * 1024;
const CHUNK_BYTES = 4 * 1024 * 1024;

/**
 * Uploads a File (or Blob with a `name`); resolves with its MediaInfo. Large files use the
 * resumable upload, which survives network faults by asking the server where it got to.
 */
export function uploadMedia(token, file, { onProgress, signal } = {}) {
  if (file.size > RESUMABLE_ABOVE) return uploadResumable(token, file, { onProgress, signal });
  const name = file.name || 'file';
  return xhr('POST', `/v1/media?name=${encodeURIComponent(name)}`, {
    token,
    body: file,
    headers: { 'content-type': file.type || 'application/octet-stream' },
    onProgress,
    signal,
  });
}

async function uploadResumable(token, file, { onProgress, signal } = {}) {
  const name = file.name || 'file';
  const up = await rest('POST', '/v1/uploads', { token, body: { name, size: file.size } });
  const path = `/v1/uploads/${encodeURIComponent(up.upload_id)}`;
  let offset = up.offset || 0;
  let failures = 0;
  onProgress?.(offset, file.size);
  for (;;) {
    if (signal?.aborted) throw new ApiError('aborted', 'cancelled');
    const start = offset;
    try {
      const r = await xhr('PATCH', path, {
        token,
        body: file.slice(start, start + CHUNK_BYTES),
        headers: { 'upload-offset': String(start), 'content-type': 'application/octet-stream' },
        onProgress: (sent) => onProgress?.(start + sent, file.size),
        signal,
      });
      failures = 0;
      offset = r.offset;
      onProgress?.(offset, file.size);
      if (r.media) return r.media;
      if (offset >= file.size) throw new ApiError('internal', 'the upload ended without a file');
    } catch (e) {
      const transient = e.retry || ['offline', 'conflict', 'offset_mismatch'].includes(e.code);
      if (e.code === 'aborted' || !transient || ++failures > 6) throw e;
      await sleep(e.retryAfterMs ?? Math.min(15000, 500 * 2 ** failures));
      // Ask where the server got to, and go on from there.
      const st = await rest('GET', path, { token }).catch(() => null);
      if (st && typeof st.offset === 'number') offset = st.offset;
    }
  }
}

/** `{url, thumbnails: {s?, m?, l?}, expires_ms}`: signed links usable in src attributes. */
export const mediaLink = (token, id) =>
  rest('POST', `/v1/media/${encodeURIComponent(id)}/link`, { token });

// ---- search -----------------------------------------------------------------------------

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  return q.toString();
}

/**
 * `{hits: [{conversation, seq, sender, ts_ms, body, snippet, highlights}], next, partial}`.
 * params: q, conversation, sender, from_ms, to_ms, cursor, limit.
 */
export const searchMessages = (token, params) => rest('GET', `/v1/search/messages?${query(params)}`, { token });

/** `{users: [{user_id, username, display_name}]}` */
export const searchUsers = (token, q) => rest('GET', `/v1/search/users?${query({ q })}`, { token });

/** `{conversations: [{conversation, name, kind}]}` */
export const searchConversations = (token, q) =>
  rest('GET', `/v1/search/conversations?${query({ q })}`, { token });

/** The WebSocket URL on the host that served this page. */
export function wsUrl(token) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/v1/ws?token=${encodeURIComponent(token)}`;
}

const REQUEST_TIMEOUT_MS = 20000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;

/**
 * One live connection for a logged-in user. Handlers (all optional):
 *   resumeFrom()                    the event cursor to resume from (a number), or null
 *   onReady(welcome, reconnected)   after each successful hello
 *   onPush(frame)                   every push: message, read, receipt, contact,
 *                                   profile_changed, typing, presence, resync
 *   onServerError(error)            an error frame that answers no request
 *   onStatus(state, info)           'connecting' | 'online' | 'offline' ({retryInMs, code})
 *   onAuthLost()                    the token is revoked (close 4001 or 401 on upgrade)
 *   onFatal(code, reason)           4002 / 4004: the client is broken, do not retry
 */
export class Connection {
  constructor({ token, userId }, handlers = {}) {
    this.token = token;
    this.userId = userId;
    this.h = handlers;
    this.ws = null;
    this.welcome = null;
    this.ready = false;
    this.stopped = true;
    this.pending = new Map();
    this.nextId = 1;
    this.attempt = 0;
    this.connects = 0;
    this.holdUntil = 0;
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.pingSince = 0; // when the oldest unanswered ping went out
    this.resumedFrom = null; // the cursor the last hello resumed from
    this.wakeUp = () => {
      if (document.visibilityState === 'hidden') return;
      if (!this.stopped && !this.ws && this.reconnectTimer) this._scheduleReconnect(0);
    };
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener('online', this.wakeUp);
    document.addEventListener('visibilitychange', this.wakeUp);
    this._open();
  }

  /** Closes for good (log out): no reconnect. */
  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.wakeUp);
    document.removeEventListener('visibilitychange', this.wakeUp);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const ws = this.ws;
    this._teardown(new ApiError('offline', 'logged out'));
    if (ws) ws.close(CLOSE.NORMAL);
  }

  /** Drops the socket as a network fault would; reconnects no sooner than `holdMs`. */
  drop(holdMs = 0) {
    this.holdUntil = Date.now() + holdMs;
    this._abandon(4000, 'dropped by the client');
  }

  /** Reconnects now, cutting short a wait (a backoff, or the hold of `drop`). */
  reconnectNow() {
    this.holdUntil = 0;
    if (!this.stopped && !this.ws) this._scheduleReconnect(0);
  }

  /** Sends a request frame (an `id` is added) and resolves with its reply. */
  request(frame, timeoutMs = REQUEST_TIMEOUT_MS) {
    if (!this.ready) return Promise.reject(new ApiError('offline', 'not connected', { retry: true }));
    return this._call(frame, timeoutMs);
  }

  _call(frame, timeoutMs) {
    const id = String(this.nextId++);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError('offline', 'no reply in time', { retry: true }));
        // A connection that does not answer is dead: start over.
        this._abandon(4000, 'request timed out');
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this._sendRaw({ ...frame, id });
    });
  }

  _sendRaw(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  _open() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this._status('connecting');
    let opened = false;
    const ws = new WebSocket(wsUrl(this.token));
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      const hello = { type: 'hello', version: PROTOCOL_VERSION };
      const cursor = this.h.resumeFrom?.();
      if (Number.isInteger(cursor) && cursor >= 0) hello.resume_from = cursor;
      this.resumedFrom = hello.resume_from ?? null;
      this._call(hello, REQUEST_TIMEOUT_MS).then(
        (welcome) => this._onWelcome(welcome),
        () => {}, // the close handler deals with it
      );
    };
    ws.onmessage = (ev) => {
      if (this.ws === ws) this._onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this._onClose(ev.code, ev.reason, opened);
    };
  }

  _onWelcome(welcome) {
    this.welcome = welcome;
    this.ready = true;
    this.attempt = 0;
    this.connects += 1;
    // Ping well within the server's idle limit (two heartbeats). Nothing heard for long
    // after a ping means a dead link. (Timers of hidden tabs may run late: that is fine.)
    const beat = Math.max(1000, Math.min(15000, (welcome.heartbeat_ms || 30000) / 2));
    const deadAfter = Math.max(beat * 2, 10000);
    this.pingSince = 0;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => {
      if (this.pingSince && Date.now() - this.pingSince > deadAfter) {
        this._abandon(4000, 'no reply to pings');
        return;
      }
      if (!this.pingSince) this.pingSince = Date.now();
      this._sendRaw({ type: 'ping', id: `ping-${this.nextId++}` });
    }, beat);
    this._status('online');
    this.h.onReady?.(welcome, this.connects > 1);
  }

  _onFrame(text) {
    this.pingSince = 0;
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    const waiter = f.id !== undefined && f.id !== null ? this.pending.get(f.id) : undefined;
    if (waiter) {
      this.pending.delete(f.id);
      clearTimeout(waiter.timer);
      if (f.type === 'error') waiter.reject(ApiError.fromWire(f));
      else waiter.resolve(f);
    } else if (f.type === 'error') {
      this.h.onServerError?.(ApiError.fromWire(f));
    } else if (f.type !== 'pong' && f.type !== 'ok' && (f.id === undefined || f.id === null)) {
      this.h.onPush?.(f);
    }
  }

  /** Forgets the socket at once (no waiting for a close handshake) and reacts as to a close. */
  _abandon(code, reason) {
    const ws = this.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(4000, reason);
    } catch {
      // already closing
    }
    this._onClose(code, reason, true);
  }

  _teardown(err) {
    this.ws = null;
    this.ready = false;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(err);
    }
    this.pending.clear();
  }

  async _onClose(code, reason, opened) {
    this._teardown(new ApiError('offline', 'connection lost', { retry: true }));
    if (this.stopped) return;
    if (code === CLOSE.REVOKED) return this._authLost();
    if (code === CLOSE.ABUSE || code === CLOSE.HANDSHAKE) {
      this.stopped = true;
      this._status('offline', { code });
      this.h.onFatal?.(code, reason);
      return;
    }
    if (!opened && (await this._tokenRevoked())) return this._authLost();
    if (this.stopped) return;
    // 1001 (node stopping, idle), 4003 (slow consumer), 1006 (network) and the rest: retry.
    const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    this.attempt += 1;
    this._scheduleReconnect(backoff * (0.5 + Math.random() / 2), code);
  }

  _scheduleReconnect(delayMs, code) {
    clearTimeout(this.reconnectTimer);
    const wait = Math.max(delayMs, this.holdUntil - Date.now());
    this._status('offline', { retryInMs: wait, code });
    this.reconnectTimer = setTimeout(() => this._open(), wait);
  }

  /** A browser cannot see the 401 of a refused upgrade; a REST call with the token can. */
  async _tokenRevoked() {
    try {
      await restHistory(this.token, `dm:${this.userId}:${this.userId}`, { limit: 1 });
      return false;
    } catch (e) {
      return e.code === 'unauthorized';
    }
  }

  _authLost() {
    this.stopped = true;
    this._status('offline', { code: CLOSE.REVOKED });
    this.h.onAuthLost?.();
  }

  _status(state, info = {}) {
    this.h.onStatus?.(state, info);
  }
}
