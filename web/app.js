// The chat web client: login, the list of direct conversations opened in this browser, a
// message view with history, and an outbox in localStorage so that nothing typed is lost.

import * as api from './api.js';

const $ = (sel) => document.querySelector(sel);

// ---- storage ---------------------------------------------------------------------------

const store = {
  get(key, fallback) {
    try {
      const v = localStorage.getItem(key);
      return v === null ? fallback : JSON.parse(v);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      // storage full or disabled: the app still works for this page's life
    }
  },
  del(key) {
    localStorage.removeItem(key);
  },
};

const SESSION_KEY = 'chat.session';
const userKey = (what) => `chat.${state.session.user_id}.${what}`;

// ---- state -----------------------------------------------------------------------------

const PAGE = 50;
const DIRECT = /^dm:\d+:\d+$/;

const state = {
  session: null, // {token, user_id, username}
  conn: null,
  convs: new Map(), // id -> conversation (see newConv)
  current: null,
  outbox: [], // [{conversation, client_msg_id, body, ts, failed?}]
  limits: { max_body_bytes: 16384, max_history_page: 200 },
  pumping: false,
};

function newConv(id) {
  const [, a, b] = id.split(':').map(Number);
  const me = state.session.user_id;
  return {
    id,
    other: a === me ? b : a,
    title: null,
    lastRead: 0,
    lastTs: 0,
    messages: new Map(), // seq -> message
    loaded: false, // the latest page has been read
    minSeq: 1, // lowest seq held (older pages go before it)
    cursor: 0, // every seq from minSeq to cursor is held
    head: 0,
    syncing: null,
    loadingOlder: false,
  };
}

function ensureConv(id) {
  let c = state.convs.get(id);
  if (!c) {
    c = newConv(id);
    state.convs.set(id, c);
    saveConvs();
  }
  return c;
}

function convTitle(c) {
  if (c.other === state.session.user_id) return `${state.session.username} (you)`;
  return c.title || `user #${c.other}`;
}

function saveConvs() {
  if (!state.session) return; // logged out meanwhile
  const list = [...state.convs.values()].map(({ id, title, lastRead, lastTs }) => ({
    id,
    title,
    lastRead,
    lastTs,
  }));
  store.set(userKey('conversations'), list);
}

function loadLocal() {
  state.convs = new Map();
  for (const saved of store.get(userKey('conversations'), [])) {
    if (!DIRECT.test(saved.id)) continue;
    const c = newConv(saved.id);
    Object.assign(c, { title: saved.title, lastRead: saved.lastRead || 0, lastTs: saved.lastTs || 0 });
    state.convs.set(c.id, c);
  }
  state.outbox = store.get(userKey('outbox'), []);
  const current = store.get(userKey('current'), null);
  state.current = state.convs.has(current) ? current : null;
}

const saveOutbox = () => state.session && store.set(userKey('outbox'), state.outbox);

// ---- words for people ------------------------------------------------------------------

function plain(err, context = '') {
  switch (err.code) {
    case 'offline':
      return 'You are offline. Try again when the connection is back.';
    case 'unauthorized':
      return context === 'login' ? 'Wrong username or password.' : 'Your session has ended. Please log in again.';
    case 'forbidden':
      return 'You are not a member of that conversation.';
    case 'not_found':
      return 'There is no user with that name.';
    case 'conflict':
      return 'That username is already taken. Pick another one.';
    case 'too_large':
      return 'That message is too long.';
    case 'rate_limited':
      return 'You are going too fast. Wait a moment and it will go through.';
    case 'unavailable':
      return 'The server is busy right now. Trying again…';
    case 'internal':
      return 'Something went wrong on the server. Trying again…';
    case 'invalid_argument':
      return `The server did not accept that: ${err.message}.`;
    default:
      return 'This page does not match the server any more. Please reload it.';
  }
}

let toastTimer = null;
function toast(text) {
  const el = $('#toast');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 6000);
}

function checkUsername(name) {
  const n = name.trim().toLowerCase();
  if (!/^[a-z0-9][a-z0-9._-]{2,31}$/.test(n)) {
    return [null, 'Usernames are 3 to 32 characters: letters, digits, dot, dash or underscore, starting with a letter or digit.'];
  }
  return [n, null];
}

const byteLength = (s) => new TextEncoder().encode(s).length;

// ---- login -----------------------------------------------------------------------------

function showLogin(message = '') {
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
  document.title = 'Chat';
  $('#login-username').focus();
}

async function submitLogin(register) {
  const [username, bad] = checkUsername($('#login-username').value);
  const password = $('#login-password').value;
  const error = $('#login-error');
  if (bad) return (error.textContent = bad);
  const len = byteLength(password);
  if (len < 8 || len > 256) return (error.textContent = 'Passwords are 8 to 256 characters long.');
  error.textContent = '';
  const buttons = document.querySelectorAll('#login-form button');
  buttons.forEach((b) => (b.disabled = true));
  try {
    if (register) await api.register(username, password);
    const s = await api.login(username, password);
    $('#login-password').value = '';
    store.set(SESSION_KEY, { token: s.token, user_id: s.user_id, username: s.username });
    startApp();
  } catch (e) {
    error.textContent = plain(e, 'login');
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

async function logout() {
  const s = state.session;
  if (state.outbox.length && !confirm(`${state.outbox.length} message(s) are not sent yet. They will be sent when you log in again. Log out?`)) {
    return;
  }
  stopApp();
  store.del(SESSION_KEY);
  showLogin();
  try {
    await api.logout(s.token);
  } catch (e) {
    if (e.code !== 'unauthorized') toast('Logged out here, but the server could not be told. ' + plain(e));
  }
}

function stopApp() {
  state.conn?.stop();
  state.conn = null;
  state.session = null;
  state.convs = new Map();
  state.current = null;
  state.outbox = [];
}

// ---- the connection ----------------------------------------------------------------------

function startApp() {
  state.session = store.get(SESSION_KEY, null);
  if (!state.session?.token) return showLogin();
  loadLocal();
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#me-name').textContent = state.session.username;
  document.body.classList.toggle('in-conv', !!state.current);
  renderAll(true);
  state.conn = new api.Connection(
    { token: state.session.token, userId: state.session.user_id },
    {
      onReady,
      onPush,
      onStatus: renderStatus,
      onServerError: (e) => toast(plain(e)),
      onAuthLost: () => {
        stopApp();
        store.del(SESSION_KEY);
        showLogin('Your session has ended. Please log in again.');
      },
      onFatal: () => toast('The server refused this page. Please reload it.'),
    },
  );
  state.conn.start();
}

async function onReady(welcome) {
  state.limits = welcome.limits || state.limits;
  const conn = state.conn;
  // Catch up on every conversation (the open one first), then send what is waiting.
  const ids = [...state.convs.keys()].sort((a, b) => (a === state.current ? -1 : b === state.current ? 1 : 0));
  for (const id of ids) {
    if (state.conn !== conn || !conn.ready) return;
    const c = state.convs.get(id);
    try {
      await sync(c);
      if (c.title === null && c.other !== state.session.user_id) await resolveTitle(c);
    } catch (e) {
      if (e.code !== 'offline') toast(plain(e));
    }
  }
  pump();
}

function renderStatus(s, info) {
  const banner = $('#status-banner');
  $('#status-dot').className = `dot ${s}`;
  if (s === 'online') {
    banner.hidden = true;
    return;
  }
  banner.hidden = false;
  if (s === 'connecting') banner.textContent = 'Connecting…';
  else if (info.code === api.CLOSE.ABUSE || info.code === api.CLOSE.HANDSHAKE) banner.textContent = 'Disconnected by the server. Please reload the page.';
  else if (info.retryInMs !== undefined) banner.textContent = `Offline. Reconnecting in ${Math.max(1, Math.round(info.retryInMs / 1000))} s…`;
  else banner.textContent = 'Offline.';
}

/** Reads the latest page of a conversation, or, once read, everything after what is held. */
function sync(c) {
  if (c.syncing) {
    c.again = true; // something may have arrived after the running sync's last read
    return c.syncing;
  }
  c.syncing = (async () => {
    try {
      do {
        c.again = false;
        await doSync(c);
      } while (c.again);
    } finally {
      c.syncing = null;
    }
  })();
  return c.syncing;
}

async function doSync(c) {
  const conn = state.conn;
  if (!c.loaded) {
    const page = await conn.request({ type: 'history', conversation: c.id, limit: PAGE });
    c.head = page.head;
    c.minSeq = page.messages.length ? page.messages[0].seq : page.head + 1;
    c.cursor = page.head;
    c.loaded = true;
    addMessages(c, page.messages);
  }
  const limit = state.limits.max_history_page || 200;
  for (;;) {
    const page = await conn.request({ type: 'history', conversation: c.id, after: c.cursor, limit });
    c.head = Math.max(c.head, page.head);
    addMessages(c, page.messages);
    if (!page.messages.length || c.cursor >= page.head) break;
  }
}

async function loadOlder(c) {
  if (c.loadingOlder || !c.loaded || c.minSeq <= 1 || !state.conn?.ready) return;
  c.loadingOlder = true;
  try {
    const page = await state.conn.request({ type: 'history', conversation: c.id, before: c.minSeq, limit: PAGE });
    c.minSeq = page.messages.length ? page.messages[0].seq : 1;
    addMessages(c, page.messages, 'older');
  } catch (e) {
    if (e.code !== 'offline') toast(plain(e));
  } finally {
    c.loadingOlder = false;
  }
  if (c.id === state.current) renderMessages('older');
}

async function resolveTitle(c) {
  if (!state.conn?.ready) return;
  const info = await state.conn.request({ type: 'open_direct', user_id: c.other });
  applyInfo(c, info);
  renderList();
  if (c.id === state.current) renderHeader();
}

function applyInfo(c, info) {
  const other = info.members.find((m) => m.user_id === c.other);
  if (other) c.title = other.username;
  c.head = Math.max(c.head, info.head);
  saveConvs();
}

/** Adds messages (deduplicated by seq) and drops outbox entries the server already has. */
function addMessages(c, messages, mode) {
  if (!messages.length || !state.session) return;
  const me = state.session.user_id;
  let outboxChanged = false;
  for (const m of messages) {
    if (m.seq < c.minSeq && mode !== 'older') continue; // older than the view: paging reads it
    c.messages.set(m.seq, m);
    c.head = Math.max(c.head, m.seq);
    c.lastTs = Math.max(c.lastTs, m.ts_ms || 0);
    if (m.sender === me) {
      const i = state.outbox.findIndex((o) => o.conversation === c.id && o.client_msg_id === m.client_msg_id);
      if (i >= 0) {
        state.outbox.splice(i, 1);
        outboxChanged = true;
      }
    }
  }
  while (c.messages.has(c.cursor + 1)) c.cursor += 1;
  if (outboxChanged) saveOutbox();
  if (c.id === state.current) {
    markRead(c);
    renderMessages(mode);
  }
  saveConvs();
  renderList();
}

function onPush(m) {
  if (!DIRECT.test(m.conversation)) return; // only direct conversations exist so far
  const c = ensureConv(m.conversation);
  if (c.title === null && c.other !== state.session.user_id) resolveTitle(c).catch(() => {});
  if (!c.loaded || m.seq > c.cursor + 1) {
    // A new conversation, or a gap: read from the server what comes before this one.
    sync(c).catch((e) => e.code !== 'offline' && toast(plain(e)));
  }
  if (c.loaded) addMessages(c, [m]);
  if (m.sender !== state.session.user_id) notify(c, m);
}

// ---- sending ---------------------------------------------------------------------------

function send(text) {
  const body = text.trim();
  if (!body || !state.current) return false;
  const max = state.limits.max_body_bytes || 16384;
  if (byteLength(body) > max) {
    toast(`That message is too long: at most ${max} bytes.`);
    return false;
  }
  state.outbox.push({ conversation: state.current, client_msg_id: crypto.randomUUID(), body, ts: Date.now() });
  saveOutbox();
  renderMessages();
  scrollToBottom();
  pump();
  return true;
}

/** Sends the outbox in order, one at a time, each with its own client_msg_id until acked. */
async function pump() {
  if (state.pumping) return;
  state.pumping = true;
  try {
    while (state.conn?.ready) {
      const item = state.outbox.find((o) => !o.failed);
      if (!item) break;
      const { conversation, client_msg_id, body } = item;
      try {
        const ack = await state.conn.request({ type: 'send', conversation, client_msg_id, body });
        if (!state.session) break;
        const c = ensureConv(conversation);
        const sender = state.session.user_id;
        const msg = { conversation, seq: ack.seq, sender, client_msg_id, body, ts_ms: ack.ts_ms };
        state.outbox = state.outbox.filter((o) => o !== item);
        saveOutbox();
        if (c.loaded) addMessages(c, [msg]);
        else renderAll();
      } catch (e) {
        if (e.code === 'offline') break; // sent again after the reconnect
        if (e.retry) {
          toast(plain(e));
          await new Promise((r) => setTimeout(r, e.retryAfterMs ?? 2000));
          continue;
        }
        item.failed = plain(e);
        saveOutbox();
        toast(item.failed);
        renderMessages();
      }
    }
  } finally {
    state.pumping = false;
  }
}

// ---- conversations -----------------------------------------------------------------------

async function openDirect(name) {
  const [username, bad] = checkUsername(name);
  if (bad) return toast(bad);
  if (!state.conn?.ready) return toast('You are offline. Try again when the connection is back.');
  try {
    const info = await state.conn.request({ type: 'open_direct', username });
    const c = ensureConv(info.conversation);
    applyInfo(c, info);
    $('#open-username').value = '';
    select(c.id);
  } catch (e) {
    toast(plain(e));
  }
}

function select(id) {
  state.current = id;
  store.set(userKey('current'), id);
  document.body.classList.toggle('in-conv', !!id);
  const c = id && state.convs.get(id);
  if (c && !c.loaded && state.conn?.ready) sync(c).catch((e) => e.code !== 'offline' && toast(plain(e)));
  if (c) markRead(c);
  renderAll(true);
  if (c && matchMedia('(min-width: 721px)').matches) $('#composer-input').focus();
}

function markRead(c) {
  if (document.visibilityState !== 'visible' || c.cursor <= c.lastRead) return;
  c.lastRead = c.cursor;
  saveConvs();
}

function unread(c) {
  let n = 0;
  for (const m of c.messages.values()) if (m.seq > c.lastRead && m.sender !== state.session.user_id) n++;
  return n;
}

// ---- notifications -----------------------------------------------------------------------

function notify(c, m) {
  if (!document.hidden || !('Notification' in window) || Notification.permission !== 'granted') return;
  try {
    const n = new Notification(convTitle(c), { body: m.body.slice(0, 200), tag: c.id, icon: '/icon.svg' });
    n.onclick = () => {
      window.focus();
      select(c.id);
      n.close();
    };
  } catch {
    // some mobile browsers only notify from a service worker
  }
}

// ---- rendering ---------------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function hue(s) {
  let h = 0;
  for (const ch of s) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return h;
}

function avatar(name) {
  const a = el('span', 'avatar', (name[0] || '?').toUpperCase());
  a.style.backgroundColor = `hsl(${hue(name)} 55% 45%)`;
  return a;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long' });

function dayLabel(ts) {
  const d = new Date(ts);
  const today = new Date();
  const yesterday = new Date(Date.now() - 86400000);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return dayFmt.format(d);
}

function renderAll(toBottom = false) {
  renderList();
  renderHeader();
  renderMessages(toBottom ? 'bottom' : undefined);
  renderNotifyButton();
}

function lastMessage(c) {
  const pending = state.outbox.filter((o) => o.conversation === c.id);
  if (pending.length) return { body: pending[pending.length - 1].body, mine: true };
  const m = c.messages.get(c.cursor) || c.messages.get(c.head);
  return m ? { body: m.body, mine: m.sender === state.session.user_id } : null;
}

function renderList() {
  if (!state.session) return;
  const list = $('#conv-list');
  const convs = [...state.convs.values()].sort((a, b) => b.lastTs - a.lastTs || a.id.localeCompare(b.id));
  list.replaceChildren(
    ...convs.map((c) => {
      const title = convTitle(c);
      const b = el('button', 'conv' + (c.id === state.current ? ' active' : ''));
      b.type = 'button';
      b.dataset.id = c.id;
      const text = el('span', 'conv-text');
      text.append(el('span', 'conv-name', title));
      const last = lastMessage(c);
      text.append(el('span', 'conv-preview', last ? (last.mine ? 'You: ' : '') + last.body : 'No messages yet'));
      b.append(avatar(title), text);
      const n = c.id === state.current && document.visibilityState === 'visible' ? 0 : unread(c);
      if (n) b.append(el('span', 'badge', String(n)));
      const li = el('li');
      li.append(b);
      return li;
    }),
  );
  $('#conv-empty').hidden = convs.length > 0;
  const total = convs.reduce((n, c) => n + (c.id === state.current && !document.hidden ? 0 : unread(c)), 0);
  document.title = total ? `(${total}) Chat` : 'Chat';
}

function renderHeader() {
  const c = state.current && state.convs.get(state.current);
  $('#conv-title').textContent = c ? convTitle(c) : '';
  $('#conv-avatar').replaceChildren(...(c ? [avatar(convTitle(c))] : []));
  $('#composer').hidden = !c;
  $('#no-conv').hidden = !!c;
  $('#messages').hidden = !c;
}

function messageEl({ seq, body, ts, mine, pending, failed, cmid }) {
  const row = el('div', 'msg ' + (mine ? 'mine' : 'theirs') + (pending ? ' pending' : '') + (failed ? ' failed' : ''));
  if (seq) row.dataset.seq = seq;
  if (cmid) row.dataset.cmid = cmid;
  const bubble = el('div', 'bubble');
  bubble.append(el('div', 'body', body));
  const meta = el('div', 'meta', ts ? timeFmt.format(new Date(ts)) : '');
  if (pending && !failed) meta.append(' · Sending…');
  bubble.append(meta);
  if (failed) {
    const f = el('div', 'fail', `Not sent: ${failed} `);
    const retry = el('button', 'link-btn', 'Retry');
    retry.type = 'button';
    retry.dataset.retry = cmid;
    const discard = el('button', 'link-btn', 'Discard');
    discard.type = 'button';
    discard.dataset.discard = cmid;
    f.append(retry, ' ', discard);
    bubble.append(f);
  }
  row.append(bubble);
  return row;
}

/** Rebuilds the open conversation. `mode`: 'bottom' scrolls down, 'older' keeps the view. */
function renderMessages(mode) {
  const box = $('#messages');
  const c = state.current && state.convs.get(state.current);
  if (!c) return box.replaceChildren();
  const wasAtBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  const fromBottom = box.scrollHeight - box.scrollTop;
  const top = box.scrollTop;
  const me = state.session.user_id;
  const nodes = [];
  if (!c.loaded) nodes.push(el('div', 'hint', state.conn?.ready ? 'Loading…' : 'Waiting for the connection…'));
  else if (c.minSeq > 1) nodes.push(el('div', 'hint', c.loadingOlder ? 'Loading older messages…' : 'Scroll up for older messages'));
  else if (c.messages.size === 0 && !state.outbox.some((o) => o.conversation === c.id)) {
    nodes.push(el('div', 'hint', `This is the start of your conversation with ${convTitle(c)}.`));
  }
  let day = '';
  const addDay = (ts) => {
    const d = dayLabel(ts);
    if (d !== day) nodes.push(el('div', 'day', d));
    day = d;
  };
  for (const m of [...c.messages.values()].sort((a, b) => a.seq - b.seq)) {
    addDay(m.ts_ms);
    nodes.push(messageEl({ seq: m.seq, body: m.body, ts: m.ts_ms, mine: m.sender === me, cmid: m.client_msg_id }));
  }
  for (const o of state.outbox) {
    if (o.conversation !== c.id) continue;
    addDay(o.ts);
    nodes.push(messageEl({ body: o.body, ts: o.ts, mine: true, pending: true, failed: o.failed, cmid: o.client_msg_id }));
  }
  box.replaceChildren(...nodes);
  if (mode === 'bottom' || (wasAtBottom && mode !== 'older')) scrollToBottom();
  else if (mode === 'older') box.scrollTop = box.scrollHeight - fromBottom;
  else box.scrollTop = top;
  // A first page shorter than the view leaves nothing to scroll: read more now.
  if (c.loaded && c.minSeq > 1 && box.clientHeight > 0 && box.scrollHeight <= box.clientHeight) loadOlder(c);
}

function scrollToBottom() {
  const box = $('#messages');
  box.scrollTop = box.scrollHeight;
}

function renderNotifyButton() {
  $('#notify-btn').hidden = !('Notification' in window) || Notification.permission !== 'default';
}

// ---- events ------------------------------------------------------------------------------

function wire() {
  $('#login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    submitLogin(false);
  });
  $('#register-btn').addEventListener('click', () => submitLogin(true));
  $('#logout-btn').addEventListener('click', logout);
  $('#open-form').addEventListener('submit', (e) => {
    e.preventDefault();
    openDirect($('#open-username').value);
  });
  $('#conv-list').addEventListener('click', (e) => {
    const b = e.target.closest('button.conv');
    if (b) select(b.dataset.id);
  });
  $('#back-btn').addEventListener('click', () => select(null));
  const input = $('#composer-input');
  const grow = () => {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
    input.style.overflowY = input.scrollHeight > 160 ? 'auto' : 'hidden';
  };
  input.addEventListener('input', grow);
  $('#composer').addEventListener('submit', (e) => {
    e.preventDefault();
    if (send(input.value)) {
      input.value = '';
      grow();
    }
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('#composer').requestSubmit();
    }
  });
  $('#messages').addEventListener('scroll', () => {
    const c = state.current && state.convs.get(state.current);
    if (c && $('#messages').scrollTop < 120) loadOlder(c);
  });
  $('#messages').addEventListener('click', (e) => {
    const retry = e.target.dataset?.retry;
    const discard = e.target.dataset?.discard;
    if (retry) {
      state.outbox.forEach((o) => o.client_msg_id === retry && delete o.failed);
      saveOutbox();
      renderMessages();
      pump();
    } else if (discard) {
      state.outbox = state.outbox.filter((o) => o.client_msg_id !== discard);
      saveOutbox();
      renderAll();
    }
  });
  $('#toast').addEventListener('click', () => ($('#toast').hidden = true));
  $('#notify-btn').addEventListener('click', async () => {
    await Notification.requestPermission();
    renderNotifyButton();
  });
  document.addEventListener('visibilitychange', () => {
    const c = state.current && state.convs.get(state.current);
    if (c && state.session) {
      markRead(c);
      renderList();
    }
  });
}

// For the browser test (web/tests/browser_test.py): drop the socket as a network fault would.
window.__chatTest = {
  dropConnection: (holdMs = 0) => state.conn?.drop(holdMs),
  info: () => ({
    connects: state.conn?.connects ?? 0,
    ready: !!state.conn?.ready,
    outbox: state.outbox.length,
    current: state.current,
    userId: state.session?.user_id ?? null,
  }),
};

wire();
startApp();
