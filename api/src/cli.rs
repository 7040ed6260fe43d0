//! The command line: each subcommand of `gito-api` and what it prints. `main.rs` only calls
//! `run` and turns its result into the exit code.

use std::process::ExitCode;

use gito_runtime::shutdown;

use crate::config::{
    Cli, Command, DatabaseConfig, MqttConfig, ServeConfig, TenantCommand, TokenCommand,
};
use crate::migrate::{Catalog, commands};
use crate::startup::Server;

/// Parses the process arguments, sets up logging, runs the subcommand. Errors are printed as
/// one line an operator can act on (the context chain, outermost first) and exit with 1.
pub async fn run() -> ExitCode {
    let cli = Cli::parse_args();
    gito_runtime::logging::init(cli.log.log_format, "info,sqlx=warn");
    match dispatch(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gito-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => serve(config).await,
        Command::Processor { database, mqtt } => processor(database, mqtt).await,
        Command::Tenant {
            database,
            command: TenantCommand::Ensure { id, name },
        } => {
            let created = crate::bootstrap::ensure_tenant(database.url.expose(), id, &name).await?;
            println!("{id} {}", if created { "created" } else { "exists" });
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Generate,
        } => {
            println!("{}", crate::auth::NewToken::generate().token);
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
        } => {
            let created =
                crate::bootstrap::ensure_token(database.url.expose(), tenant_id, &name, &token)
                    .await?;
            let outcome = if created { "registered" } else { "exists" };
            println!("token {name} for tenant {tenant_id} {outcome}");
            Ok(())
        }
        Command::Migrate { database, args } => {
            let out =
                commands::run(&args.command, database.url.expose(), Catalog::embedded()).await?;
            println!("{out}");
            Ok(())
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let server = Server::build(&config).await?;
    server.run(shutdown::on_signal()).await
}

async fn processor(database: DatabaseConfig, mqtt: MqttConfig) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(database.url.expose()).await?;
    crate::processor::run(mqtt.processor(), pool, shutdown::on_signal()).await
}
