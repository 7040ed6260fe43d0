//! The command line: each subcommand of `gito-api` and what it prints. `main.rs` only calls
//! `run` and turns its result into the exit code.

use std::process::ExitCode;

use anyhow::Context as _;
use gito_runtime::shutdown;

use crate::config::{
    Cli, Command, DatabaseConfig, DatabaseUrl, MqttConfig, ServeConfig, StorageConfig,
    TenantCommand, TokenCommand,
};
use crate::db_error::DbError;
use crate::migrate::{MigrateError, commands};
use crate::startup::Server;

/// The exit code of a failure that waiting may cure: the database is not reachable (yet).
/// `entrypoint.sh` retries only on it; every other failure exits with 1.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Parses the process arguments, sets up logging, runs the subcommand. Errors are printed as
/// one line an operator can act on (each cause once, outermost first).
pub async fn run() -> ExitCode {
    let cli = Cli::parse_args();
    gito_runtime::logging::init(cli.log.log_format, "info,sqlx=warn");
    match dispatch(cli.command).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("gito-api: {}", gito_runtime::report(&e));
            if is_transient(&e) {
                ExitCode::from(EXIT_UNREACHABLE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<DbError>()
            .is_some_and(DbError::is_transient)
            || cause
                .downcast_ref::<MigrateError>()
                .is_some_and(MigrateError::is_transient)
    })
}

/// Runs the subcommand; `Ok` holds the exit code (only `migrate check` and `lint` use more than 0).
async fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Serve(config) => serve(config).await.map(|()| 0),
        Command::Processor {
            database,
            mqtt,
            storage,
        } => processor(database, mqtt, storage).await.map(|()| 0),
        Command::Tenant {
            database,
            command: TenantCommand::Ensure { id, name },
        } => {
            let created = crate::bootstrap::ensure_tenant(database.url.expose(), id, &name).await?;
            println!("{id} {}", if created { "created" } else { "exists" });
            Ok(0)
        }
        Command::Token {
            command: TokenCommand::Generate,
        } => {
            println!("{}", crate::auth::NewToken::generate().token);
            Ok(0)
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
            Ok(0)
        }
        Command::Migrate {
            database_url,
            lock_wait,
            migration,
            args,
        } => {
            let url = database_url.as_ref().map(DatabaseUrl::expose);
            let options = migration.options(lock_wait);
            let out = commands::run(
                &args.command,
                url,
                &options,
                migration.runtime_dir.as_deref(),
            )
            .await?;
            if !out.stdout.is_empty() {
                println!("{}", out.stdout);
            }
            if let Some(err) = out.stderr {
                eprintln!("gito-api: {err}");
            }
            Ok(out.exit)
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let server = Server::build(&config).await?;
    server.run(shutdown::on_signal()).await
}

async fn processor(
    database: DatabaseConfig,
    mqtt: MqttConfig,
    storage: StorageConfig,
) -> anyhow::Result<()> {
    let options = database
        .url
        .connect_options("gito-api processor")
        .map_err(DbError)
        .context("reading DATABASE_URL")?;
    let pool = sqlx::PgPool::connect_with(options)
        .await
        .map_err(DbError)
        .context("connecting to the database")?;
    // Nobody asks this process for `/status`; its metrics are the processor's log lines.
    let health = crate::status::Health::default();
    crate::processor::run(
        mqtt.processor(&storage),
        pool,
        health,
        shutdown::on_signal(),
    )
    .await
}
