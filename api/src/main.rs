use std::process::ExitCode;

use gito_api::config::{Cli, Command, DatabaseConfig, MqttConfig, TenantCommand, TokenCommand};
use gito_api::migrate::{Catalog, commands};
use gito_api::startup::{Server, shutdown_signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_args();
    gito_api::logging::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(config) => serve(config).await,
        Command::Processor { database, mqtt } => processor(database, mqtt).await,
        Command::Tenant {
            database,
            command: TenantCommand::Ensure { id, name },
        } => gito_api::bootstrap::ensure_tenant(database.url.expose(), id, &name)
            .await
            .map(|created| {
                println!("{id} {}", if created { "created" } else { "exists" });
            }),
        Command::Token {
            command: TokenCommand::Generate,
        } => {
            println!("{}", gito_api::auth::NewToken::generate().token);
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Ensure {
                    database,
                    tenant_id,
                    name,
                    token,
                },
        } => gito_api::bootstrap::ensure_token(database.url.expose(), tenant_id, &name, &token)
            .await
            .map(|created| {
                println!(
                    "token {name} for tenant {tenant_id} {}",
                    if created { "registered" } else { "exists" }
                );
            }),
        Command::Migrate { database, args } => {
            commands::run(&args.command, database.url.expose(), Catalog::embedded())
                .await
                .map(|out| println!("{out}"))
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line an operator can act on: the context chain, outermost first.
            eprintln!("gito-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: gito_api::config::ServeConfig) -> anyhow::Result<()> {
    let server = Server::build(&config).await?;
    server.run(on_signal()).await
}

async fn processor(database: DatabaseConfig, mqtt: MqttConfig) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(database.url.expose()).await?;
    gito_api::processor::run(mqtt.processor()?, pool, on_signal()).await
}

/// A token cancelled by ctrl-c or SIGTERM.
fn on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    shutdown
}
