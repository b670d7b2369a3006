//! What the `custodian` binary runs: the list of services, and which of them
//! a `--target` selects.

use std::sync::Arc;

use custodian_runtime::{Config, Database, ServiceModule};

/// Which services one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Every service, in one process on one port (development, small installs).
    All,
    /// Identity & contacts only (one Kubernetes Deployment).
    Identity,
}

type Constructor = fn(Database) -> Arc<dyn ServiceModule>;

/// Every service of the suite, by `--target` name. A new service is one
/// more line here.
const SERVICES: &[(Target, &str, Constructor)] = &[(
    Target::Identity,
    custodian_identity::NAME,
    custodian_identity::Identity::module,
)];

/// Short names of the services `target` runs.
pub fn service_names(target: Target) -> Vec<&'static str> {
    SERVICES
        .iter()
        .filter(|(t, _, _)| target == Target::All || *t == target)
        .map(|(_, name, _)| *name)
        .collect()
}

/// The modules for `target`, each with its own database pool (its own
/// SQLite file by default).
pub fn modules(target: Target, config: &Config) -> anyhow::Result<Vec<Arc<dyn ServiceModule>>> {
    SERVICES
        .iter()
        .filter(|(t, _, _)| target == Target::All || *t == target)
        .map(|(_, name, constructor)| {
            let db = Database::connect_lazy(
                &config.database_url_for(name),
                config.database_max_connections,
            )?;
            Ok(constructor(db))
        })
        .collect()
}
