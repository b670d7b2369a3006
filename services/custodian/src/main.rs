//! `custodian`: runs every Custodian service in one process, or one of them
//! with `--target`; issues tokens and manages keys.

use std::{path::PathBuf, sync::Arc, time::Duration};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use custodian::{Target, key_file_services, key_usage, load_keys, save_keys, suite};
use custodian_privacy::{
    Purpose,
    crypto::is_valid_key_id,
    token::{TokenIssuer, generate_key_pair},
};
use custodian_runtime::{
    Application, Config,
    config::{LogFormat, ServerArgs},
    server::shutdown_signal,
    telemetry,
    time::SystemClock,
};

/// Custodian keeps a SaaS privacy policy's promises as running services.
///
/// With no arguments it runs every service on 127.0.0.1:50051 with SQLite
/// files and a development key file under ./.custodian: nothing else to
/// install. Every flag can also be set by the environment variable named in
/// brackets.
#[derive(Debug, Parser)]
#[command(name = "custodian", version)]
struct Cli {
    /// Which service(s) to run, or whose keys a `keys` command handles.
    #[arg(long, global = true, env = "CUSTODIAN_TARGET", value_enum, default_value_t = Target::All)]
    target: Target,

    #[command(flatten)]
    server: ServerArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a signed bearer token, for operators and grpcurl, or a
    /// service's credential (`--service NAME`). Signs with the key file's
    /// token_signing_key: the operator's signing file (`keys init`), or the
    /// development key file.
    Token {
        /// Who the caller is, e.g. "ops:alice".
        #[arg(long, required_unless_present = "service", conflicts_with = "service")]
        subject: Option<String>,
        /// A purpose the caller may act for (repeat for several): service_delivery,
        /// support, dsr_fulfilment, security_investigation, product_analytics, audit,
        /// administration.
        #[arg(
            long = "purpose",
            required_unless_present = "service",
            conflicts_with = "service"
        )]
        purposes: Vec<Purpose>,
        /// Limits the caller to one tenant (its id, e.g. "acme").
        #[arg(long, conflicts_with = "service")]
        tenant: Option<String>,
        /// How long the token is valid (at most 30 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Issues the service credential of the service NAME (tickets,
        /// analytics, feedback, dsr): subject "svc:NAME", exactly the
        /// purposes that service calls others for; it may make only the
        /// calls that service declares. Mounted as its Secret file
        /// (--service-token-file); e.g. --ttl 720h, and renewed before then.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
    },
    /// Master-key rotation, without downtime. See the README.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Prints the record of processing (GDPR Art. 30) derived from the
    /// running code's declarations: what each service holds, for whom, for
    /// which purposes, for how long.
    Datamap {
        /// markdown (tables for people) or json (the DataMapService message).
        #[arg(long, default_value = "markdown", value_parser = ["markdown", "json"])]
        format: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Makes new keys for the suite run as separate servers (Kubernetes):
    /// OUT/signing.toml, the operator's token signing key, kept off the
    /// cluster; and OUT/NAME.toml per service, its own master key, the
    /// blind-index key they share and the token public key, for its Secret.
    Init {
        /// The folder to write to (made, mode 0700, if missing); existing
        /// key files are never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Splits the suite's key file (--key-file, or the development one)
    /// into OUT/signing.toml and OUT/NAME.toml per service (of --target).
    /// Every service's file keeps every master key, which its data may be
    /// wrapped under: rotate each file afterwards to give each service its
    /// own (add, activate, rewrap, retire).
    Split {
        #[arg(long)]
        out: PathBuf,
    },
    /// Step 1: adds a new master key, not yet active. Roll it out to every server.
    Add {
        /// The new key's id, e.g. "mk-2026-12".
        id: String,
    },
    /// Step 2: makes a master key the one new data keys are wrapped with. Roll out.
    Activate { id: String },
    /// Step 3: rewraps every data key of the key file's services (a
    /// service's file: that service; the suite's: those of --target) under
    /// the active master key, in batches, while the servers keep running.
    Rewrap,
    /// Step 4: removes a master key that no data key of the key file's
    /// services uses any more (a service's file: that service; the suite's:
    /// every service, whatever the target; their databases are checked).
    Retire { id: String },
    /// Shows which master key wraps how many data keys, per service of the
    /// key file.
    Status,
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    // What the flags and environment ask for, until the configuration
    // file has been read: an error before then is reported in that format.
    let mut format = cli.server.log_format.unwrap_or_default();
    let outcome = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli, &mut format)));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            telemetry::fatal(&err, format);
            std::process::ExitCode::FAILURE
        }
    }
}

/// A command line clap refuses: as clap reports it, or as one JSON line
/// when JSON logs were asked for (as far as a command line that did not
/// parse can tell). Help and version are printed as they are.
fn usage_error(err: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let json = {
        let args: Vec<String> = std::env::args().collect();
        let flag = args.iter().enumerate().find_map(|(i, arg)| {
            arg.strip_prefix("--log-format=")
                .or_else(|| (arg == "--log-format").then(|| args.get(i + 1).map(String::as_str))?)
        });
        flag.map(str::to_owned)
            .or_else(|| std::env::var("CUSTODIAN_LOG_FORMAT").ok())
            .is_some_and(|f| f == "json")
    };
    if !json
        || matches!(
            err.kind(),
            ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        )
    {
        err.exit();
    }
    let message = err.render().to_string();
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    telemetry::fatal(
        &anyhow::anyhow!("{}", message.trim_end()),
        custodian_runtime::config::LogFormat::Json,
    );
    std::process::ExitCode::from(2)
}

/// Tokio's multi-threaded runtime, without its LIFO slot where the build
/// allows (`--cfg tokio_unstable`, set in .cargo/config.toml). With the
/// slot, a request task that finishes wakes its connection's task into the
/// slot, which runs next and writes that one answer: the audit sealer
/// answers a pass's reads together, and under h2load GetContact made 0.77
/// `writev` calls a read. Without it the connection's task queues behind
/// the other answers ready, and writes them in one call: 0.14 a read, and
/// 6-19% more reads a second (README, Benchmarks).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

async fn run(cli: Cli, format: &mut LogFormat) -> anyhow::Result<()> {
    let command = Cli::command();
    custodian_runtime::config::refuse_unknown_variables(
        variables_read(&command).iter().map(String::as_str),
        std::env::vars_os(),
    )?;
    let config = Config::resolve(cli.server)?;
    *format = config.log_format;
    match cli.command {
        None => serve(cli.target, config).await,
        Some(Command::Token {
            subject,
            purposes,
            tenant,
            ttl,
            service,
        }) => {
            let (keys, _, _) = load_keys(cli.target, &config).await?;
            let issuer = signing_key(&keys)?;
            let token = match (service, subject) {
                (Some(service), _) => custodian::service_credential(&issuer, &service, ttl)?,
                (None, Some(subject)) => {
                    // What names a service in the audit trail is its
                    // credential; a caller's token never looks like one.
                    anyhow::ensure!(
                        !subject.starts_with("svc:"),
                        "\"svc:\" subjects are services' credentials: `custodian token --service NAME`"
                    );
                    issuer.issue(&subject, &purposes, tenant.as_deref(), ttl)?
                }
                (None, None) => anyhow::bail!("--subject or --service is required"),
            };
            println!("{token}");
            Ok(())
        }
        Some(Command::Keys(command)) => keys(cli.target, &config, command).await,
        Some(Command::Datamap { format }) => {
            // The map is the declarations: no keys or database are needed,
            // so throwaway ones are used, with the whole suite (the target
            // is a part of its map).
            let keys = custodian_privacy::keys::KeyFile::generate("datamap", generate_key_pair());
            let config = Config {
                service_token_file: None,
                ..config
            };
            let mut map = suite(Target::All, &config, &keys, Arc::new(SystemClock))?.data_map;
            let names = custodian::service_names(cli.target);
            map.systems.retain(|s| names.contains(&s.service.as_str()));
            match format.as_str() {
                "json" => println!("{}", custodian_kit::datamap::to_json(&map)),
                _ => print!("{}", custodian_kit::datamap::to_markdown(&map)),
            }
            Ok(())
        }
    }
}

/// Every environment variable the command line reads, in every subcommand:
/// the list the unknown-variable check compares against, taken from the
/// flags' own definitions.
fn variables_read(command: &clap::Command) -> Vec<String> {
    let mut names: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    for sub in command.get_subcommands() {
        names.extend(variables_read(sub));
    }
    names
}

fn signing_key(keys: &custodian_privacy::keys::KeyFile) -> anyhow::Result<TokenIssuer> {
    let pem = keys
        .token_signing_key
        .as_deref()
        .context("this key file has no token_signing_key: tokens are issued where it is")?;
    Ok(TokenIssuer::from_pem(pem)?)
}

async fn serve(target: Target, config: Config) -> anyhow::Result<()> {
    let services = custodian::service_names(target);
    let _telemetry = telemetry::init(&config, &format!("custodian-{}", services.join("-")))?;
    tracing::debug!(?config, "configuration");
    let stopped = shutdown_signal()?;
    let (keys, key_path, created) = load_keys(target, &config).await?;
    // Before anything is built: a pod given a key file that could sign
    // tokens, or another service's, does not start.
    custodian::check_key_file(target, &keys)
        .with_context(|| format!("key file {}", key_path.display()))?;
    if created {
        match config.log_format {
            LogFormat::Text => println!(
                "custodian: created a development key file at {} (keep it secret)",
                key_path.display()
            ),
            LogFormat::Json => tracing::warn!(
                path = %key_path.display(),
                "created a development key file (keep it secret)"
            ),
        }
    }
    let suite = suite(target, &config, &keys, Arc::new(SystemClock))?;
    custodian::check_settings(target, &config, &suite)?;
    let app = custodian::bind(config.clone(), suite).await?;
    print_welcome(&app, &config, &services, target, &keys, created);
    app.run_with_shutdown(stopped).await
}

/// Tells a newcomer how to reach the server, with commands that work as
/// printed: in development, with a ready token.
fn print_welcome(
    app: &Application,
    config: &Config,
    services: &[&str],
    target: Target,
    keys: &custodian_privacy::keys::KeyFile,
    created: bool,
) {
    let addr = app.local_addr();
    let storage = match &config.database_url {
        Some(url) => format!("database: {}", custodian_runtime::database::scheme_of(url)),
        None => format!("SQLite files in {}", config.data_dir.display()),
    };
    // Collectors get one line, and never a token.
    if config.log_format == LogFormat::Json {
        tracing::info!(
            address = %addr,
            services = %services.join(","),
            storage,
            "serving"
        );
        return;
    }
    println!(
        "custodian: serving {} on {addr} ({storage})",
        services.join(", ")
    );
    // A ready token only when the development key file was just made: a
    // token printed on every start would end up in every log collector.
    if target != Target::All || !created {
        if target == Target::All {
            println!("  tokens: custodian token --subject ops:me --purpose <purpose> (see --help)");
        }
        return;
    }
    let token = signing_key(keys).and_then(|issuer| {
        Ok(issuer.issue(
            "dev:newcomer",
            &Purpose::ALL,
            None,
            custodian::DEV_TOKEN_TTL,
        )?)
    });
    if let Ok(token) = token {
        println!(
            "try (a development token with every purpose, valid 12 hours; `custodian token --help` makes others):"
        );
        println!("  export TOKEN='{token}'");
        println!("  grpcurl -plaintext {addr} list");
        println!(
            "  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"tenant\": {{\"display_name\": \"Acme\"}}, \"tenant_id\": \"acme\"}}' {addr} custodian.identity.v1.TenantService/CreateTenant"
        );
    }
}

async fn keys(target: Target, config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    // A key file to rotate, and the services whose data keys its master
    // keys wrap.
    let open = async || -> anyhow::Result<_> {
        let (keys, path, _) = load_keys(target, config).await?;
        let services = key_file_services(target, &keys)?;
        Ok((keys, path, services))
    };
    match command {
        KeysCommand::Init { out } => {
            anyhow::ensure!(
                target == Target::All,
                "`keys init` makes every service's file at once (they share the blind-index key); \
                 leave out --target"
            );
            for path in custodian::init_split_keys(&out)? {
                println!("wrote {}", path.display());
            }
            println!(
                "keep {} off the cluster (it signs tokens); each NAME.toml goes into the Secret NAME-keys",
                out.join(custodian::SIGNING_FILE).display()
            );
        }
        KeysCommand::Split { out } => {
            // Never made here: a new suite file has nothing worth splitting.
            let (path, _) = custodian::key_file_path(Target::All, config)?;
            let suite_keys = custodian_privacy::keys::KeyFile::load(&path)?;
            let (signing, services) = suite_keys.split(&custodian::service_names(target))?;
            let signing = signing.filter(|_| target == Target::All);
            for path in custodian::write_split(&out, signing.as_ref(), &services)? {
                println!("wrote {}", path.display());
            }
            println!(
                "every file still holds every master key: rotate each service's file to give it its own"
            );
        }
        KeysCommand::Add { id } => {
            let (mut keys, path, _) = open().await?;
            anyhow::ensure!(
                is_valid_key_id(&id),
                "a key id is 1-64 letters, digits, '-' or '_'"
            );
            // Added inactive: servers still on the old file must be able to
            // unwrap what servers on the new one wrap, so activation waits
            // until every server has the key.
            keys.add_master_key(&id)?;
            save_keys(&path, &keys)?;
            println!(
                "added master key {id} (not active); roll the key file out, then `custodian keys activate {id}`"
            );
        }
        KeysCommand::Activate { id } => {
            let (mut keys, path, _) = open().await?;
            keys.activate_master_key(&id)?;
            save_keys(&path, &keys)?;
            println!("{id} is now active; roll the key file out, then `custodian keys rewrap`");
        }
        KeysCommand::Rewrap => {
            let (keys, _, mut services) = open().await?;
            // Of the suite's file, the services --target names.
            services.retain(|s| custodian::service_names(target).contains(s));
            for vault in &custodian::vaults(&services, config, &keys)? {
                let n = vault.rewrap_all(500).await?;
                println!(
                    "{}: rewrapped {n} data keys under {}",
                    vault.service(),
                    keys.active_master_key
                );
            }
        }
        KeysCommand::Retire { id } => {
            let (mut keys, path, services) = open().await?;
            // Every database of the file's services: a key another of them
            // still needs must stay.
            let users: Vec<String> = key_usage(config, &services)
                .await?
                .into_iter()
                .filter(|(key, _, n)| *key == id && *n > 0)
                .map(|(_, service, n)| format!("{service} ({n})"))
                .collect();
            anyhow::ensure!(
                users.is_empty(),
                "{id} still wraps data keys of {}: run `custodian keys rewrap` for {} first",
                users.join(", "),
                if users.len() == 1 { "it" } else { "each" }
            );
            keys.retire_master_key(&id)?;
            save_keys(&path, &keys)?;
            println!("retired {id}");
        }
        KeysCommand::Status => {
            let (keys, _, services) = open().await?;
            println!("active master key: {}", keys.active_master_key);
            for (key, service, n) in key_usage(config, &services).await? {
                println!("  {key}: {n} data keys of {service}");
            }
        }
    }
    Ok(())
}

// The server's runtime drops the LIFO slot only in a build with `--cfg
// tokio_unstable` (.cargo/config.toml): where the flag was lost (replaced by
// a RUSTFLAGS variable, say), the tests do not build.
#[cfg(test)]
const _: () = assert!(
    cfg!(tokio_unstable),
    "built without --cfg tokio_unstable: the runtime keeps its LIFO slot"
);
