#!/usr/bin/env node
// Drives services/analytics/assets/example.html in headless Chromium against a running
// analytics API and reports what the tracker sent and what it left in the browser.
//
//   node tracker.mjs --api http://127.0.0.1:PORT --mode default|gpc|refuse|grant [--site localhost]
//                    [--user-agent UA] [--no-wait]
//
// --user-agent replaces the browser's: the server drops headless browsers ("HeadlessChrome")
// as bots, so a caller that wants events stored passes a desktop browser's user agent.
//
// Handshake (so the caller can allow the page's origin before the page loads):
//   1. first stdout line: {"origin":"http://127.0.0.1:<static port>"}
//   2. the script waits for a line "go" on stdin (skipped with --no-wait; by hand: `echo go | node tracker.mjs ...`)
//   3. last stdout line: {"collect_statuses":[...],"consent_statuses":[...],"cookies":[...],
//      "local_storage_keys":[...],"session_storage_keys":[...],"events_sent":n,"events":[...]}
// Exit 0 on success; non-zero with a message on stderr on failure or after 30 s.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const EXAMPLE = path.resolve(HERE, '../../services/analytics/assets/example.html');
const TIMEOUT_MS = 30_000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

function fail(message) {
  process.stderr.write(`tracker.mjs: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const args = { site: 'localhost', wait: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--api') args.api = argv[++i];
    else if (a === '--mode') args.mode = argv[++i];
    else if (a === '--site') args.site = argv[++i];
    else if (a === '--user-agent') args.userAgent = argv[++i];
    else if (a === '--no-wait') args.wait = false;
    else fail(`unknown argument ${a}`);
  }
  if (!args.api) fail('--api is required');
  if (args.userAgent !== undefined && !args.userAgent) fail('--user-agent needs a value');
  args.api = args.api.replace(/\/+$/, '');
  if (!['default', 'gpc', 'refuse', 'grant'].includes(args.mode)) fail('--mode must be default|gpc|refuse|grant');
  return args;
}

const args = parseArgs(process.argv.slice(2));

// The example page points at the default API address; point it at the one under test.
const template = fs.readFileSync(EXAMPLE, 'utf8');
const TRACKER_TAG = 'src="http://127.0.0.1:50051/v1/tracker.js" data-site="localhost"';
if (!template.includes(TRACKER_TAG)) fail(`${EXAMPLE} no longer contains ${TRACKER_TAG}`);
const html = template.replace(TRACKER_TAG, `src="${args.api}/v1/tracker.js" data-site="${args.site}"`);

// Every path without a dot is the single-page app, so /pricing survives a reload.
const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, 'http://x');
  if (req.method === 'GET' && !pathname.includes('.')) {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(html);
  } else {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${server.address().port}`;
process.stdout.write(JSON.stringify({ origin }) + '\n');

if (args.wait) {
  const handshake = setTimeout(() => fail('no "go" on stdin within 30 s'), TIMEOUT_MS);
  const rl = readline.createInterface({ input: process.stdin });
  const got = await new Promise((resolve) => {
    rl.on('line', (line) => { if (line.trim() === 'go') resolve(true); });
    rl.on('close', () => resolve(false));
  });
  clearTimeout(handshake);
  rl.close();
  if (!got) fail('stdin closed before "go"');
}

let browser;
const deadline = setTimeout(async () => {
  process.stderr.write(`tracker.mjs: timed out after ${TIMEOUT_MS / 1000} s; events so far: ${JSON.stringify(summary())}\n`);
  process.exit(1);
}, TIMEOUT_MS);

// Requests to the API, in the order they were made.
const calls = [];
function summary() {
  return calls.map((c) => ({ endpoint: c.endpoint, status: c.status, failure: c.failure, ...c.body && { type: c.body.type, url: c.body.url, engaged_ms: c.body.engaged_ms, consent: c.body.consent, gpc: c.body.gpc }, sec_gpc: c.secGpc }));
}

try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  const contextOptions = {};
  if (args.userAgent) contextOptions.userAgent = args.userAgent;
  if (args.mode === 'gpc') contextOptions.extraHTTPHeaders = { 'Sec-GPC': '1' };
  const context = await browser.newContext(contextOptions);
  if (args.mode === 'gpc') {
    await context.addInitScript(() => {
      Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', { get: () => true, configurable: true });
    });
  }

  // keepalive requests (and beacons) can outlive the page, so listen on the context.
  context.on('request', (req) => {
    const { pathname } = new URL(req.url());
    if (req.method() !== 'POST' || !['/v1/collect', '/v1/consent'].includes(pathname)) return;
    let body;
    try { body = JSON.parse(req.postData() || 'null'); } catch { body = null; }
    const call = { endpoint: pathname, body, status: null, failure: null, secGpc: null, req };
    calls.push(call);
    req.allHeaders().then((h) => { call.secGpc = h['sec-gpc'] ?? null; }, () => {});
  });
  context.on('requestfinished', async (req) => {
    const call = calls.find((c) => c.req === req);
    if (!call) return;
    const res = await req.response();
    call.status = res ? res.status() : null;
  });
  context.on('requestfailed', (req) => {
    const call = calls.find((c) => c.req === req);
    if (call) call.failure = req.failure()?.errorText ?? 'failed';
  });

  const collects = () => calls.filter((c) => c.endpoint === '/v1/collect');
  const pathOf = (c) => c.body && c.body.url && new URL(c.body.url).pathname;
  async function waitFor(label, predicate) {
    for (;;) {
      const found = calls.find((c) => predicate(c));
      if (found && found.failure) {
        throw new Error(`${label}: request failed: ${found.failure} (no Access-Control-Allow-Origin for ${origin}?)`);
      }
      if (found && found.status !== null) {
        if (found.status < 200 || found.status > 299) throw new Error(`${label}: HTTP ${found.status}`);
        return found;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  const event = (type, p) => (c) => c.endpoint === '/v1/collect' && c.body?.type === type && pathOf(c) === p;

  const page = await context.newPage();
  page.on('pageerror', (err) => process.stderr.write(`page error: ${err.message}\n`));
  await page.goto(origin + '/');
  const loaded = await page.waitForFunction(() => window.custodian, null, { timeout: 5000 }).then(() => true, () => false);
  if (!loaded) throw new Error(`tracker did not load from ${args.api}/v1/tracker.js`);
  await waitFor('pageview /', event('pageview', '/'));

  if (args.mode === 'refuse' || args.mode === 'grant') {
    await page.click(args.mode === 'grant' ? '#consent-accept' : '#consent-refuse');
    await waitFor('consent', (c) => c.endpoint === '/v1/consent');
    if (!(await page.locator('#consent-banner').isHidden())) throw new Error('banner still shown after a decision');
  }

  // Let some engaged time accumulate so engaged_ms is not trivially 0.
  await page.waitForTimeout(200);
  await page.click('#nav-pricing');
  await waitFor('engagement /', event('engagement', '/'));
  await waitFor('pageview /pricing', event('pageview', '/pricing'));
  await page.waitForTimeout(200);

  // Hide the tab. Headless Chromium 156 keeps every page "visible": bringing another tab
  // to front (Page.bringToFront, Target.activateTarget), minimizing the window
  // (Browser.setWindowBounds), Emulation.setFocusEmulationEnabled and
  // Page.setWebLifecycleState all leave document.visibilityState at "visible". So simulate
  // exactly what a hidden tab does to the page: visibilityState becomes "hidden" and
  // visibilitychange fires.
  const hiddenNaturally = await (async () => {
    const other = await context.newPage();
    await other.bringToFront();
    await page.waitForTimeout(100);
    const state = await page.evaluate(() => document.visibilityState);
    await other.close();
    return state === 'hidden';
  })();
  if (!hiddenNaturally) {
    await page.evaluate(() => {
      Object.defineProperty(document, 'visibilityState', { get: () => 'hidden', configurable: true });
      Object.defineProperty(document, 'hidden', { get: () => true, configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    });
  }
  await waitFor('engagement /pricing', event('engagement', '/pricing'));

  const cookies = (await context.cookies(origin)).map((c) => c.name);
  const storage = await page.evaluate(() => ({ local: Object.keys(localStorage), session: Object.keys(sessionStorage) }));

  // pagehide after the hidden report must send nothing: one report per visible interval.
  // Dispatched by hand because Playwright does not see requests a page makes while it is
  // being unloaded (they still reach the server), so a real navigation could not be checked here.
  const before = collects().length;
  await page.evaluate(() => dispatchEvent(new PageTransitionEvent('pagehide', { persisted: false })));
  await new Promise((r) => setTimeout(r, 300));
  if (collects().length !== before) throw new Error(`pagehide after hidden sent ${collects().length - before} more event(s)`);
  // Leave for real too; the caller can check that the server still holds exactly 4 events.
  await page.goto('about:blank');

  const pending = calls.filter((c) => c.status === null && !c.failure);
  if (pending.length) await new Promise((r) => setTimeout(r, 500));

  const result = {
    collect_statuses: collects().map((c) => c.status),
    consent_statuses: calls.filter((c) => c.endpoint === '/v1/consent').map((c) => c.status),
    cookies,
    local_storage_keys: storage.local,
    session_storage_keys: storage.session,
    events_sent: collects().reduce((n, c) => n + (Array.isArray(c.body) ? c.body.length : 1), 0),
    hidden_by: hiddenNaturally ? 'tab switch' : 'simulated visibilitychange',
    events: summary(),
  };
  clearTimeout(deadline);
  await browser.close();
  server.close();
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
} catch (err) {
  process.stderr.write(`tracker.mjs: ${err.stack || err}\nevents so far: ${JSON.stringify(summary())}\n`);
  try { await browser?.close(); } catch { /* already gone */ }
  process.exit(1);
}
