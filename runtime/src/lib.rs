//! gito-runtime: what every gito process needs around its own work, written once. Log setup,
//! the shutdown signal, the supervisor that turns a dead task into a dead process, retry
//! backoff, secrets that never print, MQTT client options from a typed URL, and the Prometheus
//! recorder behind the `metrics` facade.

pub mod backoff;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod shutdown;
pub mod supervisor;

pub use backoff::Backoff;
pub use secrecy::{ExposeSecret, SecretString};
pub use supervisor::Supervisor;

/// An error as one line: its causes outermost first, each said once. (`{:#}` repeats a cause
/// whose message already quotes its source, as many library errors do.)
pub fn report(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if line.contains(&message) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&message);
    }
    line
}

/// For clap's `value_parser`: a secret from a flag or the environment.
pub fn parse_secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_says_each_cause_once() {
        let io = std::io::Error::other("connection refused");
        let wrapped = anyhow::Error::new(io)
            .context("error communicating with database: connection refused")
            .context("migrating on boot");
        assert_eq!(
            report(&wrapped),
            "migrating on boot: error communicating with database: connection refused"
        );
    }
}
