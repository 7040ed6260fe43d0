//! gito-integrity holds no code of its own: it is the home of the fault matrix
//! (`tests/fault_matrix/`), which runs the real `gito-api` and `gito-bridge` binaries between
//! real Mosquitto brokers and a real PostgreSQL, injects one fault per scenario, and counts from
//! SQL what was lost and what was stored twice. See `tests/fault_matrix/main.rs`.
