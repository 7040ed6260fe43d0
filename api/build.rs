//! Rebuild when a migration is added or edited: `sqlx::migrate!` embeds the files at compile time,
//! and cargo would otherwise not notice a new file in a directory outside the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    // The console and Swagger UI files are embedded too (src/http/console.rs).
    println!("cargo:rerun-if-changed=console");
    println!("cargo:rerun-if-changed=swagger-ui");
}
