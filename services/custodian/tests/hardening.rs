//! The hardening items only the built binary shows: a lost or wrong key
//! file stops the start instead of orphaning the data, logging stays
//! bounded under a flood of refused calls, and the data folder, the SQLite
//! files and the development token are kept from other users and from log
//! collectors. The servers are started on free ports with fresh folders
//! and awaited through their output and health, never by sleeping.

mod common;

use common::Postgres;
use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Buf as _, BufMut as _};
use custodian_proto::common::v1::PersonName;
use custodian_proto::identity::v1::{
    Contact, CreateContactRequest, CreateTenantRequest, ListTenantsRequest, Tenant,
    contact_service_client::ContactServiceClient, tenant_service_client::TenantServiceClient,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    sync::mpsc,
    task::JoinHandle,
};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

const BIN: &str = env!("CARGO_BIN_EXE_custodian");
/// How long a start (migrations included) or a stop may take.
const WAIT: Duration = Duration::from_secs(60);

// --- a running binary -------------------------------------------------------------

/// The binary and everything it has printed. Killed when dropped.
struct Process {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::UnboundedReceiver<String>,
    readers: Vec<JoinHandle<()>>,
}

/// Reads `from` line by line into `into`, each line also sent to `lines`.
fn read_lines(
    from: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
    lines: Option<mpsc::UnboundedSender<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(from).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if let Ok(mut text) = into.lock() {
                text.push_str(&line);
                text.push('\n');
            }
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}

impl Process {
    /// Starts `custodian` on a free port with `data_dir` and `args`, and
    /// nothing from the caller's environment.
    fn spawn(data_dir: &Path, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(BIN)
            .env_clear()
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let (tx, lines) = mpsc::unbounded_channel();
        let readers = vec![
            read_lines(
                child.stdout.take().expect("piped"),
                Arc::clone(&stdout),
                Some(tx),
            ),
            read_lines(
                child.stderr.take().expect("piped"),
                Arc::clone(&stderr),
                None,
            ),
        ];
        Self {
            child,
            stdout,
            stderr,
            lines,
            readers,
        }
    }

    /// Everything printed so far, stdout then stderr.
    fn output(&self) -> String {
        format!(
            "{}{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// The address of the `custodian: serving ... on ADDR` line, or `None`
    /// when the process closes stdout (exits) first.
    async fn serving(&mut self) -> Option<SocketAddr> {
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no serving line within {WAIT:?}:\n{}", self.output())
                })?;
            if let Some(rest) = line.strip_prefix("custodian: serving ") {
                let addr = rest.split(" on ").nth(1)?.split_whitespace().next()?;
                return addr.parse().ok();
            }
        }
    }

    /// Starts serving: the address, once health says SERVING.
    async fn ready(&mut self) -> (SocketAddr, Channel) {
        let addr = self
            .serving()
            .await
            .unwrap_or_else(|| panic!("exited before serving:\n{}", self.output()));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
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
        tokio::time::timeout(WAIT, async {
            while health
                .message()
                .await
                .expect("health stream")
                .expect("health stream open")
                .status
                != serving
            {}
        })
        .await
        .unwrap_or_else(|_| panic!("not SERVING within {WAIT:?}:\n{}", self.output()));
        (addr, channel)
    }

    /// Waits (bounded) for the exit, then for the last of its output.
    async fn exit(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running after {WAIT:?}:\n{}", self.output()))
            .expect("waiting for custodian");
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        status
    }

    /// SIGTERM (a graceful stop), then the exit, which must be a success.
    async fn stop(&mut self) {
        let pid = self.child.id().expect("running").to_string();
        let kill = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        assert!(kill.success());
        let status = self.exit().await;
        assert!(
            status.success(),
            "{status} after SIGTERM:\n{}",
            self.output()
        );
    }

    /// The development token of the welcome lines, if they hold one.
    fn dev_token(&self) -> Option<String> {
        let out = self.stdout.lock().unwrap();
        let line = out.lines().find(|l| l.contains("export TOKEN="))?;
        Some(line.split('\'').nth(1)?.to_owned())
    }
}

/// Adds `authorization: Bearer TOKEN` to every call.
fn bearer(
    token: &str,
) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    let value: MetadataValue<Ascii> = format!("Bearer {token}").parse().expect("ASCII");
    move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
        Ok(request)
    }
}

/// A tenant and a contact: personal data sealed under a data key.
async fn create_data(channel: &Channel, token: &str) {
    TenantServiceClient::with_interceptor(channel.clone(), bearer(token))
        .create_tenant(CreateTenantRequest {
            tenant: Some(Tenant {
                display_name: "Acme".into(),
                ..Default::default()
            }),
            tenant_id: "acme".into(),
            request_id: String::new(),
        })
        .await
        .expect("create tenant");
    ContactServiceClient::with_interceptor(channel.clone(), bearer(token))
        .create_contact(CreateContactRequest {
            parent: "tenants/acme".into(),
            contact: Some(Contact {
                person_name: Some(PersonName {
                    given_name: "Ann".into(),
                    family_name: "Lee".into(),
                }),
                email: "ann@example.com".into(),
                organization: "Acme".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create contact");
}

// --- 3. a lost or wrong key file stops the start ------------------------------------

async fn lost_key_file(database_url: Option<&str>) {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    let db_args: Vec<&str> = database_url
        .map(|url| vec!["--database-url", url])
        .unwrap_or_default();
    let keys = data.join("keys.toml");

    // First start: the development key file is made, data is written.
    let mut first = Process::spawn(&data, &db_args);
    let (_, channel) = first.ready().await;
    let token = first
        .dev_token()
        .expect("a development token on the first start");
    create_data(&channel, &token).await;
    first.stop().await;
    let original = std::fs::read_to_string(&keys).expect("the development key file");

    // The key file is lost: the start is refused, no new key file is made.
    std::fs::remove_file(&keys).unwrap();
    let mut lost = Process::spawn(&data, &db_args);
    let status = lost.exit().await;
    let output = lost.output();
    assert!(!status.success(), "started without its key file:\n{output}");
    assert!(output.contains("keys.toml is missing"), "{output}");
    assert!(output.contains("refusing to start"), "{output}");
    assert!(output.contains("identity"), "names the service: {output}");
    assert!(!output.contains("custodian: serving"), "{output}");
    assert!(!keys.exists(), "a new key file would orphan the data");

    // A key file without the master key the data was written with.
    let other = folder.path().join("other-keys.toml");
    custodian_privacy::keys::KeyFile::generate(
        "mk-other",
        custodian_privacy::token::generate_key_pair(),
    )
    .write_new(&other)
    .unwrap();
    let missing = original
        .lines()
        .find_map(|l| l.strip_prefix("active_master_key = "))
        .expect("the original master key id")
        .trim_matches('"')
        .to_owned();
    let mut args = db_args.clone();
    args.extend(["--key-file", other.to_str().unwrap()]);
    let mut wrong = Process::spawn(&data, &args);
    let status = wrong.exit().await;
    let output = wrong.output();
    assert!(
        !status.success(),
        "started with the wrong key file:\n{output}"
    );
    assert!(
        output.contains(&missing) && output.contains("the key file does not have"),
        "names the missing master key: {output}"
    );
    assert!(!keys.exists());

    // With its own key file back, the same data serves again.
    std::fs::write(&keys, &original).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut restored = Process::spawn(&data, &db_args);
    restored.ready().await;
    restored.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_wrong_key_file_stops_the_start_sqlite() {
    lost_key_file(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_wrong_key_file_stops_the_start_postgres() {
    let Some(pg) = Postgres::create().await else {
        return;
    };
    lost_key_file(Some(&pg.url)).await;
}

// --- 6. bounded logs under a flood of refusals ---------------------------------------

/// Request bytes as they are, answers undecoded.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn malformed(channel: Channel, token: MetadataValue<Ascii>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return Code::Unavailable;
    }
    let mut request = tonic::Request::new(vec![0x0a, 0xff, 0xff]);
    request.metadata_mut().insert("authorization", token);
    let path = "/custodian.identity.v1.TenantService/GetTenant"
        .parse()
        .unwrap();
    match grpc.unary::<_, Vec<u8>, _>(request, path, Raw).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_stays_bounded_under_a_flood_of_refused_calls() {
    let folder = tempfile::tempdir().unwrap();
    let mut server = Process::spawn(
        &folder.path().join("data"),
        &["--max-concurrent-requests", "2", "--log", "info"],
    );
    let (addr, _) = server.ready().await;
    let token = server.dev_token().expect("a development token");
    let before = server.output().len();

    // Several connections, so many calls are in flight at once.
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let auth: MetadataValue<Ascii> = format!("Bearer {token}").parse().unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..3000 {
        let channel = channels[i % channels.len()].clone();
        let auth = auth.clone();
        calls.spawn(async move {
            match i % 10 {
                // Malformed protobuf, with a valid token.
                0 => malformed(channel, auth).await,
                // No token at all.
                1..=4 => TenantServiceClient::new(channel)
                    .list_tenants(ListTenantsRequest::default())
                    .await
                    .map_or_else(|s| s.code(), |_| Code::Ok),
                // Authenticated, far more at once than the two permits.
                _ => TenantServiceClient::with_interceptor(
                    channel,
                    move |mut r: tonic::Request<()>| {
                        r.metadata_mut().insert("authorization", auth.clone());
                        Ok(r)
                    },
                )
                .list_tenants(ListTenantsRequest::default())
                .await
                .map_or_else(|s| s.code(), |_| Code::Ok),
            }
        });
    }
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    while let Some(code) = calls.join_next().await {
        *codes.entry(format!("{:?}", code.unwrap())).or_default() += 1;
    }
    // Malformed messages the server has room to read: each is refused.
    for _ in 0..300 {
        let code = malformed(channels[0].clone(), auth.clone()).await;
        assert_eq!(code, Code::InvalidArgument);
        *codes.entry(format!("{code:?}")).or_default() += 1;
    }
    for expected in ["Unauthenticated", "ResourceExhausted", "InvalidArgument"] {
        assert!(
            codes.contains_key(expected),
            "no {expected} among {codes:?}"
        );
    }
    for fault in ["Internal", "Unknown"] {
        assert!(!codes.contains_key(fault), "{codes:?}");
    }
    let during = server.output().len() - before;
    server.stop().await;
    let output = server.output();
    eprintln!(
        "{codes:?}: {during} bytes logged meanwhile, {} in all",
        output.len()
    );
    assert!(
        during < 1024,
        "{during} bytes logged for {codes:?}:\n{}",
        &output[before..before + during.min(4000)]
    );
    assert!(output.len() < 8 * 1024, "{} bytes:\n{output}", output.len());
    assert!(!output.contains("ERROR"), "{output}");
    assert!(
        output.matches("WARN").count() <= 1,
        "refusals are summed up at most once per 10 s:\n{output}"
    );
}

// --- 8. operator hygiene ----------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_printed_once_and_the_files_are_private() {
    let folder = tempfile::tempdir().unwrap();
    let data: PathBuf = folder.path().join("data");

    let mut first = Process::spawn(&data, &[]);
    let (_, channel) = first.ready().await;
    let token = first
        .dev_token()
        .expect("the first start prints a development token");
    create_data(&channel, &token).await;
    // While serving: the folder, the databases and their WAL and
    // shared-memory files are the owner's alone.
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    let mut files = 0;
    for service in ["identity", "tickets"] {
        for suffix in ["db", "db-wal", "db-shm"] {
            let file = data.join(format!("{service}.{suffix}"));
            if suffix == "db" || file.exists() {
                assert_eq!(mode(&file), 0o600, "{}", file.display());
                files += 1;
            }
        }
    }
    assert!(files >= 4, "the databases and their WAL files: {files}");
    assert_eq!(mode(&data.join("keys.toml")), 0o600);
    first.stop().await;

    // A restart prints no token: it would end up in every log collector.
    let mut again = Process::spawn(&data, &[]);
    again.ready().await;
    again.stop().await;
    let output = again.output();
    assert!(again.dev_token().is_none(), "{output}");
    assert!(!output.contains("export TOKEN") && !output.contains(&token));
    assert!(output.contains("custodian token --subject"), "{output}");
    assert_eq!(mode(&data), 0o700);
}
