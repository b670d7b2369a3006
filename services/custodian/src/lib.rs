//! What the `custodian` binary runs: the list of services, which of them a
//! `--target` selects, the keys and credentials they need, and the key
//! commands that must see the databases of a key file's services.
//!
//! Who holds what: a server run with `--target NAME` holds NAME's key file
//! (its own master keys, the blind-index key, the token public keys) and
//! NAME's service credential, issued by the operator; it refuses a key file
//! that could sign tokens. The all-in-one process (no `--target`) holds the
//! suite's one key file, signing key included, and mints each of its
//! services' credentials itself: one process, one file, no pods.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use custodian_kit::{
    Context, KitService,
    erasure::ErasureLog,
    gate::PeerCalls,
    mail::ServiceMailer,
    peers::{Credential, Peers},
};
use custodian_privacy::{
    Privacy, Purpose, TokenAuthenticator,
    audit::AuditLog,
    keys::{KeyFile, Role},
    token::{TokenIssuer, TokenKind, TokenVerifier, generate_key_pair},
    vault::Vault,
};
use custodian_runtime::{Application, Config, Database, ServiceModule, time::Clock};
use sqlx::Row as _;

/// Which services one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Every service, in one process on one port (development, small installs).
    All,
    /// Identity & contacts only (one Kubernetes Deployment).
    Identity,
    /// Support tickets and inquiries only.
    Tickets,
    /// Web analytics and Platform usage only.
    Analytics,
    /// Feedback, testimonials and surveys only.
    Feedback,
    /// Data-subject requests only (reaches the others through `--peer`).
    Dsr,
}

impl Target {
    /// The service a `--target` other than `all` runs.
    fn service(self) -> Option<&'static str> {
        match self {
            Target::All => None,
            Target::Identity => Some(custodian_identity::NAME),
            Target::Tickets => Some(custodian_tickets::NAME),
            Target::Analytics => Some(custodian_analytics::NAME),
            Target::Feedback => Some(custodian_feedback::NAME),
            Target::Dsr => Some(custodian_dsr::NAME),
        }
    }
}

/// One service of the suite: a line of the binary's table.
pub struct Service {
    pub name: &'static str,
    pub construct: fn(Context) -> anyhow::Result<Arc<dyn KitService>>,
    /// What its service credential may do when it calls others.
    pub peer_purposes: &'static [Purpose],
    /// The methods of others it calls: all its credential may call.
    pub peer_calls: &'static [&'static str],
}

impl Service {
    fn calls(&self) -> PeerCalls {
        PeerCalls {
            service: self.name,
            purposes: self.peer_purposes,
            calls: self.peer_calls,
        }
    }
}

fn identity(context: Context) -> anyhow::Result<Arc<dyn KitService>> {
    Ok(Arc::new(custodian_identity::Identity::new(context)))
}

fn tickets(context: Context) -> anyhow::Result<Arc<dyn KitService>> {
    let sla = match &context.config.ticket_sla {
        Some(text) => custodian_tickets::SlaPolicy::parse(text).context("--ticket-sla")?,
        None => custodian_tickets::SlaPolicy::default(),
    };
    Ok(Arc::new(custodian_tickets::Tickets::new(context, sla)))
}

fn analytics(context: Context) -> anyhow::Result<Arc<dyn KitService>> {
    Ok(Arc::new(custodian_analytics::Analytics::new(context)?))
}

fn feedback(context: Context) -> anyhow::Result<Arc<dyn KitService>> {
    Ok(Arc::new(custodian_feedback::Feedback::new(context)))
}

fn dsr(context: Context) -> anyhow::Result<Arc<dyn KitService>> {
    Ok(Arc::new(custodian_dsr::Dsr::new(context)))
}

/// Every service of the suite, by `--target` name. A new service is one
/// more entry here: data-subject requests reach it as soon as its
/// declarations say it holds personal data.
pub const SERVICES: &[Service] = &[
    Service {
        name: custodian_identity::NAME,
        construct: identity,
        peer_purposes: custodian_identity::PEER_PURPOSES,
        peer_calls: custodian_identity::PEER_CALLS,
    },
    Service {
        name: custodian_tickets::NAME,
        construct: tickets,
        peer_purposes: custodian_tickets::PEER_PURPOSES,
        peer_calls: custodian_tickets::PEER_CALLS,
    },
    Service {
        name: custodian_analytics::NAME,
        construct: analytics,
        peer_purposes: custodian_analytics::PEER_PURPOSES,
        peer_calls: custodian_analytics::PEER_CALLS,
    },
    Service {
        name: custodian_feedback::NAME,
        construct: feedback,
        peer_purposes: custodian_feedback::PEER_PURPOSES,
        peer_calls: custodian_feedback::PEER_CALLS,
    },
    Service {
        name: custodian_dsr::NAME,
        construct: dsr,
        peer_purposes: custodian_dsr::PEER_PURPOSES,
        peer_calls: custodian_dsr::PEER_CALLS,
    },
];

fn selected(target: Target) -> impl Iterator<Item = &'static Service> {
    selected_of(SERVICES, target)
}

fn selected_of(table: &[Service], target: Target) -> impl Iterator<Item = &Service> {
    table
        .iter()
        .filter(move |s| target.service().is_none_or(|name| s.name == name))
}

/// Short names of the services `target` runs.
pub fn service_names(target: Target) -> Vec<&'static str> {
    selected(target).map(|s| s.name).collect()
}

fn service_named(name: &str) -> Option<&'static Service> {
    SERVICES.iter().find(|s| s.name == name)
}

fn known_names() -> String {
    SERVICES
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What every service of the suite calls on the others, whichever this
/// process runs: the gate admits a service credential to these calls only.
pub fn peer_calls() -> Vec<PeerCalls> {
    SERVICES.iter().map(Service::calls).collect()
}

/// The path of the subject contract's first call: a service that declares
/// it calls it on others carries out data-subject requests.
const LOCATE_SUBJECT_DATA: &str = "/custodian.subject.v1.SubjectDataService/LocateSubjectData";

/// The services of `table` that hold personal data, read from their own
/// declarations (their records and bulk holdings, as the data map shows
/// them), whichever of them this process runs. Each is built on a database
/// that is never opened and dropped at once: services do nothing before
/// they are started.
fn subject_services(
    table: &[Service],
    config: &Config,
    keys: &KeyFile,
    clock: &Arc<dyn Clock>,
    mailer: &Arc<dyn custodian_mail::Mailer>,
    erasure_log: &ErasureLog,
) -> anyhow::Result<Vec<&'static str>> {
    let keyring = Arc::new(keys.keyring()?);
    let index = Arc::new(keys.blind_index_key()?);
    let mut holders = Vec::new();
    for service in table {
        let name = service.name;
        let db = Database::connect_lazy("sqlite::memory:", 1)?;
        let vault = Vault::new(name, db.clone(), keyring.clone(), index.clone());
        let context = Context {
            name,
            db: db.clone(),
            privacy: Privacy::new(AuditLog::new(name, db, clock.clone()), vault.clone()),
            clock: clock.clone(),
            peers: Peers::none(),
            mailer: Arc::new(ServiceMailer::new(name, vault, mailer.clone())),
            erasure_log: erasure_log.clone(),
            config: config.clone(),
            subject_services: Arc::from([]),
        };
        let built = (service.construct)(context).with_context(|| format!("building {name}"))?;
        if custodian_kit::module::holds_personal_data(built.as_ref()) {
            holders.push(name);
        }
    }
    Ok(holders)
}

/// Refuses a process whose service carries out data-subject requests but
/// cannot reach a service holding personal data: neither run here nor
/// given with `--peer`. A request would otherwise skip that service's
/// records without a word.
fn check_subject_reach(
    table: &[Service],
    target: Target,
    config: &Config,
    holders: &[&'static str],
) -> anyhow::Result<()> {
    let local: Vec<&str> = selected_of(table, target).map(|s| s.name).collect();
    for service in selected_of(table, target) {
        if !service.peer_calls.contains(&LOCATE_SUBJECT_DATA) {
            continue;
        }
        let unreachable: Vec<&str> = holders
            .iter()
            .copied()
            .filter(|h| *h != service.name)
            .filter(|h| !local.contains(h) && !config.peers.contains_key(*h))
            .collect();
        anyhow::ensure!(
            unreachable.is_empty(),
            "{} carries out data-subject requests, and cannot reach {}, which hold{} personal \
             data: give each with --peer NAME=URL (or CUSTODIAN_PEER_<NAME>), e.g. --peer {}=http://{}:50051; \
             refusing to start",
            service.name,
            unreachable.join(", "),
            if unreachable.len() == 1 { "s" } else { "" },
            unreachable[0],
            unreachable[0],
        );
    }
    Ok(())
}

/// Issues the service credential of `service`: subject `svc:NAME`, exactly
/// the purposes that service calls others for. Refused for a name the suite
/// does not know, and for a service that calls no other (it needs none).
pub fn service_credential(
    issuer: &TokenIssuer,
    service: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let known = service_named(service).ok_or_else(|| {
        // The name is not repeated: what was typed may be anything.
        anyhow::anyhow!(
            "--service names no service of this suite; its services are {}",
            known_names()
        )
    })?;
    anyhow::ensure!(
        !known.peer_calls.is_empty(),
        "{service} calls no other service, so it needs no service credential"
    );
    Ok(issuer.issue_service(&format!("svc:{service}"), known.peer_purposes, ttl)?)
}

/// Checks that `keys` is the key file a process running `target` may hold:
/// under `--target NAME`, NAME's own file, which cannot sign tokens; in the
/// all-in-one, the suite's file, whose signing key mints its services'
/// credentials.
pub fn check_key_file(target: Target, keys: &KeyFile) -> anyhow::Result<()> {
    let one = selected(target).next().filter(|_| target != Target::All);
    match (one, keys.role()) {
        (_, Role::Signing) => anyhow::bail!(
            "this is the operator's signing file, not a server's: a server holds its service's \
             key file (master keys, blind-index key, token public keys) and never the signing key"
        ),
        (None, Role::Service(service)) => anyhow::bail!(
            "this key file is for {service} only; the all-in-one runs every service and needs the \
             suite's key file (or run --target {service})"
        ),
        (None, Role::Suite) if keys.token_signing_key.is_none() => anyhow::bail!(
            "the all-in-one mints its services' credentials with the key file's token_signing_key, \
             and this key file has none"
        ),
        (None, Role::Suite) => Ok(()),
        (Some(own), _) if keys.token_signing_key.is_some() => anyhow::bail!(
            "this key file can sign tokens; a server only verifies them: remove token_signing_key \
             and keep it with the operator (`custodian keys split --out DIR` makes the operator's \
             signing file and one key file per service), then give --target {} its own file",
            own.name
        ),
        (Some(own), Role::Suite) => anyhow::bail!(
            "this key file holds the keys of the whole suite; a server with --target {0} holds only \
             {0}'s: make one file per service with `custodian keys split --out DIR`",
            own.name
        ),
        (Some(own), Role::Service(service)) if service != own.name => anyhow::bail!(
            "this key file is for {service}; --target {0} needs the key file of {0}",
            own.name
        ),
        (Some(_), Role::Service(_)) => Ok(()),
    }
}

/// Checks the service credential at `path` before a server relies on it:
/// a service credential of `service` itself, for exactly its purposes,
/// signed by a key the server trusts and not expired. The token is never
/// shown.
fn check_credential_file(
    path: &Path,
    service: &Service,
    verifier: &TokenVerifier,
) -> anyhow::Result<()> {
    let name = service.name;
    let reissue = format!("issue it with `custodian token --service {name}`");
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the service credential {}", path.display()))?;
    let claims = verifier.verify(token.trim()).map_err(|e| {
        anyhow::anyhow!(
            "the service credential {} is refused ({e}): {reissue}",
            path.display()
        )
    })?;
    anyhow::ensure!(
        claims.kind == TokenKind::Service,
        "{} is a caller's token, not a service credential: {reissue}",
        path.display()
    );
    // Another service's subject names a service; anything else is not shown.
    anyhow::ensure!(
        claims.sub == format!("svc:{name}"),
        "{} is the credential of {}, not of {name}: {reissue}",
        path.display(),
        if claims.sub.starts_with("svc:") {
            claims.sub.as_str()
        } else {
            "another caller"
        }
    );
    let mut wanted = service.peer_purposes.to_vec();
    wanted.sort_unstable();
    anyhow::ensure!(
        claims.purposes == wanted,
        "{} holds other purposes than {name} calls others for: {reissue}",
        path.display()
    );
    let left = claims.exp.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    if left < 7 * 24 * 60 * 60 {
        tracing::warn!(
            service = name,
            days_left = left / 86_400,
            "the service credential expires soon: issue a new one and update its Secret"
        );
    }
    Ok(())
}

/// The services to run and the gate in front of them.
pub struct Suite {
    pub modules: Vec<Arc<dyn ServiceModule>>,
    /// The access stack's method table (a [`custodian_runtime::Gate`]).
    pub gate: Arc<custodian_kit::gate::KitGate>,
    pub vaults: Vec<Vault>,
    pub peers: Vec<Peers>,
    pub names: Vec<&'static str>,
    /// The services that send mail.
    pub mailing: Vec<&'static str>,
    pub data_map: custodian_proto::privacy::v1::DataMap,
}

/// Builds the services for `target`, each with its own database pool (its
/// own SQLite file by default), audit trail, vault, peers and credential.
///
/// Under `--target` the key file must be the service's own (see
/// [`check_key_file`]) and a service that calls others needs its credential
/// file (`--service-token-file`), checked here; the all-in-one mints each
/// service's credential from the suite's key file.
pub fn suite(
    target: Target,
    config: &Config,
    keys: &KeyFile,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Suite> {
    suite_of(SERVICES, target, config, keys, clock)
}

/// As [`suite`], for the services of `table` (the suite's [`SERVICES`],
/// or more of them).
pub fn suite_of(
    table: &[Service],
    target: Target,
    config: &Config,
    keys: &KeyFile,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Suite> {
    check_key_file(target, keys)?;
    let keyring = Arc::new(keys.keyring()?);
    let index = Arc::new(keys.blind_index_key()?);
    let verifier =
        TokenVerifier::from_public_pems(keys.token_public_keys.iter().map(String::as_str))
            .context("the key file's token_public_keys")?;
    // Only the all-in-one signs (check_key_file refuses a signing key
    // anywhere else).
    let issuer = match target {
        Target::All => {
            anyhow::ensure!(
                config.service_token_file.is_none(),
                "--service-token-file is for a server with --target: the all-in-one mints each of \
                 its services' own credentials"
            );
            keys.token_signing_key
                .as_deref()
                .map(TokenIssuer::from_pem)
                .transpose()
                .context("the key file's token_signing_key")?
        }
        _ => None,
    };
    let sweep =
        (!config.retention_sweep_interval.is_zero()).then_some(config.retention_sweep_interval);
    let mailer = custodian_mail::mailer(config.smtp_url.as_deref(), &config.mail_outbox_dir())?;
    // One log for the process's services, each entry naming its service.
    let erasure_log = ErasureLog::connect_lazy(&config.erasure_log_url())?;
    let holders = subject_services(table, config, keys, &clock, &mailer, &erasure_log)?;
    check_subject_reach(table, target, config, &holders)?;
    let holders: Arc<[&'static str]> = holders.into();
    let mut services = Vec::new();
    let mut vaults = Vec::new();
    let mut all_peers = Vec::new();
    for service in selected_of(table, target) {
        let name = service.name;
        // Refused before any database is opened (a SQLite file made).
        let credential = match (&issuer, &config.service_token_file) {
            (Some(issuer), _) => Credential::Mint {
                issuer: issuer.clone(),
                subject: format!("svc:{name}"),
                purposes: service.peer_purposes.to_vec(),
            },
            (None, _) if service.peer_calls.is_empty() => {
                if config.service_token_file.is_some() {
                    tracing::warn!(
                        service = name,
                        "this service calls no other; its --service-token-file is not used"
                    );
                }
                Credential::None
            }
            (None, Some(path)) => {
                check_credential_file(path, service, &verifier)?;
                Credential::File(path.clone())
            }
            (None, None) => anyhow::bail!(
                "{name} calls other services and needs its service credential: \
                 --service-token-file (CUSTODIAN_SERVICE_TOKEN_FILE), issued by the operator with \
                 `custodian token --service {name}`"
            ),
        };
        let db = Database::connect_lazy(
            &config.database_url_for(name),
            config.database_max_connections,
        )?;
        let audit = AuditLog::new(name, db.clone(), clock.clone());
        let vault = Vault::new(name, db.clone(), keyring.clone(), index.clone());
        let peers = Peers::new(config.peers.clone(), credential, config.peer_timeout);
        let context = Context {
            name,
            db,
            privacy: Privacy::new(audit, vault.clone()),
            clock: clock.clone(),
            peers: peers.clone(),
            // What it sends is labelled with it and its recipients' keys.
            mailer: Arc::new(ServiceMailer::new(name, vault.clone(), mailer.clone())),
            erasure_log: erasure_log.clone(),
            config: config.clone(),
            subject_services: holders.clone(),
        };
        vaults.push(vault);
        all_peers.push(peers);
        services.push(((service.construct)(context.clone())?, context));
    }
    let names = services.iter().map(|(s, _)| s.name()).collect();
    let mailing = services
        .iter()
        .filter(|(s, _)| s.mail_category().is_some())
        .map(|(s, _)| s.name())
        .collect();
    let callers: Vec<PeerCalls> = table.iter().map(Service::calls).collect();
    let assembled = custodian_kit::module::assemble(
        services,
        TokenAuthenticator::new(verifier),
        &callers,
        sweep,
        clock,
    )?;
    Ok(Suite {
        modules: assembled.modules,
        gate: assembled.gate,
        vaults,
        peers: all_peers,
        names,
        mailing,
        data_map: assembled.data_map,
    })
}

/// What a server refuses to start without, beyond the key file: with
/// `--target` (production) an erasure log named explicitly (a default in
/// the pod's data folder would be lost with the pod), never a service's own
/// database (a restore of it would roll the log back with it); and mail
/// either sent (`--smtp-url`) or put in files on purpose (`--mail-outbox`)
/// by a service that mails, never both.
pub fn check_settings(target: Target, config: &Config, suite: &Suite) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.smtp_url.is_none() || config.mail_outbox.is_none(),
        "--smtp-url and --mail-outbox are both set: mail is either sent or written to files; choose one"
    );
    if target != Target::All {
        anyhow::ensure!(
            config.erasure_log.is_some(),
            "--erasure-log (or CUSTODIAN_ERASURE_LOG) is required with --target: the record of \
             erasures must outlive this process and any restore of its database (a database of \
             its own, e.g. postgres://.../custodian_erasures); refusing to start"
        );
        anyhow::ensure!(
            config.smtp_url.is_some() || config.mail_outbox.is_some() || suite.mailing.is_empty(),
            "{} sends mail, and neither --smtp-url nor --mail-outbox is set: set --smtp-url (or \
             CUSTODIAN_SMTP_URL) to send it, or --mail-outbox DIR to write it to files on \
             purpose (nobody receives them); refusing to start",
            suite.mailing.join(", ")
        );
    }
    let log = config.erasure_log_url();
    for service in &suite.names {
        anyhow::ensure!(
            !same_database(&log, &config.database_url_for(service)),
            "the erasure log is {service}'s own database: restoring that database would roll the \
             log back with it; give --erasure-log a database of its own; refusing to start"
        );
    }
    Ok(())
}

/// Whether two database URLs name the same database: the same SQLite
/// file, or the same PostgreSQL database on the same server.
fn same_database(a: &str, b: &str) -> bool {
    fn sqlite(url: &str) -> Option<PathBuf> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?
            .split('?')
            .next()?;
        let path = Path::new(path);
        Some(
            path.canonicalize()
                .or_else(|_| std::path::absolute(path))
                .unwrap_or_else(|_| path.to_path_buf()),
        )
    }
    fn postgres(url: &str) -> Option<(String, u16, String)> {
        use std::str::FromStr as _;
        let options = sqlx::postgres::PgConnectOptions::from_str(url).ok()?;
        Some((
            options.get_host().to_owned(),
            options.get_port(),
            options.get_database().unwrap_or_default().to_owned(),
        ))
    }
    match (sqlite(a), sqlite(b)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => postgres(a).is_some() && postgres(a) == postgres(b),
        _ => false,
    }
}

/// Binds the listener and tells every service where this process serves,
/// so a peer run here is called through this process's own port.
pub async fn bind(config: Config, suite: Suite) -> anyhow::Result<Application> {
    let app = Application::bind(config, suite.modules, suite.gate).await?;
    for peers in &suite.peers {
        peers.set_local(app.local_addr(), suite.names.clone());
    }
    Ok(app)
}

/// Where the key file is: the configured one, or (all-in-one only) the
/// development key file in the data folder.
pub fn key_file_path(target: Target, config: &Config) -> anyhow::Result<(PathBuf, bool)> {
    match (&config.key_file, target) {
        (Some(path), _) => Ok((path.clone(), false)),
        (None, Target::All) => Ok((config.data_dir.join("keys.toml"), true)),
        (None, _) => anyhow::bail!(
            "--key-file (or CUSTODIAN_KEY_FILE) is required with --target: a production server never makes its own keys"
        ),
    }
}

/// Loads the key file; for development (no --target, no --key-file) makes
/// one on first use, but only while there is no encrypted data it would
/// orphan. Returns the keys, the path and whether they were just created.
pub async fn load_keys(
    target: Target,
    config: &Config,
) -> anyhow::Result<(KeyFile, PathBuf, bool)> {
    let (path, development) = key_file_path(target, config)?;
    if development && !path.exists() {
        let held = data_keys_held(config).await?;
        anyhow::ensure!(
            held.is_empty(),
            "{} is missing, but the databases of {} hold encrypted data made with a key file: \
             restore that key file (new keys would leave the data unreadable); refusing to start",
            path.display(),
            held.join(", ")
        );
        custodian_runtime::database::create_private_dir(&config.data_dir)?;
        let id = format!("dev-{}", uuid::Uuid::now_v7().simple());
        let keys = KeyFile::generate(&id, generate_key_pair());
        keys.write_new(&path)?;
        return Ok((keys, path, true));
    }
    Ok((KeyFile::load(&path)?, path, false))
}

/// Replaces a key file: written beside it with mode 0600, then renamed over
/// it, so a reader never sees half a file.
pub fn save_keys(path: &Path, keys: &KeyFile) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
    keys.write_new(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// The vaults of `services` (short names), for the key commands: each on
/// its own database, with the key file's keys.
pub fn vaults(
    services: &[&'static str],
    config: &Config,
    keys: &KeyFile,
) -> anyhow::Result<Vec<Vault>> {
    let keyring = Arc::new(keys.keyring()?);
    let index = Arc::new(keys.blind_index_key()?);
    services
        .iter()
        .map(|name| {
            let db = Database::connect_lazy(&config.database_url_for(name), 1)?;
            Ok(Vault::new(name, db, keyring.clone(), index.clone()))
        })
        .collect()
}

/// The services whose data keys a key file's master keys may wrap: a
/// service's file, its own; the suite's file, every service's, whatever
/// the target (a key retired from it is gone for all of them). The
/// operator's signing file has none.
pub fn key_file_services(target: Target, keys: &KeyFile) -> anyhow::Result<Vec<&'static str>> {
    match keys.role() {
        Role::Signing => anyhow::bail!(
            "the operator's signing file holds no master keys: key commands take a service's key file"
        ),
        Role::Suite => Ok(service_names(Target::All)),
        Role::Service(name) => {
            let service = service_named(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "the key file is for {name:?}, which is not a service of this suite ({})",
                    known_names()
                )
            })?;
            anyhow::ensure!(
                target.service().is_none_or(|t| t == service.name),
                "the key file is for {name}; it does not hold the keys of --target {}",
                service_names(target).join(", ")
            );
            Ok(vec![service.name])
        }
    }
}

/// The master key id `keys init` gives a service: its name and the day.
fn master_key_id(service: &str) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    format!("{service}-{}", &now[..10])
}

/// The name of the operator's signing file in a folder of split keys.
pub const SIGNING_FILE: &str = "signing.toml";

/// Writes a split set of key files into `dir` (made, mode 0700, if
/// missing): the operator's signing file, when given, and `NAME.toml` per
/// service. Nothing is written if any of them exists already: a key file
/// is never overwritten. Returns the paths written.
pub fn write_split(
    dir: &Path,
    signing: Option<&KeyFile>,
    services: &[KeyFile],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut planned: Vec<(PathBuf, &KeyFile)> = Vec::new();
    if let Some(signing) = signing {
        planned.push((dir.join(SIGNING_FILE), signing));
    }
    for file in services {
        let name = file
            .service
            .as_deref()
            .context("a service's key file names its service")?;
        planned.push((dir.join(format!("{name}.toml")), file));
    }
    if let Some((existing, _)) = planned.iter().find(|(path, _)| path.exists()) {
        anyhow::bail!(
            "{} exists already; key files are never overwritten: choose an empty folder",
            existing.display()
        );
    }
    // A folder of the operator's own keeps its mode; a new one is private.
    if !dir.exists() {
        custodian_runtime::database::create_private_dir(dir)?;
    }
    for (path, file) in &planned {
        file.write_new(path)?;
    }
    Ok(planned.into_iter().map(|(path, _)| path).collect())
}

/// New keys for the whole suite run as separate servers, written to `dir`
/// (see [`write_split`]): each service its own master key.
pub fn init_split_keys(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let ids: Vec<(&str, String)> = SERVICES
        .iter()
        .map(|s| (s.name, master_key_id(s.name)))
        .collect();
    let ids: Vec<(&str, &str)> = ids.iter().map(|(s, id)| (*s, id.as_str())).collect();
    let (signing, services) = KeyFile::generate_split(&ids, generate_key_pair());
    write_split(dir, Some(&signing), &services)
}

/// The database of every service of the suite, each once.
fn all_databases(config: &Config) -> Vec<(Vec<&'static str>, String)> {
    let mut out: Vec<(Vec<&'static str>, String)> = Vec::new();
    for service in SERVICES {
        let url = config.database_url_for(service.name);
        match out.iter_mut().find(|(_, u)| *u == url) {
            Some((names, _)) => names.push(service.name),
            None => out.push((vec![service.name], url)),
        }
    }
    out
}

/// A SQLite database that was never created holds nothing; opening it
/// would create it.
fn never_created(url: &str) -> bool {
    let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return false;
    };
    let path = path.split('?').next().unwrap_or_default();
    !path.is_empty() && path != ":memory:" && !Path::new(path).exists()
}

/// Per master key, how many data keys of which of `services` wrap under
/// it, in their databases. A database that cannot be read is an error: a
/// key command must not decide on a partial view.
pub async fn key_usage(
    config: &Config,
    services: &[&str],
) -> anyhow::Result<Vec<(String, String, i64)>> {
    let mut usage = Vec::new();
    for (names, url) in all_databases(config) {
        if never_created(&url) || !names.iter().any(|n| services.contains(n)) {
            continue;
        }
        let db = Database::connect_lazy(&url, 1)?;
        let rows = sqlx::query(
            "SELECT service, master_key_id, COUNT(*) AS n FROM subject_keys GROUP BY service, master_key_id",
        )
        .fetch_all(db.pool())
        .await;
        db.close().await;
        match rows {
            Ok(rows) => {
                for row in rows {
                    let service = row.try_get::<String, _>("service")?;
                    // A database shared by several services holds the
                    // others' keys too, wrapped under their own files.
                    if services.contains(&service.as_str()) {
                        usage.push((
                            row.try_get::<String, _>("master_key_id")?,
                            service,
                            row.try_get::<i64, _>("n")?,
                        ));
                    }
                }
            }
            // A database the kernel never migrated holds no data key.
            Err(sqlx::Error::Database(e)) if is_missing_table(e.message()) => {}
            Err(err) => {
                return Err(anyhow::anyhow!(err)).with_context(|| {
                    format!(
                        "reading the data keys of {} ({} database)",
                        names.join(", "),
                        custodian_runtime::database::scheme_of(&url)
                    )
                });
            }
        }
    }
    usage.sort();
    Ok(usage)
}

fn is_missing_table(message: &str) -> bool {
    message.contains("no such table") || message.contains("does not exist")
}

/// Services whose databases hold data keys at all.
async fn data_keys_held(config: &Config) -> anyhow::Result<Vec<String>> {
    let all: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
    let services: BTreeSet<String> = key_usage(config, &all)
        .await?
        .into_iter()
        .map(|(_, service, _)| service)
        .collect();
    Ok(services.into_iter().collect())
}

/// How long a development token lives.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 60 * 60);
