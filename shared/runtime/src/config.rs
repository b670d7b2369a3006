//! Configuration: defaults that work on a laptop, overridden by an optional
//! TOML file, then by `CUSTODIAN_*` environment variables, then by flags.
//!
//! Flags and environment come through clap (each flag names its variable in
//! `--help`); the file is read here and fills only what neither of them set.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde::Deserialize;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Server settings as given on the command line or in the environment; any
/// of them may be missing.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// Optional TOML file with any of the settings below (same names, in snake_case).
    #[arg(long, global = true, env = "CUSTODIAN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve gRPC on [default: 127.0.0.1:50051].
    #[arg(long, global = true, env = "CUSTODIAN_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Database URL: sqlite://PATH or postgres://... [default: one SQLite file per service in the data folder].
    #[arg(
        long,
        env = "CUSTODIAN_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// A file holding the database URL (a mounted Secret), instead of --database-url.
    #[arg(
        long,
        env = "CUSTODIAN_DATABASE_URL_FILE",
        value_name = "FILE",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<PathBuf>,

    /// Folder for SQLite files and development keys [default: ./.custodian].
    #[arg(long, global = true, env = "CUSTODIAN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log filter, in tracing's EnvFilter syntax [default: info].
    #[arg(long, global = true, env = "CUSTODIAN_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Log format [default: text].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub log_format: Option<LogFormat>,

    /// OTLP/gRPC endpoint to export traces to, e.g. http://otel-collector:4317 [default: no export].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,

    /// Address to serve Prometheus metrics on, at /metrics: a port of its
    /// own, never the gRPC one, e.g. 0.0.0.0:9464 [default: not served].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_METRICS_LISTEN",
        value_name = "ADDR"
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// Share of the traces that start here which are exported, from 0 to 1;
    /// a trace a caller started keeps the caller's decision [default: 1].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_TRACE_SAMPLE_RATIO",
        value_name = "RATIO",
        value_parser = parse_ratio
    )]
    pub trace_sample_ratio: Option<f64>,

    /// Longest time one request may take [default: 10s].
    #[arg(long, global = true, env = "CUSTODIAN_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Requests served at once; more are refused with RESOURCE_EXHAUSTED [default: 1024].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_MAX_CONCURRENT_REQUESTS",
        value_name = "N"
    )]
    pub max_concurrent_requests: Option<usize>,

    /// Largest request message accepted, in bytes [default: 4194304].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_MAX_MESSAGE_BYTES",
        value_name = "BYTES"
    )]
    pub max_message_bytes: Option<usize>,

    /// Database connections per service [default: 16].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_DATABASE_MAX_CONNECTIONS",
        value_name = "N"
    )]
    pub database_max_connections: Option<u32>,

    /// After SIGTERM, how long to keep serving while reporting NOT_SERVING, so
    /// load balancers stop sending before the server drains [default: 0s].
    #[arg(long, global = true, env = "CUSTODIAN_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,

    /// Key file: master keys, blind-index key, token keys; with --target,
    /// that service's own, which cannot sign tokens [default with no
    /// --target: DATA_DIR/keys.toml, created on first start; required with --target].
    #[arg(long, global = true, env = "CUSTODIAN_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// How often each service deletes expired data by itself; 0s turns the
    /// schedule off (SweepExpired still works) [default: 1h].
    #[arg(long, global = true, env = "CUSTODIAN_RETENTION_SWEEP_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retention_sweep_interval: Option<Duration>,

    /// Where another service is served, NAME=URL (repeat), e.g.
    /// identity=http://identity:50051; also CUSTODIAN_PEER_<NAME>=URL. A
    /// service run in this process is called through this process's own
    /// port [default: none].
    #[arg(long = "peer", global = true, value_name = "NAME=URL", value_parser = parse_peer)]
    pub peers: Vec<(String, String)>,

    /// Longest wait for another service: a call's answer, or the next
    /// message of a stream; a call made for a caller also ends with the
    /// caller's deadline [default: 5s].
    #[arg(long, global = true, env = "CUSTODIAN_PEER_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub peer_timeout: Option<Duration>,

    /// The service's credential to call other services with, from
    /// `custodian token --service NAME` (a Secret in Kubernetes); required
    /// with --target for a service that calls others [default: the
    /// all-in-one mints its services' own].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_SERVICE_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub service_token_file: Option<PathBuf>,

    /// SMTP server for outgoing mail: smtp://host:port, or
    /// smtps://user:password@host:465, or smtp://user:password@host:587?tls=required
    /// [default: .eml files in DATA_DIR/outbox].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_SMTP_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub smtp_url: Option<String>,

    /// A file holding the SMTP URL (a mounted Secret), instead of --smtp-url.
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_SMTP_URL_FILE",
        value_name = "FILE",
        conflicts_with = "smtp_url"
    )]
    pub smtp_url_file: Option<PathBuf>,

    /// The sender of outgoing mail [default: support@custodian.localhost].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_MAIL_FROM",
        value_name = "ADDRESS"
    )]
    pub mail_from: Option<String>,

    /// Ticket SLA targets per priority, PRIORITY=FIRST_RESPONSE/RESOLUTION,
    /// comma-separated [default: urgent=1h/4h,high=4h/1d,normal=8h/3d,low=1d/7d].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_TICKET_SLA",
        value_name = "TARGETS"
    )]
    pub ticket_sla: Option<String>,

    /// Proxies whose X-Forwarded-For names the client of an analytics
    /// beacon, as addresses or CIDR blocks, comma-separated (e.g. the
    /// ingress's 10.0.0.0/8) [default: none: the connection's peer is the client].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_TRUSTED_PROXIES",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    pub trusted_proxies: Option<Vec<String>>,

    /// Analytics events that may wait for the database; beyond them the
    /// collector answers RESOURCE_EXHAUSTED (HTTP 429), so memory stays
    /// bounded when the database falls behind [default: 50000].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_ANALYTICS_QUEUE_EVENTS",
        value_name = "N"
    )]
    pub analytics_queue_events: Option<usize>,

    /// The fewest visitors an analytics report cell may count; smaller
    /// cells are merged or left out (at least 2) [default: 5].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_REPORT_MIN_VISITORS",
        value_name = "K"
    )]
    pub report_min_visitors: Option<u32>,

    /// How long a completed access request's export bundle can be
    /// downloaded before it is deleted [default: 7d].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_DSR_EXPORT_TTL",
        value_name = "DURATION",
        value_parser = humantime::parse_duration
    )]
    pub dsr_export_ttl: Option<Duration>,

    /// Gone: data-subject requests reach every service whose declarations
    /// say it holds personal data. Read only to refuse it with that word,
    /// rather than as an unknown setting.
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_DSR_SERVICES",
        value_name = "NAMES",
        hide = true
    )]
    pub dsr_services: Option<String>,

    /// Where erasures are recorded, apart from the databases they erase,
    /// so a restored database does not bring an erased person back:
    /// sqlite://PATH or postgres://... (never a service's own database);
    /// required with --target [default: DATA_DIR/erasures.db].
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_ERASURE_LOG",
        value_name = "URL",
        hide_env_values = true
    )]
    pub erasure_log: Option<String>,

    /// A file holding the erasure log's URL (a mounted Secret), instead of --erasure-log.
    #[arg(
        long,
        global = true,
        env = "CUSTODIAN_ERASURE_LOG_FILE",
        value_name = "FILE",
        conflicts_with = "erasure_log"
    )]
    pub erasure_log_file: Option<PathBuf>,

    /// Write mail as .eml files to DIR instead of sending it; with --target
    /// a service that mails needs this or --smtp-url [default: DATA_DIR/outbox
    /// without --smtp-url, all-in-one only].
    #[arg(long, global = true, env = "CUSTODIAN_MAIL_OUTBOX", value_name = "DIR")]
    pub mail_outbox: Option<PathBuf>,

    /// How long an outbox file is kept before the retention sweep deletes
    /// it [default: 30d].
    #[arg(long, global = true, env = "CUSTODIAN_MAIL_OUTBOX_RETENTION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub mail_outbox_retention: Option<Duration>,
}

/// "NAME=URL".
fn parse_peer(raw: &str) -> Result<(String, String), String> {
    let (name, url) = raw
        .split_once('=')
        .ok_or_else(|| "expected NAME=URL".to_owned())?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err("the name is a service name, e.g. identity".to_owned());
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("the URL starts with http:// or https://".to_owned());
    }
    Ok((name.to_owned(), url.to_owned()))
}

/// A share from 0 to 1 (a sampling ratio).
fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("a number from 0 to 1, e.g. 0.1".to_owned()),
    }
}

/// The same settings as read from a file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    database_url_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    otlp_endpoint: Option<String>,
    metrics_listen: Option<SocketAddr>,
    trace_sample_ratio: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    max_concurrent_requests: Option<usize>,
    max_message_bytes: Option<usize>,
    database_max_connections: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    key_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    retention_sweep_interval: Option<Duration>,
    #[serde(default)]
    peers: std::collections::BTreeMap<String, String>,
    #[serde(default, with = "humantime_serde")]
    peer_timeout: Option<Duration>,
    service_token_file: Option<PathBuf>,
    smtp_url: Option<String>,
    smtp_url_file: Option<PathBuf>,
    mail_from: Option<String>,
    ticket_sla: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    analytics_queue_events: Option<usize>,
    report_min_visitors: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    dsr_export_ttl: Option<Duration>,
    /// Gone (see [`ServerArgs::dsr_services`]): any value is refused.
    dsr_services: Option<toml::Value>,
    erasure_log: Option<String>,
    erasure_log_file: Option<PathBuf>,
    mail_outbox: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    mail_outbox_retention: Option<Duration>,
}

/// Resolved settings: every value known.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None` means one SQLite file per service under `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub log: String,
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<String>,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,

    /// Share of the traces started here that are exported (0 to 1).
    pub trace_sample_ratio: f64,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub max_message_bytes: usize,
    pub database_max_connections: u32,
    pub shutdown_grace: Duration,
    pub key_file: Option<PathBuf>,
    pub retention_sweep_interval: Duration,
    /// Service name to URL.
    pub peers: std::collections::BTreeMap<String, String>,
    /// Longest wait for a peer's answer or its stream's next message.
    pub peer_timeout: Duration,
    pub service_token_file: Option<PathBuf>,
    /// May carry a password: never shown.
    pub smtp_url: Option<String>,
    pub mail_from: String,
    /// Ticket SLA targets, as `--ticket-sla` takes them.
    pub ticket_sla: Option<String>,
    /// Proxies trusted to name the client (addresses or CIDR blocks).
    pub trusted_proxies: Vec<String>,
    /// Analytics events that may wait for the database.
    pub analytics_queue_events: usize,
    /// k of the analytics reports.
    pub report_min_visitors: u32,
    /// How long an export bundle is kept for download.
    pub dsr_export_ttl: Duration,
    /// The erasure log's URL; `None` means `DATA_DIR/erasures.db` (see
    /// [`Config::erasure_log_url`]). May carry a password: never shown.
    pub erasure_log: Option<String>,
    /// The outbox folder asked for explicitly.
    pub mail_outbox: Option<PathBuf>,
    /// How long outbox files are kept.
    pub mail_outbox_retention: Duration,
}

// The database URL may carry a password, so Debug leaves it out.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field(
                "database",
                &self.database_url.as_deref().map(crate::database::scheme_of),
            )
            .field("data_dir", &self.data_dir)
            .field("log", &self.log)
            .field("log_format", &self.log_format)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("metrics_listen", &self.metrics_listen)
            .field("trace_sample_ratio", &self.trace_sample_ratio)
            .field("request_timeout", &self.request_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("database_max_connections", &self.database_max_connections)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("key_file", &self.key_file)
            .field("retention_sweep_interval", &self.retention_sweep_interval)
            .field("peers", &self.peers)
            .field("peer_timeout", &self.peer_timeout)
            .field("service_token_file", &self.service_token_file)
            .field(
                "smtp",
                &self.smtp_url.as_deref().map(crate::database::scheme_of),
            )
            .field("mail_from", &self.mail_from)
            .field("ticket_sla", &self.ticket_sla)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("analytics_queue_events", &self.analytics_queue_events)
            .field("report_min_visitors", &self.report_min_visitors)
            .field("dsr_export_ttl", &self.dsr_export_ttl)
            .field(
                "erasure_log",
                &self.erasure_log.as_deref().map(crate::database::scheme_of),
            )
            .field("mail_outbox", &self.mail_outbox)
            .field("mail_outbox_retention", &self.mail_outbox_retention)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: None,
            data_dir: PathBuf::from(".custodian"),
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            metrics_listen: None,
            trace_sample_ratio: 1.0,
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 1024,
            max_message_bytes: 4 * 1024 * 1024,
            database_max_connections: 16,
            shutdown_grace: Duration::ZERO,
            key_file: None,
            retention_sweep_interval: Duration::from_secs(60 * 60),
            peers: Default::default(),
            peer_timeout: Duration::from_secs(5),
            service_token_file: None,
            smtp_url: None,
            mail_from: "support@custodian.localhost".to_owned(),
            ticket_sla: None,
            trusted_proxies: Vec::new(),
            analytics_queue_events: 50_000,
            report_min_visitors: 5,
            dsr_export_ttl: Duration::from_secs(7 * 86_400),
            erasure_log: None,
            mail_outbox: None,
            mail_outbox_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

impl Config {
    /// Layers flags/environment over the optional file over the defaults.
    pub fn resolve(args: ServerArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        // A list that had to be kept by hand left a new service out of
        // data-subject requests without a word; an operator who still sets
        // it is told where the targets come from now.
        anyhow::ensure!(
            args.dsr_services.is_none() && file.dsr_services.is_none(),
            "--dsr-services (CUSTODIAN_DSR_SERVICES, dsr_services in the config file) is gone: \
             data-subject requests reach every service whose declarations say it holds personal \
             data (see `custodian datamap`), and dsr refuses to start without a --peer for each \
             one it does not run; remove the setting"
        );
        let d = Config::default();
        Ok(Self {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            database_url: secret(
                "database URL",
                args.database_url.or(file.database_url),
                args.database_url_file.or(file.database_url_file),
            )?,
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            log: args.log.or(file.log).unwrap_or(d.log),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            otlp_endpoint: args.otlp_endpoint.or(file.otlp_endpoint),
            metrics_listen: match args.metrics_listen.or(file.metrics_listen) {
                // Metrics on the gRPC port would reach every caller of the
                // Service in front of it.
                Some(addr)
                    if addr.port() != 0
                        && addr.port()
                            == args.listen.or(file.listen).unwrap_or(d.listen).port() =>
                {
                    anyhow::bail!("--metrics-listen must be a port of its own, not the gRPC port")
                }
                addr => addr,
            },
            trace_sample_ratio: match args.trace_sample_ratio.or(file.trace_sample_ratio) {
                Some(ratio) => parse_ratio(&ratio.to_string())
                    .map_err(|err| anyhow::anyhow!("trace_sample_ratio: {err}"))?,
                None => d.trace_sample_ratio,
            },
            request_timeout: args
                .request_timeout
                .or(file.request_timeout)
                .unwrap_or(d.request_timeout),
            max_concurrent_requests: args
                .max_concurrent_requests
                .or(file.max_concurrent_requests)
                .unwrap_or(d.max_concurrent_requests),
            max_message_bytes: args
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(d.max_message_bytes),
            database_max_connections: args
                .database_max_connections
                .or(file.database_max_connections)
                .unwrap_or(d.database_max_connections),
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(d.shutdown_grace),
            key_file: args.key_file.or(file.key_file),
            retention_sweep_interval: args
                .retention_sweep_interval
                .or(file.retention_sweep_interval)
                .unwrap_or(d.retention_sweep_interval),
            peers: {
                // File, then CUSTODIAN_PEER_<NAME>, then flags.
                let mut peers = file.peers;
                // A setting of its own under the same prefix
                // (CUSTODIAN_PEER_TIMEOUT) names no peer.
                let settings = setting_variables();
                for (key, url) in std::env::vars() {
                    if settings.contains(&key) {
                        continue;
                    }
                    if let Some(name) = key.strip_prefix("CUSTODIAN_PEER_") {
                        let (name, url) = parse_peer(&format!("{}={url}", name.to_lowercase()))
                            .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
                        peers.insert(name, url);
                    }
                }
                peers.extend(args.peers);
                peers
            },
            // Zero would fail every call to another service.
            peer_timeout: match args.peer_timeout.or(file.peer_timeout) {
                Some(t) if t.is_zero() => anyhow::bail!("--peer-timeout must be above zero"),
                t => t.unwrap_or(d.peer_timeout),
            },
            service_token_file: args.service_token_file.or(file.service_token_file),
            smtp_url: secret(
                "SMTP URL",
                args.smtp_url.or(file.smtp_url),
                args.smtp_url_file.or(file.smtp_url_file),
            )?,
            mail_from: args.mail_from.or(file.mail_from).unwrap_or(d.mail_from),
            ticket_sla: args.ticket_sla.or(file.ticket_sla),
            trusted_proxies: args
                .trusted_proxies
                .or(file.trusted_proxies)
                .unwrap_or(d.trusted_proxies),
            analytics_queue_events: args
                .analytics_queue_events
                .or(file.analytics_queue_events)
                .unwrap_or(d.analytics_queue_events),
            report_min_visitors: args
                .report_min_visitors
                .or(file.report_min_visitors)
                .unwrap_or(d.report_min_visitors),
            dsr_export_ttl: args
                .dsr_export_ttl
                .or(file.dsr_export_ttl)
                .unwrap_or(d.dsr_export_ttl),
            erasure_log: secret(
                "erasure log URL",
                args.erasure_log.or(file.erasure_log),
                args.erasure_log_file.or(file.erasure_log_file),
            )?,
            mail_outbox: args.mail_outbox.or(file.mail_outbox),
            mail_outbox_retention: args
                .mail_outbox_retention
                .or(file.mail_outbox_retention)
                .unwrap_or(d.mail_outbox_retention),
        })
    }

    /// The erasure log's URL: the configured one, or a SQLite file of its
    /// own in the data folder, apart from the services' files.
    pub fn erasure_log_url(&self) -> String {
        match &self.erasure_log {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("erasures.db").display()
            ),
        }
    }

    /// Where mail goes when it is not sent over SMTP: the folder asked for,
    /// else `DATA_DIR/outbox`.
    pub fn mail_outbox_dir(&self) -> PathBuf {
        self.mail_outbox
            .clone()
            .unwrap_or_else(|| self.data_dir.join("outbox"))
    }

    /// The database URL for one service: the configured one, or that
    /// service's own SQLite file in the data folder.
    pub fn database_url_for(&self, service: &str) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(format!("{service}.db")).display()
            ),
        }
    }
}

/// A secret setting, given as a value or as a file holding it (a mounted
/// Kubernetes Secret: values in the environment leak into crash dumps, child
/// processes and `kubectl describe`). Read once, at start; errors name the
/// setting and the file, never what it holds.
fn secret(
    setting: &str,
    value: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("the {setting} is given both as a value and as a file: give one")
        }
        (value, None) => Ok(value),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the {setting} from {}", path.display()))?;
            let value = text.trim();
            anyhow::ensure!(
                !value.is_empty(),
                "the {setting} file {} is empty",
                path.display()
            );
            Ok(Some(value.to_owned()))
        }
    }
}

/// The environment variables the server's settings read, from their clap
/// definitions.
fn setting_variables() -> Vec<String> {
    use clap::Args as _;
    ServerArgs::augment_args(clap::Command::new("custodian"))
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// Environment names under `CUSTODIAN_` that are namespaces rather than
/// settings: peers by service name, and the test and benchmark harnesses'
/// own variables (read by them, never by the server).
const VARIABLE_NAMESPACES: &[&str] = &["CUSTODIAN_PEER_", "CUSTODIAN_TEST_", "CUSTODIAN_BENCH_"];

/// Refuses `CUSTODIAN_*` variables that name no setting, so that a typo in
/// a manifest (`CUSTODIAN_DATABSE_URL`) stops the process at start instead of
/// leaving the setting at its default. `known` is every variable the
/// command line reads (from clap's definitions, so the list is not written
/// twice). The error names the variables, never their values.
pub fn refuse_unknown_variables<'a>(
    known: impl IntoIterator<Item = &'a str>,
    environment: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> anyhow::Result<()> {
    let known: std::collections::BTreeSet<&str> = known.into_iter().collect();
    let mut unknown: Vec<String> = environment
        .into_iter()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .filter(|name| name.starts_with("CUSTODIAN_"))
        .filter(|name| !known.contains(name.as_str()))
        .filter(|name| !VARIABLE_NAMESPACES.iter().any(|p| name.starts_with(p)))
        .collect();
    unknown.sort();
    anyhow::ensure!(
        unknown.is_empty(),
        "unknown environment variable{} {}: no setting has {} name (see --help for every \
         CUSTODIAN_* setting; CUSTODIAN_PEER_<NAME> names a peer)",
        if unknown.len() == 1 { "" } else { "s" },
        unknown.join(", "),
        if unknown.len() == 1 { "that" } else { "those" },
    );
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custodian.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nrequest_timeout = \"3s\"\nmax_concurrent_requests = 7\n",
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(path),
            max_concurrent_requests: Some(9),
            ..Default::default()
        };
        let config = Config::resolve(args).unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.request_timeout, Duration::from_secs(3));
        assert_eq!(config.max_concurrent_requests, 9);
        assert_eq!(
            config.max_message_bytes,
            Config::default().max_message_bytes
        );
    }

    #[test]
    fn metrics_are_off_by_default_and_never_on_the_grpc_port() {
        assert_eq!(Config::default().metrics_listen, None);
        let args = |listen: &str, metrics: &str| ServerArgs {
            listen: Some(listen.parse().unwrap()),
            metrics_listen: Some(metrics.parse().unwrap()),
            ..Default::default()
        };
        let config = Config::resolve(args("0.0.0.0:50051", "0.0.0.0:9464")).unwrap();
        assert_eq!(config.metrics_listen, Some("0.0.0.0:9464".parse().unwrap()));
        let err = Config::resolve(args("0.0.0.0:50051", "127.0.0.1:50051"))
            .expect_err("the gRPC port is refused");
        assert!(err.to_string().contains("--metrics-listen"), "{err}");
        assert!(Config::resolve(args("127.0.0.1:0", "127.0.0.1:0")).is_ok());
    }

    #[test]
    fn the_peer_timeout_is_a_few_seconds_and_never_zero() {
        assert_eq!(Config::default().peer_timeout, Duration::from_secs(5));
        let args = |t: u64| ServerArgs {
            peer_timeout: Some(Duration::from_millis(t)),
            ..Default::default()
        };
        assert_eq!(
            Config::resolve(args(1500)).unwrap().peer_timeout,
            Duration::from_millis(1500)
        );
        let err = Config::resolve(args(0)).expect_err("zero is refused");
        assert!(err.to_string().contains("--peer-timeout"), "{err}");
    }

    #[test]
    fn the_trace_sample_ratio_is_a_share() {
        assert_eq!(Config::default().trace_sample_ratio, 1.0);
        for (given, ok) in [
            ("0", true),
            ("0.25", true),
            ("1", true),
            ("1.5", false),
            ("-0.1", false),
            ("NaN", false),
            ("all", false),
        ] {
            assert_eq!(parse_ratio(given).is_ok(), ok, "{given}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custodian.toml");
        std::fs::write(&path, "trace_sample_ratio = 2.0\n").unwrap();
        let err = Config::resolve(ServerArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect_err("above 1 is refused");
        assert!(err.to_string().contains("trace_sample_ratio"), "{err}");
        std::fs::write(&path, "trace_sample_ratio = 0.1\n").unwrap();
        let config = Config::resolve(ServerArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.trace_sample_ratio, 0.1);
    }

    #[test]
    fn the_erasure_log_and_the_outbox_live_in_the_data_folder_unless_set() {
        let config = Config {
            data_dir: PathBuf::from("/srv/custodian"),
            ..Config::default()
        };
        assert_eq!(
            config.erasure_log_url(),
            "sqlite:///srv/custodian/erasures.db?mode=rwc"
        );
        assert_eq!(config.mail_outbox_dir(), Path::new("/srv/custodian/outbox"));
        assert_eq!(
            config.mail_outbox_retention,
            Duration::from_secs(30 * 86_400)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custodian.toml");
        std::fs::write(
            &path,
            "erasure_log = \"postgres://u:secret@db/erasures\"\nmail_outbox = \"/mail\"\n\
             mail_outbox_retention = \"7d\"\n",
        )
        .unwrap();
        let config = Config::resolve(ServerArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.erasure_log_url(), "postgres://u:secret@db/erasures");
        assert_eq!(config.mail_outbox_dir(), Path::new("/mail"));
        assert_eq!(
            config.mail_outbox_retention,
            Duration::from_secs(7 * 86_400)
        );
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[test]
    fn the_dsr_services_list_is_refused_with_where_targets_come_from() {
        let err = Config::resolve(ServerArgs {
            dsr_services: Some("identity,tickets".into()),
            ..Default::default()
        })
        .expect_err("the flag is refused");
        assert!(err.to_string().contains("declarations"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custodian.toml");
        std::fs::write(&path, "dsr_services = [\"identity\"]\n").unwrap();
        let err = Config::resolve(ServerArgs {
            config: Some(path),
            ..Default::default()
        })
        .expect_err("the file key is refused");
        assert!(err.to_string().contains("--dsr-services"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custodian.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\nlisten_port = 1\n").unwrap();
        let args = ServerArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(Config::resolve(args).is_err());
    }

    #[test]
    fn secrets_come_from_files_trimmed_and_never_from_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "postgres://u:secret@db/identity\n").unwrap();
        let config = Config::resolve(ServerArgs {
            database_url_file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            config.database_url.as_deref(),
            Some("postgres://u:secret@db/identity")
        );
        let both = Config::resolve(ServerArgs {
            database_url: Some("postgres://other".into()),
            database_url_file: Some(path.clone()),
            ..Default::default()
        })
        .expect_err("a value and a file are refused");
        assert!(!format!("{both:#}").contains("secret"));
        let missing = Config::resolve(ServerArgs {
            smtp_url_file: Some(dir.path().join("absent")),
            ..Default::default()
        })
        .expect_err("a missing file is an error");
        assert!(format!("{missing:#}").contains("SMTP URL"), "{missing:#}");
    }

    #[test]
    fn unknown_variables_are_named_and_known_ones_pass() {
        let env = |names: &[&str]| {
            names
                .iter()
                .map(|n| (n.into(), "postgres://u:secret@db".into()))
                .collect::<Vec<(std::ffi::OsString, std::ffi::OsString)>>()
        };
        let known = ["CUSTODIAN_DATABASE_URL", "CUSTODIAN_LOG"];
        refuse_unknown_variables(
            known,
            env(&[
                "CUSTODIAN_LOG",
                "CUSTODIAN_PEER_IDENTITY",
                "CUSTODIAN_TEST_POSTGRES_URL",
                "PATH",
                "IDENTITY_SERVICE_HOST",
            ]),
        )
        .unwrap();
        let err = refuse_unknown_variables(
            known,
            env(&["CUSTODIAN_DATABSE_URL", "CUSTODIAN_SERVICE_HOST"]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CUSTODIAN_DATABSE_URL"), "{err}");
        assert!(err.contains("CUSTODIAN_SERVICE_HOST"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn default_database_is_a_sqlite_file_per_service() {
        let config = Config::default();
        assert_eq!(
            config.database_url_for("identity"),
            "sqlite://.custodian/identity.db?mode=rwc"
        );
        let debug = format!(
            "{:?}",
            Config {
                database_url: Some("postgres://u:secret@db/x".into()),
                ..Config::default()
            }
        );
        assert!(!debug.contains("secret"));
    }
}
