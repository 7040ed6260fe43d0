//! Black-box tests of gito-api against a real PostgreSQL: one binary, one module per concern.

mod auth;
mod batch;
mod boot;
mod classification;
mod cli;
mod connectivity;
mod console;
mod devices;
mod docs;
mod drift;
mod errors;
mod helpers;
mod hierarchy;
mod hostile;
mod isolation;
mod lint;
mod liveness;
mod migration_safety;
mod migrations;
mod observability;
mod processor;
mod rollups;
mod round_trip;
mod supervision;
mod tenants;
