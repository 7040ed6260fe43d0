use std::process::ExitCode;

use clap::Parser;
use gito_api::config::{Cli, Command};
use gito_api::migrate::{Catalog, commands};
use gito_api::startup::{Server, shutdown_signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    gito_api::logging::init(cli.log_format);
    let result = match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(config) => serve(config).await,
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
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    server.run(shutdown).await
}
