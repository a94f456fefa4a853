// The chat web client: login; the conversation list (direct and group conversations, with
// unread counts from the server); a message view with history pages both ways, replies,
// edits, deletions, reactions, attachments, read receipts and typing indicators; an outbox
// in localStorage so that nothing typed is lost; and the user's event stream, resumed from
// the cursor this browser holds after every reconnect (docs/protocol.md, "The event stream").
// Contacts and profiles live in contacts.js, groups and broadcasts in groups.js, search in
// search.js, media in media.js.

import * as api from './api.js';
import { $, el, button, toast, plain, timeFmt, dayLabel, shortTime, fullTime, ago, byteLength, openDialog, confirmDialog, debounce } from './ui.js';
import * as media from './media.js';
import * as contacts from './contacts.js';
import * as groups from './groups.js';
import * as search from './search.js';

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
const DIRECT = /^dm:(\d+):(\d+)$/;
const GROUP = /^g:\d+$/;
const REACTIONS = ['👍', '❤️', '😂', '😮', '😢', '🎉'];
const TYPING_EVERY_MS = 3000;
const AWAY_AFTER_MS = 60000;

const state = {
  session: null, // {token, user_id, username}
  conn: null,
  convs: new Map(), // id -> conversation (see newConv)
  current: null,
  outbox: [], // [{conversation, client_msg_id, body, ts, refers?, attachments?, failed?}]
  limits: { max_body_bytes: 16384, max_history_page: 200 },
  pumping: false,
  cursor: null, // the last event_seq of the user's stream this browser holds
  ackedSent: 0,
  notifyAfter: Infinity, // events up to this one were seen on some device already
  people: new Map(), // user id -> {user_id, username, display_name, status_text, avatar, presence?}
  contacts: { contacts: [], incoming: [], outgoing: [], blocked: [] }, // user ids
  groups: new Map(), // conversation id -> GroupInfo
  typing: new Map(), // conversation id -> Map(user id -> until ms)
  drafts: {}, // conversation id -> text
  trays: new Map(), // conversation id -> media.Tray
  compose: null, // {kind: 'reply' | 'edit', conversation, seq, stash?}
  view: 'chats',
  stats: { history: 0, events: 0, resyncs: 0, welcomes: 0 },
};

const me = () => state.session?.user_id;

function newConv(id) {
  const d = DIRECT.exec(id);
  let other = null;
  if (d) {
    const a = Number(d[1]);
    const b = Number(d[2]);
    other = a === me() ? b : a;
  }
  return {
    id,
    kind: d ? 'direct' : 'group',
    other,
    // the summary (kept in localStorage)
    title: null,
    lastSeq: 0,
    lastTs: 0,
    lastSender: 0,
    lastKind: null, // the last message's refers kind (a group change has no sender prefix)
    preview: '',
    readUpto: 0,
    unread: 0,
    peerRead: {}, // user id -> seq they read up to (receipts)
    left: false, // no longer a member of this group
    // the messages held (memory only)
    messages: new Map(), // seq -> message
    nodes: new Map(), // row key -> {sig, node}
    loaded: false, // a page has been read
    minSeq: 1, // lowest seq held (older pages go before it)
    cursor: 0, // every seq from minSeq to cursor is held
    head: 0,
    detached: false, // the view holds a page around an old seq, not the latest messages
    syncing: null,
    again: false,
    loadingOlder: false,
    loadingNewer: false,
    markSent: 0,
    marking: false,
    typingSent: 0,
  };
}

const validId = (id) => typeof id === 'string' && (DIRECT.test(id) || GROUP.test(id));

function ensureConv(id) {
  let c = state.convs.get(id);
  if (!c) {
    c = newConv(id);
    state.convs.set(id, c);
    persist();
  }
  return c;
}

const currentConv = () => (state.current && state.convs.get(state.current)) || null;

function convTitle(c) {
  if (c.kind === 'group') return state.groups.get(c.id)?.name || c.title || 'Group';
  if (c.other === me()) return `${state.session.username} (you)`;
  const p = state.people.get(c.other);
  return p?.display_name || p?.username || c.title || `user #${c.other}`;
}

// ---- persistence -------------------------------------------------------------------------

const SAVED = ['id', 'title', 'lastSeq', 'lastTs', 'lastSender', 'lastKind', 'preview', 'readUpto', 'unread', 'peerRead', 'left'];
const PROFILE_FIELDS = ['user_id', 'username', 'display_name', 'status_text', 'avatar'];

function saveNow() {
  clearTimeout(saveTimer);
  saveTimer = null;
  if (!state.session) return; // logged out meanwhile
  const convs = [...state.convs.values()].map((c) => Object.fromEntries(SAVED.map((k) => [k, c[k]])));
  store.set(userKey('conversations'), convs);
  // The cursor goes with the summaries it describes.
  store.set(userKey('cursor'), state.cursor);
  const people = [...state.people.values()].slice(-500).map((p) => Object.fromEntries(PROFILE_FIELDS.map((k) => [k, p[k]])));
  store.set(userKey('people'), people);
  store.set(userKey('groups'), [...state.groups.values()]);
  store.set(userKey('contacts'), state.contacts);
}

let saveTimer = null;
function persist() {
  if (!saveTimer) saveTimer = setTimeout(saveNow, 400);
}

const saveOutbox = () => state.session && store.set(userKey('outbox'), state.outbox);
const saveDrafts = debounce(() => state.session && store.set(userKey('drafts'), state.drafts), 300);

function loadLocal() {
  state.convs = new Map();
  for (const saved of store.get(userKey('conversations'), [])) {
    if (!validId(saved?.id)) continue;
    const c = newConv(saved.id);
    for (const k of SAVED) if (saved[k] !== undefined && saved[k] !== null) c[k] = saved[k];
    state.convs.set(c.id, c);
  }
  const cursor = store.get(userKey('cursor'), null);
  state.cursor = Number.isInteger(cursor) && cursor >= 0 ? cursor : null;
  state.people = new Map();
  for (const p of store.get(userKey('people'), [])) if (p?.user_id) state.people.set(p.user_id, p);
  state.groups = new Map();
  for (const g of store.get(userKey('groups'), [])) if (g?.conversation) state.groups.set(g.conversation, g);
  state.contacts = { contacts: [], incoming: [], outgoing: [], blocked: [], ...store.get(userKey('contacts'), {}) };
  state.outbox = store.get(userKey('outbox'), []);
  state.drafts = store.get(userKey('drafts'), {});
  const current = store.get(userKey('current'), null);
  state.current = state.convs.has(current) ? current : null;
}

// ---- people --------------------------------------------------------------------------------

/** Adds what is known of a user (a profile, a contact entry) to the directory. */
function putPerson(p) {
  if (!p?.user_id) return null;
  const old = state.people.get(p.user_id) || {};
  const merged = { ...old };
  for (const k of [...PROFILE_FIELDS, 'presence']) if (p[k] !== undefined) merged[k] = p[k];
  state.people.delete(p.user_id); // most recently seen last (the stored list keeps the latest)
  state.people.set(p.user_id, merged);
  persist();
  return merged;
}

const fetching = new Map(); // user id -> {again, changed}: a forced read asked for meanwhile
/**
 * Reads a user's profile unless it is known (or `force`). `changed`: a profile_changed event
 * said it changed, so reading the same profile as before means this node has not applied the
 * change yet: read again a little later (three times at most).
 */
function ensurePerson(uid, force = false, changed = 0) {
  if (!uid || !state.conn?.ready) return;
  const under = fetching.get(uid);
  if (under) {
    // The read under way may have started before the change: read again after it.
    if (force) {
      under.again = true;
      under.changed = Math.max(under.changed, changed);
    }
    return;
  }
  if (!force && state.people.get(uid)?.username) return;
  const job = { again: false, changed: 0 };
  fetching.set(uid, job);
  const fields = (p) => JSON.stringify(PROFILE_FIELDS.map((k) => p?.[k] ?? null));
  const before = fields(state.people.get(uid));
  state.conn
    .request({ type: 'get_profile', user_id: uid })
    .then(
      (p) => {
        putPerson(p);
        invalidate('list', 'header', 'messages', 'contacts');
        if (changed && changed < 4 && fields(p) === before) {
          setTimeout(() => ensurePerson(uid, true, changed + 1), 400 * changed);
        }
      },
      () => {},
    )
    .finally(() => {
      fetching.delete(uid);
      if (job.again) ensurePerson(uid, true, job.changed);
    });
}

function nameOf(uid) {
  if (uid === me()) return 'You';
  const p = state.people.get(uid);
  if (!p?.username) ensurePerson(uid);
  return p?.display_name || p?.username || `user #${uid}`;
}

function presenceText(p) {
  const pr = p?.presence;
  if (!pr) return '';
  if (pr.status === 'online') return 'online';
  if (pr.status === 'away') return 'away';
  return pr.last_seen_ms ? `last seen ${ago(pr.last_seen_ms)}` : 'offline';
}

// ---- login -----------------------------------------------------------------------------

function checkUsername(name) {
  const n = name.trim().toLowerCase();
  if (!/^[a-z0-9][a-z0-9._-]{2,31}$/.test(n)) {
    return [null, 'Usernames are 3 to 32 characters: letters, digits, dot, dash or underscore, starting with a letter or digit.'];
  }
  return [n, null];
}

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
  if (state.outbox.length && !(await confirmDialog({
    title: 'Log out?',
    text: `${state.outbox.length} message(s) are not sent yet. They will be sent when you log in again.`,
    confirm: 'Log out',
  }))) {
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
  if (state.session) {
    if (state.current && state.compose?.kind !== 'edit') state.drafts[state.current] = $('#composer-input').value;
    store.set(userKey('drafts'), state.drafts);
    saveNow();
  }
  state.conn?.stop();
  state.conn = null;
  state.session = null;
  state.convs = new Map();
  state.current = null;
  state.outbox = [];
  state.cursor = null;
  state.people = new Map();
  state.groups = new Map();
  state.typing = new Map();
  for (const t of state.trays.values()) t.clear();
  state.trays = new Map();
  state.compose = null;
  media.forgetLinks();
  document.querySelectorAll('dialog[open]').forEach((d) => d.close());
}

// ---- the connection ----------------------------------------------------------------------

function startApp() {
  state.session = store.get(SESSION_KEY, null);
  if (!state.session?.token) return showLogin();
  loadLocal();
  $('#login').hidden = true;
  $('#app').hidden = false;
  document.body.classList.toggle('in-conv', !!state.current);
  $('#composer-input').value = state.drafts[state.current] || '';
  showView('chats');
  renderAll(true);
  growComposer();
  state.conn = new api.Connection(
    { token: state.session.token, userId: state.session.user_id },
    {
      resumeFrom: () => state.cursor,
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

const quiet = (e) => {
  if (e?.code !== 'offline') toast(plain(e));
};

function onReady(welcome, reconnected) {
  const conn = state.conn;
  state.stats.welcomes++;
  state.limits = welcome.limits || state.limits;
  state.notifyAfter = welcome.acked_event_seq || 0;
  // What the server holds as acknowledged (it may lag after a failover): ack again above it.
  state.ackedSent = welcome.acked_event_seq || 0;
  if (welcome.username && welcome.username !== state.session.username) {
    state.session.username = welcome.username;
  }
  const fresh = conn.resumedFrom === null;
  if (fresh) {
    // Nothing to resume from (a new browser): the list tells the state, the stream goes on
    // from its head.
    state.cursor = welcome.event_head || 0;
    saveNow();
  }
  if (fresh || !reconnected) {
    refreshConversations().catch(quiet);
    groups.loadGroups().catch(quiet);
  }
  // Presence is not replayed: ask again at every connect.
  contacts.loadContacts().catch(quiet);
  ensurePerson(me(), !reconnected);
  const c = currentConv();
  if (c && !c.loaded) sync(c).catch(quiet);
  if (c) markRead(c);
  for (const conv of state.convs.values()) if (conv.kind === 'direct') ensurePerson(conv.other);
  if (document.visibilityState === 'hidden') scheduleAway();
  renderAll();
  pump();
  scheduleAck();
}

function renderStatus(s, info) {
  const banner = $('#status-banner');
  const dot = $('#status-dot');
  dot.className = `dot ${s}`;
  dot.setAttribute('aria-label', s === 'online' ? 'Connected' : s === 'connecting' ? 'Connecting' : 'Offline');
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

/** Every push of the connection: events of the user's stream and ephemeral notices. */
function onPush(f) {
  if (!state.session) return;
  switch (f.type) {
    case 'message':
      onMessage(f);
      break;
    case 'read':
      onRead(f);
      break;
    case 'receipt':
      onReceipt(f);
      break;
    case 'contact':
      contacts.onContactEvent(f);
      break;
    case 'profile_changed':
      if (f.profile) {
        // The event carries the profile the change made: no read from a node that may lag.
        putPerson(f.profile);
        invalidate('list', 'header', 'messages', 'contacts');
      } else {
        ensurePerson(f.user, true, 1);
      }
      break;
    case 'typing':
      onTyping(f);
      break;
    case 'presence':
      contacts.onPresence(f);
      break;
    case 'resync':
      onResync(f);
      return;
    default:
      break; // a newer server's event: the cursor still moves past it
  }
  if (Number.isInteger(f.event_seq)) noteEvent(f.event_seq);
}

function noteEvent(seq) {
  state.stats.events++;
  if (state.cursor === null || seq > state.cursor) state.cursor = seq;
  persist();
  scheduleAck();
}

let ackTimer = null;
/** Tells the server what this device holds (`ack_events`), at most once a second. */
function scheduleAck() {
  if (ackTimer) return;
  ackTimer = setTimeout(() => {
    ackTimer = null;
    const seq = state.cursor;
    if (!state.conn?.ready || seq === null || seq <= state.ackedSent) return;
    state.conn.request({ type: 'ack_events', event_seq: seq }).then(
      () => (state.ackedSent = Math.max(state.ackedSent, seq)),
      () => {},
    );
  }, 1000);
}

/** The cursor could not be served: read the state again and go on from the stream's head. */
function onResync(f) {
  state.stats.resyncs++;
  state.cursor = f.event_head || 0;
  saveNow();
  refreshConversations().catch(quiet);
  groups.loadGroups().catch(quiet);
  contacts.loadContacts().catch(quiet);
  for (const c of state.convs.values()) if (c.loaded && !c.detached) sync(c).catch(quiet);
}

/** The server's conversation list: unread counts, previews, new conversations. */
async function refreshConversations() {
  const r = await request({ type: 'list_conversations', limit: 200 });
  for (const s of r.conversations || []) {
    if (!validId(s.conversation)) continue;
    const c = ensureConv(s.conversation);
    if (s.last_seq >= c.lastSeq) {
      if (s.last_seq > c.lastSeq || !c.preview) {
        c.preview = s.preview;
        c.lastKind = null;
      }
      c.lastSeq = s.last_seq;
      c.lastTs = s.last_ts_ms;
      c.lastSender = s.last_sender;
      c.unread = s.unread;
    }
    c.readUpto = Math.max(c.readUpto, s.read_upto);
    c.markSent = Math.max(c.markSent, s.read_upto);
    if (c.kind === 'direct') ensurePerson(c.other);
    else if (!state.groups.has(c.id) && !c.left) groups.fetchGroup(c.id);
  }
  const c = currentConv();
  if (c) markRead(c);
  persist();
  invalidate('list', 'header');
}
const refreshSoon = debounce(() => refreshConversations().catch(() => {}), 500);

/** A request on the live connection (rejects with `offline` without one). */
function request(frame) {
  if (!state.conn) return Promise.reject(new api.ApiError('offline', 'not connected', { retry: true }));
  return state.conn.request(frame);
}

// ---- messages from the stream ------------------------------------------------------------

function previewOf(m) {
  const kind = m.refers?.kind;
  if (kind === 'group') return groups.systemText(m);
  if (kind === 'reaction') return `reacted ${m.body}`;
  if (kind === 'delete') return 'deleted a message';
  if (!m.body && m.attachments?.length) return media.describe(m.attachments);
  return m.body;
}

/** Moves a conversation's summary (last message, unread count) forward for message `m`. */
function summarize(c, m) {
  if (m.seq > c.lastSeq) {
    c.lastSeq = m.seq;
    c.lastTs = m.ts_ms || c.lastTs;
    c.lastSender = m.sender;
    c.lastKind = m.refers?.kind || null;
    c.preview = previewOf(m);
    if (m.sender !== me() && m.seq > c.readUpto) c.unread += 1;
  }
  if (m.sender === me() && m.seq > c.readUpto) {
    // Sending marks read for the sender.
    c.readUpto = m.seq;
    c.markSent = Math.max(c.markSent, m.seq);
    if (m.seq >= c.lastSeq) c.unread = 0;
  }
  persist();
}

function onMessage(m) {
  if (!validId(m.conversation)) return;
  const c = ensureConv(m.conversation);
  const isNew = m.seq > c.lastSeq;
  summarize(c, m);
  stopTyping(c.id, m.sender);
  if (m.refers?.kind === 'group') groups.onGroupChange(c, m);
  else if (c.kind === 'group' && !state.groups.has(c.id) && !c.left) groups.fetchGroup(c.id);
  if (c.kind === 'direct') ensurePerson(c.other);
  if (c.loaded) {
    if (c.detached) c.head = Math.max(c.head, m.seq);
    else {
      addMessages(c, [m]);
      if (m.seq > c.cursor) sync(c).catch(quiet); // a gap: read what comes before it
    }
  }
  if (isNew && m.sender !== me() && m.event_seq > state.notifyAfter) notify(c, m);
  invalidate('list', c.id === state.current ? 'header' : null);
}

function onRead(f) {
  const c = state.convs.get(f.conversation);
  if (!c) return refreshSoon();
  c.readUpto = Math.max(c.readUpto, f.seq);
  c.markSent = Math.max(c.markSent, f.seq);
  if (f.seq >= c.lastSeq) c.unread = 0;
  else if (c.loaded && !c.detached && c.minSeq <= f.seq + 1) {
    c.unread = [...c.messages.values()].filter((m) => m.seq > c.readUpto && m.sender !== me()).length;
  } else refreshSoon();
  persist();
  invalidate('list');
}

function onReceipt(f) {
  if (!validId(f.conversation)) return;
  const c = ensureConv(f.conversation);
  if ((c.peerRead[f.user] || 0) >= f.seq) return;
  c.peerRead[f.user] = f.seq;
  persist();
  if (c.id === state.current) invalidate('messages');
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

function history(frame) {
  state.stats.history++;
  return request({ type: 'history', ...frame });
}

async function doSync(c) {
  if (c.detached) return;
  if (!c.loaded) {
    const page = await history({ conversation: c.id, limit: PAGE });
    if (c.loaded) return; // a jump loaded it meanwhile
    c.head = Math.max(c.head, page.head);
    c.minSeq = page.messages.length ? page.messages[0].seq : page.head + 1;
    c.cursor = page.messages.length ? page.messages[page.messages.length - 1].seq : page.head;
    c.loaded = true;
    addMessages(c, page.messages);
    for (const m of page.messages) summarize(c, m);
    invalidate('messages', 'header');
  }
  const limit = state.limits.max_history_page || 200;
  while (c.loaded && !c.detached && c.cursor < c.head) {
    const page = await history({ conversation: c.id, after: c.cursor, limit });
    c.head = Math.max(c.head, page.head);
    addMessages(c, page.messages);
    for (const m of page.messages) summarize(c, m);
    if (!page.messages.length) break;
  }
}

async function loadOlder(c) {
  if (c.loadingOlder || !c.loaded || c.minSeq <= 1 || !state.conn?.ready) return;
  c.loadingOlder = true;
  invalidate('messages');
  try {
    const page = await history({ conversation: c.id, before: c.minSeq, limit: PAGE });
    c.minSeq = page.messages.length ? page.messages[0].seq : 1;
    addMessages(c, page.messages, 'older');
  } catch (e) {
    quiet(e);
  } finally {
    c.loadingOlder = false;
  }
  if (c.id === state.current) renderMessages('older');
}

/** In a view opened around an old message: the next page towards the latest. */
async function loadNewer(c) {
  if (c.loadingNewer || !c.loaded || !c.detached || !state.conn?.ready) return;
  c.loadingNewer = true;
  try {
    const page = await history({ conversation: c.id, after: c.cursor, limit: PAGE });
    c.head = Math.max(c.head, page.head);
    addMessages(c, page.messages);
    if (!page.messages.length || c.cursor >= c.head) {
      c.detached = false;
      sync(c).catch(quiet);
    }
  } catch (e) {
    quiet(e);
  } finally {
    c.loadingNewer = false;
  }
  invalidate('messages', 'header');
}

/** Opens a conversation at a message (a search hit, a quoted message). */
async function openAt(id, seq) {
  if (!validId(id)) return;
  const c = ensureConv(id);
  if (state.current !== id) select(id, { load: false });
  if (c.loaded && c.messages.has(seq)) {
    renderMessages();
    return flash(seq);
  }
  try {
    const page = await history({ conversation: id, around: seq, limit: PAGE });
    c.messages = new Map();
    c.nodes = new Map();
    c.head = Math.max(c.head, page.head);
    c.minSeq = page.messages.length ? page.messages[0].seq : Math.max(1, seq);
    c.cursor = page.messages.length ? page.messages[page.messages.length - 1].seq : c.minSeq - 1;
    c.loaded = true;
    c.detached = c.cursor < c.head;
    addMessages(c, page.messages, 'older');
    if (!c.detached) sync(c).catch(quiet);
    renderHeader();
    renderMessages('keep');
    flash(seq);
  } catch (e) {
    quiet(e);
    if (!c.loaded) sync(c).catch(quiet);
  }
}

function jumpToLatest(c) {
  c.messages = new Map();
  c.nodes = new Map();
  c.loaded = false;
  c.detached = false;
  c.minSeq = 1;
  c.cursor = 0;
  renderMessages('bottom');
  renderHeader();
  sync(c).then(() => renderMessages('bottom'), quiet);
}

function flash(seq) {
  const row = $(`#messages .msg[data-seq="${seq}"], #messages .system[data-seq="${seq}"]`);
  if (!row) return;
  row.scrollIntoView({ block: 'center' });
  row.classList.remove('flash');
  void row.offsetWidth;
  row.classList.add('flash');
}

/** Adds messages (deduplicated by seq) and drops outbox entries the server already has. */
function addMessages(c, messages, mode) {
  if (!messages.length || !state.session) return;
  let outboxChanged = false;
  for (const m of messages) {
    if (m.seq < c.minSeq && mode !== 'older') continue; // older than the view: paging reads it
    c.messages.set(m.seq, m);
    c.head = Math.max(c.head, m.seq);
    if (m.sender === me()) {
      const i = state.outbox.findIndex((o) => o.conversation === c.id && o.client_msg_id === m.client_msg_id);
      if (i >= 0) {
        state.outbox.splice(i, 1);
        outboxChanged = true;
      }
    }
  }
  while (c.messages.has(c.cursor + 1)) c.cursor += 1;
  if (c.detached && c.cursor >= c.head) c.detached = false;
  if (outboxChanged) saveOutbox();
  if (c.id === state.current) {
    markRead(c);
    invalidate('messages');
  }
  invalidate('list');
}

// ---- typing --------------------------------------------------------------------------------

function onTyping(f) {
  if (f.user === me()) return;
  let m = state.typing.get(f.conversation);
  if (!m) state.typing.set(f.conversation, (m = new Map()));
  m.set(f.user, Date.now() + (f.expires_ms || 6000));
  nameOf(f.user);
  renderTyping();
  invalidate('list');
}

function stopTyping(conv, user) {
  if (state.typing.get(conv)?.delete(user)) {
    renderTyping();
    invalidate('list');
  }
}

function typers(conv) {
  const m = state.typing.get(conv);
  if (!m) return [];
  const now = Date.now();
  for (const [u, until] of m) if (until <= now) m.delete(u);
  return [...m.keys()];
}

let typingTimer = null;
function renderTyping() {
  clearTimeout(typingTimer);
  const box = $('#typing');
  const c = currentConv();
  const who = c ? typers(c.id) : [];
  box.dataset.users = who.join(',');
  if (!who.length) box.textContent = '';
  else if (who.length === 1) box.textContent = `${nameOf(who[0])} is typing…`;
  else if (who.length === 2) box.textContent = `${nameOf(who[0])} and ${nameOf(who[1])} are typing…`;
  else box.textContent = `${who.length} people are typing…`;
  // Wake up when the first indicator runs out.
  let next = Infinity;
  for (const m of state.typing.values()) for (const until of m.values()) next = Math.min(next, until);
  if (next < Infinity) {
    typingTimer = setTimeout(() => {
      renderTyping();
      invalidate('list');
    }, Math.max(50, next - Date.now() + 20));
  }
}

/** Tells the others "I am typing", at most every few seconds. */
function typed() {
  const c = currentConv();
  if (!c || c.left || !state.conn?.ready || !$('#composer-input').value.trim()) return;
  const now = Date.now();
  if (now - c.typingSent < TYPING_EVERY_MS) return;
  c.typingSent = now;
  state.conn.request({ type: 'typing', conversation: c.id }).catch(() => {});
}

// ---- presence ------------------------------------------------------------------------------

let awayTimer = null;
let away = false;
function scheduleAway() {
  clearTimeout(awayTimer);
  awayTimer = setTimeout(() => {
    if (document.visibilityState === 'hidden' && state.conn?.ready) {
      away = true;
      state.conn.request({ type: 'set_presence', status: 'away' }).catch(() => {});
    }
  }, AWAY_AFTER_MS);
}

function backFromAway() {
  clearTimeout(awayTimer);
  if (away && state.conn?.ready) {
    away = false;
    state.conn.request({ type: 'set_presence', status: 'online' }).catch(() => {});
  }
}

// ---- sending ---------------------------------------------------------------------------

function trayOf(id) {
  let t = state.trays.get(id);
  if (!t) {
    t = new media.Tray((item) => {
      if (id !== state.current) return;
      if (item) media.updateProgress($('#tray'), item);
      else renderComposer();
    });
    state.trays.set(id, t);
  }
  return t;
}

function enqueue(item) {
  state.outbox.push({ client_msg_id: crypto.randomUUID(), ts: Date.now(), ...item });
  saveOutbox();
  invalidate('messages', 'list');
  pump();
}

function send(text) {
  const c = currentConv();
  if (!c) return false;
  if (c.left) {
    toast('You are no longer a member of this group.');
    return false;
  }
  const body = text.trim();
  const max = state.limits.max_body_bytes || 16384;
  if (byteLength(body) > max) {
    toast(`That message is too long: at most ${max} bytes.`);
    return false;
  }
  const compose = state.compose?.conversation === c.id ? state.compose : null;
  if (compose?.kind === 'edit') {
    if (!body) {
      toast('An edited message cannot be empty. Delete it instead.');
      return false;
    }
    enqueue({ conversation: c.id, body, refers: { kind: 'edit', seq: compose.seq } });
    endCompose(true);
    return 'edit';
  }
  const tray = trayOf(c.id);
  if (tray.busy) {
    toast('Wait for the files to finish uploading.');
    return false;
  }
  if (tray.failed) {
    toast('Some files could not be uploaded: retry or remove them first.');
    return false;
  }
  const attachments = tray.ready();
  if (!body && !attachments.length) return false;
  const item = { conversation: c.id, body };
  if (compose?.kind === 'reply') item.refers = { kind: 'reply', seq: compose.seq };
  if (attachments.length) item.attachments = attachments;
  enqueue(item);
  tray.clear();
  endCompose(false);
  c.typingSent = 0;
  renderMessages('bottom');
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
      const { conversation, client_msg_id, body, refers, attachments } = item;
      const frame = { type: 'send', conversation, client_msg_id, body };
      if (refers) frame.refers = refers;
      if (attachments?.length) frame.attachments = attachments.map((a) => a.id);
      try {
        const ack = await state.conn.request(frame);
        if (!state.session) break;
        const c = ensureConv(conversation);
        const msg = { conversation, seq: ack.seq, sender: me(), client_msg_id, body, ts_ms: ack.ts_ms };
        if (refers) msg.refers = refers;
        if (attachments?.length) msg.attachments = attachments;
        state.outbox = state.outbox.filter((o) => o !== item);
        saveOutbox();
        summarize(c, msg);
        if (c.loaded && !c.detached) {
          addMessages(c, [msg]);
          if (msg.seq > c.cursor) sync(c).catch(quiet);
        } else if (c.loaded) c.head = Math.max(c.head, msg.seq);
        invalidate('list', 'messages');
      } catch (e) {
        if (e.code === 'offline') break; // sent again after the reconnect
        if (e.retry) {
          toast(plain(e));
          await new Promise((r) => setTimeout(r, e.retryAfterMs ?? 2000));
          continue;
        }
        item.failed = plain(e, 'send');
        saveOutbox();
        toast(item.failed);
        invalidate('messages', 'list');
      }
    }
  } finally {
    state.pumping = false;
  }
}

function startCompose(kind, seq) {
  const c = currentConv();
  if (!c) return;
  const input = $('#composer-input');
  if (state.compose?.kind === 'edit') endCompose(false);
  if (kind === 'edit') {
    const row = viewRows(c).bySeq.get(seq);
    if (!row) return;
    state.compose = { kind, seq, conversation: c.id, stash: input.value };
    input.value = row.body;
  } else {
    state.compose = { kind, seq, conversation: c.id };
  }
  growComposer();
  renderComposer();
  input.focus();
}

function endCompose(restore) {
  const stash = state.compose?.kind === 'edit' ? state.compose.stash : null;
  state.compose = null;
  const input = $('#composer-input');
  if (stash !== null) input.value = restore ? stash : '';
  growComposer();
  renderComposer();
}

async function deleteMessage(c, seq) {
  const ok = await confirmDialog({
    title: 'Delete this message?',
    text: 'It is withdrawn for everyone in the conversation.',
    confirm: 'Delete',
    danger: true,
  });
  if (ok) enqueue({ conversation: c.id, body: '', refers: { kind: 'delete', seq } });
}

function react(c, seq, emoji) {
  const row = viewRows(c).bySeq.get(seq);
  if (!row || row.deleted) return;
  if (row.reactions.get(emoji)?.has(me())) return; // given already (reactions stay)
  enqueue({ conversation: c.id, body: emoji, refers: { kind: 'reaction', seq } });
}

// ---- conversations -----------------------------------------------------------------------

async function openDirect(target) {
  let frame;
  if (typeof target === 'number') frame = { type: 'open_direct', user_id: target };
  else {
    const [username, bad] = checkUsername(target);
    if (bad) return toast(bad);
    frame = { type: 'open_direct', username };
  }
  if (!state.conn?.ready) return toast('You are offline. Try again when the connection is back.');
  try {
    const info = await state.conn.request(frame);
    const c = ensureConv(info.conversation);
    for (const m of info.members || []) putPerson(m);
    c.head = Math.max(c.head, info.head);
    const other = info.members?.find((m) => m.user_id === c.other);
    if (other) c.title = other.username;
    $('#open-username').value = '';
    showView('chats');
    select(c.id);
  } catch (e) {
    toast(plain(e, 'direct'));
  }
}

function select(id, { load = true } = {}) {
  const input = $('#composer-input');
  if (state.current) {
    if (state.compose?.kind === 'edit') endCompose(true);
    state.drafts[state.current] = input.value;
    saveDrafts();
  }
  state.compose = null;
  state.current = id;
  store.set(userKey('current'), id);
  document.body.classList.toggle('in-conv', !!id);
  closeMenu();
  const c = id && state.convs.get(id);
  input.value = (id && state.drafts[id]) || '';
  growComposer();
  if (c?.kind === 'group' && !state.groups.has(c.id) && !c.left) groups.fetchGroup(c.id);
  if (c?.kind === 'direct' && c.other !== me()) ensurePerson(c.other, true); // profiles of non-contacts are not pushed
  if (c && load && !c.loaded && state.conn?.ready) sync(c).catch(quiet);
  if (c) markRead(c);
  renderAll(true);
  growComposer();
  if (c && matchMedia('(min-width: 721px)').matches) input.focus();
}

/** Tells the server what is read when the conversation is on screen. */
function markRead(c) {
  if (!c || !state.session || c.id !== state.current || document.visibilityState !== 'visible' || !c.loaded) return;
  let changed = false;
  if (c.cursor > c.readUpto) {
    c.readUpto = c.cursor;
    changed = true;
  }
  if (!c.detached && c.unread) {
    c.unread = 0;
    changed = true;
  }
  if (changed) {
    persist();
    invalidate('list');
  }
  if (c.readUpto > c.markSent && c.readUpto > 0 && state.conn?.ready && !c.marking) {
    const seq = c.readUpto;
    c.marking = true;
    state.conn
      .request({ type: 'mark_read', conversation: c.id, seq })
      .then(
        () => {
          c.markSent = Math.max(c.markSent, seq);
          c.marking = false;
          if (c.readUpto > c.markSent) markRead(c);
        },
        () => (c.marking = false),
      );
  }
}

// ---- notifications -----------------------------------------------------------------------

function notify(c, m) {
  if (!document.hidden || !('Notification' in window) || Notification.permission !== 'granted') return;
  const kind = m.refers?.kind;
  if (kind && kind !== 'reply') return;
  const title = c.kind === 'group' ? `${nameOf(m.sender)} in ${convTitle(c)}` : convTitle(c);
  try {
    const n = new Notification(title, {
      body: (m.body || media.describe(m.attachments)).slice(0, 200),
      tag: c.id,
      icon: '/icon.svg',
    });
    n.onclick = () => {
      window.focus();
      showView('chats');
      select(c.id);
      n.close();
    };
  } catch {
    // some mobile browsers only notify from a service worker
  }
}

// ---- rendering ---------------------------------------------------------------------------

const dirty = new Set();
let dirtyMode;
let renderTimer = null;
/** Renders the named parts soon, once for a burst of events. */
function invalidate(...parts) {
  for (const p of parts) if (p) dirty.add(p);
  if (!renderTimer) renderTimer = setTimeout(flushRender, 0);
}

function flushRender() {
  renderTimer = null;
  if (!state.session) return dirty.clear();
  const parts = new Set(dirty);
  dirty.clear();
  if (parts.has('list')) renderList();
  if (parts.has('header')) renderHeader();
  if (parts.has('messages')) renderMessages(dirtyMode);
  if (parts.has('contacts')) contacts.render();
  if (parts.has('groups')) groups.render();
  dirtyMode = undefined;
}

function renderAll(toBottom = false) {
  renderList();
  renderHeader();
  renderMessages(toBottom ? 'bottom' : undefined);
  renderComposer();
  renderTyping();
  renderNotifyButton();
  renderMe();
  contacts.render();
}

function renderMe() {
  const p = state.people.get(me());
  const name = p?.display_name || state.session.username;
  $('#me-name').textContent = state.session.username;
  $('#me-avatar').replaceChildren(media.avatarFor(name, p?.avatar, 'small'));
}

function convAvatar(c) {
  if (c.kind === 'group') return media.avatarFor(convTitle(c), null, 'group');
  const p = state.people.get(c.other);
  const a = media.avatarFor(convTitle(c), p?.avatar);
  const status = state.contacts.contacts.includes(c.other) ? p?.presence?.status : null;
  if (!status) return a;
  const wrap = el('span', 'avatar-wrap');
  const dot = el('span', `presence ${status}`);
  dot.title = presenceText(p);
  wrap.append(a, dot);
  return wrap;
}

function listPreview(c) {
  const pending = state.outbox.filter((o) => o.conversation === c.id && !o.refers);
  if (pending.length) {
    const o = pending[pending.length - 1];
    return `You: ${o.body || media.describe(o.attachments)}`;
  }
  if (!c.lastSeq) return 'No messages yet';
  if (!c.preview || c.lastKind === 'group') return c.preview || '…';
  const text = c.preview;
  if (c.lastSender === me()) return `You: ${text}`;
  if (c.kind === 'group' && c.lastSender) return `${nameOf(c.lastSender)}: ${text}`;
  return text;
}

function renderList() {
  if (!state.session) return;
  const list = $('#conv-list');
  const convs = [...state.convs.values()].sort((a, b) => b.lastTs - a.lastTs || a.id.localeCompare(b.id));
  const visibleNow = document.visibilityState === 'visible';
  let total = 0;
  const focused = document.activeElement?.closest?.('#conv-list button.conv')?.dataset.id;
  const items = convs.map((c) => {
    const n = c.id === state.current && visibleNow ? 0 : c.unread;
    total += n;
    const p = c.kind === 'direct' ? state.people.get(c.other) : null;
    return [c, n, [c.id, convTitle(c), shortTime(c.lastTs), typers(c.id).map(nameOf), listPreview(c), n, c.id === state.current, p?.avatar, state.contacts.contacts.includes(c.other) && p?.presence?.status]];
  });
  const sig = JSON.stringify(items.map((i) => i[2]));
  const badge = $('#chats-badge');
  badge.hidden = !total;
  badge.textContent = String(total);
  document.title = total ? `(${total}) Chat` : 'Chat';
  $('#conv-empty').hidden = convs.length > 0;
  if (list.dataset.sig === sig) return;
  list.dataset.sig = sig;
  list.replaceChildren(
    ...items.map(([c, n]) => {
      const title = convTitle(c);
      const b = el('button', 'conv' + (c.id === state.current ? ' active' : ''));
      b.type = 'button';
      b.dataset.id = c.id;
      const text = el('span', 'conv-text');
      const top = el('span', 'conv-top');
      top.append(el('span', 'conv-name', title), el('span', 'conv-time', shortTime(c.lastTs)));
      text.append(top);
      const who = typers(c.id);
      if (who.length) text.append(el('span', 'conv-preview typing-preview', who.length === 1 && c.kind === 'group' ? `${nameOf(who[0])} is typing…` : 'typing…'));
      else text.append(el('span', 'conv-preview', listPreview(c)));
      b.append(convAvatar(c), text);
      if (n) {
        const badge = el('span', 'badge', String(n));
        badge.setAttribute('aria-label', `${n} unread`);
        b.append(badge);
      }
      if (c.id === state.current) b.setAttribute('aria-current', 'true');
      const li = el('li');
      li.append(b);
      return li;
    }),
  );
  if (focused) list.querySelector(`button.conv[data-id="${focused}"]`)?.focus();
}

function renderHeader() {
  const c = currentConv();
  $('#conv-title').textContent = c ? convTitle(c) : '';
  $('#conv-avatar').replaceChildren(...(c ? [convAvatar(c)] : []));
  const sub = $('#conv-sub');
  sub.textContent = '';
  sub.dataset.presence = '';
  if (c?.kind === 'direct') {
    const p = state.people.get(c.other);
    if (c.other === me()) sub.textContent = 'Notes to yourself';
    else if (state.contacts.contacts.includes(c.other) && p?.presence) {
      sub.textContent = presenceText(p);
      sub.dataset.presence = p.presence.status;
    } else if (p?.username) sub.textContent = `@${p.username}`;
  } else if (c?.kind === 'group') {
    const g = state.groups.get(c.id);
    sub.textContent = c.left ? 'You are not a member' : g ? `${g.members.length} member${g.members.length === 1 ? '' : 's'}` : '';
  }
  $('#conv-info-btn').hidden = !c || (c.kind === 'direct' && c.other === me());
  $('#no-conv').hidden = !!c;
  $('#messages').hidden = !c;
  $('#jump-btn').hidden = !c?.detached;
  $('#composer').hidden = !c || c.left;
  const note = $('#readonly-note');
  note.hidden = !c?.left;
  note.textContent = c?.left ? 'You are no longer a member of this group: you can read what you have, not write.' : '';
  renderTyping();
  renderComposer();
}

function renderComposer() {
  const c = currentConv();
  const ctx = $('#compose-context');
  const compose = c && state.compose?.conversation === c.id ? state.compose : null;
  ctx.hidden = !compose;
  if (compose) {
    const row = viewRows(c).bySeq.get(compose.seq);
    const text = $('#compose-context-text');
    text.replaceChildren();
    if (compose.kind === 'edit') text.append(el('strong', '', 'Editing your message'));
    else {
      text.append(el('strong', '', `Replying to ${row ? nameOf(row.sender) : 'a message'}`), ' ', el('span', 'muted', row ? snippet(row) : ''));
    }
    $('#compose-cancel').setAttribute('aria-label', compose.kind === 'edit' ? 'Cancel the edit' : 'Cancel the reply');
  }
  $('#send-btn').textContent = compose?.kind === 'edit' ? 'Save' : 'Send';
  const tray = c ? trayOf(c.id) : null;
  if (tray) media.renderTray(tray, $('#tray'));
  else $('#tray').hidden = true;
  $('#send-btn').disabled = !!tray?.busy;
}

function snippet(row) {
  if (row.deleted) return 'message deleted';
  const t = row.body || media.describe(row.attachments);
  return t.length > 80 ? t.slice(0, 80) + '…' : t;
}

/** The rows of a conversation: messages with their edits, deletions and reactions applied. */
function viewRows(c) {
  const rows = [];
  const bySeq = new Map();
  const apply = (t, kind, sender, body, pending) => {
    if (kind === 'edit' && sender === t.sender && !t.deleted) {
      t.body = body;
      t.edited = true;
      t.pending ||= pending;
    } else if (kind === 'delete' && sender === t.sender) {
      t.deleted = true;
      t.body = '';
      t.attachments = [];
      t.pending ||= pending;
    } else if (kind === 'reaction') {
      if (!t.reactions.has(body)) t.reactions.set(body, new Set());
      t.reactions.get(body).add(sender);
    }
  };
  const msgRow = (key, m, extra) => ({
    type: 'msg',
    key,
    seq: m.seq ?? null,
    sender: m.sender,
    ts: m.ts_ms ?? m.ts,
    body: m.body,
    attachments: m.attachments || [],
    replyTo: m.refers?.kind === 'reply' ? m.refers.seq : null,
    edited: false,
    deleted: false,
    reactions: new Map(),
    cmid: m.client_msg_id,
    ...extra,
  });
  for (const m of [...c.messages.values()].sort((a, b) => a.seq - b.seq)) {
    const kind = m.refers?.kind;
    if (!kind || kind === 'reply') {
      const r = msgRow(`s${m.seq}`, m);
      bySeq.set(m.seq, r);
      rows.push(r);
    } else if (kind === 'group') {
      rows.push({ type: 'system', key: `s${m.seq}`, seq: m.seq, ts: m.ts_ms, text: groups.systemText(m) });
    } else if (kind === 'edit' || kind === 'delete' || kind === 'reaction') {
      const t = bySeq.get(m.refers.seq);
      if (t) apply(t, kind, m.sender, m.body, false);
    } else if (m.body) {
      rows.push(msgRow(`s${m.seq}`, m)); // something newer than this page: show its text
    }
  }
  for (const o of state.outbox) {
    if (o.conversation !== c.id) continue;
    const kind = o.refers?.kind;
    if (kind === 'edit' || kind === 'delete' || kind === 'reaction') {
      const t = bySeq.get(o.refers.seq);
      if (o.failed) rows.push({ type: 'failed-op', key: `o${o.client_msg_id}`, o, ts: o.ts });
      else if (t) apply(t, kind, me(), o.body, true);
    } else {
      rows.push(msgRow(`o${o.client_msg_id}`, { ...o, sender: me() }, { pending: true, failed: o.failed }));
    }
  }
  return { rows, bySeq };
}

/** What the others have read of my message `seq`: {text, all} or null. */
function readersOf(c, seq) {
  if (c.kind === 'direct') {
    if (c.other === me()) return null;
    return (c.peerRead[c.other] || 0) >= seq ? { names: [nameOf(c.other)], all: true } : { names: [], all: false };
  }
  const g = state.groups.get(c.id);
  const others = (g?.members || []).map((m) => m.user_id).filter((u) => u !== me());
  const names = others.filter((u) => (c.peerRead[u] || 0) >= seq).map(nameOf);
  return { names, all: others.length > 0 && names.length === others.length };
}

function receiptText(c, r) {
  if (!r) return '';
  if (c.kind === 'direct') return r.all ? 'Seen' : 'Sent';
  if (!r.names.length) return 'Sent';
  if (r.all) return r.names.length === 1 ? `Seen by ${r.names[0]}` : 'Seen by everyone';
  const shown = r.names.slice(0, 3).join(', ');
  return r.names.length > 3 ? `Seen by ${shown} and ${r.names.length - 3} more` : `Seen by ${shown}`;
}

function messageEl(c, row, { quote, showSender, receipt, readers }) {
  const mine = row.sender === me();
  const cls = ['msg', mine ? 'mine' : 'theirs'];
  if (row.pending) cls.push('pending');
  if (row.failed) cls.push('failed');
  if (row.deleted) cls.push('deleted');
  const node = el('div', cls.join(' '));
  if (row.seq) node.dataset.seq = row.seq;
  if (row.cmid) node.dataset.cmid = row.cmid;
  const bubble = el('div', 'bubble');
  if (showSender) bubble.append(el('div', 'sender', nameOf(row.sender)));
  if (quote) {
    const q = button('', { cls: 'quote', action: 'jump', data: { seq: String(row.replyTo) }, label: `Replying to ${quote.name}: ${quote.text}. Show it` });
    q.append(el('span', 'quote-name', quote.name), el('span', 'quote-text', quote.text));
    bubble.append(q);
  }
  if (row.attachments?.length && !row.deleted) bubble.append(media.attachmentsEl(row.attachments));
  if (row.deleted) bubble.append(el('div', 'body tombstone', 'message deleted'));
  else if (row.body) bubble.append(el('div', 'body', row.body));
  const meta = el('div', 'meta');
  const time = el('time', '', row.ts ? timeFmt.format(new Date(row.ts)) : '');
  if (row.ts) {
    time.dateTime = new Date(row.ts).toISOString();
    time.title = fullTime(row.ts);
  }
  meta.append(time);
  if (row.edited && !row.deleted) meta.append(' · edited');
  if (row.pending && !row.failed) meta.append(' · Sending…');
  if (mine && !row.pending && !row.deleted && readers) {
    const tick = el('span', 'ticks' + (readers.all ? ' seen' : ''), readers.names.length ? '✓✓' : '✓');
    tick.title = readers.names.length ? `Seen by ${readers.names.join(', ')}` : 'Sent';
    tick.setAttribute('aria-label', tick.title);
    meta.append(' ', tick);
  }
  bubble.append(meta);
  if (row.reactions.size) {
    const box = el('div', 'reactions');
    for (const [emoji, users] of row.reactions) {
      const minePressed = users.has(me());
      const b = button(`${emoji} ${users.size}`, {
        cls: 'reaction' + (minePressed ? ' mine' : ''),
        action: 'react',
        data: { seq: String(row.seq), emoji },
        label: `${emoji} from ${[...users].map(nameOf).join(', ')}${minePressed ? '' : '. Add yours'}`,
      });
      b.title = [...users].map(nameOf).join(', ');
      b.setAttribute('aria-pressed', String(minePressed));
      box.append(b);
    }
    bubble.append(box);
  }
  if (row.failed) {
    const f = el('div', 'fail', `Not sent: ${row.failed} `);
    f.append(
      button('Retry', { cls: 'link-btn', action: 'retry', data: { cmid: row.cmid } }),
      ' ',
      button('Discard', { cls: 'link-btn', action: 'discard', data: { cmid: row.cmid } }),
    );
    bubble.append(f);
  }
  node.append(bubble);
  if (row.seq && !row.deleted && !row.pending && !c.left) {
    node.append(button('⋯', { cls: 'msg-more', action: 'menu', data: { seq: String(row.seq) }, label: 'Message actions' }));
  }
  if (receipt) node.append(el('div', 'receipt', receipt));
  return node;
}

/** Rebuilds the open conversation, reusing the elements of unchanged rows. `mode`: 'bottom'
 * scrolls down, 'older' keeps the view on the same message, 'keep' leaves it. */
function renderMessages(mode) {
  const box = $('#messages');
  const c = currentConv();
  if (!c) return box.replaceChildren();
  if (mode === undefined && dirtyMode) mode = dirtyMode;
  const wasAtBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  const fromBottom = box.scrollHeight - box.scrollTop;
  const top = box.scrollTop;
  const { rows, bySeq } = viewRows(c);
  const items = []; // [key, sig, build]
  const hint = (text) => items.push([`hint:${text}`, text, () => el('div', 'hint', text)]);
  if (!c.loaded) hint(state.conn?.ready ? 'Loading…' : 'Waiting for the connection…');
  else if (c.minSeq > 1) hint(c.loadingOlder ? 'Loading older messages…' : 'Scroll up for older messages');
  else if (!rows.length) {
    hint(c.kind === 'group' ? `This is the start of ${convTitle(c)}.` : `This is the start of your conversation with ${convTitle(c)}.`);
  }
  // The receipt line goes under my latest message.
  let lastMine = null;
  for (const r of rows) if (r.type === 'msg' && r.sender === me() && !r.pending && r.seq) lastMine = r;
  let day = '';
  let prevSender = null;
  for (const r of rows) {
    if (r.ts) {
      const d = dayLabel(r.ts);
      if (d !== day) {
        items.push([`day:${d}`, d, () => el('div', 'day', d)]);
        prevSender = null;
      }
      day = d;
    }
    if (r.type === 'system') {
      prevSender = null;
      items.push([
        r.key,
        r.text,
        () => {
          const n = el('div', 'system', r.text);
          n.dataset.seq = r.seq;
          n.setAttribute('role', 'note');
          return n;
        },
      ]);
      continue;
    }
    if (r.type === 'failed-op') {
      const what = { edit: 'edit', delete: 'deletion', reaction: 'reaction' }[r.o.refers.kind];
      const text = `Your ${what} was not saved: ${r.o.failed}`;
      items.push([
        r.key,
        text,
        () => {
          const n = el('div', 'system failed-op', `${text} `);
          n.dataset.cmid = r.o.client_msg_id;
          n.append(
            button('Retry', { cls: 'link-btn', action: 'retry', data: { cmid: r.o.client_msg_id } }),
            ' ',
            button('Discard', { cls: 'link-btn', action: 'discard', data: { cmid: r.o.client_msg_id } }),
          );
          return n;
        },
      ]);
      continue;
    }
    let quote = null;
    if (r.replyTo) {
      const t = bySeq.get(r.replyTo);
      quote = t ? { name: nameOf(t.sender), text: snippet(t) } : { name: 'an earlier message', text: '' };
    }
    const showSender = c.kind === 'group' && r.sender !== me() && prevSender !== r.sender;
    prevSender = r.sender;
    const readers = r.sender === me() && r.seq && !r.pending ? readersOf(c, r.seq) : null;
    const receipt = r === lastMine ? receiptText(c, readers) : '';
    const reactions = [...r.reactions].map(([e, u]) => [e, [...u].sort()]);
    const sig = JSON.stringify([
      r.body, r.edited, r.deleted, r.pending, r.failed, r.ts, reactions, quote, showSender && nameOf(r.sender),
      receipt, readers, (r.attachments || []).map((a) => a.id), c.left,
      r.reactions.size ? [...r.reactions.values()].flatMap((u) => [...u].map(nameOf)) : null,
    ]);
    items.push([r.key, sig, () => messageEl(c, r, { quote, showSender, receipt, readers })]);
  }
  const nodes = [];
  const keep = new Map();
  for (const [key, sig, build] of items) {
    const old = c.nodes.get(key);
    const node = old && old.sig === sig ? old.node : build();
    keep.set(key, { sig, node });
    nodes.push(node);
  }
  c.nodes = keep;
  reconcile(box, nodes);
  if (mode === 'bottom' || (wasAtBottom && mode !== 'older' && mode !== 'keep')) scrollToBottom();
  else if (mode === 'older') box.scrollTop = box.scrollHeight - fromBottom;
  else box.scrollTop = top;
  // A first page shorter than the view leaves nothing to scroll: read more now.
  if (c.loaded && c.minSeq > 1 && box.clientHeight > 0 && box.scrollHeight <= box.clientHeight) loadOlder(c);
  $('#jump-btn').hidden = !c.detached;
}

/** Puts `nodes` into `box` in order, moving only what moved. */
function reconcile(box, nodes) {
  let i = 0;
  for (const n of nodes) {
    const at = box.children[i];
    if (at !== n) box.insertBefore(n, at || null);
    i++;
  }
  while (box.children.length > nodes.length) box.lastElementChild.remove();
}

function scrollToBottom() {
  const box = $('#messages');
  box.scrollTop = box.scrollHeight;
}

function renderNotifyButton() {
  $('#notify-btn').hidden = !('Notification' in window) || Notification.permission !== 'default';
}

function growComposer() {
  const input = $('#composer-input');
  if (!input.offsetParent) {
    input.style.height = ''; // hidden: measured when shown
    return;
  }
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  input.style.overflowY = input.scrollHeight > 160 ? 'auto' : 'hidden';
}

// ---- the message menu ----------------------------------------------------------------------

let menuFor = null;
function openMenu(btn, seq) {
  const c = currentConv();
  const row = c && viewRows(c).bySeq.get(seq);
  if (!row) return;
  const menu = $('#msg-menu');
  menuFor = seq;
  const mine = row.sender === me();
  menu.querySelector('[data-action="edit"]').hidden = !mine || row.deleted || !row.body;
  menu.querySelector('[data-action="delete"]').hidden = !mine || row.deleted;
  menu.querySelector('[data-action="copy"]').hidden = !row.body || !navigator.clipboard;
  for (const b of menu.querySelectorAll('[data-emoji]')) {
    b.setAttribute('aria-pressed', String(!!row.reactions.get(b.dataset.emoji)?.has(me())));
  }
  menu.hidden = false;
  const r = btn.getBoundingClientRect();
  const w = menu.offsetWidth;
  const h = menu.offsetHeight;
  const left = Math.min(Math.max(8, mine ? r.right - w : r.left), window.innerWidth - w - 8);
  const topPos = r.bottom + h + 8 > window.innerHeight ? Math.max(8, r.top - h - 4) : r.bottom + 4;
  menu.style.left = `${left}px`;
  menu.style.top = `${topPos}px`;
  btn.setAttribute('aria-expanded', 'true');
  menu.querySelector('button:not([hidden])').focus();
}

function closeMenu() {
  const menu = $('#msg-menu');
  if (menu.hidden) return;
  menu.hidden = true;
  const btn = $(`#messages .msg[data-seq="${menuFor}"] .msg-more`);
  btn?.setAttribute('aria-expanded', 'false');
  menuFor = null;
}

function onMenu(action, emoji) {
  const c = currentConv();
  const seq = menuFor;
  closeMenu();
  if (!c || !seq) return;
  if (action === 'react') react(c, seq, emoji);
  else if (action === 'reply') startCompose('reply', seq);
  else if (action === 'edit') startCompose('edit', seq);
  else if (action === 'delete') deleteMessage(c, seq);
  else if (action === 'copy') {
    const row = viewRows(c).bySeq.get(seq);
    navigator.clipboard?.writeText(row?.body || '').then(() => toast('Copied.'), () => {});
  }
}

// ---- views ---------------------------------------------------------------------------------

function showView(view) {
  state.view = view;
  for (const [name, tab, panel] of [
    ['chats', '#tab-chats', '#view-chats'],
    ['contacts', '#tab-contacts', '#view-contacts'],
  ]) {
    const on = name === view;
    $(tab).setAttribute('aria-selected', String(on));
    $(tab).tabIndex = on ? 0 : -1;
    $(panel).hidden = !on;
  }
  if (view === 'contacts') contacts.render();
}

// ---- events ------------------------------------------------------------------------------

function wire() {
  $('#login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    submitLogin(false);
  });
  $('#register-btn').addEventListener('click', () => submitLogin(true));
  $('#logout-btn').addEventListener('click', logout);
  $('#me-btn').addEventListener('click', () => contacts.openProfile());
  $('#tab-chats').addEventListener('click', () => showView('chats'));
  $('#tab-contacts').addEventListener('click', () => showView('contacts'));
  $('.tabs').addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return;
    const next = state.view === 'chats' ? 'contacts' : 'chats';
    showView(next);
    $(`#tab-${next}`).focus();
  });
  $('#open-form').addEventListener('submit', (e) => {
    e.preventDefault();
    openDirect($('#open-username').value);
  });
  $('#conv-list').addEventListener('click', (e) => {
    const b = e.target.closest('button.conv');
    if (b) select(b.dataset.id);
  });
  $('#back-btn').addEventListener('click', () => select(null));
  const showInfo = () => {
    const c = currentConv();
    if (!c) return;
    if (c.kind === 'group') groups.openGroupInfo(c.id);
    else if (c.other !== me()) contacts.openPerson(c.other);
  };
  $('#conv-info-btn').addEventListener('click', showInfo);
  $('.conv-head-text').addEventListener('click', showInfo);
  $('#jump-btn').addEventListener('click', () => currentConv() && jumpToLatest(currentConv()));

  const input = $('#composer-input');
  input.addEventListener('input', () => {
    growComposer();
    typed();
    if (state.current && state.compose?.kind !== 'edit') {
      state.drafts[state.current] = input.value;
      saveDrafts();
    }
  });
  $('#composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const sent = send(input.value);
    if (sent === true) {
      input.value = '';
      delete state.drafts[state.current];
      saveDrafts();
      growComposer();
    }
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('#composer').requestSubmit();
    } else if (e.key === 'Escape' && state.compose) {
      e.preventDefault();
      endCompose(true);
    } else if (e.key === 'ArrowUp' && !input.value) {
      // Edit my last message, as many chat apps do.
      const c = currentConv();
      const rows = c ? viewRows(c).rows : [];
      const last = [...rows].reverse().find((r) => r.type === 'msg' && r.sender === me() && r.seq && !r.deleted && !r.pending && r.body);
      if (last) {
        e.preventDefault();
        startCompose('edit', last.seq);
      }
    }
  });
  input.addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (files.length) {
      e.preventDefault();
      attach(files);
    }
  });
  $('#compose-cancel').addEventListener('click', () => endCompose(true));
  $('#attach-btn').addEventListener('click', () => $('#file-input').click());
  $('#file-input').addEventListener('change', (e) => {
    attach([...e.target.files]);
    e.target.value = '';
  });
  const pane = $('.pane');
  pane.addEventListener('dragover', (e) => {
    if (currentConv() && [...(e.dataTransfer?.types || [])].includes('Files')) {
      e.preventDefault();
      pane.classList.add('dropping');
    }
  });
  pane.addEventListener('dragleave', (e) => {
    if (!pane.contains(e.relatedTarget)) pane.classList.remove('dropping');
  });
  pane.addEventListener('drop', (e) => {
    pane.classList.remove('dropping');
    const files = [...(e.dataTransfer?.files || [])];
    if (files.length && currentConv()) {
      e.preventDefault();
      attach(files);
    }
  });
  $('#tray').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    const c = currentConv();
    if (!b || !c) return;
    if (b.dataset.action === 'remove-upload') trayOf(c.id).remove(b.dataset.key);
    else if (b.dataset.action === 'retry-upload') trayOf(c.id).retry(b.dataset.key);
  });

  const box = $('#messages');
  box.addEventListener('scroll', () => {
    const c = currentConv();
    if (!c) return;
    closeMenu();
    if (box.scrollTop < 120) loadOlder(c);
    if (c.detached && box.scrollHeight - box.scrollTop - box.clientHeight < 120) loadNewer(c);
  });
  box.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    const c = currentConv();
    if (!b || !c) return;
    const seq = Number(b.dataset.seq);
    switch (b.dataset.action) {
      case 'menu':
        if (menuFor === seq) closeMenu();
        else openMenu(b, seq);
        break;
      case 'react':
        react(c, seq, b.dataset.emoji);
        break;
      case 'jump':
        openAt(c.id, seq);
        break;
      case 'view-image':
        media.viewImage(b.dataset.media, b.dataset.name);
        break;
      case 'retry':
        state.outbox.forEach((o) => o.client_msg_id === b.dataset.cmid && delete o.failed);
        saveOutbox();
        invalidate('messages');
        pump();
        break;
      case 'discard':
        state.outbox = state.outbox.filter((o) => o.client_msg_id !== b.dataset.cmid);
        saveOutbox();
        invalidate('messages', 'list');
        break;
      default:
        break;
    }
  });
  const menu = $('#msg-menu');
  const emojis = $('#msg-menu-emoji');
  emojis.replaceChildren(
    ...REACTIONS.map((e) => button(e, { cls: 'emoji', action: 'react', label: `React with ${e}`, data: { emoji: e } })),
  );
  menu.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    if (b) onMenu(b.dataset.action, b.dataset.emoji);
  });
  menu.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      const seq = menuFor;
      closeMenu();
      $(`#messages .msg[data-seq="${seq}"] .msg-more`)?.focus();
    }
  });
  document.addEventListener('click', (e) => {
    if (!menu.hidden && !menu.contains(e.target) && !e.target.closest('.msg-more')) closeMenu();
  });
  window.addEventListener('resize', closeMenu);

  $('#toast').addEventListener('click', () => ($('#toast').hidden = true));
  $('#notify-btn').addEventListener('click', async () => {
    await Notification.requestPermission();
    renderNotifyButton();
  });
  document.addEventListener('visibilitychange', () => {
    if (!state.session) return;
    if (document.visibilityState === 'hidden') {
      saveNow();
      scheduleAway();
      return;
    }
    backFromAway();
    const c = currentConv();
    if (c) markRead(c);
    renderList();
  });
  window.addEventListener('pagehide', () => state.session && saveNow());
  // Times like "last seen 5 min ago" age.
  setInterval(() => state.session && invalidate('header', 'contacts'), 60000);
}

function attach(files) {
  const c = currentConv();
  if (!c || c.left) return;
  if (state.compose?.kind === 'edit') return toast('Files cannot be added to an edit.');
  const refused = trayOf(c.id).add(files, 10);
  if (refused) toast('A message carries at most 10 files.');
  renderComposer();
}

// ---- what the other modules use ------------------------------------------------------------

const app = {
  state,
  me,
  request,
  putPerson,
  ensurePerson,
  nameOf,
  presenceText,
  checkUsername,
  ensureConv,
  convTitle,
  select,
  openDirect,
  openAt,
  showView,
  invalidate,
  persist,
  refreshConversations,
  /** Catches a loaded conversation up to `seq` (a message sent elsewhere, e.g. a broadcast). */
  sync: (id, seq = 0) => {
    const c = state.convs.get(id);
    if (!c?.loaded) return Promise.resolve();
    c.head = Math.max(c.head, seq);
    return sync(c);
  },
  token: () => state.session?.token,
  renderAll,
  renderMe,
};

contacts.init(app);
groups.init(app);
search.init(app);
media.configure({ token: () => state.session?.token });

// For the browser test (web/tests/browser_test.py): drop the socket as a network fault would.
window.__chatTest = {
  dropConnection: (holdMs = 0) => state.conn?.drop(holdMs),
  reconnect: () => state.conn?.reconnectNow(),
  // Pretends to hold another event cursor (e.g. one the server cannot serve: a resync).
  setCursor: (seq) => {
    state.cursor = seq;
    saveNow();
  },
  info: () => ({
    connects: state.conn?.connects ?? 0,
    ready: !!state.conn?.ready,
    outbox: state.outbox.length,
    current: state.current,
    userId: state.session?.user_id ?? null,
    cursor: state.cursor,
    resumedFrom: state.conn?.resumedFrom ?? null,
    ...state.stats,
  }),
};

wire();
startApp();
