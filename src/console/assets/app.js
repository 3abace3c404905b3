// The operator console's start: it asks for the admin key once (kept in this tab's
// sessionStorage, sent as `Authorization: Bearer`, never a cookie, so no other site can act with
// it), shows the view the URL's hash names, refreshes it every 5 s while the tab is visible, and
// carries out the two actions (purge, reload), each after a confirmation, with a `console-`
// request id the gateway logs them with.

import {
  $, ENDPOINTS, HttpError, KEY_STORE, TITLES, Unauthorized, VIEWS, api, forgetKey, hooks, make,
  requestId, setClass, setText, state, storedKey, when,
} from './lib.js';
import { LOADERS, downloadCsv, loadOverview, purchaseQuery } from './views.js';

const REFRESH_MS = 5000;

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

function applyFilters() {
  const form = $('filters');
  const applied = {};
  for (const name of ['account', 'client', 'route', 'outcome', 'since', 'until', 'limit']) {
    applied[name] = form.elements[name].value.trim();
  }
  state.purchases = { applied, cursors: [null], page: 0, next: null };
  refreshNow();
}

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

// `dev` prints the console's address with its admin key in the fragment (which the browser never
// sends): taken once into the tab's storage, then removed from the address bar and the history.
function keyFromFragment() {
  const m = /^#key=([^&]+)$/.exec(location.hash);
  if (!m) return null;
  let key = null;
  try {
    key = decodeURIComponent(m[1]);
  } catch (_) {
    return null;
  }
  try {
    sessionStorage.setItem(KEY_STORE, key);
  } catch (_) {
    // Kept in memory only.
  }
  history.replaceState(null, '', location.pathname + location.search + '#overview');
  return key;
}

function init() {
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => askForKey('Signed out: the key is forgotten.'));
  window.addEventListener('hashchange', () => {
    const key = keyFromFragment();
    if (key) {
      state.key = key;
      start();
    } else if (state.key) showView();
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
  hooks.unauthorized = askForKey;
  state.key = keyFromFragment() || storedKey();
  if (state.key) start();
  else askForKey('');
}

init();