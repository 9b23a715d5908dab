//! Which database this is: the server's system identifier and the database's name, for the
//! input directory's claim (see `crate::claim`).

use tokio_postgres::error::SqlState;

use crate::model::DatabaseIdentity;

/// The identity of the database `client` is connected to.
///
/// # Errors
/// When the query fails; when the role may not run `pg_control_system()` the error says which
/// GRANT fixes it. There is no fallback: the database's OID or the server's address is the same
/// on two fresh servers (or differs for one server reached two ways), and the schema creates no
/// row of its own that could serve (its three tables hold events and the ledger only).
pub async fn read_identity(client: &tokio_postgres::Client) -> anyhow::Result<DatabaseIdentity> {
    let row = client
        .query_one(
            "SELECT system_identifier, current_database()::text FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(|e| {
            let denied = e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE);
            let error = anyhow::Error::new(e);
            if denied {
                error.context(
                    "this role may not run pg_control_system(), which names the server so that \
                     one input directory is never loaded into two databases; as an \
                     administrator run `GRANT EXECUTE ON FUNCTION pg_control_system() TO <role>`",
                )
            } else {
                error.context("cannot read the database's system identifier")
            }
        })?;
    Ok(DatabaseIdentity {
        system_identifier: row.get(0),
        database: row.get(1),
    })
}
