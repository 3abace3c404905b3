// The console's shared pieces: its state, the admin key and the one way requests are sent
// (`Authorization: Bearer`, never a cookie; a 401 asks for the key again), and DOM helpers that
// change only what differs, so a refresh updates text and rows in place. Nothing here writes HTML
// text or style attributes: the page's Content-Security-Policy has no 'unsafe-inline'.

export const KEY_STORE = 'finovy-gateway.console.admin-key';
export const VIEWS = ['overview', 'purchases', 'budgets', 'clients'];
export const TITLES = { overview: 'Overview', purchases: 'Purchases', budgets: 'Budgets', clients: 'Clients' };
export const ENDPOINTS = {
  overview: '/admin/overview',
  purchases: '/admin/purchases',
  budgets: '/admin/budgets',
  clients: '/admin/clients',
};

export const $ = (id) => document.getElementById(id);

export const state = {
  key: null,
  view: 'overview',
  timezone: 'UTC',
  timer: null,
  lastOk: null,
  purchases: { applied: {}, cursors: [null], page: 0, next: null },
  reasons: [],
};

// What a 401 does: set by the page's start (it asks for the key again).
export const hooks = { unauthorized: () => {} };

// === The key ===

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch (_) {
    return null;
  }
}

export function forgetKey() {
  state.key = null;
  try {
    sessionStorage.removeItem(KEY_STORE);
  } catch (_) {
    // Storage refused (a private mode): the key was only in memory.
  }
}

export class Unauthorized extends Error {}

export class HttpError extends Error {
  constructor(status, message, traceId) {
    super(message);
    this.status = status;
    this.traceId = traceId;
  }
}

// One request to the admin listener with the key. A 401 forgets the key and asks again.
export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set('Authorization', 'Bearer ' + state.key);
  if (!headers.has('Accept')) headers.set('Accept', 'application/json');
  const resp = await fetch(path, {
    method: options.method || 'GET',
    headers,
    body: options.body,
    cache: 'no-store',
    credentials: 'omit',
    referrerPolicy: 'no-referrer',
  });
  if (resp.status === 401) {
    hooks.unauthorized('The admin key was refused: enter it again.');
    throw new Unauthorized('unauthorized');
  }
  if (options.raw) {
    if (!resp.ok) throw new HttpError(resp.status, 'HTTP ' + resp.status);
    return resp;
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    // Not JSON: said below with the status.
  }
  const ok = resp.ok && body && body.success !== false && (body.code === undefined || body.code === 0);
  if (!ok) {
    const msg = body && body.msg ? body.msg : 'HTTP ' + resp.status;
    throw new HttpError(resp.status, msg, body && body.traceId);
  }
  return body;
}

export function requestId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return 'console-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// === Small DOM helpers: change only what differs ===

export function setText(node, text) {
  const t = text === null || text === undefined ? '' : String(text);
  if (node.textContent !== t) node.textContent = t;
}

export function setTitle(node, title) {
  if (title) {
    if (node.title !== title) node.title = title;
  } else if (node.hasAttribute('title')) {
    node.removeAttribute('title');
  }
}

export function setClass(node, cls) {
  if (node.className !== cls) node.className = cls;
}

export function setAttr(node, name, value) {
  const v = String(value);
  if (node.getAttribute(name) !== v) node.setAttribute(name, v);
}

export function make(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// === Formatting ===

export const formatters = new Map();

// Dates in `zone`; `short` leaves the zone's name out (a table names it in its header).
export function formatter(zone, short) {
  const key = zone + (short ? ' short' : '');
  if (!formatters.has(key)) {
    let f;
    try {
      f = new Intl.DateTimeFormat('en-GB', {
        timeZone: zone,
        year: 'numeric',
        month: 'short',
        day: '2-digit',
        hour: '2-digit',
        minute: '2-digit',
        second: '2-digit',
        hourCycle: 'h23',
        timeZoneName: short ? undefined : 'short',
      });
    } catch (_) {
      f = null;
    }
    formatters.set(key, f);
  }
  return formatters.get(key);
}

export function utc(ms) {
  return new Date(ms).toISOString().replace('.000Z', 'Z');
}

// A time in the console's zone, with UTC on hover.
export function when(ms, short) {
  if (ms === null || ms === undefined) return { text: '—' };
  const f = formatter(state.timezone, short);
  const text = f ? f.format(new Date(ms)) : utc(ms);
  return { time: ms, text, title: utc(ms) + ' (UTC)' };
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  let s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
}

export function percent(ratio) {
  if (ratio === null || ratio === undefined) return '—';
  return (Math.round(ratio * 1000) / 10).toString() + '%';
}

export function num(n) {
  return n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US');
}

// === Cells ===
// A cell is described by a value: a string, or {text, title, cls, badge, time, mono}.

export function fill(cell, spec) {
  const s = typeof spec === 'object' && spec !== null ? spec : { text: spec };
  const kind = s.time !== undefined ? 'time' : s.badge !== undefined ? 'badge' : 'text';
  if (cell.dataset.kind !== kind) {
    cell.replaceChildren();
    cell.dataset.kind = kind;
    if (kind === 'time') cell.append(make('time'));
    if (kind === 'badge') cell.append(make('span', 'badge'));
  }
  if (kind === 'time') {
    const t = cell.firstChild;
    setText(t, s.text);
    setAttr(t, 'datetime', new Date(s.time).toISOString());
    setTitle(t, s.title);
  } else if (kind === 'badge') {
    const b = cell.firstChild;
    setText(b, s.badge);
    setClass(b, 'badge ' + String(s.badge).replace(/[^a-z_]/g, ''));
  } else {
    setText(cell, s.text);
    setTitle(cell, s.title);
  }
  if (cell.tagName === 'TD' || cell.tagName === 'TH') setClass(cell, (s.cls || '') + (s.mono ? ' mono' : ''));
}

// Brings a table body's rows in line with `items`, reusing the row of each key.
export function syncRows(tbody, items, keyOf, cellsOf, classOf, emptyText, columns) {
  const existing = new Map();
  for (const tr of Array.from(tbody.rows)) existing.set(tr.dataset.key, tr);
  const wanted = [];
  if (items.length === 0) {
    let tr = existing.get('');
    if (!tr) {
      tr = make('tr');
      tr.dataset.key = '';
      const td = make('td', 'empty');
      td.colSpan = columns;
      tr.append(td);
    }
    setText(tr.cells[0], emptyText);
    existing.delete('');
    wanted.push(tr);
  }
  for (const item of items) {
    const key = keyOf(item);
    let tr = existing.get(key);
    if (tr) {
      existing.delete(key);
    } else {
      tr = make('tr');
      tr.dataset.key = key;
    }
    const specs = cellsOf(item);
    while (tr.cells.length < specs.length) tr.insertCell();
    while (tr.cells.length > specs.length) tr.deleteCell(-1);
    specs.forEach((spec, i) => fill(tr.cells[i], spec));
    setClass(tr, classOf ? classOf(item) : '');
    wanted.push(tr);
  }
  for (const tr of existing.values()) tr.remove();
  wanted.forEach((tr, i) => {
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
}

export function field(view, name) {
  return view.querySelector(`[data-f="${name}"]`);
}

// A view whose endpoint this gateway does not serve says so instead of failing each refresh.
export function unavailable(view, err) {
  const note = $('view-' + view).querySelector('[data-unavailable]');
  if (err) {
    setText(note, `This gateway does not answer ${ENDPOINTS[view]} (${err.message}).`);
    note.hidden = false;
  } else {
    note.hidden = true;
  }
}
