//! gito-api: the tenant REST API of the gito IoT platform, its schema migrations, and the
//! telemetry processor. `main.rs` only parses configuration and calls into here, so tests
//! and benchmarks drive exactly what production runs.

pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod http;
pub mod logging;
pub mod migrate;
pub mod processor;
pub mod startup;
#[cfg(feature = "testing")]
pub mod testing;
