// Small DOM helpers shared by the modules of the web client: elements built with textContent
// (text from users never goes through innerHTML), toasts, dialogs, words for errors, times.

export const $ = (sel, root = document) => root.querySelector(sel);

/** An element with a class and text (set with textContent). */
export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

/** A `<button type="button">` with a `data-action`, an optional accessible label and title. */
export function button(text, { cls = '', action, label, title, data = {} } = {}) {
  const b = el('button', cls, text);
  b.type = 'button';
  if (action) b.dataset.action = action;
  for (const [k, v] of Object.entries(data)) b.dataset[k] = v;
  if (label) b.setAttribute('aria-label', label);
  if (title) b.title = title;
  return b;
}

let toastTimer = null;
/** A short message at the top of the screen; click to dismiss. */
export function toast(text) {
  const t = $('#toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), 6000);
}

/** Words for people, from an error's stable code. `context` picks the wording of some codes. */
export function plain(err, context = '') {
  switch (err.code) {
    case 'offline':
      return 'You are offline. Try again when the connection is back.';
    case 'aborted':
      return 'Cancelled.';
    case 'unauthorized':
      return context === 'login' ? 'Wrong username or password.' : 'Your session has ended. Please log in again.';
    case 'forbidden':
      if (context === 'direct' || context === 'send') {
        return err.message && !/member/.test(err.message)
          ? `This person cannot be messaged: ${err.message}.`
          : 'You are not a member of that conversation.';
      }
      if (context === 'contact') return 'This person cannot be asked: a block stands between you.';
      if (context === 'group') return 'Your role in this group does not allow that.';
      return err.message ? `Not allowed: ${err.message}.` : 'Not allowed.';
    case 'not_found':
      if (context === 'group') return 'That group is gone, or you are no longer a member.';
      if (context === 'search') return 'Search is not available on this server yet.';
      if (context === 'media') return 'Files are not available on this server yet.';
      if (context === 'request') return 'There is no such request any more.';
      return 'There is no user with that name.';
    case 'conflict':
      if (context === 'group') return 'The group is full.';
      return 'That username is already taken. Pick another one.';
    case 'too_large':
      return context === 'media' ? 'That file is too large for this server.' : 'That message is too long.';
    case 'quota_exceeded':
      return 'You have used all the storage this server gives you for files.';
    case 'unsupported_media_type':
      return 'This server does not take files of that type.';
    case 'too_many_pixels':
      return 'That image has too many pixels for this server.';
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

// ---- times and sizes ---------------------------------------------------------------------

export const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long' });
const shortDayFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

export function dayLabel(ts) {
  const d = new Date(ts);
  const today = new Date();
  const yesterday = new Date(Date.now() - 86400000);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return dayFmt.format(d);
}

/** A time for lists: the hour today, else the day. */
export function shortTime(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  return d.toDateString() === new Date().toDateString() ? timeFmt.format(d) : shortDayFmt.format(d);
}

export const fullTime = (ts) => (ts ? fullFmt.format(new Date(ts)) : '');

/** "just now", "5 min ago", "3 h ago", else a date. */
export function ago(ts) {
  const s = Math.max(0, (Date.now() - ts) / 1000);
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `on ${shortDayFmt.format(new Date(ts))}`;
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export const byteLength = (s) => new TextEncoder().encode(s).length;

// ---- avatars -----------------------------------------------------------------------------

export function hue(s) {
  let h = 0;
  for (const ch of s) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

/** A round avatar with the first letter of the name on a colour of its own. */
export function initialsAvatar(name, cls = '') {
  const first = Array.from(name.trim())[0] || '?';
  const a = el('span', `avatar ${cls}`.trim(), first.toUpperCase());
  a.setAttribute('aria-hidden', 'true');
  a.style.backgroundColor = `hsl(${hue(name)} 55% 45%)`;
  return a;
}

// ---- dialogs -----------------------------------------------------------------------------

/** Opens a `<dialog>` as a modal; closes on Escape (native) and on a click on its backdrop. */
export function openDialog(d) {
  if (!d.dataset.wired) {
    d.dataset.wired = '1';
    d.addEventListener('click', (e) => {
      if (e.target === d) d.close('cancel');
    });
    d.addEventListener('click', (e) => {
      if (e.target.closest('[data-close]')) d.close('cancel');
    });
  }
  if (!d.open) d.showModal();
}

/** Asks before something that cannot be undone. Resolves true when confirmed. */
export function confirmDialog({ title, text, confirm = 'OK', danger = false }) {
  const d = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text || '';
  const ok = $('#confirm-ok');
  ok.textContent = confirm;
  ok.className = danger ? 'danger' : 'primary';
  return new Promise((resolve) => {
    const done = () => {
      d.removeEventListener('close', done);
      resolve(d.returnValue === 'ok');
    };
    d.returnValue = '';
    d.addEventListener('close', done);
    openDialog(d);
    ok.focus();
  });
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}
