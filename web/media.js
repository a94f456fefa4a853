// Media: signed links (cached per id until near expiry), attachments shown in messages
// (image thumbnails that open the full image, video and audio players, file links), avatars,
// and the uploads of the composer with their progress.

import * as api from './api.js';
import { $, el, button, formatBytes, initialsAvatar, openDialog, plain } from './ui.js';

let tokenOf = () => null;
/** `token()` returns the session's bearer token. */
export function configure({ token }) {
  tokenOf = token;
}

// ---- links ---------------------------------------------------------------------------------

const links = new Map(); // id -> {value?, promise?, until}
const REFRESH_BEFORE_MS = 5 * 60 * 1000;
const RETRY_FAILED_MS = 60 * 1000;

/** A cached link that is still good, or null. */
export function cachedLink(id) {
  const l = links.get(id);
  return l?.value && l.until > Date.now() ? l.value : null;
}

/** Signed links for a media id: `{url, thumbnails: {s?, m?, l?}, expires_ms}`. */
export function link(id) {
  const now = Date.now();
  const l = links.get(id);
  if (l && l.until > now) return l.value ? Promise.resolve(l.value) : l.promise;
  const promise = fetchLink(id).then(
    (value) => {
      const expires = Number(value.expires_ms) || now + 3600 * 1000;
      // expires_ms is a time (ms since the epoch); a small number would be a duration.
      const at = expires > 1e12 ? expires : now + expires;
      links.set(id, { value, until: at - REFRESH_BEFORE_MS });
      return value;
    },
    (e) => {
      links.set(id, { promise: Promise.reject(e), until: Date.now() + RETRY_FAILED_MS });
      links.get(id).promise.catch(() => {});
      throw e;
    },
  );
  links.set(id, { promise, until: now + 30000 });
  return promise;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const LINK_RETRIES_MS = [250, 750, 1500, 3000];

/**
 * Asks for the links, trying again a few times on `not_found` too: a message can arrive
 * before the node that answers here has learned that its attachments are now readable by
 * the conversation's members.
 */
async function fetchLink(id) {
  for (let i = 0; ; i++) {
    try {
      return await api.mediaLink(tokenOf(), id);
    } catch (e) {
      if (!(e.retry || e.code === 'not_found') || i >= LINK_RETRIES_MS.length) throw e;
      await sleep(e.retryAfterMs ?? LINK_RETRIES_MS[i]);
    }
  }
}

export function forgetLinks() {
  links.clear();
}

// ---- avatars -----------------------------------------------------------------------------

/** A person's avatar: their picture when they have one (through a signed link), else initials. */
export function avatarFor(name, avatarId, cls = '') {
  const a = initialsAvatar(name || '?', cls);
  if (!avatarId) return a;
  const put = (l) => {
    const src = l.thumbnails?.s || l.thumbnails?.m || l.url;
    if (!src) return;
    const img = el('img');
    img.alt = '';
    img.src = src;
    img.decoding = 'async';
    img.onerror = () => img.remove();
    a.replaceChildren(img);
    a.classList.add('has-img');
  };
  const cached = cachedLink(avatarId);
  if (cached) put(cached);
  else link(avatarId).then(put, () => {});
  return a;
}

// ---- attachments in messages -------------------------------------------------------------

const KIND_WORD = { image: 'Photo', video: 'Video', audio: 'Audio', file: 'File' };

/** A one-line description of attachments, for previews and notifications. */
export function describe(attachments) {
  if (!attachments?.length) return '';
  if (attachments.length === 1) {
    const a = attachments[0];
    return a.kind === 'file' ? `📎 ${a.name}` : `📎 ${KIND_WORD[a.kind] || 'File'}`;
  }
  return `📎 ${attachments.length} files`;
}

function thumbSize(a, size) {
  return (a.thumbnails || []).find((t) => t.size === size);
}

/** The element showing one message's attachments. */
export function attachmentsEl(list) {
  const box = el('div', 'attachments');
  for (const a of list) box.append(attachmentEl(a));
  return box;
}

function attachmentEl(a) {
  const name = a.name || 'file';
  const kind = a.kind || 'file';
  if (kind === 'image') {
    const b = button('', { cls: 'att att-image', action: 'view-image', label: `Open image ${name}` });
    b.dataset.media = a.id;
    b.dataset.name = name;
    const t = thumbSize(a, 'm') || (a.width ? { width: a.width, height: a.height } : null);
    const img = el('img');
    img.alt = name;
    if (t?.width && t?.height) {
      const scale = Math.min(1, 280 / t.width, 280 / t.height);
      img.width = Math.max(1, Math.round(t.width * scale));
      img.height = Math.max(1, Math.round(t.height * scale));
      // The place is held while the link and the picture load: nothing below it moves then
      // (a search hit or a quote scrolled into view stays in view).
      b.classList.add('sized');
      b.style.width = `min(${img.width}px, 60vw)`;
      b.style.aspectRatio = `${img.width} / ${img.height}`;
    }
    b.append(img);
    fill(a, b, (l) => {
      img.src = l.thumbnails?.m || l.thumbnails?.l || l.url;
    });
    return b;
  }
  if (kind === 'video') {
    const fig = el('figure', 'att att-video');
    const v = el('video');
    v.controls = true;
    v.preload = 'metadata';
    v.playsInline = true;
    v.setAttribute('aria-label', name);
    if (a.width && a.height) {
      v.width = Math.min(320, a.width);
    }
    fig.append(v, el('figcaption', '', `${name} · ${formatBytes(a.size)}`));
    fill(a, fig, (l) => {
      const poster = l.thumbnails?.l || l.thumbnails?.m;
      if (poster) v.poster = poster;
      v.src = l.url;
    });
    return fig;
  }
  if (kind === 'audio') {
    const fig = el('figure', 'att att-audio');
    const au = el('audio');
    au.controls = true;
    au.preload = 'none';
    au.setAttribute('aria-label', name);
    fig.append(au, el('figcaption', '', `${name} · ${formatBytes(a.size)}`));
    fill(a, fig, (l) => {
      au.src = l.url;
    });
    return fig;
  }
  const link_ = el('a', 'att att-file');
  link_.append(el('span', 'att-icon', '📄'), el('span', 'att-name', name), el('span', 'att-size', formatBytes(a.size)));
  link_.setAttribute('aria-label', `Download ${name}, ${formatBytes(a.size)}`);
  link_.download = name;
  fill(a, link_, (l) => {
    link_.href = l.url;
  });
  return link_;
}

/** Gets the links for `a` and hands them to `put`; marks the element while waiting or failed. */
function fill(a, node, put) {
  const cached = cachedLink(a.id);
  if (cached) return put(cached);
  node.classList.add('loading');
  link(a.id).then(
    (l) => {
      node.classList.remove('loading');
      put(l);
    },
    (e) => {
      node.classList.remove('loading');
      node.classList.add('unavailable');
      node.title = plain(e, 'media');
    },
  );
}

/** Opens the full image in the viewer. */
export async function viewImage(id, name) {
  const d = $('#image-dialog');
  const img = $('#image-full');
  const dl = $('#image-download');
  img.removeAttribute('src');
  img.alt = name || '';
  $('#image-name').textContent = name || '';
  dl.removeAttribute('href');
  dl.download = name || 'image';
  openDialog(d);
  try {
    const l = await link(id);
    img.src = l.url;
    dl.href = l.url;
  } catch (e) {
    $('#image-name').textContent = plain(e, 'media');
  }
}

// ---- uploads of the composer ---------------------------------------------------------------

/**
 * The files attached to a draft: each is uploaded as soon as it is picked.
 * An item: {key, file, name, size, kind, sent, total, media?, error?, ctl}.
 */
export class Tray {
  constructor(onChange) {
    this.items = [];
    this.onChange = onChange;
  }

  add(files, max) {
    let refused = 0;
    for (const file of files) {
      if (this.items.length >= max) {
        refused++;
        continue;
      }
      const item = {
        key: crypto.randomUUID(),
        file,
        name: file.name || 'pasted file',
        size: file.size,
        kind: guessKind(file.type),
        sent: 0,
        total: file.size,
        media: null,
        error: null,
        ctl: null,
        preview: null,
      };
      if (item.kind === 'image' && file.size < 20 * 1024 * 1024) item.preview = URL.createObjectURL(file);
      this.items.push(item);
      this.start(item);
    }
    this.onChange();
    return refused;
  }

  start(item) {
    item.error = null;
    item.ctl = new AbortController();
    item.sent = 0;
    api
      .uploadMedia(tokenOf(), item.file, {
        signal: item.ctl.signal,
        onProgress: (sent, total) => {
          item.sent = sent;
          if (total) item.total = total;
          this.onChange(item);
        },
      })
      .then(
        (media) => {
          item.media = media;
          item.ctl = null;
          this.onChange();
        },
        (e) => {
          item.ctl = null;
          if (e.code === 'aborted') return;
          item.error = plain(e, 'media');
          this.onChange();
        },
      );
  }

  remove(key) {
    const item = this.items.find((i) => i.key === key);
    if (!item) return;
    item.ctl?.abort();
    if (item.preview) URL.revokeObjectURL(item.preview);
    this.items = this.items.filter((i) => i !== item);
    this.onChange();
  }

  retry(key) {
    const item = this.items.find((i) => i.key === key);
    if (item && item.error) {
      this.start(item);
      this.onChange();
    }
  }

  get busy() {
    return this.items.some((i) => !i.media && !i.error);
  }

  get failed() {
    return this.items.some((i) => i.error);
  }

  /** The uploaded files (MediaInfo), in order. */
  ready() {
    return this.items.filter((i) => i.media).map((i) => i.media);
  }

  clear() {
    for (const i of this.items) {
      i.ctl?.abort();
      if (i.preview) URL.revokeObjectURL(i.preview);
    }
    this.items = [];
    this.onChange();
  }
}

function guessKind(type) {
  if (type.startsWith('image/')) return 'image';
  if (type.startsWith('video/')) return 'video';
  if (type.startsWith('audio/')) return 'audio';
  return 'file';
}

/** The chips of a tray: name, preview, progress, and remove or retry. */
export function renderTray(tray, box) {
  box.hidden = tray.items.length === 0;
  box.replaceChildren(
    ...tray.items.map((i) => {
      const chip = el('div', 'chip' + (i.error ? ' failed' : i.media ? ' done' : ''));
      chip.dataset.key = i.key;
      if (i.preview) {
        const img = el('img', 'chip-thumb');
        img.alt = '';
        img.src = i.preview;
        chip.append(img);
      } else {
        chip.append(el('span', 'chip-icon', i.kind === 'video' ? '🎬' : i.kind === 'audio' ? '🎵' : '📄'));
      }
      const text = el('span', 'chip-text');
      text.append(el('span', 'chip-name', i.name));
      if (i.error) text.append(el('span', 'chip-error', i.error));
      else if (i.media) text.append(el('span', 'chip-size', formatBytes(i.media.size ?? i.size)));
      else {
        const p = el('progress');
        p.max = Math.max(1, i.total);
        p.value = i.sent;
        p.setAttribute('aria-label', `Uploading ${i.name}`);
        text.append(p);
      }
      chip.append(text);
      if (i.error) chip.append(button('Retry', { cls: 'link-btn', action: 'retry-upload', data: { key: i.key } }));
      chip.append(button('✕', { cls: 'chip-x', action: 'remove-upload', label: `Remove ${i.name}`, data: { key: i.key } }));
      return chip;
    }),
  );
}

/** Just moves the progress bar of one item (no rebuild while bytes flow). */
export function updateProgress(box, item) {
  const p = box.querySelector(`.chip[data-key="${item.key}"] progress`);
  if (p) {
    p.max = Math.max(1, item.total);
    p.value = item.sent;
  }
}
