//! What the `custodian` binary runs: the list of services, which of them a
//! `--target` selects, and the keys they need.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use custodian_privacy::{
    Privacy, TokenAuthenticator,
    audit::AuditLog,
    audit_api::AuditModule,
    keys::KeyFile,
    token::{TokenVerifier, generate_key_pair},
    vault::Vault,
};
use custodian_runtime::{Config, Database, ServiceModule, server::Authenticate, time::Clock};

/// Which services one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Every service, in one process on one port (development, small installs).
    All,
    /// Identity & contacts only (one Kubernetes Deployment).
    Identity,
}

type Constructor =
    fn(Database, Privacy, Arc<dyn Clock>, Option<Duration>) -> Arc<dyn ServiceModule>;

fn identity(
    db: Database,
    privacy: Privacy,
    clock: Arc<dyn Clock>,
    sweep: Option<Duration>,
) -> Arc<dyn ServiceModule> {
    Arc::new(custodian_identity::Identity::new(db, privacy, clock, sweep))
}

/// Every service of the suite, by `--target` name. A new service is one
/// more line here.
const SERVICES: &[(Target, &str, Constructor)] =
    &[(Target::Identity, custodian_identity::NAME, identity)];

fn selected(target: Target) -> impl Iterator<Item = &'static (Target, &'static str, Constructor)> {
    SERVICES
        .iter()
        .filter(move |(t, _, _)| target == Target::All || *t == target)
}

/// Short names of the services `target` runs.
pub fn service_names(target: Target) -> Vec<&'static str> {
    selected(target).map(|(_, name, _)| *name).collect()
}

/// The services to run and the authenticator in front of them.
pub struct Suite {
    pub modules: Vec<Arc<dyn ServiceModule>>,
    pub authenticator: Arc<dyn Authenticate>,
    pub vaults: Vec<Vault>,
}

/// Builds the services for `target`, each with its own database pool (its
/// own SQLite file by default), audit trail and vault, and one AuditService
/// over all their trails.
pub fn suite(
    target: Target,
    config: &Config,
    keys: &KeyFile,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Suite> {
    let keyring = Arc::new(keys.keyring()?);
    let index = Arc::new(keys.blind_index_key()?);
    let verifier =
        TokenVerifier::from_public_pems(keys.token_public_keys.iter().map(String::as_str))
            .context("the key file's token_public_keys")?;
    let sweep =
        (!config.retention_sweep_interval.is_zero()).then_some(config.retention_sweep_interval);
    let mut modules = Vec::new();
    let mut vaults = Vec::new();
    let mut logs = Vec::new();
    let mut first: Option<Privacy> = None;
    for (_, name, constructor) in selected(target) {
        let db = Database::connect_lazy(
            &config.database_url_for(name),
            config.database_max_connections,
        )?;
        let audit = AuditLog::new(name, db.clone(), clock.clone());
        let vault = Vault::new(name, db.clone(), keyring.clone(), index.clone());
        let privacy = Privacy::new(audit.clone(), vault.clone());
        first.get_or_insert_with(|| privacy.clone());
        logs.push(audit);
        vaults.push(vault);
        modules.push(constructor(db, privacy, clock.clone(), sweep));
    }
    if let Some(privacy) = first {
        modules.push(Arc::new(AuditModule::new(privacy, logs)));
    }
    Ok(Suite {
        modules,
        authenticator: TokenAuthenticator::new(verifier),
        vaults,
    })
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
/// one on first use. Returns the keys and whether they were just created.
pub fn load_keys(target: Target, config: &Config) -> anyhow::Result<(KeyFile, PathBuf, bool)> {
    let (path, development) = key_file_path(target, config)?;
    if development && !path.exists() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let id = format!("dev-{}", uuid::Uuid::now_v7().simple());
        let keys = KeyFile::generate(&id, generate_key_pair());
        keys.write_new(&path)?;
        return Ok((keys, path, true));
    }
    Ok((KeyFile::load(&path)?, path, false))
}

/// Replaces a key file: written beside it with mode 0600, then renamed over
/// it, so a reader never sees half a file.
pub fn save_keys(path: &std::path::Path, keys: &KeyFile) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
    keys.write_new(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}
