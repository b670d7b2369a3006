/* Custodian web analytics tracker. No dependencies, no storage without consent.
 * <script defer src="https://analytics.example.com/v1/tracker.js" data-site="example.com"></script>
 */
(function () {
  'use strict';
  var script = document.currentScript;
  if (!script || window.custodian) return; // loaded twice: keep the first instance's state
  var site = script.getAttribute('data-site') || location.hostname;
  var api = (script.getAttribute('data-api') || new URL(script.src).origin).replace(/\/+$/, '');
  var COOKIE = 'custodian_consent';

  // A browser-level opt-out outranks anything the banner says.
  var optOut = navigator.globalPrivacyControl === true || navigator.doNotTrack === '1';

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.from(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join('');
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  }

  function readCookie() {
    var m = document.cookie.match(/(?:^|;\s*)custodian_consent=([0-9a-f-]{32,36})(?:;|$)/i);
    return m ? m[1] : null;
  }

  function writeCookie(value, maxAge) {
    document.cookie = COOKIE + '=' + value + '; Max-Age=' + maxAge + '; Path=/; SameSite=Lax' +
      (location.protocol === 'https:' ? '; Secure' : '');
  }

  var consentId = readCookie();
  // undefined = not decided: the field is then omitted and the server applies the site's policy.
  var decision;
  if (consentId && optOut) { writeCookie('', 0); consentId = null; }
  else if (consentId) decision = 'granted';

  // Engagement and pageviews go out as a keepalive fetch, not navigator.sendBeacon: a beacon
  // always carries credentials (cookies of the API host, shared with the site when the API
  // lives on a subdomain or the same host), and there is no way to turn that off. keepalive
  // lets the request outlive the page just like a beacon. text/plain avoids a CORS preflight.
  function post(path, body) {
    return fetch(api + path, {
      method: 'POST', body: JSON.stringify(body), keepalive: true, credentials: 'omit',
      headers: { 'Content-Type': 'text/plain' }
    });
  }

  function event(type, extra) {
    var e = { site: site, type: type, url: pageUrl, event_id: uuid() };
    if (decision) e.consent = decision;
    if (optOut) e.gpc = true;
    for (var k in extra) if (extra[k] != null) e[k] = extra[k];
    post('/v1/collect', e).catch(function () {});
  }

  // Engagement = visible time on the current page view, summed over visible intervals. Each
  // report carries only the time since the previous one, so the server can simply add them up.
  var pageUrl, engagedMs, reportedMs, visibleSince, pending;

  function visible() { return document.visibilityState === 'visible'; }

  function startPage() {
    pageUrl = location.href.split('#')[0]; // the server drops fragments anyway; don't send them
    engagedMs = 0;
    reportedMs = 0;
    visibleSince = visible() ? performance.now() : null;
    pending = visibleSince !== null;
  }

  function flushEngagement() {
    if (visibleSince !== null) {
      engagedMs += performance.now() - visibleSince;
      visibleSince = visible() ? performance.now() : null;
    }
    // One report per visible interval: hidden + pagehide must not both send.
    if (!pending) return;
    pending = false;
    var delta = Math.round(engagedMs) - reportedMs;
    reportedMs += delta;
    event('engagement', { engaged_ms: delta });
  }

  function pageview(referrer) {
    if (pageUrl !== undefined) flushEngagement();
    var previous = pageUrl;
    startPage();
    event('pageview', { referrer: referrer !== undefined ? referrer : previous });
  }

  document.addEventListener('visibilitychange', function () {
    if (visible()) {
      if (visibleSince === null) visibleSince = performance.now();
      pending = true;
    } else {
      flushEngagement();
    }
  });
  addEventListener('pagehide', flushEngagement);
  // Restored from the back/forward cache: the visitor is looking at the page again.
  addEventListener('pageshow', function (e) { if (e.persisted) pageview(document.referrer || undefined); });

  // Single-page apps: a new URL without a document load is a new page view.
  function onNavigate(pathOnly) {
    var next = location.href.split('#')[0];
    if (next === pageUrl) return; // hash-only changes are not page views
    // Same path: the app tidied its query string; still the same page view, under its new URL.
    if (pathOnly && new URL(next).pathname === new URL(pageUrl).pathname) { pageUrl = next; return; }
    pageview();
  }
  ['pushState', 'replaceState'].forEach(function (name) {
    var original = history[name];
    history[name] = function () {
      var result = original.apply(this, arguments);
      // replaceState is mostly used to tidy up query parameters; count it only if the path moved.
      if (pageUrl !== undefined) onNavigate(name === 'replaceState');
      return result;
    };
  });
  addEventListener('popstate', function () { onNavigate(false); });

  function consent(choice, categories) {
    if (choice !== 'granted' && choice !== 'refused') throw new TypeError('consent: "granted" or "refused"');
    if (optOut) choice = 'refused';
    decision = choice;
    var id = consentId || uuid();
    if (choice === 'granted') { consentId = id; writeCookie(id, 31536000); }
    // A refusal stores nothing, and withdraws an earlier grant.
    else { if (consentId) writeCookie('', 0); consentId = null; }
    return post('/v1/consent', { site: site, consent_id: id, decision: choice, categories: categories || ['analytics'] })
      .then(function (r) { return r.ok ? r.json() : null; }, function () { return null; })
      .then(function (answer) {
        // The cookie then names the server's record ("consents/<id>"), which is what the
        // visitor can later ask about.
        if (answer && answer.consent && decision === 'granted' && consentId === id) {
          consentId = answer.consent.split('/').pop();
          writeCookie(consentId, 31536000);
        }
        return answer;
      });
  }

  window.custodian = {
    consent: consent,
    pageview: function () { pageview(); }
  };

  // A prerendered page has not been seen yet; count it when it is shown.
  if (document.prerendering) {
    document.addEventListener('prerenderingchange', function () { pageview(document.referrer || undefined); }, { once: true });
  } else {
    pageview(document.referrer || undefined);
  }
})();
