//! `gito-bridge`: an external MQTT broker into gito (see `gito_bridge::cli`).

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    gito_bridge::cli::run().await
}
