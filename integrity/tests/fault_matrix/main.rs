//! The fault matrix (issue 14): the real `gito-api` and `gito-bridge` binaries between a real
//! external Mosquitto, gito's local Mosquitto as shipped and a real PostgreSQL, one fault per
//! test, and exact counts read back from SQL — **0 lost, 0 duplicated** — plus the stall and
//! close-time bounds of the issue. Each scenario prints one line,
//! `fault-matrix: <scenario>: sent N, stored N, lost 0, duplicated 0 (...)`, in every run.
//!
//! Needs `target/<profile>/gito-api` and `gito-bridge` (built by `cargo test --workspace`, or
//! `cargo build -p gito-api -p gito-bridge` before `cargo test -p gito-integrity`), `mosquitto`,
//! a PostgreSQL server for test databases (`GITO_TEST_DATABASE_URL`), PostgreSQL's server
//! binaries (`initdb`, `pg_ctl`) and root (a tmpfs for the spool, the `postgres` user for the
//! private server). `GITO_FAULT_MATRIX_JOBS` (default 2) scenarios run at once: each runs
//! five processes, and timing bounds mean little on an overloaded machine.

mod db;
mod inspect;
mod ledger;
mod mosquitto;
mod postgres;
mod procs;
mod publisher;
mod stack;

mod database;
mod devices;
mod poison;
mod processes;
mod spool;
mod upstream;
mod websockets;

use std::sync::OnceLock;

use tokio::sync::{Semaphore, SemaphorePermit};

/// A turn to run: at most `GITO_FAULT_MATRIX_JOBS` scenarios at once.
pub async fn turn() -> SemaphorePermit<'static> {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let jobs = std::env::var("GITO_FAULT_MATRIX_JOBS")
                .ok()
                .and_then(|j| j.parse().ok())
                .unwrap_or(2);
            Semaphore::new(jobs)
        })
        .acquire()
        .await
        .expect("the semaphore is never closed")
}
