//! What `ingestor check` asks the database about itself: how this session is connected, which
//! schema version and columns exist, and what the role may do.

use anyhow::Context;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// The TLS version this session runs over, `None` when it runs without TLS (as the server sees
/// it, in `pg_stat_ssl`).
///
/// # Errors
/// When the server cannot be asked.
pub async fn session_tls(client: &Client) -> anyhow::Result<Option<String>> {
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .context("cannot read pg_stat_ssl")?;
    Ok(row
        .get::<_, bool>(0)
        .then(|| row.get::<_, Option<String>>(1).unwrap_or_default()))
}

/// The schema version the `sql/` scripts recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaVersion {
    /// The newest recorded version (`None`: the table is empty).
    Recorded(Option<i32>),
    /// There is no `schema_version` table: the schema predates `sql/050_schema_version.sql`.
    Unrecorded,
}

/// Reads the schema version.
///
/// # Errors
/// On a database error other than a missing table.
pub async fn schema_version(client: &Client) -> anyhow::Result<SchemaVersion> {
    match client
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await
    {
        Ok(row) => Ok(SchemaVersion::Recorded(row.get(0))),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(SchemaVersion::Unrecorded),
        Err(e) => Err(anyhow::Error::new(e).context("cannot read the schema version")),
    }
}

/// The columns of `table` in the current schema (none when there is no such table).
///
/// # Errors
/// On a database error.
pub async fn table_columns(client: &Client, table: &str) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
            &[&table],
        )
        .await
        .with_context(|| format!("cannot read the schema of {table}"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The session's role and whether it is a superuser.
///
/// # Errors
/// On a database error.
pub async fn current_role(client: &Client) -> anyhow::Result<(String, bool)> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .context("cannot read the current role")?;
    Ok((row.get(0), row.get(1)))
}

/// Whether the session's role has `privilege` on `table`; `None` when it cannot be told.
pub async fn has_privilege(client: &Client, table: &str, privilege: &str) -> Option<bool> {
    client
        .query_one(
            "SELECT has_table_privilege(current_user, $1, $2)",
            &[&table, &privilege],
        )
        .await
        .ok()
        .map(|r| r.get(0))
}
