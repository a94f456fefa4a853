// Search: messages (with highlighted snippets; a hit opens its conversation around it;
// filters by sender and by date), conversations by name, and the username suggestions of
// the pickers. A server without
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
  $('#search-filters-btn').addEventListener('click', () => {
    const box = $('#search-filters');
    if (box.hidden) fillSenders();
    box.hidden = !box.hidden;
    $('#search-filters-btn').setAttribute('aria-expanded', String(!box.hidden));
    if (!box.hidden) $('#search-sender').focus();
  });
  for (const id of ['#search-sender', '#search-from', '#search-to']) {
    $(id).addEventListener('change', () => {
      filtersChanged();
      if (input.value.trim()) run(false);
    });
  }
  $('#search-clear').addEventListener('click', () => {
    clearFilters();
    if (input.value.trim()) run(false);
    $('#search-sender').focus();
  });
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
  $('#search-results').setAttribute('aria-busy', 'false');
  next = null;
  clearFilters();
  $('#search-filters').hidden = true;
  $('#search-filters-btn').setAttribute('aria-expanded', 'false');
}

// ---- filters: the sender and a range of days ---------------------------------------------------

/** The people one may pick as the sender: oneself, then everyone this page knows, by name. */
function fillSenders() {
  const sel = $('#search-sender');
  const keep = sel.value;
  const me = app.me();
  const people = [...app.state.people.values()]
    .filter((p) => p.user_id !== me && p.username)
    .map((p) => ({ id: p.user_id, name: p.display_name && p.display_name !== p.username ? `${p.display_name} (${p.username})` : p.username }))
    .sort((a, b) => a.name.localeCompare(b.name))
    .slice(0, 200);
  const opt = (value, text) => {
    const o = el('option', '', text);
    o.value = String(value);
    return o;
  };
  sel.replaceChildren(opt('', 'Anyone'), opt(me, 'You'), ...people.map((p) => opt(p.id, p.name)));
  // A sender picked before stays picked, even when this page no longer knows their name.
  if (keep && ![...sel.options].some((o) => o.value === keep)) sel.append(opt(keep, app.nameOf(Number(keep))));
  sel.value = keep;
}

/** Local midnight of a `YYYY-MM-DD` date input's value, plus `days`; null when empty. */
function dayStart(value, days = 0) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value || '');
  return m ? new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]) + days).getTime() : null;
}

/** The filters as query parameters: `to_ms` is exclusive, so "To" includes its whole day. */
function filters() {
  const sender = $('#search-sender').value;
  return {
    sender: sender ? Number(sender) : null,
    from_ms: dayStart($('#search-from').value),
    to_ms: dayStart($('#search-to').value, 1),
  };
}

function activeFilters() {
  return Object.values(filters()).filter((v) => v !== null).length;
}

function filtersChanged() {
  const from = $('#search-from');
  const to = $('#search-to');
  // The pickers offer no "to" before the "from".
  to.min = from.value || '';
  from.max = to.value || '';
  const n = activeFilters();
  const btn = $('#search-filters-btn');
  btn.classList.toggle('active', n > 0);
  btn.setAttribute('aria-label', n ? `Filters (${n} on)` : 'Filters');
  const count = $('#search-filters-count');
  count.textContent = n ? String(n) : '';
  count.hidden = n === 0;
  $('#search-clear').hidden = n === 0;
}

function clearFilters() {
  $('#search-sender').value = '';
  $('#search-from').value = '';
  $('#search-to').value = '';
  filtersChanged();
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
  list.setAttribute('aria-busy', 'true');
  if (!more) {
    list.replaceChildren();
    next = null;
    status.textContent = 'Searching…';
    delete status.dataset.error;
    // Conversations have no sender or date: with filters, only messages are looked for.
    if (!scope && !activeFilters()) searchConversations(q, my);
  }
  try {
    const f = filters();
    if (f.from_ms !== null && f.to_ms !== null && f.from_ms >= f.to_ms) {
      status.textContent = 'The "From" day is after the "To" day.';
      list.setAttribute('aria-busy', 'false');
      return;
    }
    const r = await api.searchMessages(app.token(), { q, conversation: scope, ...f, cursor: more ? next : null, limit: 20 });
    if (my !== gen) return;
    next = r.next || null;
    const hits = r.hits || [];
    list.append(...hits.map(hitEl));
    const shown = list.querySelectorAll('.hit').length;
    const filtered = activeFilters() ? ' with these filters' : '';
    status.textContent = shown
      ? `${shown}${next ? '+' : ''} message${shown === 1 ? '' : 's'} found${filtered}`
      : `No messages found${filtered}.`;
    if (r.partial) status.textContent += ' Some results may be missing: part of the cluster did not answer.';
    moreBtn.hidden = !next;
    list.setAttribute('aria-busy', 'false');
  } catch (e) {
    if (my !== gen) return;
    status.textContent = e.code === 'not_found' ? 'Search is not available on this server yet.' : plain(e, 'search');
    status.dataset.error = e.code;
    list.setAttribute('aria-busy', 'false');
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
