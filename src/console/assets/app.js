// The operator console's script: reads the admin JSON endpoints with the admin key the operator
// enters (kept in this tab's sessionStorage, sent as `Authorization: Bearer`, never a cookie, so
// no other site can act with it) and keeps four views up to date every few seconds.
//
// The page runs under a Content-Security-Policy without 'unsafe-inline': nothing here writes
// HTML text or style attributes; the DOM is built with createElement and textContent, and what is
// already on screen is updated in place (text, rows), so a refresh neither flickers nor moves
// the reader's scroll position, focus or half-typed filters.
'use strict';

(() => {
  const KEY_STORE = 'finovy-gateway.console.admin-key';
  const REFRESH_MS = 5000;
  const VIEWS = ['overview', 'purchases', 'budgets', 'clients'];
  const TITLES = { overview: 'Overview', purchases: 'Purchases', budgets: 'Budgets', clients: 'Clients' };
  const ENDPOINTS = {
    overview: '/admin/overview',
    purchases: '/admin/purchases',
    budgets: '/admin/budgets',
    clients: '/admin/clients',
  };
  // What to do about a purchase whose outcome is not known, with a key and without one.
  const UNKNOWN_KEYED = 'Not known whether it was bought: a retry with the same Idempotency-Key reconciles it.';
  const UNKNOWN_UNKEYED = 'Not known whether it was bought: look in the upstream\'s disk list before buying again.';

  const $ = (id) => document.getElementById(id);

  const state = {
    key: null,
    view: 'overview',
    timezone: 'UTC',
    timer: null,
    lastOk: null,
    purchases: { applied: {}, cursors: [null], page: 0, next: null },
    reasons: [],
  };

  // === The key ===

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORE);
    } catch (_) {
      return null;
    }
  }

  function forgetKey() {
    state.key = null;
    try {
      sessionStorage.removeItem(KEY_STORE);
    } catch (_) {
      // Storage refused (a private mode): the key was only in memory.
    }
  }

  function askForKey(message) {
    clearTimeout(state.timer);
    forgetKey();
    $('app').hidden = true;
    $('sign-out').hidden = true;
    $('signin').hidden = false;
    setText($('signin-error'), message || '');
    setText($('identity'), '');
    const input = $('key-input');
    input.value = '';
    input.focus();
  }

  class Unauthorized extends Error {}

  class HttpError extends Error {
    constructor(status, message, traceId) {
      super(message);
      this.status = status;
      this.traceId = traceId;
    }
  }

  // One request to the admin listener with the key. A 401 forgets the key and asks again.
  async function api(path, options = {}) {
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
      askForKey('The admin key was refused: enter it again.');
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

  function requestId() {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return 'console-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // === Small DOM helpers: change only what differs ===

  function setText(node, text) {
    const t = text === null || text === undefined ? '' : String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  function setTitle(node, title) {
    if (title) {
      if (node.title !== title) node.title = title;
    } else if (node.hasAttribute('title')) {
      node.removeAttribute('title');
    }
  }

  function setClass(node, cls) {
    if (node.className !== cls) node.className = cls;
  }

  function setAttr(node, name, value) {
    const v = String(value);
    if (node.getAttribute(name) !== v) node.setAttribute(name, v);
  }

  function make(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // === Formatting ===

  const formatters = new Map();

  // Dates in `zone`; `short` leaves the zone's name out (a table names it in its header).
  function formatter(zone, short) {
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

  function utc(ms) {
    return new Date(ms).toISOString().replace('.000Z', 'Z');
  }

  // A time in the console's zone, with UTC on hover.
  function when(ms, short) {
    if (ms === null || ms === undefined) return { text: '—' };
    const f = formatter(state.timezone, short);
    const text = f ? f.format(new Date(ms)) : utc(ms);
    return { time: ms, text, title: utc(ms) + ' (UTC)' };
  }

  function duration(seconds) {
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

  function bytes(n) {
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

  function percent(ratio) {
    if (ratio === null || ratio === undefined) return '—';
    return (Math.round(ratio * 1000) / 10).toString() + '%';
  }

  function num(n) {
    return n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US');
  }

  // === Cells ===
  // A cell is described by a value: a string, or {text, title, cls, badge, time, mono}.

  function fill(cell, spec) {
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
  function syncRows(tbody, items, keyOf, cellsOf, classOf, emptyText, columns) {
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

  function field(view, name) {
    return view.querySelector(`[data-f="${name}"]`);
  }

  // A view whose endpoint this gateway does not serve says so instead of failing each refresh.
  function unavailable(view, err) {
    const note = $('view-' + view).querySelector('[data-unavailable]');
    if (err) {
      setText(note, `This gateway does not answer ${ENDPOINTS[view]} (${err.message}).`);
      note.hidden = false;
    } else {
      note.hidden = true;
    }
  }

  // === Overview ===

  function badge(value) {
    return { badge: value || 'none' };
  }

  function stateText(node, value) {
    fill(node, badge(value));
  }

  function renderOverview(d) {
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
    const hooks = d.webhooks || {};
    f('webhooks', `${num(hooks.configured)} configured, ${num(hooks.backlog)} waiting`);
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

  async function loadOverview() {
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

  function purchaseQuery(withCursor) {
    const p = state.purchases;
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(p.applied)) if (v) q.set(k, v);
    if ((p.applied.since || p.applied.until) && state.timezone) q.set('tz', state.timezone);
    const cursor = p.cursors[p.page];
    if (withCursor && cursor) q.set('cursor', cursor);
    return q;
  }

  function orderText(order) {
    if (!order || typeof order !== 'object') return '';
    return Object.entries(order)
      .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`)
      .join(' ');
  }

  function note(e) {
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
  function shortId(id) {
    return id && id.length > 12 ? '…' + id.slice(-10) : id || '';
  }

  function renderPurchases(d) {
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

  async function loadPurchases() {
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

  function applyFilters() {
    const form = $('filters');
    const applied = {};
    for (const name of ['account', 'client', 'route', 'outcome', 'since', 'until', 'limit']) {
      applied[name] = form.elements[name].value.trim();
    }
    state.purchases = { applied, cursors: [null], page: 0, next: null };
    refreshNow();
  }

  async function downloadCsv() {
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

  const CAP_NAMES = {
    creates_per_hour: 'creates per hour',
    creates_per_day: 'creates per day',
    creates_per_month: 'creates per month',
    gb_per_day: 'GB per day',
    gb_per_month: 'GB per month',
  };

  function capItem(key) {
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

  function renderBudgets(d) {
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

  async function loadBudgets() {
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

  function renderClients(d) {
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

  async function loadClients() {
    try {
      const body = await api(ENDPOINTS.clients);
      unavailable('clients', null);
      renderClients(body.data || {});
    } catch (e) {
      if (e instanceof HttpError && e.status === 404) return unavailable('clients', e);
      throw e;
    }
  }

  const LOADERS = { overview: loadOverview, purchases: loadPurchases, budgets: loadBudgets, clients: loadClients };

  // === Refreshing ===

  function schedule() {
    clearTimeout(state.timer);
    state.timer = null;
    if (document.hidden || !state.key) return;
    state.timer = setTimeout(refreshNow, REFRESH_MS);
  }

  async function refreshNow() {
    clearTimeout(state.timer);
    if (!state.key) return;
    const view = state.view;
    const status = $('refresh');
    try {
      await LOADERS[view]();
      state.lastOk = Date.now();
      if (status.textContent) {
        setText(status, '');
        setClass(status, 'refresh');
      }
      const t = when(state.lastOk);
      setText($('updated'), 'Updated ' + t.text + '.');
    } catch (e) {
      if (e instanceof Unauthorized) return;
      const t = when(Date.now());
      setText(status, `Could not refresh ${TITLES[view]} at ${t.text}: ${e.message}. Trying again every 5 s.`);
      setClass(status, 'refresh failing');
    } finally {
      // Another view may have been chosen meanwhile: its own refresh scheduled the next one.
      if (state.view === view) schedule();
    }
  }

  // === Views ===

  function showView() {
    const name = location.hash.replace(/^#/, '');
    const view = VIEWS.includes(name) ? name : 'overview';
    state.view = view;
    for (const v of VIEWS) {
      $('view-' + v).hidden = v !== view;
      const tab = $('tab-' + v);
      if (v === view) tab.setAttribute('aria-current', 'page');
      else tab.removeAttribute('aria-current');
    }
    document.title = `${TITLES[view]} · finovy-gateway console`;
    setText($('curl-hint'), `curl -H "Authorization: Bearer $ADMIN_KEY" ${location.origin}${ENDPOINTS[view]}`);
    refreshNow();
  }

  // "as JSON": the endpoint's answer, read with the key, opened in a new tab.
  async function openJson(event) {
    event.preventDefault();
    const link = event.currentTarget;
    let path = link.getAttribute('href');
    if (path === ENDPOINTS.purchases) {
      const q = purchaseQuery(true).toString();
      if (q) path += '?' + q;
    }
    try {
      const resp = await api(path, { raw: true });
      const blob = new Blob([await resp.text()], { type: 'application/json' });
      const a = make('a');
      a.href = URL.createObjectURL(blob);
      a.target = '_blank';
      a.rel = 'noopener';
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    } catch (e) {
      if (!(e instanceof Unauthorized)) {
        setText($('refresh'), `Could not read ${path}: ${e.message}`);
        setClass($('refresh'), 'refresh failing');
      }
    }
  }

  // === Actions ===

  function confirmAction(title, text, okLabel) {
    const dialog = $('confirm');
    setText($('confirm-title'), title);
    setText($('confirm-text'), text);
    setText($('confirm-ok'), okLabel);
    return new Promise((resolve) => {
      const done = (answer) => {
        $('confirm-ok').onclick = null;
        $('confirm-cancel').onclick = null;
        dialog.onclose = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      $('confirm-ok').onclick = () => done(true);
      $('confirm-cancel').onclick = () => done(false);
      // Escape closes the dialog: a no.
      dialog.onclose = () => done(false);
      dialog.showModal();
      $('confirm-cancel').focus();
    });
  }

  function showResult(node, ok, lines, id, list) {
    node.replaceChildren();
    setClass(node, 'result ' + (ok ? 'ok' : 'bad'));
    for (const line of lines) node.append(make('p', '', line));
    if (list) {
      for (const [label, items] of list) {
        node.append(make('p', '', label + (items.length ? ':' : ': none')));
        if (items.length) {
          const ul = make('ul');
          for (const item of items) ul.append(make('li', '', item));
          node.append(ul);
        }
      }
    }
    const idLine = make('p', 'detail');
    idLine.append(document.createTextNode('request id '), make('code', 'request-id', id));
    node.append(idLine);
  }

  function purgeScope() {
    const checked = $('purge-form').querySelector('input[name="scope"]:checked');
    return checked ? checked.value : 'entry';
  }

  function showPurgeFields() {
    const scope = purgeScope();
    for (const f of $('purge-form').querySelectorAll('.field[data-for]')) {
      f.hidden = !f.dataset.for.split(' ').includes(scope);
    }
  }

  async function purge(event) {
    event.preventDefault();
    const form = $('purge-form');
    const result = $('purge-result');
    const scope = purgeScope();
    const route = form.elements.route.value.trim();
    const id = form.elements.id.value.trim();
    const account = form.elements.account.value.trim();
    let body;
    let what;
    if (scope === 'all') {
      body = { all: true };
      what = 'every cache entry of this replica (and the fleet, where Redis is shared)';
    } else if (!route) {
      showResult(result, false, ['Name the route to purge (e.g. disk.info).'], '—');
      form.elements.route.focus();
      return;
    } else if (scope === 'route') {
      body = { route };
      what = `every entry of ${route}` + (account ? ` for account ${account}` : ' for every account');
    } else if (!id) {
      showResult(result, false, ['Name the entry to purge: its id.'], '—');
      form.elements.id.focus();
      return;
    } else {
      body = { route, id };
      what = `the ${route} entry ${id}` + (account ? ` of account ${account}` : '');
    }
    if (account && scope !== 'all') body.account = account;
    if (!(await confirmAction('Purge the cache?', `This removes ${what}. The next read goes to the upstream.`, 'Purge'))) return;
    const rid = requestId();
    try {
      const answer = await api('/admin/cache/purge', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Request-Id': rid },
        body: JSON.stringify(body),
      });
      const purged = answer.data && answer.data.purged ? answer.data.purged : JSON.stringify(body);
      showResult(result, true, ['Purged: ' + purged], answer.traceId || rid);
    } catch (e) {
      if (!(e instanceof Unauthorized)) showResult(result, false, ['Not purged: ' + e.message], e.traceId || rid);
    }
  }

  async function reload() {
    const result = $('reload-result');
    if (!(await confirmAction('Reload the configuration?', 'The gateway re-reads its config file and credential files now. Keys that need a restart are listed and keep their running values.', 'Reload'))) return;
    const rid = requestId();
    try {
      const answer = await api('/admin/reload', { method: 'POST', headers: { 'X-Request-Id': rid } });
      const d = answer.data || {};
      showResult(result, true, ['Reloaded.'], answer.traceId || rid, [
        ['Changed but needing a restart', d.restart_needed || []],
        ['Kept as they were (their files did not load)', d.kept || []],
      ]);
    } catch (e) {
      if (!(e instanceof Unauthorized)) showResult(result, false, ['Not reloaded: ' + e.message], e.traceId || rid);
    }
  }

  // === Start ===

  async function signIn(event) {
    event.preventDefault();
    const key = $('key-input').value.trim();
    if (!key) return;
    state.key = key;
    try {
      // Any answer but 401 means the key was taken (an endpoint this gateway lacks is a 404).
      await api(ENDPOINTS.overview).catch((e) => {
        if (e instanceof HttpError) return null;
        throw e;
      });
    } catch (e) {
      if (!(e instanceof Unauthorized)) setText($('signin-error'), 'The gateway did not answer: ' + e.message);
      return;
    }
    try {
      sessionStorage.setItem(KEY_STORE, key);
    } catch (_) {
      // Kept in memory only.
    }
    start();
  }

  function start() {
    $('signin').hidden = true;
    $('app').hidden = false;
    $('sign-out').hidden = false;
    setText($('signin-error'), '');
    // The time zone and identity come from the overview, whatever the view.
    if (location.hash !== '#overview') loadOverview().catch(() => {});
    showView();
  }

  function init() {
    $('signin-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', () => askForKey('Signed out: the key is forgotten.'));
    window.addEventListener('hashchange', () => {
      if (state.key) showView();
    });
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) clearTimeout(state.timer);
      else if (state.key) refreshNow();
    });
    $('filters').addEventListener('submit', (e) => {
      e.preventDefault();
      applyFilters();
    });
    $('filters').addEventListener('reset', () => setTimeout(applyFilters, 0));
    $('csv').addEventListener('click', downloadCsv);
    $('page-older').addEventListener('click', () => {
      const p = state.purchases;
      if (!p.next) return;
      p.cursors[p.page + 1] = p.next;
      p.page += 1;
      refreshNow();
    });
    $('page-newer').addEventListener('click', () => {
      const p = state.purchases;
      if (p.page > 0) p.page -= 1;
      refreshNow();
    });
    $('page-newest').addEventListener('click', () => {
      state.purchases.page = 0;
      refreshNow();
    });
    for (const link of document.querySelectorAll('a[data-json]')) link.addEventListener('click', openJson);
    $('purge-form').addEventListener('submit', purge);
    $('purge-form').addEventListener('change', showPurgeFields);
    $('reload-button').addEventListener('click', reload);
    showPurgeFields();
    const limit = $('f-limit').value;
    state.purchases.applied = { limit };
    state.key = storedKey();
    if (state.key) start();
    else askForKey('');
  }

  init();
})();
