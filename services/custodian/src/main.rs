//! `custodian`: runs every Custodian service in one process, or one of them
//! with `--target`.

use clap::Parser;
use custodian::Target;
use custodian_runtime::{
    Application, Config, config::ServerArgs, server::shutdown_signal, telemetry,
};

/// Custodian keeps a SaaS privacy policy's promises as running services.
///
/// With no arguments it runs every service on 127.0.0.1:50051 with SQLite
/// files under ./.custodian: nothing else to install. Every flag can also be
/// set by the environment variable named in brackets.
#[derive(Debug, Parser)]
#[command(name = "custodian", version)]
struct Cli {
    /// Which service(s) to run.
    #[arg(long, env = "CUSTODIAN_TARGET", value_enum, default_value_t = Target::All)]
    target: Target,

    #[command(flatten)]
    server: ServerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::resolve(cli.server)?;
    let services = custodian::service_names(cli.target);
    let _telemetry = telemetry::init(&config, &format!("custodian-{}", services.join("-")))?;
    tracing::debug!(?config, "configuration");

    let stopped = shutdown_signal()?;
    let modules = custodian::modules(cli.target, &config)?;
    let app = Application::bind(config.clone(), modules).await?;
    print_welcome(&app, &config, &services, cli.target);
    app.run_with_shutdown(stopped).await
}

/// Tells a newcomer how to reach the server, with commands that work as
/// printed.
fn print_welcome(app: &Application, config: &Config, services: &[&str], target: Target) {
    let addr = app.local_addr();
    let storage = match &config.database_url {
        Some(url) => format!("database: {}", custodian_runtime::database::scheme_of(url)),
        None => format!("SQLite files in {}", config.data_dir.display()),
    };
    println!(
        "custodian: serving {} on {addr} ({storage})",
        services.join(", ")
    );
    if target == Target::All {
        println!("try:");
        println!("  grpcurl -plaintext {addr} list");
        println!("  grpcurl -plaintext {addr} grpc.health.v1.Health/Check");
        println!(
            "  grpcurl -plaintext -d '{{\"tenant\": {{\"display_name\": \"Acme\"}}, \"tenant_id\": \"acme\"}}' {addr} custodian.identity.v1.TenantService/CreateTenant"
        );
    }
}
