//! Who can sign a token, and who holds which keys, as the operator deploys
//! the suite: no pod can mint a token; each service holds only its own
//! master keys and its own credential; key rotation works per service file.
//!
//! - The manifests (`kubectl kustomize` of the base and every overlay) and
//!   the operator's procedure (`custodian keys init`, then
//!   `deploy/make-secrets.sh`) together: every Secret a Deployment mounts is
//!   one the procedure makes for that very service, and none holds a signing
//!   key. Needs kubectl (at /usr/bin/kubectl in CI: skipped without it,
//!   except under CI=true, where that fails).
//! - The binary under `--target` refuses a key file that can sign tokens,
//!   the operator's signing file, another service's file, and a missing or
//!   foreign credential; it starts with its own.
//! - A suite's one key file split per service, and rotated per service: a
//!   master key another service still uses is no obstacle to retiring it
//!   from this service's file (SQLite, a database per service; PostgreSQL,
//!   one database shared).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use base64::Engine as _;
use common::{Bearer, Log, Postgres, Server, SplitKeys, command, run_ok};
use custodian_privacy::{
    keys::{KeyFile, Role},
    token::{TokenKind, TokenVerifier},
};
use custodian_proto::{
    common::v1::PersonName,
    identity::v1::{
        CreateTenantRequest, CreateUserRequest, Tenant, User,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
    tickets::v1::{
        CreateTicketRequest, GetTicketRequest, Requester, Ticket,
        ticket::{Channel as TicketChannel, Kind as TicketKind},
        ticket_service_client::TicketServiceClient,
    },
};
use serde_json::Value;

const SERVICES: [&str; 5] = ["identity", "tickets", "analytics", "feedback", "dsr"];

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// kubectl, if this machine has it (CI must).
fn kubectl() -> Option<PathBuf> {
    let found = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(!in_ci(), "CI=true and kubectl is missing");
        eprintln!("skipping: kubectl is not installed");
    }
    found
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn output_of(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("running a command");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The objects of a YAML stream, as JSON: kubectl reads and writes them
/// offline (a no-op local patch), so no YAML parser is needed here.
fn objects(kubectl: &Path, yaml: &[u8]) -> Vec<Value> {
    let mut child = Command::new(kubectl)
        .args([
            "patch", "--local", "-f", "-", "-p", "{}", "--type", "merge", "-o", "json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(yaml).expect("writing to kubectl");
    }
    let output = child.wait_with_output().expect("kubectl");
    assert!(
        output.status.success(),
        "kubectl patch --local: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter::<Value>()
        .map(|v| v.expect("kubectl writes JSON"))
        .collect()
}

/// Every kustomization to check: the base and each overlay.
fn kustomizations() -> Vec<PathBuf> {
    let deploy = repository().join("deploy");
    let mut out = vec![deploy.join("base")];
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(deploy.join("overlays"))
        .expect("deploy/overlays")
        .map(|e| e.expect("an overlay").path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    overlays.sort();
    out.extend(overlays);
    out
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// What one Deployment's pod is given that could hold a secret.
#[derive(Debug, Default)]
struct Pod {
    target: String,
    /// Secret name to where its volume is mounted (None: in the
    /// environment, not as a file).
    secrets: BTreeMap<String, Option<String>>,
    env: BTreeMap<String, String>,
}

fn pod_of(deployment: &Value) -> Pod {
    let spec = deployment
        .pointer("/spec/template/spec")
        .expect("a pod spec");
    let mut pod = Pod::default();
    let mut volumes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for volume in array_at(spec, "/volumes") {
        let name = str_at(volume, "/name").unwrap_or_default().to_owned();
        let mut names: Vec<String> = str_at(volume, "/secret/secretName")
            .map(str::to_owned)
            .into_iter()
            .collect();
        names.extend(
            array_at(volume, "/projected/sources")
                .filter_map(|s| str_at(s, "/secret/name"))
                .map(str::to_owned),
        );
        volumes.insert(name, names);
    }
    for container in array_at(spec, "/containers").chain(array_at(spec, "/initContainers")) {
        let args: Vec<&str> = array_at(container, "/args")
            .filter_map(Value::as_str)
            .collect();
        if let Some(at) = args.iter().position(|a| *a == "--target") {
            pod.target = args[at + 1].to_owned();
        }
        for mount in array_at(container, "/volumeMounts") {
            let volume = str_at(mount, "/name").unwrap_or_default();
            let path = str_at(mount, "/mountPath").unwrap_or_default();
            for secret in volumes.get(volume).into_iter().flatten() {
                pod.secrets.insert(secret.clone(), Some(path.to_owned()));
            }
        }
        for env in array_at(container, "/env") {
            if let Some(secret) = str_at(env, "/valueFrom/secretKeyRef/name") {
                pod.secrets.entry(secret.to_owned()).or_insert(None);
            }
            if let (Some(name), Some(value)) = (str_at(env, "/name"), str_at(env, "/value")) {
                pod.env.insert(name.to_owned(), value.to_owned());
            }
        }
        for from in array_at(container, "/envFrom") {
            if let Some(secret) = str_at(from, "/secretRef/name") {
                pod.secrets.entry(secret.to_owned()).or_insert(None);
            }
        }
    }
    pod
}

/// Secrets the operator fills with a URL (the database, the mail relay):
/// made by hand, from the secret manager, never from the key folder.
fn is_url_secret(name: &str) -> bool {
    // The erasure log: one PostgreSQL database for every service, apart
    // from theirs; its Secret holds its URL only.
    name.ends_with("-database") || name.ends_with("-smtp") || name == "custodian-erasure-log"
}

#[test]
fn no_pod_mounts_anything_that_can_sign_a_token() {
    let Some(kubectl) = kubectl() else {
        return;
    };
    let folder = tempfile::tempdir().expect("a temporary folder");
    let keys = SplitKeys::init(&folder.path().join("keys"));

    // The operator's procedure, as deploy/README.md gives it.
    let made = output_of(
        Command::new(repository().join("deploy/make-secrets.sh"))
            .arg(&keys.dir)
            .env("CUSTODIAN", common::BIN)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    kubectl.parent().unwrap().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
    );
    let mut secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for secret in objects(&kubectl, &made) {
        assert_eq!(str_at(&secret, "/kind"), Some("Secret"));
        let name = str_at(&secret, "/metadata/name").unwrap().to_owned();
        let data = secret
            .pointer("/data")
            .and_then(Value::as_object)
            .expect("data")
            .iter()
            .map(|(key, value)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str().expect("base64"))
                    .expect("base64");
                (key.clone(), bytes)
            })
            .collect();
        assert!(secrets.insert(name.clone(), data).is_none(), "{name} twice");
    }
    let signing = std::fs::read_to_string(keys.signing_file()).unwrap();
    assert!(signing.contains("PRIVATE KEY"), "the signing file signs");

    // What each made Secret holds: never a signing key; a key file is its
    // service's own; a credential is its service's own.
    for (name, data) in &secrets {
        let (service, kind) = name.rsplit_once('-').expect("NAME-keys or NAME-credential");
        for (key, bytes) in data {
            let text = String::from_utf8(bytes.clone()).expect("text");
            assert!(
                !text.contains("PRIVATE KEY") && !text.contains("token_signing_key"),
                "Secret {name} ({key}) could sign tokens"
            );
            match (kind, key.as_str()) {
                ("keys", "keys.toml") => {
                    let file = KeyFile::from_toml_str(&text).expect("a key file");
                    assert_eq!(file.role(), Role::Service(service), "{name}");
                    let verifier = TokenVerifier::from_public_pems(
                        file.token_public_keys.iter().map(String::as_str),
                    )
                    .expect("the token public keys");
                    if let Some(token) = secrets
                        .get(&format!("{service}-credential"))
                        .and_then(|d| d.get("token"))
                    {
                        let claims = verifier
                            .verify(String::from_utf8_lossy(token).trim())
                            .expect("the credential verifies with the service's keys");
                        assert_eq!(claims.sub, format!("svc:{service}"));
                        assert_eq!(claims.kind, TokenKind::Service);
                    }
                }
                ("credential", "token") => {}
                _ => panic!("Secret {name} holds an unexpected {key}"),
            }
        }
    }
    // Each service's master key is its own.
    let master_keys: BTreeSet<Vec<u8>> = SERVICES
        .iter()
        .map(|s| secrets[&format!("{s}-keys")]["keys.toml"].clone())
        .collect();
    assert_eq!(master_keys.len(), SERVICES.len());

    for kustomization in kustomizations() {
        let rendered = output_of(Command::new(&kubectl).arg("kustomize").arg(&kustomization));
        let where_ = kustomization.display();
        let deployments: Vec<Pod> = objects(&kubectl, &rendered)
            .iter()
            .filter(|o| str_at(o, "/kind") == Some("Deployment"))
            .map(pod_of)
            .collect();
        let targets: BTreeSet<&str> = deployments.iter().map(|p| p.target.as_str()).collect();
        assert_eq!(
            targets,
            SERVICES.into_iter().collect(),
            "{where_}: a Deployment per service"
        );
        for pod in &deployments {
            let target = &pod.target;
            for (secret, mounted_at) in &pod.secrets {
                if is_url_secret(secret) {
                    continue;
                }
                assert!(
                    secrets.contains_key(secret),
                    "{where_}: {target} mounts Secret {secret}, which the key procedure does not make"
                );
                assert!(
                    secret.starts_with(&format!("{target}-")),
                    "{where_}: {target} mounts {secret}, another service's"
                );
                assert!(
                    mounted_at.is_some(),
                    "{where_}: {target} takes {secret} into its environment, not as a file"
                );
            }
            // Its key file and its credential are where its settings say.
            let keys_at = pod
                .secrets
                .get(&format!("{target}-keys"))
                .cloned()
                .flatten();
            assert_eq!(
                keys_at.map(|at| format!("{at}/keys.toml")).as_deref(),
                pod.env.get("CUSTODIAN_KEY_FILE").map(String::as_str),
                "{where_}: {target}'s key file"
            );
            let credential_at = pod
                .secrets
                .get(&format!("{target}-credential"))
                .cloned()
                .flatten();
            assert_eq!(
                credential_at.map(|at| format!("{at}/token")).as_deref(),
                pod.env
                    .get("CUSTODIAN_SERVICE_TOKEN_FILE")
                    .map(String::as_str),
                "{where_}: {target}'s credential"
            );
            assert_eq!(
                secrets.contains_key(&format!("{target}-credential")),
                target != "identity",
                "{where_}: every service that calls others has a credential, identity none"
            );
        }
    }
}

/// Runs a server that must refuse to start: its output once it exits, or
/// a failure if it is still running after a while (it started).
fn exit_of(command: &mut Command) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running custodian");
    let started = std::time::Instant::now();
    while child.try_wait().expect("waiting").is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let output = child.wait_with_output().expect("custodian");
            panic!(
                "custodian started and served:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("custodian")
}

fn exits(args: &[&str]) -> std::process::Output {
    exit_of(
        Command::new(common::BIN)
            .env_clear()
            .env("CUSTODIAN_LOG", "warn")
            .args(args),
    )
}

#[test]
fn a_server_with_a_target_refuses_keys_that_can_sign_and_credentials_not_its_own() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let keys = SplitKeys::init(&folder.path().join("keys"));
    // The suite's one file, as the development mode makes it (the old
    // procedure for production too): it holds the signing key.
    let dev = folder.path().join("dev");
    run_ok(&[
        "token",
        "--data-dir",
        dev.to_str().unwrap(),
        "--subject",
        "ops:setup",
        "--purpose",
        "administration",
    ]);
    let suite_file = dev.join("keys.toml");
    assert!(
        std::fs::read_to_string(&suite_file)
            .unwrap()
            .contains("token_signing_key")
    );
    let dsr_credential = keys.credential("dsr").unwrap();
    let tickets_credential = keys.credential("tickets").unwrap();
    let path = |p: &Path| p.display().to_string();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "the suite's file, which can sign",
            vec!["--target", "identity", "--key-file", &path(&suite_file)],
            "this key file can sign tokens; a server only verifies them: remove token_signing_key",
        ),
        (
            "the operator's signing file",
            vec![
                "--target",
                "identity",
                "--key-file",
                &path(&keys.signing_file()),
            ],
            "the operator's signing file, not a server's",
        ),
        (
            "another service's key file",
            vec![
                "--target",
                "tickets",
                "--key-file",
                &path(&keys.key_file("identity")),
                "--service-token-file",
                &path(&tickets_credential),
            ],
            "this key file is for identity; --target tickets needs the key file of tickets",
        ),
        (
            "no credential for a service that calls others",
            vec![
                "--target",
                "tickets",
                "--key-file",
                &path(&keys.key_file("tickets")),
            ],
            "needs its service credential",
        ),
        (
            "another service's credential",
            vec![
                "--target",
                "tickets",
                "--key-file",
                &path(&keys.key_file("tickets")),
                "--service-token-file",
                &path(&dsr_credential),
            ],
            "is the credential of svc:dsr, not of tickets",
        ),
        (
            "a service's key file in the all-in-one",
            vec!["--key-file", &path(&keys.key_file("tickets"))],
            "this key file is for tickets only",
        ),
    ]
    .into_iter()
    .map(|(what, args, expected)| {
        (
            what,
            args.into_iter().map(str::to_owned).collect::<Vec<_>>(),
            expected,
        )
    })
    .collect();
    for (what, args, expected) in cases {
        let data = tempfile::tempdir().unwrap();
        let mut all = vec![
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
        ];
        all.extend(args.iter().map(String::as_str));
        let output = exits(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: started\n{stderr}");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(
            !stderr.contains("PRIVATE KEY") && !stderr.contains("eyJ"),
            "{what}: no key or token in the message: {stderr}"
        );
        // Refused before anything was stored.
        let stored: Vec<_> = std::fs::read_dir(data.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "db"))
            .collect();
        assert!(stored.is_empty(), "{what}: made {stored:?}");
    }
    // The same file given in the environment, as a Deployment gives it.
    let data = tempfile::tempdir().unwrap();
    let output = exit_of(
        Command::new(common::BIN)
            .env_clear()
            .env("CUSTODIAN_TARGET", "analytics")
            .env("CUSTODIAN_KEY_FILE", &suite_file)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path()),
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("can sign tokens"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_runs_and_rotates_with_only_its_own_keys_sqlite() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    split_and_rotate(folder.path(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_runs_and_rotates_with_only_its_own_keys_postgres() {
    let Some(database) = Postgres::create().await else {
        return;
    };
    let folder = tempfile::tempdir().expect("a temporary folder");
    split_and_rotate(folder.path(), Some(&database.url)).await;
}

/// The migration from one shared key file: split it, run identity and
/// tickets each on its own file and credential, then give tickets a master
/// key of its own and retire the shared one from tickets' file, though
/// identity still uses it.
async fn split_and_rotate(dir: &Path, database_url: Option<&str>) {
    let data = dir.join("data");
    let dev = dir.join("dev");
    run_ok(&[
        "token",
        "--data-dir",
        dev.to_str().unwrap(),
        "--subject",
        "ops:setup",
        "--purpose",
        "administration",
    ]);
    let suite_file = dev.join("keys.toml");
    let shared_key = KeyFile::load(&suite_file)
        .unwrap()
        .active_master_key
        .clone();
    let keys = SplitKeys::split(&suite_file, &dir.join("keys"));
    for service in SERVICES {
        let file = KeyFile::load(keys.key_file(service)).unwrap();
        assert_eq!(file.role(), Role::Service(service));
        assert_eq!(file.token_signing_key, None);
        assert_eq!(file.active_master_key, shared_key);
    }
    let token = keys.token("ops:test", &["administration", "support"], None);
    let log = Log::default();
    let start = |service: &'static str, peers: Vec<String>| {
        let mut args = keys.target_args(service, &data);
        args.extend(peers);
        let (data, log) = (data.clone(), log.clone());
        async move { Server::start_with(&data, database_url, "127.0.0.1:0", &args, &log).await }
    };
    let identity = start("identity", vec![]).await;
    let identity_peer = vec![
        "--peer".to_owned(),
        format!("identity=http://{}", identity.addr),
    ];
    let tickets = start("tickets", identity_peer.clone()).await;

    let bearer = Bearer::new(&token);
    TenantServiceClient::with_interceptor(identity.channel.clone(), bearer.clone())
        .create_tenant(CreateTenantRequest {
            tenant: Some(Tenant {
                display_name: "Acme".into(),
                ..Default::default()
            }),
            tenant_id: "acme".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let user = UserServiceClient::with_interceptor(identity.channel.clone(), bearer.clone())
        .create_user(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(User {
                person_name: Some(PersonName {
                    given_name: "Ann".into(),
                    family_name: "Archer".into(),
                }),
                email: "ann@example.com".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // Tickets asks identity for the user, with tickets' own credential.
    let created = TicketServiceClient::with_interceptor(tickets.channel.clone(), bearer.clone())
        .create_ticket(CreateTicketRequest {
            ticket: Some(Ticket {
                tenant: "tenants/acme".into(),
                channel: TicketChannel::Phone as i32,
                kind: TicketKind::Troubleshooting as i32,
                subject: "Locked out".into(),
                requester: Some(Requester {
                    user: user.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            description: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", log.text()))
        .into_inner();
    assert_eq!(
        created.requester.unwrap().email,
        "ann@example.com",
        "filled from identity, called with tickets' credential"
    );
    drop(tickets);

    // Tickets' own master key: add, activate, rewrap, retire the shared one.
    let data_arg = data.display().to_string();
    let key_command = |service: &str, args: &[&str]| {
        let key_file = keys.key_file(service).display().to_string();
        let mut all = vec!["--key-file", &key_file, "--data-dir", &data_arg];
        if let Some(url) = database_url {
            all.extend(["--database-url", url]);
        }
        all.push("keys");
        all.extend(args);
        command(&all)
    };
    let succeeds = |service: &str, args: &[&str]| {
        let output = key_command(service, args);
        assert!(
            output.status.success(),
            "keys {args:?} of {service}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    succeeds("tickets", &["add", "tickets-own"]);
    succeeds("tickets", &["activate", "tickets-own"]);
    let rewrapped = succeeds("tickets", &["rewrap"]);
    assert!(rewrapped.starts_with("tickets: rewrapped "), "{rewrapped}");
    assert!(!rewrapped.contains("identity"), "{rewrapped}");
    // Identity's data keys still use the shared key; retiring it from
    // tickets' file only asks about tickets' data.
    succeeds("tickets", &["retire", &shared_key]);
    let tickets_status = succeeds("tickets", &["status"]);
    assert!(
        tickets_status.contains("tickets-own: ") && !tickets_status.contains("of identity"),
        "{tickets_status}"
    );
    let identity_status = succeeds("identity", &["status"]);
    assert!(
        identity_status.contains(&format!("{shared_key}: "))
            && identity_status.contains("of identity")
            && !identity_status.contains("of tickets"),
        "{identity_status}"
    );
    let rotated = KeyFile::load(keys.key_file("tickets")).unwrap();
    assert_eq!(
        rotated.master_keys.keys().collect::<Vec<_>>(),
        ["tickets-own"]
    );
    // Identity's own file cannot retire the key its data still uses.
    let before = std::fs::read(keys.key_file("identity")).unwrap();
    let refused = key_command("identity", &["retire", &shared_key]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("still wraps data keys of identity"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(std::fs::read(keys.key_file("identity")).unwrap(), before);

    // Tickets restarts on its rotated file and reads the ticket back.
    let tickets = start("tickets", identity_peer).await;
    let read = TicketServiceClient::with_interceptor(tickets.channel.clone(), bearer.clone())
        .get_ticket(GetTicketRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.requester.unwrap().email, "ann@example.com");
    drop((tickets, identity));
}
