//! gito-api: the tenant REST API of the gito IoT platform, its schema migrations, and the
//! telemetry processor. `main.rs` only hands the command line to `cli::run`, so tests and
//! benchmarks drive exactly what production runs.
//!
//! Layers: `http` (the REST API and the WebSocket) and `processor` (MQTT → PostgreSQL) both
//! build on `domain` (alerts, telemetry schemas, field rules); the processor never imports
//! `http`, and `http` calls into the processor only to replay dead letters through its storing
//! path. `sweeper` (online/offline, offline and staleness rules) builds on the processor's
//! announcements and the database. `partitions` keeps the
//! telemetry partitions ahead of time and enforces retention. `startup` wires them together under one supervisor.

pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod db_error;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod migrate;
pub mod partitions;
pub mod processor;
pub mod rollups;
pub mod startup;
pub mod status;
pub mod sweeper;
