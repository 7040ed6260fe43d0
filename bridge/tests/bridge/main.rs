//! Black-box tests of gito-bridge with real processes: two Mosquitto brokers (an "external" one
//! devices publish to, the "local" one the processor reads), the real API on a fresh database.

mod bounds;
mod classification;
mod delivery;
mod discovery;
mod faults;
mod helpers;
mod mapping;
mod scrape;
mod waiting;
