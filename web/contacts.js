// Contacts, people and one's own profile: the Contacts panel (contacts with presence,
// requests both ways, blocks), a person's card with what can be done with them, and the
// profile dialog (display name, status, picture, who may message).

import * as api from './api.js';
import { $, el, button, toast, plain, openDialog, confirmDialog } from './ui.js';
import * as media from './media.js';
import { attachSuggestions } from './search.js';

let app = null;

export function init(a) {
  app = a;
  $('#add-contact-form').addEventListener('submit', (e) => {
    e.preventDefault();
    requestByName($('#add-contact-username').value);
  });
  attachSuggestions($('#add-contact-username'));
  $('#contacts-body').addEventListener('click', onClick);
  $('#person-body').addEventListener('click', onClick);
  $('#profile-form').addEventListener('submit', (e) => {
    e.preventDefault();
    saveProfile();
  });
  $('#avatar-btn').addEventListener('click', () => $('#avatar-input').click());
  $('#avatar-input').addEventListener('change', (e) => {
    const f = e.target.files[0];
    e.target.value = '';
    if (f) uploadAvatar(f);
  });
  $('#avatar-remove').addEventListener('click', () => setAvatar(null));
}

// ---- the lists ---------------------------------------------------------------------------

/** Reads contacts (with presence), requests and blocks. */
export async function loadContacts() {
  const [c, b] = await Promise.all([app.request({ type: 'list_contacts' }), app.request({ type: 'list_blocks' })]);
  const ids = (list) => (list || []).map((e) => app.putPerson(e)?.user_id).filter(Boolean);
  app.state.contacts = {
    contacts: ids(c.contacts),
    incoming: ids(c.incoming),
    outgoing: ids(c.outgoing),
    blocked: ids(b.blocked),
  };
  app.persist();
  app.invalidate('contacts', 'list', 'header');
}

const reloadSoon = (() => {
  let t = null;
  return () => {
    clearTimeout(t);
    t = setTimeout(() => loadContacts().catch(() => {}), 150);
  };
})();

/** A `contact` event: a request arrived or was answered, a contact was removed. */
export function onContactEvent(f) {
  const known = relationOf(f.user);
  if (f.relation === 'incoming' && known !== 'incoming') {
    const p = app.state.people.get(f.user);
    toast(`${p?.display_name || p?.username || 'Someone'} would like to be your contact.`);
  }
  app.ensurePerson(f.user);
  reloadSoon();
}

/** A contact's presence changed (ephemeral). */
export function onPresence(f) {
  const presence = { status: f.status };
  if (f.last_seen_ms) presence.last_seen_ms = f.last_seen_ms;
  else if (f.status === 'offline') presence.last_seen_ms = Date.now();
  app.putPerson({ user_id: f.user, presence });
  app.invalidate('contacts', 'list', 'header');
  if (openPersonId === f.user) renderPerson();
}

export function relationOf(uid) {
  const c = app.state.contacts;
  if (c.contacts.includes(uid)) return 'contact';
  if (c.incoming.includes(uid)) return 'incoming';
  if (c.outgoing.includes(uid)) return 'outgoing';
  if (c.blocked.includes(uid)) return 'blocked';
  return 'none';
}

function personName(p) {
  return p?.display_name || p?.username || `user #${p?.user_id}`;
}

function avatarWithPresence(p, withPresence, cls = '') {
  const a = media.avatarFor(personName(p), p?.avatar, cls);
  if (!withPresence || !p?.presence) return a;
  const wrap = el('span', 'avatar-wrap');
  const dot = el('span', `presence ${p.presence.status}`);
  dot.title = app.presenceText(p);
  wrap.append(a, dot);
  return wrap;
}

function row(uid, kind) {
  const p = app.state.people.get(uid) || { user_id: uid };
  const li = el('li', `person-row ${kind}`);
  li.dataset.user = uid;
  const main = button('', { cls: 'person-main', action: 'person', data: { user: String(uid) }, label: `${personName(p)}: details` });
  const text = el('span', 'person-text');
  text.append(el('span', 'person-name', personName(p)));
  let line = '';
  if (kind === 'contact') {
    const pr = app.presenceText(p);
    line = [pr, p.status_text].filter(Boolean).join(' · ');
    li.dataset.presence = p.presence?.status || '';
  } else if (kind === 'incoming') line = `@${p.username || uid} wants to be your contact`;
  else if (kind === 'outgoing') line = `@${p.username || uid} · waiting for an answer`;
  else if (kind === 'blocked') line = `@${p.username || uid} · blocked`;
  text.append(el('span', 'person-line', line || `@${p.username || uid}`));
  main.append(avatarWithPresence(p, kind === 'contact'), text);
  li.append(main);
  const actions = el('span', 'person-actions');
  const d = { user: String(uid) };
  if (kind === 'incoming') {
    actions.append(
      button('Accept', { cls: 'primary small', action: 'accept', data: d, label: `Accept ${personName(p)}` }),
      button('Decline', { cls: 'small', action: 'decline', data: d, label: `Decline ${personName(p)}` }),
    );
  } else if (kind === 'outgoing') {
    actions.append(button('Cancel', { cls: 'small', action: 'cancel', data: d, label: `Cancel the request to ${personName(p)}` }));
  } else if (kind === 'contact') {
    actions.append(button('Message', { cls: 'small', action: 'message', data: d, label: `Message ${personName(p)}` }));
  } else if (kind === 'blocked') {
    actions.append(button('Unblock', { cls: 'small', action: 'unblock', data: d, label: `Unblock ${personName(p)}` }));
  }
  li.append(actions);
  return li;
}

function section(title, ids, kind, empty) {
  if (!ids.length && !empty) return null;
  const s = el('section', `contacts-section ${kind}`);
  s.setAttribute('aria-label', title);
  s.append(el('h3', '', ids.length ? `${title} (${ids.length})` : title));
  if (!ids.length) s.append(el('p', 'muted empty', empty));
  else {
    const ul = el('ul', 'person-list');
    ul.id = `${kind}-list`;
    ul.append(...ids.map((u) => row(u, kind)));
    s.append(ul);
  }
  return s;
}

/** The Contacts panel and its badge (incoming requests). */
export function render() {
  if (!app?.state.session) return;
  const c = app.state.contacts;
  const badge = $('#contacts-badge');
  badge.hidden = !c.incoming.length;
  badge.textContent = String(c.incoming.length);
  badge.setAttribute('aria-label', `${c.incoming.length} contact requests`);
  if (app.state.view !== 'contacts') return;
  const byName = (a, b) => personName(app.state.people.get(a)).localeCompare(personName(app.state.people.get(b)));
  const online = (u) => ({ online: 0, away: 1 })[app.state.people.get(u)?.presence?.status] ?? 2;
  const contacts = [...c.contacts].sort((a, b) => online(a) - online(b) || byName(a, b));
  // Rebuild only when something shown changed (keeps focus and clicks steady).
  const shown = (ids) => ids.map((u) => {
    const p = app.state.people.get(u) || {};
    return [u, p.display_name, p.username, p.status_text, p.avatar, app.presenceText(p)];
  });
  const sig = JSON.stringify([shown(c.incoming), shown(contacts), shown(c.outgoing), shown(c.blocked)]);
  const body = $('#contacts-body');
  if (body.dataset.sig === sig) {
    if (openPersonId) renderPerson();
    return;
  }
  body.dataset.sig = sig;
  const focused = document.activeElement?.closest('#contacts-body [data-user]') ? [document.activeElement.closest('li')?.dataset.user, document.activeElement.dataset.action] : null;
  body.replaceChildren(
    ...[
      section('Requests', c.incoming, 'incoming'),
      section('Contacts', contacts, 'contact', 'No contacts yet. Add someone by username above.'),
      section('Sent requests', c.outgoing, 'outgoing'),
      section('Blocked', c.blocked, 'blocked'),
    ].filter(Boolean),
  );
  if (focused) body.querySelector(`li[data-user="${focused[0]}"] [data-action="${focused[1]}"]`)?.focus();
  if (openPersonId) renderPerson();
}

// ---- actions -------------------------------------------------------------------------------

const FRAMES = {
  accept: 'accept_contact',
  decline: 'decline_contact',
  cancel: 'cancel_contact',
  remove: 'remove_contact',
  block: 'block_user',
  unblock: 'unblock_user',
  request: 'request_contact',
};

const DONE = {
  accept: (n) => `${n} is now your contact.`,
  decline: (n) => `Declined ${n}'s request.`,
  cancel: (n) => `Cancelled the request to ${n}.`,
  remove: (n) => `${n} is no longer your contact.`,
  block: (n) => `${n} is blocked.`,
  unblock: (n) => `${n} is no longer blocked.`,
};

async function act(action, uid) {
  const p = app.state.people.get(uid) || { user_id: uid };
  const name = personName(p);
  if (action === 'remove') {
    const ok = await confirmDialog({
      title: `Remove ${name} from your contacts?`,
      text: 'You can still write to each other unless one of you takes messages from contacts only.',
      confirm: 'Remove',
      danger: true,
    });
    if (!ok) return;
  }
  if (action === 'block') {
    const ok = await confirmDialog({
      title: `Block ${name}?`,
      text: 'Neither of you can write to the other or send a contact request, and they leave your contacts. You can unblock later.',
      confirm: 'Block',
      danger: true,
    });
    if (!ok) return;
  }
  try {
    const r = await app.request({ type: FRAMES[action], user_id: uid });
    if (action === 'request') {
      toast(r.relation === 'contact' ? `${name} had asked you too: you are now contacts.` : `Asked ${name} to be your contact.`);
    } else toast(DONE[action](name));
    await loadContacts();
  } catch (e) {
    toast(plain(e, action === 'request' ? 'contact' : 'request'));
  }
}

async function requestByName(value) {
  const [username, bad] = app.checkUsername(value);
  if (bad) return toast(bad);
  if (username === app.state.session.username) return toast('That is you.');
  try {
    const r = await app.request({ type: 'request_contact', username });
    $('#add-contact-username').value = '';
    app.ensurePerson(r.user_id, true);
    toast(r.relation === 'contact' ? `${username} had asked you too: you are now contacts.` : `Asked ${username} to be your contact.`);
    await loadContacts();
  } catch (e) {
    toast(plain(e, 'contact'));
  }
}

function onClick(e) {
  const b = e.target.closest('button[data-action]');
  if (!b) return;
  const uid = Number(b.dataset.user);
  const action = b.dataset.action;
  if (action === 'person') return openPerson(uid);
  if (action === 'message') {
    $('#person-dialog').close();
    return app.openDirect(uid);
  }
  if (FRAMES[action]) act(action, uid);
}

// ---- a person's card -----------------------------------------------------------------------

let openPersonId = null;

export function openPerson(uid) {
  openPersonId = uid;
  app.ensurePerson(uid, true);
  renderPerson();
  const d = $('#person-dialog');
  if (!d.dataset.closeWired) {
    d.dataset.closeWired = '1';
    d.addEventListener('close', () => (openPersonId = null));
  }
  openDialog(d);
}

function renderPerson() {
  const uid = openPersonId;
  if (!uid) return;
  const p = app.state.people.get(uid) || { user_id: uid };
  const rel = relationOf(uid);
  const body = $('#person-body');
  const sig = JSON.stringify([uid, rel, p.display_name, p.username, p.status_text, p.avatar, app.presenceText(p)]);
  if (body.dataset.sig === sig && body.childElementCount) return;
  body.dataset.sig = sig;
  const head = el('div', 'person-card');
  head.append(avatarWithPresence(p, rel === 'contact', 'large'));
  const text = el('div', 'person-card-text');
  const h = el('h2', '', personName(p));
  h.id = 'person-title';
  text.append(h, el('p', 'muted', `@${p.username || uid}`));
  if (p.status_text) text.append(el('p', 'status-text', p.status_text));
  if (rel === 'contact' && p.presence) {
    const pr = el('p', 'presence-line', app.presenceText(p));
    pr.dataset.presence = p.presence.status;
    text.append(pr);
  }
  head.append(text);
  const words = {
    none: 'Not a contact.',
    outgoing: 'You asked to be contacts; waiting for an answer.',
    incoming: 'Wants to be your contact.',
    contact: 'A contact.',
    blocked: 'You blocked this person.',
  };
  const d = { user: String(uid) };
  const actions = el('div', 'dialog-actions wrap');
  if (rel !== 'blocked') actions.append(button('Message', { cls: 'primary', action: 'message', data: d }));
  if (rel === 'none') actions.append(button('Add contact', { action: 'request', data: d }));
  if (rel === 'outgoing') actions.append(button('Cancel request', { action: 'cancel', data: d }));
  if (rel === 'incoming') {
    actions.append(button('Accept', { cls: 'primary', action: 'accept', data: d }), button('Decline', { action: 'decline', data: d }));
  }
  if (rel === 'contact') actions.append(button('Remove contact', { action: 'remove', data: d }));
  if (rel === 'blocked') actions.append(button('Unblock', { action: 'unblock', data: d }));
  else actions.append(button('Block', { cls: 'danger-link', action: 'block', data: d }));
  body.replaceChildren(head, el('p', 'muted relation', words[rel]), actions);
}

// ---- one's own profile -----------------------------------------------------------------------

let settings = null;

export async function openProfile() {
  const meP = app.state.people.get(app.me()) || {};
  $('#profile-username').textContent = `@${app.state.session.username}`;
  $('#profile-display').value = meP.display_name || app.state.session.username;
  $('#profile-status').value = meP.status_text || '';
  $('#profile-error').textContent = '';
  renderProfileAvatar();
  openDialog($('#profile-dialog'));
  try {
    const [p, s] = await Promise.all([app.request({ type: 'get_profile' }), app.request({ type: 'get_settings' })]);
    app.putPerson(p);
    settings = s;
    $('#profile-dm').value = s.dm_policy || 'anyone';
    // Fill in what the server says unless the user started typing.
    if (document.activeElement !== $('#profile-display')) $('#profile-display').value = p.display_name;
    if (document.activeElement !== $('#profile-status')) $('#profile-status').value = p.status_text;
    renderProfileAvatar();
  } catch (e) {
    $('#profile-error').textContent = plain(e);
  }
}

function renderProfileAvatar() {
  const p = app.state.people.get(app.me()) || {};
  $('#profile-avatar').replaceChildren(media.avatarFor(p.display_name || app.state.session.username, p.avatar, 'large'));
  $('#avatar-remove').hidden = !p.avatar;
}

async function saveProfile() {
  const p = app.state.people.get(app.me()) || {};
  const display = $('#profile-display').value.trim();
  const status = $('#profile-status').value.trim();
  const err = $('#profile-error');
  if (!display) return (err.textContent = 'A display name cannot be empty.');
  const change = { type: 'update_profile' };
  if (display !== p.display_name) change.display_name = display;
  if (status !== (p.status_text || '')) change.status_text = status;
  const btn = $('#profile-save');
  btn.disabled = true;
  err.textContent = '';
  try {
    if (change.display_name !== undefined || change.status_text !== undefined) {
      app.putPerson(await app.request(change));
    }
    const dm = $('#profile-dm').value;
    if (settings && dm !== settings.dm_policy) settings = await app.request({ type: 'update_settings', dm_policy: dm });
    app.renderMe();
    app.invalidate('list', 'header', 'messages', 'contacts');
    $('#profile-dialog').close();
    toast('Profile saved.');
  } catch (e) {
    err.textContent = plain(e);
  } finally {
    btn.disabled = false;
  }
}

async function uploadAvatar(file) {
  const err = $('#profile-error');
  if (!file.type.startsWith('image/')) return (err.textContent = 'Pick an image for your picture.');
  const bar = $('#avatar-progress');
  bar.hidden = false;
  bar.value = 0;
  err.textContent = '';
  try {
    const info = await api.uploadMedia(app.token(), file, {
      onProgress: (sent, total) => {
        bar.max = total || file.size || 1;
        bar.value = sent;
      },
    });
    await setAvatar(info.id);
  } catch (e) {
    err.textContent = plain(e, 'media');
  } finally {
    bar.hidden = true;
  }
}

async function setAvatar(id) {
  const err = $('#profile-error');
  try {
    app.putPerson(await app.request({ type: 'update_profile', avatar: id }));
    renderProfileAvatar();
    app.renderMe();
    app.invalidate('list', 'header', 'contacts');
  } catch (e) {
    err.textContent = plain(e);
  }
}

