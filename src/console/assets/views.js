// The console's four views: each reads its admin endpoint and brings what is on screen in line
// with the answer (rows reused by key, text changed only where it differs). Times are shown in
// the gateway's configured time zone, with UTC on hover.

import {
  $, ENDPOINTS, HttpError, Unauthorized, api, bytes, duration, field, fill, make, num,
  percent, setAttr, setClass, setText, setTitle, state, syncRows, unavailable, utc, when,
} from './lib.js';

// What to do about a purchase whose outcome is not known, with a key and without one.
export const UNKNOWN_KEYED = 'Not known whether it was bought: a retry with the same Idempotency-Key reconciles it.';
export const UNKNOWN_UNKEYED = 'Not known whether it was bought: look in the upstream\'s disk list before buying again.';

// === Overview ===

export function badge(value) {
  return { badge: value || 'none' };
}

export function stateText(node, value) {
  fill(node, badge(value));
}

export function renderOverview(d) {
  if (d.timezone) state.timezone = d.timezone;
  const v = $('view-overview');
  const f = (name, spec) => fill(field(v, name), spec);
  f('version', d.version);
  f('mode', d.mode === 'shared' ? 'shared (replicas through Redis)' : 'single replica');
  f('replica', d.replica);
  f('uptime', duration(d.uptimeSeconds));
  f('startedAt', when(d.startedAt));
  f('timezone', state.timezone);
  const redis = d.redis || {};
  stateText(field(v, 'redis'), redis.state);
  f('redisDetail', redis.detail || '');
  const ledger = d.ledger || {};
  stateText(field(v, 'ledger'), ledger.state);
  f('ledgerDetail', [ledger.backend, ledger.detail].filter(Boolean).join(' · '));
  f('openEntries', num(ledger.openEntries));
  const webhooks = d.webhooks || {};
  f('webhooks', `${num(webhooks.configured)} configured, ${num(webhooks.backlog)} waiting`);
  const cache = d.cache || {};
  f('cacheEntries', num(cache.entries));
  f('cacheBytes', bytes(cache.bytes) + (cache.maxBytes ? ' of ' + bytes(cache.maxBytes) : ''));
  f('hitRatio', {
    text: percent(cache.hitRatio) + (cache.windowSeconds ? ` over ${duration(cache.windowSeconds)}` : ''),
    title: '(hit + stale) / (hit + stale + miss + coalesced)',
  });
  const l = cache.lookups || {};
  f('lookups', `${num(l.hit)} hit, ${num(l.stale)} stale, ${num(l.miss)} miss, ${num(l.coalesced)} joined`);
  const today = d.purchasesToday || {};
  for (const k of ['bought', 'refused', 'unknown', 'other']) f(k, num(today[k]));
  setClass(field(v, 'unknown').parentElement, 'count-unknown' + (today.unknown ? ' nonzero' : ''));
  f('todaySince', when(today.since));
  syncRows(
    $('accounts-rows'),
    d.accounts || [],
    (a) => a.name,
    (a) => [
      a.name,
      badge(a.token),
      a.expiresInSeconds === null || a.expiresInSeconds === undefined ? '—' : duration(a.expiresInSeconds),
      when(a.lastRefreshAt),
      { text: num(a.leases), cls: 'num' },
      { text: num(a.refusals), cls: 'num' },
      { text: a.lastError || '', cls: 'wrap' },
    ],
    (a) => (a.token === 'failing' ? 'needs-attention' : ''),
    'No account.',
    7,
  );
  setText($('identity'), [d.version && 'v' + d.version, d.replica, d.mode].filter(Boolean).join(' · '));
}

export async function loadOverview() {
  try {
    const body = await api(ENDPOINTS.overview);
    unavailable('overview', null);
    renderOverview(body.data || {});
  } catch (e) {
    if (e instanceof HttpError && e.status === 404) return unavailable('overview', e);
    throw e;
  }
}

// === Purchases ===

export function purchaseQuery(withCursor) {
  const p = state.purchases;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(p.applied)) if (v) q.set(k, v);
  if ((p.applied.since || p.applied.until) && state.timezone) q.set('tz', state.timezone);
  const cursor = p.cursors[p.page];
  if (withCursor && cursor) q.set('cursor', cursor);
  return q;
}

export function orderText(order) {
  if (!order || typeof order !== 'object') return '';
  return Object.entries(order)
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`)
    .join(' ');
}

export function note(e) {
  switch (e.outcome) {
    case 'unknown':
      return { text: e.idempotencyKey ? UNKNOWN_KEYED : UNKNOWN_UNKEYED, cls: 'wrap todo' };
    case 'replayed':
    case 'joined':
      return e.boughtBy
        ? { text: 'answered from entry ' + shortId(e.boughtBy), title: e.boughtBy, cls: 'wrap' }
        : { text: 'answered from an earlier purchase', cls: 'wrap' };
    default: {
      const parts = [];
      if (e.upstreamCode !== null && e.upstreamCode !== undefined) parts.push('code ' + e.upstreamCode);
      if (e.reason) parts.push(e.reason);
      if (e.amount !== null && e.amount !== undefined) parts.push('price ' + e.amount);
      return { text: parts.join(': '), cls: 'wrap' };
    }
  }
}

// Ids begin with their time, so entries made together share a prefix: the end tells them apart.
export function shortId(id) {
  return id && id.length > 12 ? '…' + id.slice(-10) : id || '';
}

export function renderPurchases(d) {
  setText($('purchases-when'), `When (${state.timezone})`);
  const entries = d.entries || [];
  const p = state.purchases;
  p.next = d.next || null;
  syncRows(
    $('purchase-rows'),
    entries,
    (e) => e.id,
    (e) => [
      when(e.at, true),
      badge(e.outcome),
      e.client || '—',
      e.account || '—',
      e.route || '',
      { text: orderText(e.order), mono: true, cls: 'order' },
      { text: e.resourceId || '', mono: true },
      { text: e.idempotencyKey || '', mono: true },
      note(e),
      { text: shortId(e.id), mono: true, title: e.id + (e.requestId ? ', request id ' + e.requestId : '') },
    ],
    (e) => (e.outcome === 'unknown' ? 'needs-attention' : ''),
    'No purchase matches.',
    10,
  );
  const unknown = entries.filter((e) => e.outcome === 'unknown').length;
  setText(
    $('purchases-summary'),
    `${entries.length} ${entries.length === 1 ? 'entry' : 'entries'} on this page` +
      (unknown ? `, ${unknown} with an unknown outcome (marked)` : '') +
      (p.next ? '; older ones on the next page.' : '.'),
  );
  $('page-older').disabled = !p.next;
  $('page-newer').disabled = p.page === 0;
  $('page-newest').disabled = p.page === 0;
  setText($('page-number'), 'page ' + (p.page + 1));
}

export async function loadPurchases() {
  const q = purchaseQuery(true).toString();
  try {
    const body = await api(ENDPOINTS.purchases + (q ? '?' + q : ''));
    unavailable('purchases', null);
    renderPurchases(body.data || {});
  } catch (e) {
    if (e instanceof HttpError && (e.status === 404 || e.status === 503)) return unavailable('purchases', e);
    if (e instanceof HttpError && e.status === 400) {
      // A filter the gateway refused: said where the filters are, not as a refresh failure.
      setText($('purchases-summary'), 'The filters were refused: ' + e.message);
      return undefined;
    }
    throw e;
  }
}

export async function downloadCsv() {
  const button = $('csv');
  button.disabled = true;
  try {
    const q = purchaseQuery(true).toString();
    const resp = await api(ENDPOINTS.purchases + (q ? '?' + q : ''), {
      headers: { Accept: 'text/csv' },
      raw: true,
    });
    const blob = await resp.blob();
    const a = make('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'purchases-' + utc(Date.now()).replace(/[:]/g, '') + '.csv';
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  } catch (e) {
    if (!(e instanceof Unauthorized)) setText($('purchases-summary'), 'The CSV could not be read: ' + e.message);
  } finally {
    button.disabled = false;
  }
}

// === Budgets ===

export const CAP_NAMES = {
  creates_per_hour: 'creates per hour',
  creates_per_day: 'creates per day',
  creates_per_month: 'creates per month',
  gb_per_day: 'GB per day',
  gb_per_month: 'GB per month',
};

export function capItem(key) {
  const li = make('li', 'cap');
  li.dataset.key = key;
  const title = make('div', 'cap-title');
  title.append(make('span', 'cap-name'), make('span', 'cap-share'));
  const bar = make('div', 'bar');
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuemin', '0');
  bar.append(make('div', 'bar-fill'));
  const resets = make('p', 'detail cap-resets');
  resets.append(document.createTextNode('resets '), make('time'));
  li.append(title, bar, resets);
  return li;
}

export function renderBudgets(d) {
  if (d.timezone) state.timezone = d.timezone;
  const caps = d.caps || [];
  const warnAt = typeof d.warnAt === 'number' ? d.warnAt : null;
  setText(
    $('budgets-summary'),
    caps.length
      ? `Days and months in ${state.timezone}` + (warnAt ? `; a warning at ${percent(warnAt)} of a cap.` : '.')
      : 'No cap is set ([create.budget] in the configuration sets them).',
  );
  const list = $('budget-caps');
  const existing = new Map(Array.from(list.children, (li) => [li.dataset.key, li]));
  caps.forEach((c, i) => {
    const key = `${c.scope}/${c.name}/${c.cap}`;
    let li = existing.get(key);
    if (li) existing.delete(key);
    else li = capItem(key);
    const share = c.limit > 0 ? c.used / c.limit : 0;
    const shown = Math.round(share * 100);
    const label = `${c.scope} ${c.name}: ${CAP_NAMES[c.cap] || c.cap}`;
    setText(li.querySelector('.cap-name'), label);
    setText(li.querySelector('.cap-share'), `${num(c.used)} of ${num(c.limit)} (${shown}%)`);
    const bar = li.querySelector('.bar');
    setAttr(bar, 'aria-label', label);
    setAttr(bar, 'aria-valuemax', c.limit);
    setAttr(bar, 'aria-valuenow', Math.min(c.used, c.limit));
    setAttr(bar, 'aria-valuetext', `${c.used} of ${c.limit}, ${shown}%`);
    // CSSOM, not a style attribute: allowed by the page's policy.
    const width = String(Math.round(Math.min(100, share * 100) * 10) / 10) + '%';
    const fillBar = li.querySelector('.bar-fill');
    if (fillBar.style.width !== width) fillBar.style.width = width;
    setClass(li, 'cap' + (share >= 1 ? ' full' : warnAt !== null && share >= warnAt ? ' warn' : ''));
    const t = when(c.resetsAt);
    const time = li.querySelector('time');
    setText(time, t.text === '—' ? 'never' : 'at ' + t.text);
    setTitle(time, t.title);
    if (t.time !== undefined) setAttr(time, 'datetime', new Date(t.time).toISOString());
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  for (const li of existing.values()) li.remove();
}

export async function loadBudgets() {
  try {
    const body = await api(ENDPOINTS.budgets);
    unavailable('budgets', null);
    renderBudgets(body.data || {});
  } catch (e) {
    if (e instanceof HttpError && e.status === 404) return unavailable('budgets', e);
    throw e;
  }
}

// === Clients ===

export function renderClients(d) {
  const clients = d.clients || [];
  // One column per refusal reason the gateway names, in the order it first names them.
  const reasons = [];
  for (const c of clients) for (const r of Object.keys(c.refusals || {})) if (!reasons.includes(r)) reasons.push(r);
  if (reasons.join() !== state.reasons.join()) {
    state.reasons = reasons;
    const head = $('clients-head');
    while (head.cells.length > 5) head.deleteCell(-1);
    for (const r of reasons) {
      const th = make('th', 'num', r.replace(/_/g, ' '));
      th.scope = 'col';
      head.append(th);
    }
  }
  syncRows(
    $('client-rows'),
    clients,
    (c) => c.name,
    (c) => {
      const refusals = c.refusals || {};
      const total = Object.values(refusals).reduce((a, b) => a + (Number(b) || 0), 0);
      return [
        c.name,
        { text: num(c.requests), cls: 'num' },
        { text: num(c.creates), cls: 'num' },
        { text: num(c.tokenLeases), cls: 'num' },
        { text: num(total), cls: 'num' },
        ...reasons.map((r) => ({ text: num(refusals[r] || 0), cls: 'num' })),
      ];
    },
    null,
    'No client is configured.',
    5 + reasons.length,
  );
  const since = when(d.since);
  setText($('clients-summary'), `Counted by this replica since ${since.text}.`);
  setTitle($('clients-summary'), since.title);
}

export async function loadClients() {
  try {
    const body = await api(ENDPOINTS.clients);
    unavailable('clients', null);
    renderClients(body.data || {});
  } catch (e) {
    if (e instanceof HttpError && e.status === 404) return unavailable('clients', e);
    throw e;
  }
}

export const LOADERS = { overview: loadOverview, purchases: loadPurchases, budgets: loadBudgets, clients: loadClients };
