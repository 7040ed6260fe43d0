//! Black-box tests of gito-api against a real PostgreSQL: one binary, one module per concern.

mod auth;
mod boot;
mod classification;
mod cli;
mod console;
mod devices;
mod docs;
mod errors;
mod helpers;
mod hierarchy;
mod hostile;
mod isolation;
mod liveness;
mod migrations;
mod processor;
mod supervision;
mod tenants;
