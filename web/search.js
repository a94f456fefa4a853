// Search: messages (with highlighted snippets; a hit opens its conversation around it),
// conversations by name, and the username suggestions of the pickers. A server without
// search answers 404: the panel says so, and the pickers fall back to the people known here.

import * as api from './api.js';
import { $, el, plain, shortTime, fullTime, debounce } from './ui.js';

let app = null;

export function init(a) {
  app = a;
  const input = $('#search-input');
  $('#search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    run(false);
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      close();
    }
  });
  input.addEventListener('input', () => {
    if (!input.value.trim()) close();
  });
  $('#search-scope').addEventListener('change', () => input.value.trim() && run(false));
  $('#search-close').addEventListener('click', close);
  $('#search-more').addEventListener('click', () => run(true));
  $('#search-results').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-conv]');
    if (!b) return;
    const conv = b.dataset.conv;
    if (b.dataset.seq) app.openAt(conv, Number(b.dataset.seq));
    else {
      app.ensureConv(conv);
      app.select(conv);
    }
  });
}

// ---- messages and conversations ------------------------------------------------------------

let gen = 0;
let next = null;

function close() {
  gen++;
  $('#search-panel').hidden = true;
  $('#chats-main').hidden = false;
  $('#search-input').value = '';
  $('#search-results').replaceChildren();
  next = null;
}

/** Text with the half-open code point ranges of `highlights` in <mark>, built from text nodes. */
export function highlighted(snippet, highlights) {
  const cps = Array.from(snippet || '');
  const frag = document.createDocumentFragment();
  const ranges = (highlights || [])
    .filter((r) => Array.isArray(r) && r.length === 2 && Number.isInteger(r[0]) && Number.isInteger(r[1]))
    .sort((a, b) => a[0] - b[0]);
  let pos = 0;
  for (const [s0, e0] of ranges) {
    const s = Math.max(pos, Math.min(s0, cps.length));
    const e = Math.min(e0, cps.length);
    if (e <= s) continue;
    if (s > pos) frag.append(document.createTextNode(cps.slice(pos, s).join('')));
    const m = document.createElement('mark');
    m.textContent = cps.slice(s, e).join('');
    frag.append(m);
    pos = e;
  }
  if (pos < cps.length) frag.append(document.createTextNode(cps.slice(pos).join('')));
  return frag;
}

async function run(more) {
  const q = $('#search-input').value.trim();
  if (!q) return close();
  const my = ++gen;
  const panel = $('#search-panel');
  panel.hidden = false;
  $('#chats-main').hidden = true;
  const scopeSel = $('#search-scope');
  const current = app.state.current;
  scopeSel.querySelector('option[value=current]').disabled = !current;
  if (!current && scopeSel.value === 'current') scopeSel.value = '';
  const scope = scopeSel.value === 'current' ? current : '';
  const status = $('#search-status');
  const list = $('#search-results');
  const moreBtn = $('#search-more');
  moreBtn.hidden = true;
  if (!more) {
    list.replaceChildren();
    next = null;
    status.textContent = 'Searching…';
    if (!scope) searchConversations(q, my);
  }
  try {
    const r = await api.searchMessages(app.token(), { q, conversation: scope, cursor: more ? next : null, limit: 20 });
    if (my !== gen) return;
    next = r.next || null;
    const hits = r.hits || [];
    list.append(...hits.map(hitEl));
    const shown = list.querySelectorAll('.hit').length;
    status.textContent = shown ? `${shown}${next ? '+' : ''} message${shown === 1 ? '' : 's'} found` : 'No messages found.';
    if (r.partial) status.textContent += ' Some results may be missing: part of the cluster did not answer.';
    moreBtn.hidden = !next;
  } catch (e) {
    if (my !== gen) return;
    status.textContent = e.code === 'not_found' ? 'Search is not available on this server yet.' : plain(e, 'search');
    status.dataset.error = e.code;
  }
}

function hitEl(h) {
  const li = el('li');
  const b = el('button', 'hit');
  b.type = 'button';
  b.dataset.conv = h.conversation;
  b.dataset.seq = String(h.seq);
  const c = app.state.convs.get(h.conversation);
  const where = c ? app.convTitle(c) : h.conversation.startsWith('g:') ? 'a group' : 'a conversation';
  const top = el('span', 'hit-top');
  top.append(el('span', 'hit-where', where), el('span', 'hit-who', app.nameOf(h.sender)));
  const t = el('time', 'hit-time', shortTime(h.ts_ms));
  t.title = fullTime(h.ts_ms);
  top.append(t);
  const text = el('span', 'hit-snippet');
  text.append(highlighted(h.snippet ?? h.body ?? '', h.snippet ? h.highlights : []));
  b.append(top, text);
  b.setAttribute('aria-label', `${where}, ${app.nameOf(h.sender)}: ${h.snippet ?? h.body ?? ''}`);
  li.append(b);
  return li;
}

async function searchConversations(q, my) {
  let found;
  try {
    const r = await api.searchConversations(app.token(), q);
    found = (r.conversations || []).map((x) => ({ id: x.conversation, name: x.name }));
  } catch {
    // No search on the server: match the names known here.
    const needle = q.toLowerCase();
    found = [...app.state.convs.values()]
      .filter((c) => app.convTitle(c).toLowerCase().includes(needle))
      .map((c) => ({ id: c.id, name: app.convTitle(c) }));
  }
  if (my !== gen || !found.length) return;
  const items = found.slice(0, 8).map((x) => {
    const li = el('li');
    const b = el('button', 'hit-conv');
    b.type = 'button';
    b.dataset.conv = x.id;
    const c = app.state.convs.get(x.id);
    b.append(el('span', 'hit-where', c ? app.convTitle(c) : x.name || x.id), el('span', 'muted', x.id.startsWith('g:') ? ' · group' : ''));
    li.append(b);
    return li;
  });
  const head = el('li', 'search-heading', 'Conversations');
  const msgHead = el('li', 'search-heading', 'Messages');
  $('#search-results').prepend(head, ...items, msgHead);
}

// ---- username suggestions --------------------------------------------------------------------

let usersAvailable = true;

/**
 * Suggests usernames in `input` (through the shared datalist): from the server's user search
 * when it has one, else from the people this page knows. With `list`, the input holds several
 * names separated by commas and the last one is completed.
 */
export function attachSuggestions(input, { list = false } = {}) {
  input.setAttribute('list', 'user-suggestions');
  const update = debounce(async () => {
    const value = input.value;
    const parts = list ? value.split(/,\s*/) : [value];
    const q = parts[parts.length - 1].trim().replace(/^@/, '');
    const prefix = list ? parts.slice(0, -1).map((p) => `${p}, `).join('') : '';
    if (q.length < 2 || !app?.state.session) return;
    let users = [];
    if (usersAvailable) {
      try {
        users = (await api.searchUsers(app.token(), q)).users || [];
      } catch (e) {
        if (e.code === 'not_found') usersAvailable = false;
      }
    }
    if (!users.length) {
      const needle = q.toLowerCase();
      users = [...app.state.people.values()].filter(
        (p) => p.user_id !== app.me() && p.username && (p.username.includes(needle) || (p.display_name || '').toLowerCase().includes(needle)),
      );
    }
    if (input.value !== value) return;
    $('#user-suggestions').replaceChildren(
      ...users.slice(0, 10).map((u) => {
        const o = el('option');
        o.value = prefix + u.username;
        o.label = u.display_name && u.display_name !== u.username ? u.display_name : '';
        return o;
      }),
    );
  }, 250);
  input.addEventListener('input', update);
}
