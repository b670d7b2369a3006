//! The analytics tracker in a real browser against the whole suite, on
//! SQLite and PostgreSQL: `tests/browser/tracker.mjs` loads the example page
//! in headless Chromium from an origin of its own, and this test registers
//! that origin as a site, then checks what reached the database: four events
//! per visit with the browser and OS parsed, no visitor hash after a refusal
//! or under Global Privacy Control, the consents recorded, no cookie unless
//! consent was granted, headless browsers dropped as bots, and the visitor's
//! address nowhere in any table.
//!
//! Without Node.js, Chromium or `tests/browser/node_modules` the test is
//! skipped with a message, except under `CI=true`, where it fails.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use custodian_proto::analytics::v1::{CreateSiteRequest, DeleteSiteRequest, Site};
use custodian_tests::{Backend, TestApp};
use serde_json::Value;
use sqlx::Row as _;

/// A desktop Chrome on Linux, as the server should see a person's browser.
const CHROME_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";

/// The visitor's address: the browser and the suite run on loopback.
const VISITOR_IP: &str = "127.0.0.1";

/// How long one run of the driver may take (it gives up itself after 30 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(45);

/// `analytics_events.kind`.
const PAGEVIEW: i32 = 1;
const ENGAGEMENT: i32 = 2;
/// `analytics_consents.decision` (`ConsentState`).
const GRANTED: i64 = 1;
const REFUSED: i64 = 2;
/// `analytics_drops.reason` (`DropReason::Bot`).
const BOT: i32 = 1;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// What the driver needs, or why it cannot run.
fn driver() -> Result<PathBuf, String> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Err("node is not on PATH".to_owned());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !Path::new(&chromium).exists() {
        return Err(format!(
            "no Chromium at {chromium} (apt-get install chromium, or set CHROMIUM)"
        ));
    }
    if !folder.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "no {}/node_modules (npm ci there)",
            folder.display()
        ));
    }
    Ok(folder.join("tracker.mjs"))
}

/// The driver's path; `None` (with a message) when it cannot run outside CI.
fn driver_or_skip(backend: Backend) -> Option<PathBuf> {
    match driver() {
        Ok(path) => Some(path),
        Err(why) if !in_ci() => {
            eprintln!("skipping the browser test on {backend:?}: {why}");
            None
        }
        Err(why) => panic!("CI=true and the browser test cannot run: {why}"),
    }
}

/// One visit by the driver, against a site registered for its origin.
struct Visit {
    site: Site,
    origin: String,
    /// The driver's last line.
    report: Value,
}

impl Visit {
    fn strings(&self, key: &str) -> Vec<String> {
        self.report[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {}", self.report))
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect()
    }

    /// The driver's storage report: cookies, localStorage and sessionStorage keys.
    fn browser_state(&self) -> Vec<String> {
        let mut state = self.strings("cookies");
        state.extend(self.strings("local_storage_keys"));
        state.extend(self.strings("session_storage_keys"));
        state
    }

    fn site_id(&self) -> &str {
        self.site.name.strip_prefix("sites/").expect("sites/{id}")
    }
}

/// The driver's process, killed if the test gives up on it.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next line the driver prints, read off the runtime's threads.
async fn next_line(stdout: &mut Option<BufReader<std::process::ChildStdout>>) -> Option<String> {
    let mut reader = stdout.take().expect("the driver's stdout");
    let (reader, line) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let read = reader.read_line(&mut line).expect("reading the driver");
        (reader, (read > 0).then_some(line))
    })
    .await
    .expect("reading thread");
    *stdout = Some(reader);
    line
}

/// Runs the driver in `mode` (with the browser's own user agent when
/// `user_agent` is `None`), registering the site "localhost" for its origin
/// between its first line and "go".
async fn drive(app: &TestApp, driver: &Path, mode: &str, user_agent: Option<&str>) -> Visit {
    let mut command = std::process::Command::new("node");
    command
        .arg(driver)
        .args(["--api", &format!("http://{}", app.addr)])
        .args(["--mode", mode, "--site", "localhost"]);
    if let Some(user_agent) = user_agent {
        command.args(["--user-agent", user_agent]);
    }
    let mut child = Child(
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The driver's reasons for failing land in the test's output.
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting node"),
    );
    let mut stdin = child.0.stdin.take().expect("stdin");
    let mut stdout = Some(BufReader::new(child.0.stdout.take().expect("stdout")));

    let run = async {
        let first = next_line(&mut stdout)
            .await
            .expect("the driver's origin line");
        let origin = serde_json::from_str::<Value>(&first).expect("JSON origin line")["origin"]
            .as_str()
            .expect("origin")
            .to_owned();
        let site = app
            .sites()
            .create_site(CreateSiteRequest {
                site: Some(Site {
                    domain: "localhost".into(),
                    allowed_origins: vec![origin.clone()],
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("registering the site")
            .into_inner();
        stdin.write_all(b"go\n").expect("writing go");
        drop(stdin);
        let mut last = None;
        while let Some(line) = next_line(&mut stdout).await {
            if !line.trim().is_empty() {
                last = Some(line);
            }
        }
        let status = tokio::task::block_in_place(|| child.0.wait()).expect("waiting for node");
        assert!(
            status.success(),
            "tracker.mjs --mode {mode} failed: {status}"
        );
        let report: Value =
            serde_json::from_str(&last.expect("the driver's report")).expect("JSON report");
        Visit {
            site,
            origin,
            report,
        }
    };
    let visit = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("tracker.mjs --mode {mode} took over {RUN_TIMEOUT:?}"));
    let statuses = &visit.report["collect_statuses"];
    assert!(
        statuses
            .as_array()
            .is_some_and(|s| s.len() == 4 && s.iter().all(|s| s == 202)),
        "{mode}: every beacon is accepted: {}",
        visit.report
    );
    assert_eq!(visit.report["events_sent"], 4, "{mode}: {}", visit.report);
    visit
}

/// A stored event, as the test looks at it.
#[derive(Debug)]
struct Stored {
    kind: i32,
    path: String,
    browser: String,
    os: String,
    network: String,
    visitor: Option<String>,
    /// `ConsentState` as the event carried it.
    consent: i32,
}

impl Stored {
    /// The first page view goes out on load, before the banner is answered.
    fn before_choice(&self) -> bool {
        self.kind == PAGEVIEW && self.path == "/"
    }
}

async fn stored_events(app: &TestApp, visit: &Visit) -> Vec<Stored> {
    // `time` orders them as they arrived (the suite's clock stands still, so ties are by kind).
    let rows = sqlx::query(
        "SELECT kind, path, browser, os, network, visitor, consent FROM analytics_events \
         WHERE site_id = $1 ORDER BY time, kind",
    )
    .bind(visit.site_id())
    .fetch_all(&app.raw)
    .await
    .expect("reading analytics_events");
    rows.iter()
        .map(|r| Stored {
            kind: r.get("kind"),
            path: r.get("path"),
            browser: r.get("browser"),
            os: r.get("os"),
            network: r.get("network"),
            visitor: r.get("visitor"),
            consent: r.get("consent"),
        })
        .collect()
}

/// The four events of a visit, each with the browser and OS parsed and the
/// address cut to its network.
async fn four_events(app: &TestApp, visit: &Visit) -> Vec<Stored> {
    let events = stored_events(app, visit).await;
    let mut seen: Vec<(i32, &str)> = events.iter().map(|e| (e.kind, e.path.as_str())).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            (PAGEVIEW, "/"),
            (PAGEVIEW, "/pricing"),
            (ENGAGEMENT, "/"),
            (ENGAGEMENT, "/pricing"),
        ],
        "{events:?}"
    );
    for e in &events {
        assert_eq!((e.browser.as_str(), e.os.as_str()), ("Chrome", "Linux"));
        assert_eq!(e.network, "127.0.0.0");
    }
    events
}

/// Whether the events all carry one visitor hash.
fn one_visitor(events: &[Stored]) -> bool {
    events
        .iter()
        .all(|e| e.visitor.is_some() && e.visitor == events[0].visitor)
}

/// The decisions recorded for the visit's site.
async fn decisions(app: &TestApp, visit: &Visit) -> Vec<i64> {
    sqlx::query("SELECT decision FROM analytics_consents WHERE site = $1")
        .bind(&visit.site.name)
        .fetch_all(&app.raw)
        .await
        .expect("reading analytics_consents")
        .iter()
        .map(|r| r.get("decision"))
        .collect()
}

/// Every text column of every table, as (table, column).
async fn text_columns(app: &TestApp) -> Vec<(String, String)> {
    let sql = if app.db.url.starts_with("sqlite:") {
        "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND (upper(p.type) LIKE '%TEXT%' OR upper(p.type) LIKE '%CHAR%' \
             OR upper(p.type) LIKE '%CLOB%' OR upper(p.type) LIKE '%JSON%' OR p.type = '')"
    } else {
        "SELECT CAST('\"' || table_schema || '\".\"' || table_name || '\"' AS TEXT) AS t, \
             CAST(column_name AS TEXT) AS c \
             FROM information_schema.columns \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
             AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')"
    };
    sqlx::query(sql)
        .fetch_all(&app.raw)
        .await
        .expect("listing the columns")
        .iter()
        .map(|r| (r.get("t"), r.get("c")))
        .collect()
}

/// Asserts that the visitor's address is stored nowhere. The sites' own
/// allowed origins (`http://127.0.0.1:<port>`, configuration the test
/// wrote) are the only place the text may appear.
async fn assert_no_raw_ip(app: &TestApp, origins: &[&str]) {
    let columns = text_columns(app).await;
    assert!(
        columns
            .iter()
            .any(|(t, c)| t.contains("analytics_events") && c == "network"),
        "the scan sees analytics_events.network: {columns:?}"
    );
    let mut by_table: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (table, column) in &columns {
        by_table.entry(table).or_default().push(column);
    }
    let mut found = Vec::new();
    for (table, columns) in by_table {
        let cast: Vec<String> = columns
            .iter()
            .map(|c| format!("CAST(\"{c}\" AS TEXT)"))
            .collect();
        let filter: Vec<String> = cast
            .iter()
            .map(|c| format!("{c} LIKE '%{VISITOR_IP}%'"))
            .collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM {table} WHERE {}",
            cast.join(", "),
            filter.join(" OR ")
        )))
        .fetch_all(&app.raw)
        .await
        .unwrap_or_else(|e| panic!("scanning {table}: {e}"));
        for row in rows {
            for (i, column) in columns.iter().enumerate() {
                let value: Option<String> = row.get(i);
                let Some(value) = value else { continue };
                let rest = origins
                    .iter()
                    .fold(value.clone(), |v, origin| v.replace(origin, ""));
                if rest.contains(VISITOR_IP) {
                    found.push(format!("{table}.{column} = {value:?}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "the raw IP is stored: {found:#?}");
}

/// Removes the site and its events and drop counts, so the next visit
/// starts clean.
async fn forget(app: &TestApp, visit: Visit) {
    app.sites()
        .delete_site(DeleteSiteRequest {
            name: visit.site.name,
        })
        .await
        .expect("deleting the site");
}

async fn every_mode(backend: Backend) {
    let Some(driver) = driver_or_skip(backend) else {
        return;
    };
    let Some(app) = custodian_tests::spawn(backend).await else {
        return;
    };
    let started = Instant::now();

    // No choice made: counted with a daily visitor hash, nothing kept in the browser.
    let visit = drive(&app, &driver, "default", Some(CHROME_LINUX)).await;
    let events = four_events(&app, &visit).await;
    assert!(one_visitor(&events), "one hash for the visit: {events:?}");
    assert!(events.iter().all(|e| e.consent == 0), "{events:?}");
    assert_eq!(visit.browser_state(), Vec::<String>::new());
    assert_no_raw_ip(&app, &[&visit.origin]).await;
    forget(&app, visit).await;

    // Global Privacy Control: counted as nobody in particular, from the first event.
    let visit = drive(&app, &driver, "gpc", Some(CHROME_LINUX)).await;
    let events = four_events(&app, &visit).await;
    assert!(events.iter().all(|e| e.visitor.is_none()), "{events:?}");
    assert_eq!(visit.browser_state(), Vec::<String>::new());
    forget(&app, visit).await;

    // Refused: the refusal recorded, nothing kept in the browser, and no
    // hash for what follows it (the first page view, sent on load before
    // the banner was answered, counts as an undecided visitor's).
    let visit = drive(&app, &driver, "refuse", Some(CHROME_LINUX)).await;
    let events = four_events(&app, &visit).await;
    for e in &events {
        if e.before_choice() {
            assert!(e.visitor.is_some() && e.consent == 0, "{e:?}");
        } else {
            assert!(
                e.visitor.is_none() && i64::from(e.consent) == REFUSED,
                "{e:?}"
            );
        }
    }
    assert_eq!(visit.browser_state(), Vec::<String>::new());
    assert_eq!(decisions(&app, &visit).await, [REFUSED]);
    assert_eq!(visit.report["consent_statuses"], serde_json::json!([201]));
    assert_no_raw_ip(&app, &[&visit.origin]).await;
    forget(&app, visit).await;

    // Granted: the consent recorded, and its cookie the one thing kept.
    let visit = drive(&app, &driver, "grant", Some(CHROME_LINUX)).await;
    let events = four_events(&app, &visit).await;
    assert!(one_visitor(&events), "one hash for the visit: {events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.before_choice() || i64::from(e.consent) == GRANTED),
        "{events:?}"
    );
    assert_eq!(visit.browser_state(), ["custodian_consent"]);
    assert_eq!(decisions(&app, &visit).await, [GRANTED]);
    assert_eq!(visit.report["consent_statuses"], serde_json::json!([201]));
    assert_no_raw_ip(&app, &[&visit.origin]).await;
    forget(&app, visit).await;

    // Headless Chromium as itself: every event dropped as a bot, and counted.
    let visit = drive(&app, &driver, "default", None).await;
    assert!(stored_events(&app, &visit).await.is_empty());
    assert_eq!(app.count("analytics_events").await, 0);
    let bots: i64 = sqlx::query(
        "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) AS n FROM analytics_drops \
         WHERE site_id = $1 AND reason = $2",
    )
    .bind(visit.site_id())
    .bind(BOT)
    .fetch_one(&app.raw)
    .await
    .expect("reading analytics_drops")
    .get("n");
    assert_eq!(
        bots, 4,
        "the headless visit's four events, dropped as a bot"
    );

    eprintln!(
        "browser test on {backend:?}: five visits in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    app.stop().await.expect("stopping the suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    every_mode(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    every_mode(Backend::Postgres).await;
}
