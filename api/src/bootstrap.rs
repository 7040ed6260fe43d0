//! Bootstrapping a deployment from the command line: the first tenant, with an id chosen in
//! advance so that a bridge can be configured with it before the API ever ran, and the bridge's
//! tenant token.

use anyhow::Context as _;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::auth::NewToken;
use crate::db_error::DbError;
use crate::domain::fields::{self, MAX_NAME_CHARS};

/// The rules the API applies to names, so that the command line cannot store one it would refuse.
fn valid_name(field: &str, name: &str) -> anyhow::Result<String> {
    Ok(fields::text(field, name, MAX_NAME_CHARS)?)
}

/// Creates the tenant unless it exists; `true` when it was created.
pub async fn ensure_tenant(database_url: &str, id: Uuid, name: &str) -> anyhow::Result<bool> {
    let name = valid_name("the tenant name", name)?;
    let mut conn = PgConnection::connect(database_url)
        .await
        .map_err(DbError)
        .context("connecting to the database")?;
    let created = sqlx::query!(
        "INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        id,
        name
    )
    .execute(&mut conn)
    .await
    .map_err(DbError)
    .context("creating the tenant (is the schema migrated?)")?
    .rows_affected()
        == 1;
    conn.close().await.ok();
    Ok(created)
}

/// Registers an operator-supplied tenant token (e.g. the bridge's, from the environment) unless
/// it is registered; `true` when it was added. A token of another tenant, or the same key with
/// another secret, is an error rather than a silent takeover.
pub async fn ensure_token(
    database_url: &str,
    tenant_id: Uuid,
    name: &str,
    token: &str,
) -> anyhow::Result<bool> {
    let token = NewToken::from_token(token).context(
        "the token is not a gito tenant token (gito_<16 hex>_<64 hex>); create one with `gito-api token generate`",
    )?;
    let name = valid_name("the token name", name)?;
    let mut conn = PgConnection::connect(database_url)
        .await
        .map_err(DbError)
        .context("connecting to the database")?;
    let created = sqlx::query!(
        "INSERT INTO api_tokens (id, tenant_id, name, key_id, secret_sha256)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id) DO NOTHING",
        Uuid::now_v7(),
        tenant_id,
        name,
        token.key_id,
        &token.secret_sha256[..]
    )
    .execute(&mut conn)
    .await
    .map_err(DbError)
    .context("registering the token (does the tenant exist? is the schema migrated?)")?
    .rows_affected()
        == 1;
    if !created {
        let stored = sqlx::query!(
            "SELECT tenant_id, secret_sha256 FROM api_tokens WHERE key_id = $1",
            token.key_id
        )
        .fetch_one(&mut conn)
        .await
        .map_err(DbError)
        .context("reading the registered token")?;
        anyhow::ensure!(
            stored.tenant_id == tenant_id && stored.secret_sha256 == token.secret_sha256,
            "a token with key id {} is already registered for another tenant or with another secret",
            token.key_id
        );
    }
    conn.close().await.ok();
    Ok(created)
}
