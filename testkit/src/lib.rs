//! gito-testkit: what gito's test suites and benchmarks stand on, outside the shipped code.
//! Real parts only: a PostgreSQL database per test (cloned from a migrated template, dropped at
//! the end), real `mosquitto` brokers on free ports, gito-api served in-process on port 0, and
//! Prometheus pages parsed by a real text-format parser.

mod api;
mod broker;
mod db;
mod mqtt;
mod scrape;
mod wait;

pub use api::{
    ADMIN_TOKEN, TestApi, TestApp, admin_client, client_with_token, create_tenant,
    create_tenant_token, error_code, id_of, serve_config,
};
pub use broker::Broker;
pub use db::{TestDb, server_url};
pub use mqtt::publish_all;
pub use scrape::Scrape;
pub use wait::{free_port, wait_for};
