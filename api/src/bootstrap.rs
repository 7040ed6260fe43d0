//! Bootstrapping a deployment from the command line: the first tenant, with an id chosen in
//! advance so that a bridge can be configured with it before the API ever ran.

use anyhow::Context as _;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// Creates the tenant unless it exists; `true` when it was created.
pub async fn ensure_tenant(database_url: &str, id: Uuid, name: &str) -> anyhow::Result<bool> {
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty() && name.chars().count() <= 200,
        "the tenant name must be 1 to 200 characters"
    );
    let mut conn = PgConnection::connect(database_url)
        .await
        .context("connecting to the database")?;
    let created = sqlx::query!(
        "INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        id,
        name
    )
    .execute(&mut conn)
    .await
    .context("creating the tenant (is the schema migrated?)")?
    .rows_affected()
        == 1;
    conn.close().await.ok();
    Ok(created)
}
