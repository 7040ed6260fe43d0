//! gito-runtime: what every gito process needs around its own work, written once. Log setup,
//! the shutdown signal, the supervisor that turns a dead task into a dead process, retry
//! backoff, secrets that never print, and MQTT client options from a typed URL.

pub mod backoff;
pub mod logging;
pub mod mqtt;
pub mod shutdown;
pub mod supervisor;

pub use backoff::Backoff;
pub use secrecy::{ExposeSecret, SecretString};
pub use supervisor::Supervisor;

/// For clap's `value_parser`: a secret from a flag or the environment.
pub fn parse_secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}
