//! `gito-api`: the REST API, its migrations and the telemetry processor (see `gito_api::cli`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    gito_api::cli::run().await
}
