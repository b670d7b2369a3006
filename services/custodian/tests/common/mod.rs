//! What the process tests share: the built `custodian` binary started on a
//! free port and awaited through its serving line and health (never by
//! sleeping), killed with SIGKILL, its output kept for failure messages;
//! and a PostgreSQL database kept across restarts.

#![allow(dead_code)] // each test binary uses its own part

use std::{
    net::SocketAddr,
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    sync::mpsc,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_custodian");

/// How long a start (migrations and recovery included) may take.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends the token, and for the shared contracts the service they are for.
#[derive(Clone)]
pub struct Bearer {
    token: MetadataValue<Ascii>,
    service: Option<MetadataValue<Ascii>>,
}

impl Bearer {
    pub fn new(token: &str) -> Self {
        Self {
            token: format!("Bearer {token}").parse().expect("ASCII token"),
            service: None,
        }
    }

    pub fn with_service(mut self, service: &str) -> Self {
        self.service = Some(service.parse().expect("ASCII"));
        self
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.token.clone());
        if let Some(service) = &self.service {
            request
                .metadata_mut()
                .insert("custodian-service", service.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// Everything every start of the server wrote (its log and stderr), for failure
/// messages: a failure may come from an earlier start than the last.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

impl Log {
    pub fn text(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn push(&self, line: &str) {
        if let Ok(mut text) = self.0.lock() {
            text.push_str(line);
            text.push('\n');
        }
    }
}

/// Reads `from` line by line, each line to `log` and, if given, `lines`;
/// reading to the end keeps the server from blocking on a full pipe.
pub fn read_lines(
    from: impl AsyncRead + Unpin + Send + 'static,
    log: Option<Log>,
    lines: Option<mpsc::UnboundedSender<String>>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(from).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if let Some(log) = &log {
                log.push(&line);
            }
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    });
}

/// The running binary; killed when dropped.
pub struct Server {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub channel: Channel,
    pub log: Log,
}

impl Server {
    /// Starts `custodian` on a free port with `data_dir` (and the database
    /// at `database_url`, else SQLite files in `data_dir`), and waits until
    /// health says SERVING: recovery from the last kill is part of the start.
    pub async fn start(data_dir: &Path, database_url: Option<&str>, log: &Log) -> Self {
        Self::start_with(data_dir, database_url, "127.0.0.1:0", &[], log).await
    }

    /// As [`Self::start`], listening on `listen`, with more arguments
    /// (`--target`, `--peer`, `--key-file`, ...).
    pub async fn start_with(
        data_dir: &Path,
        database_url: Option<&str>,
        listen: &str,
        args: &[String],
        log: &Log,
    ) -> Self {
        log.push("--- start ---");
        let mut command = tokio::process::Command::new(BIN);
        command
            .env_clear()
            .env("CUSTODIAN_LOG", "warn")
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(args);
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        Self::start_command(command, log).await
    }

    /// Starts `command` (the binary with whatever arguments and
    /// environment the caller gave it; its stdin, stdout and stderr are set
    /// here) and waits for its serving line and SERVING.
    pub async fn start_command(mut command: tokio::process::Command, log: &Log) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
        let (tx, mut lines) = mpsc::unbounded_channel();
        read_lines(
            child.stdout.take().expect("piped"),
            Some(log.clone()),
            Some(tx),
        );
        read_lines(child.stderr.take().expect("piped"), Some(log.clone()), None);
        let addr = tokio::time::timeout(STARTUP_TIMEOUT, async {
            while let Some(line) = lines.recv().await {
                if let Some(addr) = serving_addr(&line) {
                    return Some(addr);
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no serving line within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                log.text()
            )
        })
        .unwrap_or_else(|| panic!("custodian exited before serving; stderr:\n{}", log.text()));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("URI")
            .connect()
            .await
            .expect("connecting");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health watch")
            .into_inner();
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        tokio::time::timeout(STARTUP_TIMEOUT, async {
            while health
                .message()
                .await
                .unwrap_or_else(|e| panic!("health stream: {e:?}; output:\n{}", log.text()))
                .unwrap_or_else(|| panic!("health stream closed; output:\n{}", log.text()))
                .status
                != serving
            {}
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not SERVING within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                log.text()
            )
        });
        Self {
            child,
            addr,
            channel,
            log: log.clone(),
        }
    }

    /// SIGKILL, and the exit, which must be by that signal: a server that
    /// died by itself before it is a failure of its own.
    pub async fn kill_9(&mut self) {
        self.child.start_kill().expect("sending SIGKILL");
        let status = tokio::time::timeout(STARTUP_TIMEOUT, self.child.wait())
            .await
            .expect("custodian exits after SIGKILL")
            .expect("waiting for custodian");
        assert_eq!(
            status.signal(),
            Some(9),
            "custodian exited with {status} before the kill; stderr:\n{}",
            self.log.text()
        );
    }
}

/// The address in `custodian: serving SERVICES on ADDR (STORAGE)`, or in
/// the JSON line that says the same (`--log-format json`).
pub fn serving_addr(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let line: serde_json::Value = serde_json::from_str(line).ok()?;
        return (line["message"] == "serving")
            .then(|| line["address"].as_str()?.parse().ok())
            .flatten();
    }
    let rest = line.strip_prefix("custodian: serving ")?;
    let (_, after) = rest.split_once(" on ")?;
    after.split_whitespace().next()?.parse().ok()
}

/// A PostgreSQL database kept across the restarts, dropped when the test
/// ends (also when it fails).
pub struct Postgres {
    admin: String,
    name: String,
    pub url: String,
}

impl Postgres {
    /// `None` (the run skipped, with a message) when PostgreSQL cannot be
    /// reached outside CI; under CI that fails the test.
    pub async fn create() -> Option<Self> {
        sqlx::any::install_default_drivers();
        let admin = std::env::var("CUSTODIAN_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let pool = match sqlx::AnyPool::connect(&admin).await {
            Ok(pool) => pool,
            Err(err) if !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                eprintln!(
                    "skipping the PostgreSQL run: cannot reach PostgreSQL ({err}); set CUSTODIAN_TEST_POSTGRES_URL"
                );
                return None;
            }
            Err(err) => panic!("CI=true and PostgreSQL is unreachable: {err}"),
        };
        let name = format!("custodian_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("creating a database");
        pool.close().await;
        let (base, _) = admin.rsplit_once('/').expect("a database name");
        let url = format!("{base}/{name}");
        Some(Self { admin, name, url })
    }
}

impl Postgres {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `sql` on the maintenance database the test started from, never
    /// on this one: it must work while this one refuses connections.
    pub async fn admin(&self, sql: &str) {
        let pool = sqlx::AnyPool::connect(&self.admin)
            .await
            .expect("connecting to the maintenance database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
    }

    /// Takes the database away: new connections refused, every open one
    /// (the server's pools, its native connections) terminated.
    pub async fn take_away(&self) {
        let name = &self.name;
        self.admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            .await;
        self.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
    }

    /// Gives it back: connections accepted again.
    pub async fn give_back(&self) {
        let name = &self.name;
        self.admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            .await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a thread with its own runtime removes the database.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let pool = sqlx::AnyPool::connect(&admin).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&pool)
                .await
                .ok()?;
                pool.close().await;
                Some(())
            })
        })
        .join();
    }
}

/// Keys and credentials as the operator makes them for a suite run as
/// separate servers: `custodian keys init --out DIR` (or `keys split`), and
/// `custodian token --service NAME` with the signing file. Each server gets
/// only its own key file and its own credential ([`Self::args`]).
pub struct SplitKeys {
    pub dir: std::path::PathBuf,
}

impl SplitKeys {
    /// `custodian keys init --out DIR`: new keys.
    pub fn init(dir: &Path) -> Self {
        run_ok(&["keys", "init", "--out", &dir.display().to_string()]);
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// `custodian keys split --key-file SUITE --out DIR`: the suite's one
    /// key file split per service.
    pub fn split(suite_file: &Path, dir: &Path) -> Self {
        run_ok(&[
            "keys",
            "split",
            "--key-file",
            &suite_file.display().to_string(),
            "--out",
            &dir.display().to_string(),
        ]);
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The operator's signing file.
    pub fn signing_file(&self) -> std::path::PathBuf {
        self.dir.join("signing.toml")
    }

    /// The key file of `service`.
    pub fn key_file(&self, service: &str) -> std::path::PathBuf {
        self.dir.join(format!("{service}.toml"))
    }

    /// The credential of `service`, issued once into the folder; `None`
    /// for a service that calls no other.
    pub fn credential(&self, service: &str) -> Option<std::path::PathBuf> {
        let path = self.dir.join(format!("{service}.token"));
        if !path.exists() {
            let output = command(&[
                "token",
                "--key-file",
                &self.signing_file().display().to_string(),
                "--service",
                service,
                "--ttl",
                "24h",
            ]);
            if !output.status.success() {
                return None;
            }
            std::fs::write(&path, &output.stdout).expect("writing the credential");
        }
        Some(path)
    }

    /// [`Self::args`], and what else a `--target` server needs: the suite's
    /// erasure log (a SQLite file in `dir`, apart from every database) and,
    /// for a service that mails, an outbox asked for (in `dir/NAME/outbox`).
    pub fn target_args(&self, service: &str, dir: &Path) -> Vec<String> {
        let mut args = self.args(service);
        args.push("--erasure-log".to_owned());
        args.push(format!(
            "sqlite://{}?mode=rwc",
            dir.join("erasures.db").display()
        ));
        if matches!(service, "tickets" | "dsr") {
            args.push("--mail-outbox".to_owned());
            args.push(dir.join(service).join("outbox").display().to_string());
        }
        args
    }

    /// `--target NAME --key-file ... [--service-token-file ...]`: what the
    /// Deployment of `service` is given.
    pub fn args(&self, service: &str) -> Vec<String> {
        let mut args = vec![
            "--target".to_owned(),
            service.to_owned(),
            "--key-file".to_owned(),
            self.key_file(service).display().to_string(),
        ];
        if let Some(credential) = self.credential(service) {
            args.push("--service-token-file".to_owned());
            args.push(credential.display().to_string());
        }
        args
    }

    /// A caller's token from `custodian token` with the signing file.
    pub fn token(&self, subject: &str, purposes: &[&str], tenant: Option<&str>) -> String {
        let signing = self.signing_file().display().to_string();
        let mut args = vec!["token", "--key-file", &signing, "--subject", subject];
        for purpose in purposes {
            args.extend(["--purpose", purpose]);
        }
        if let Some(tenant) = tenant {
            args.extend(["--tenant", tenant]);
        }
        let output = run_ok(&args);
        String::from_utf8(output.stdout)
            .expect("a token is ASCII")
            .trim()
            .to_owned()
    }
}

/// Runs `custodian ARGS` to its end, with a clean environment.
pub fn command(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .env_clear()
        .env("CUSTODIAN_LOG", "warn")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {BIN}: {e}"))
}

/// As [`command`], which must succeed.
pub fn run_ok(args: &[&str]) -> std::process::Output {
    let output = command(args);
    assert!(
        output.status.success(),
        "custodian {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
