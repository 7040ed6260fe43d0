//! Black-box tests of gito-api against a real PostgreSQL: one binary, one module per concern.

mod boot;
mod devices;
mod errors;
mod helpers;
mod hierarchy;
mod migrations;
mod processor;
mod tenants;
