//! `gito-bridge`: an external MQTT broker into gito (see `gito_bridge::cli`).

/// jemalloc rather than glibc's malloc: the bridge keeps large long-lived maps (a million device
/// paths) beside a fast churn of message buffers, which glibc's allocator left fragmented.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    gito_bridge::cli::run().await
}
