//! Waiting for a condition with a deadline (never a bare sleep), and free ports.

use std::net::TcpListener;
use std::time::Duration;

/// Polls `check` every 20 ms until it holds; panics with `what` at the deadline.
pub async fn wait_for<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let result = tokio::time::timeout(deadline, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "timed out after {deadline:?} waiting for {what}"
    );
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
