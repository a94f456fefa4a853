// Groups and broadcasts: creating a group, its details (members and roles, renaming, adding
// and removing members, leaving, transferring, deleting — each offered only to the roles
// protocol.md allows), the group changes shown in the timeline, and the broadcast dialog.

import { $, el, button, toast, plain, openDialog, confirmDialog, fullTime } from './ui.js';
import * as media from './media.js';
import { attachSuggestions } from './search.js';

let app = null;

export function init(a) {
  app = a;
  $('#new-group-btn').addEventListener('click', openNewGroup);
  $('#broadcast-btn').addEventListener('click', openBroadcast);
  $('#group-new-form').addEventListener('submit', (e) => {
    e.preventDefault();
    createGroup();
  });
  attachSuggestions($('#group-usernames'), { list: true });
  $('#group-body').addEventListener('click', onGroupClick);
  $('#group-body').addEventListener('change', onGroupChangeInput);
  $('#group-body').addEventListener('submit', onGroupSubmit);
  $('#group-dialog').addEventListener('close', () => (openGroupId = null));
  $('#broadcast-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sendBroadcast();
  });
  $('#broadcast-form').addEventListener('input', () => {
    if (!bc.sending) bc.cmid = null; // a changed broadcast is a new one
  });
  $('#broadcast-all').addEventListener('click', () => {
    const boxes = [...document.querySelectorAll('#broadcast-targets input[type=checkbox]')];
    const all = boxes.every((b) => b.checked);
    boxes.forEach((b) => (b.checked = !all));
    bc.cmid = null;
  });
}

// ---- the state of groups ---------------------------------------------------------------------

/** Every group the user is a member of; a group conversation missing from it was left. */
export async function loadGroups() {
  const r = await app.request({ type: 'list_groups' });
  const seen = new Set();
  for (const g of r.groups || []) {
    app.state.groups.set(g.conversation, g);
    seen.add(g.conversation);
    const c = app.ensureConv(g.conversation);
    c.left = false;
  }
  for (const c of app.state.convs.values()) if (c.kind === 'group' && !seen.has(c.id)) c.left = true;
  app.persist();
  app.invalidate('list', 'header', 'messages', 'groups');
}

const inFlight = new Map();
/** Reads one group again (after a change, or when first seen). */
export function fetchGroup(id) {
  if (inFlight.has(id)) return inFlight.get(id);
  const p = app
    .request({ type: 'get_group', group: id })
    .then(
      (r) => {
        app.state.groups.set(id, r.group);
        const c = app.ensureConv(id);
        c.left = false;
      },
      (e) => {
        if (e.code === 'not_found') {
          const c = app.state.convs.get(id);
          if (c) c.left = true;
        }
      },
    )
    .finally(() => {
      inFlight.delete(id);
      app.persist();
      app.invalidate('list', 'header', 'messages', 'groups');
    });
  inFlight.set(id, p);
  return p;
}

/** A group change in the log: follow it (membership, roles, name). */
export function onGroupChange(c, m) {
  const ch = m.refers.change || {};
  const aboutMe = ch.user === app.me();
  if (ch.change === 'deleted' || (aboutMe && (ch.change === 'member_removed' || ch.change === 'member_left'))) {
    c.left = true;
    app.persist();
    app.invalidate('header', 'messages', 'groups');
    return;
  }
  if (ch.user) app.ensurePerson(ch.user);
  fetchGroup(c.id);
}

const ROLE = { owner: 'owner', admin: 'admin', member: 'member' };

/** The words for a group change, e.g. "alice added bob". */
export function systemText(m) {
  const ch = m.refers?.change || {};
  const actor = who(m.sender, true);
  const user = ch.user !== undefined ? who(ch.user, false) : '';
  switch (ch.change) {
    case 'created':
      return `${actor} created the group`;
    case 'updated':
      return `${actor} updated the group's name or description`;
    case 'member_added':
      return `${actor} added ${user}`;
    case 'member_removed':
      return `${actor} removed ${user}`;
    case 'member_left':
      return `${who(ch.user, true)} left the group`;
    case 'role_changed':
      return `${actor} made ${user} ${ch.role === 'admin' ? 'an admin' : `a ${ROLE[ch.role] || ch.role}`}`;
    case 'owner_changed':
      return `${actor} made ${user} the owner`;
    case 'deleted':
      return `${actor} deleted the group`;
    default:
      return `${actor} changed the group`;
  }
}

function who(uid, subject) {
  if (uid === app.me()) return subject ? 'You' : 'you';
  return app.nameOf(uid);
}

function myRole(g) {
  return g?.members.find((m) => m.user_id === app.me())?.role || null;
}

/** Usernames typed (comma or space separated) to user ids; throws with words for people. */
async function resolveNames(text) {
  const names = text.split(/[\s,;]+/).map((s) => s.trim().replace(/^@/, '')).filter(Boolean);
  const ids = [];
  for (const n of names) {
    const [username, bad] = app.checkUsername(n);
    if (bad) throw new Error(`“${n}”: ${bad}`);
    try {
      const p = await app.request({ type: 'get_profile', username });
      app.putPerson(p);
      ids.push(p.user_id);
    } catch (e) {
      throw new Error(e.code === 'not_found' ? `There is no user named ${username}.` : plain(e));
    }
  }
  return ids;
}

// ---- a new group -----------------------------------------------------------------------------

function contactChecks(container, name) {
  const ids = app.state.contacts.contacts;
  if (!ids.length) {
    container.replaceChildren(el('p', 'muted', 'No contacts yet: add members by username below.'));
    return;
  }
  container.replaceChildren(
    ...ids.map((u) => {
      const p = app.state.people.get(u) || {};
      const label = el('label', 'check');
      const box = el('input');
      box.type = 'checkbox';
      box.name = name;
      box.value = String(u);
      label.append(box, media.avatarFor(p.display_name || p.username || '?', p.avatar, 'small'), el('span', '', p.display_name || p.username || `user #${u}`));
      return label;
    }),
  );
}

function openNewGroup() {
  $('#group-new-form').reset();
  $('#group-new-error').textContent = '';
  contactChecks($('#group-contacts-list'), 'member');
  openDialog($('#group-new-dialog'));
  $('#group-name').focus();
}

async function createGroup() {
  const err = $('#group-new-error');
  const name = $('#group-name').value.trim();
  if (!name) return (err.textContent = 'A group needs a name.');
  const btn = $('#group-create');
  btn.disabled = true;
  err.textContent = '';
  try {
    const ids = new Set([...document.querySelectorAll('#group-contacts-list input:checked')].map((b) => Number(b.value)));
    for (const u of await resolveNames($('#group-usernames').value)) ids.add(u);
    ids.delete(app.me());
    const r = await app.request({
      type: 'create_group',
      name,
      description: $('#group-description').value.trim(),
      members: [...ids],
    });
    app.state.groups.set(r.group.conversation, r.group);
    app.ensureConv(r.group.conversation).lastTs = r.group.created_ms || Date.now();
    $('#group-new-dialog').close();
    app.showView('chats');
    app.select(r.group.conversation);
  } catch (e) {
    err.textContent = e instanceof Error && !e.code ? e.message : plain(e, 'group');
  } finally {
    btn.disabled = false;
  }
}

// ---- the details of a group ----------------------------------------------------------------

let openGroupId = null;

export function openGroupInfo(id) {
  openGroupId = id;
  renderGroup();
  openDialog($('#group-dialog'));
  fetchGroup(id);
}

export function render() {
  if (openGroupId) renderGroup();
}

const RANK = { owner: 0, admin: 1, member: 2 };

function renderGroup() {
  const id = openGroupId;
  const body = $('#group-body');
  const g = app.state.groups.get(id);
  const c = app.state.convs.get(id);
  // Keep what is being typed in the open forms.
  const typing = body.contains(document.activeElement) && document.activeElement.matches('input[type=text], input:not([type]), textarea');
  if (typing) return;
  if (!g || c?.left) {
    const h = el('h2', '', g?.name || 'Group');
    h.id = 'group-title';
    body.replaceChildren(h, el('p', 'muted', c?.left ? 'You are no longer a member of this group.' : 'Loading…'), closeRow());
    return;
  }
  const mine = myRole(g);
  const canEdit = mine === 'owner' || mine === 'admin';
  const head = el('div', 'person-card');
  head.append(media.avatarFor(g.name, null, 'large group'));
  const text = el('div', 'person-card-text');
  const h = el('h2', '', g.name);
  h.id = 'group-title';
  text.append(h);
  if (g.description) text.append(el('p', 'status-text', g.description));
  text.append(el('p', 'muted', `${g.members.length} member${g.members.length === 1 ? '' : 's'} · created ${fullTime(g.created_ms)}`));
  head.append(text);
  const parts = [head];

  if (canEdit) {
    const form = el('form', 'group-edit');
    form.dataset.form = 'update';
    const nameLabel = el('label', '', 'Name');
    nameLabel.htmlFor = 'group-edit-name';
    const name = el('input');
    name.id = 'group-edit-name';
    name.maxLength = 64;
    name.required = true;
    name.value = g.name;
    const descLabel = el('label', '', 'Description');
    descLabel.htmlFor = 'group-edit-description';
    const desc = el('textarea');
    desc.id = 'group-edit-description';
    desc.maxLength = 500;
    desc.rows = 2;
    desc.value = g.description;
    const save = el('button', '', 'Save details');
    save.type = 'submit';
    form.append(nameLabel, name, descLabel, desc, save);
    const details = el('details', 'group-edit-box');
    details.append(el('summary', '', 'Edit name and description'), form);
    parts.push(details);
  }

  const members = [...g.members].sort(
    (a, b) => RANK[a.role] - RANK[b.role] || app.nameOf(a.user_id).localeCompare(app.nameOf(b.user_id)),
  );
  const list = el('ul', 'person-list members');
  list.id = 'group-members';
  for (const m of members.slice(0, 300)) list.append(memberRow(g, m, mine));
  const membersSection = el('section', 'contacts-section');
  membersSection.append(el('h3', '', `Members (${g.members.length})`), list);
  if (members.length > 300) membersSection.append(el('p', 'muted', `and ${members.length - 300} more`));
  parts.push(membersSection);

  if (canEdit) {
    const form = el('form', 'open-form add-members');
    form.dataset.form = 'add';
    const input = el('input');
    input.id = 'group-add-usernames';
    input.placeholder = 'Usernames to add';
    input.setAttribute('aria-label', 'Usernames to add to the group');
    input.setAttribute('list', 'user-suggestions');
    input.autocapitalize = 'none';
    input.spellcheck = false;
    const add = el('button', 'primary', 'Add');
    add.type = 'submit';
    form.append(input, add);
    parts.push(form);
    attachSuggestions(input, { list: true });
  }

  const actions = el('div', 'dialog-actions wrap');
  if (mine === 'owner') {
    const leave = button('Leave group', { action: 'leave', title: 'Make someone else the owner first' });
    leave.disabled = true;
    actions.append(leave, button('Delete group', { cls: 'danger', action: 'delete' }));
  } else {
    actions.append(button('Leave group', { cls: 'danger', action: 'leave' }));
  }
  actions.append(button('Close', { data: { close: '1' } }));
  parts.push(actions);
  if (mine === 'owner') parts.push(el('p', 'muted small-print', 'To leave, first make another member the owner.'));
  body.replaceChildren(...parts);
}

function closeRow() {
  const actions = el('div', 'dialog-actions');
  actions.append(button('Close', { data: { close: '1' } }));
  return actions;
}

function memberRow(g, m, mine) {
  const p = app.state.people.get(m.user_id) || {};
  const name = app.nameOf(m.user_id);
  const li = el('li', 'person-row member');
  li.dataset.user = m.user_id;
  li.dataset.role = m.role;
  const main = el('span', 'person-main');
  const text = el('span', 'person-text');
  text.append(el('span', 'person-name', m.user_id === app.me() ? `${p.display_name || app.state.session.username} (you)` : name));
  text.append(el('span', 'person-line', p.username ? `@${p.username}` : ''));
  main.append(media.avatarFor(p.display_name || p.username || name, p.avatar), text);
  li.append(main);
  const actions = el('span', 'person-actions');
  const role = el('span', `role role-${m.role}`, m.role);
  const d = { user: String(m.user_id) };
  if (m.user_id !== app.me() && mine === 'owner' && m.role !== 'owner') {
    const select = el('select', 'role-select');
    select.setAttribute('aria-label', `Role of ${name}`);
    select.dataset.user = String(m.user_id);
    for (const r of ['member', 'admin']) {
      const o = el('option', '', r === 'admin' ? 'Admin' : 'Member');
      o.value = r;
      o.selected = m.role === r;
      select.append(o);
    }
    actions.append(select);
    actions.append(button('Make owner', { cls: 'small', action: 'transfer', data: d, label: `Make ${name} the owner` }));
    actions.append(button('Remove', { cls: 'small', action: 'remove', data: d, label: `Remove ${name}` }));
  } else {
    actions.append(role);
    if (m.user_id !== app.me() && mine === 'admin' && m.role === 'member') {
      actions.append(button('Remove', { cls: 'small', action: 'remove', data: d, label: `Remove ${name}` }));
    }
  }
  li.append(actions);
  p.username || app.ensurePerson(m.user_id);
  return li;
}

async function groupCall(frame, done) {
  try {
    const r = await app.request({ ...frame, group: openGroupId });
    if (r.group) app.state.groups.set(r.group.conversation, r.group);
    if (done) toast(done);
    app.persist();
    app.invalidate('header', 'list');
    renderGroup();
    return true;
  } catch (e) {
    toast(plain(e, 'group'));
    return false;
  }
}

async function onGroupClick(e) {
  const b = e.target.closest('button[data-action]');
  if (!b) return;
  const id = openGroupId;
  const g = app.state.groups.get(id);
  const uid = Number(b.dataset.user);
  const name = uid ? app.nameOf(uid) : '';
  switch (b.dataset.action) {
    case 'remove':
      if (await confirmDialog({ title: `Remove ${name} from ${g?.name}?`, text: 'They keep what they have read, and see nothing after.', confirm: 'Remove', danger: true })) {
        groupCall({ type: 'remove_member', user_id: uid }, `${name} was removed.`);
      }
      break;
    case 'transfer':
      if (await confirmDialog({ title: `Make ${name} the owner?`, text: 'You become an admin. Only the owner can set roles, hand the group on or delete it.', confirm: 'Make owner' })) {
        groupCall({ type: 'transfer_group', user_id: uid }, `${name} is the owner now.`);
      }
      break;
    case 'leave':
      if (await confirmDialog({ title: `Leave ${g?.name}?`, text: 'You will not see new messages unless someone adds you again.', confirm: 'Leave', danger: true })) {
        if (await groupCall({ type: 'leave_group' }, 'You left the group.')) markLeft(id);
      }
      break;
    case 'delete':
      if (await confirmDialog({ title: `Delete ${g?.name}?`, text: 'The group ends for every member. This cannot be undone.', confirm: 'Delete group', danger: true })) {
        if (await groupCall({ type: 'delete_group' }, 'The group was deleted.')) markLeft(id);
      }
      break;
    default:
      break;
  }
}

function markLeft(id) {
  const c = app.state.convs.get(id);
  if (c) c.left = true;
  app.persist();
  app.invalidate('header', 'messages', 'list');
  $('#group-dialog').close();
}

function onGroupChangeInput(e) {
  const s = e.target.closest('select.role-select');
  if (!s) return;
  const uid = Number(s.dataset.user);
  groupCall({ type: 'set_role', user_id: uid, role: s.value }, `${app.nameOf(uid)} is ${s.value === 'admin' ? 'an admin' : 'a member'} now.`);
}

async function onGroupSubmit(e) {
  e.preventDefault();
  const form = e.target;
  if (form.dataset.form === 'update') {
    const name = form.querySelector('#group-edit-name').value.trim();
    const description = form.querySelector('#group-edit-description').value.trim();
    if (!name) return toast('A group needs a name.');
    document.activeElement?.blur();
    groupCall({ type: 'update_group', name, description }, 'Saved.');
  } else if (form.dataset.form === 'add') {
    const input = form.querySelector('input');
    try {
      const ids = await resolveNames(input.value);
      if (!ids.length) return;
      input.value = '';
      input.blur();
      groupCall({ type: 'add_members', user_ids: ids }, ids.length === 1 ? `${app.nameOf(ids[0])} was added.` : `${ids.length} members were added.`);
    } catch (err) {
      toast(err.code ? plain(err) : err.message);
    }
  }
}

// ---- broadcast -------------------------------------------------------------------------------

const bc = { cmid: null, sending: false };

function openBroadcast() {
  $('#broadcast-results').replaceChildren();
  $('#broadcast-error').textContent = '';
  bc.cmid = null;
  const box = $('#broadcast-targets-list');
  const label = (value, kind, text, avatar) => {
    const l = el('label', 'check');
    const i = el('input');
    i.type = 'checkbox';
    i.name = kind;
    i.value = value;
    l.append(i, avatar, el('span', '', text));
    return l;
  };
  const people = app.state.contacts.contacts.map((u) => {
    const p = app.state.people.get(u) || {};
    const n = p.display_name || p.username || `user #${u}`;
    return label(String(u), 'user', n, media.avatarFor(n, p.avatar, 'small'));
  });
  const gs = [...app.state.groups.values()]
    .filter((g) => !app.state.convs.get(g.conversation)?.left)
    .map((g) => label(g.conversation, 'group', g.name, media.avatarFor(g.name, null, 'small group')));
  box.replaceChildren(...people, ...gs);
  if (!people.length && !gs.length) box.append(el('p', 'muted', 'Add contacts or join groups to broadcast to them.'));
  $('#broadcast-all').hidden = people.length + gs.length < 2;
  openDialog($('#broadcast-dialog'));
  $('#broadcast-body').focus();
}

function targetName(conv) {
  const c = app.ensureConv(conv);
  return app.convTitle(c);
}

async function sendBroadcast() {
  const err = $('#broadcast-error');
  const body = $('#broadcast-body').value.trim();
  const users = [...document.querySelectorAll('#broadcast-targets-list input[name=user]:checked')].map((i) => Number(i.value));
  const grps = [...document.querySelectorAll('#broadcast-targets-list input[name=group]:checked')].map((i) => i.value);
  if (!body) return (err.textContent = 'Write the message first.');
  if (!users.length && !grps.length) return (err.textContent = 'Pick at least one contact or group.');
  err.textContent = '';
  bc.cmid ||= crypto.randomUUID();
  bc.sending = true;
  const btn = $('#broadcast-send');
  btn.disabled = true;
  try {
    const r = await app.request({ type: 'broadcast', client_msg_id: bc.cmid, body, users, groups: grps });
    const results = r.results || [];
    const ok = results.filter((x) => x.seq !== undefined && x.seq !== null);
    $('#broadcast-results').replaceChildren(
      ...results.map((x) => {
        const li = el('li', x.error ? 'bad' : 'good');
        li.append(el('span', 'mark', x.error ? '✗' : '✓'), el('span', '', targetName(x.conversation)));
        if (x.error) li.append(el('span', 'muted', ` — ${plain(x.error, 'direct')}`));
        return li;
      }),
    );
    const failed = results.length - ok.length;
    err.textContent = failed ? `${failed} of ${results.length} could not be sent. Sending again sends only what is missing.` : '';
    if (!failed) {
      toast(`Sent to ${ok.length} conversation${ok.length === 1 ? '' : 's'}.`);
      $('#broadcast-body').value = '';
      bc.cmid = null;
    }
    for (const x of ok) app.sync(x.conversation, x.seq).catch(() => {});
    app.refreshConversations().catch(() => {});
  } catch (e) {
    err.textContent = plain(e);
  } finally {
    bc.sending = false;
    btn.disabled = false;
  }
}
