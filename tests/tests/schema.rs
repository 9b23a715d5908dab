#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `sql/` scripts against a real PostgreSQL server: they apply twice, by both ways they are
//! applied in practice, their constraints hold, the roles get least privilege, and the harness
//! creates and drops databases cleanly in parallel.

use stack_tests::{apply_sql_scripts, connect, database_url, sql_scripts, TestDatabase};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use uuid::Uuid;

/// Inserts one valid purchase and returns how many rows were inserted.
async fn insert_purchase(client: &Client, event_id: Uuid) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO events (event_id, user_id, product_id, event_type, price, \
             event_timestamp, source_file_id, source_line) \
             VALUES ($1, 42, 7, 'purchase', 19.99, '2024-05-01T12:00:00Z', 1, 2) \
             ON CONFLICT (event_id) DO NOTHING",
            &[&event_id],
        )
        .await
}

/// Runs `sql` as the `ingestor` role in a transaction that is rolled back afterwards.
async fn execute_as_ingestor(client: &mut Client, sql: &str) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE ingestor").await.unwrap();
    let result = tx.execute(sql, &[]).await;
    tx.rollback().await.unwrap();
    result
}

/// Runs `sql` as `role` in a transaction that is rolled back afterwards.
async fn execute_as(
    client: &mut Client,
    role: &str,
    sql: &str,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(&format!("SET LOCAL ROLE {role}"))
        .await
        .unwrap();
    let result = tx.execute(sql, &[]).await;
    tx.rollback().await.unwrap();
    result
}

/// A client of `db` logged in as `role` (trust authentication on the test server).
async fn login_as(db: &TestDatabase, role: &str) -> Client {
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.user(role);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn database_exists(admin: &Client, name: &str) -> bool {
    admin
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_script_applies_twice_in_a_row_with_batch_execute() {
    // Arrange: create() has applied every script once already.
    let db = TestDatabase::create().await;
    let client = db.client().await;

    // Act
    let second_run = apply_sql_scripts(&client).await;

    // Assert
    second_run.unwrap();
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' \
             AND tablename IN ('events', 'ingest_files', 'rejected_rows', 'pruned_files', \
             'schema_version')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 5);
    let version: i32 = client
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    let newest_script: i32 = sql_scripts()
        .last()
        .and_then(|p| p.file_name()?.to_str()?.split('_').next()?.parse().ok())
        .unwrap();
    assert_eq!(
        version, newest_script,
        "the newest script records its number"
    );
}

#[tokio::test]
async fn every_script_applies_twice_in_a_row_with_psql() {
    // Arrange: a database that already has the schema, so psql applies everything a second
    // and a third time (the third run proves the second left things in a re-appliable state).
    let db = TestDatabase::create().await;

    for run in 1..=2 {
        for script in sql_scripts() {
            // Act
            let output = tokio::process::Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url, "-f"])
                .arg(&script)
                .output()
                .await
                .expect("psql must be installed and on PATH");

            // Assert
            assert!(
                output.status.success(),
                "psql run {run} of {} failed with {}:\n{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[tokio::test]
async fn events_accept_a_valid_row_and_reject_a_purchase_without_price_and_a_duplicate() {
    // Arrange
    let db = TestDatabase::create().await;
    let client = db.client().await;
    let event_id = Uuid::new_v4();

    // Act
    let first = insert_purchase(&client, event_id).await;
    let duplicate = insert_purchase(&client, event_id).await;
    let without_price = client
        .execute(
            "INSERT INTO events (event_id, user_id, product_id, event_type, price, \
             event_timestamp, source_file_id, source_line) \
             VALUES ($1, 42, 7, 'purchase', NULL, now(), 1, 3)",
            &[&Uuid::new_v4()],
        )
        .await;
    let view_without_price = client
        .execute(
            "INSERT INTO events (event_id, user_id, product_id, event_type, price, \
             event_timestamp, source_file_id, source_line) \
             VALUES ($1, 42, 7, 'view', NULL, now(), 1, 4)",
            &[&Uuid::new_v4()],
        )
        .await;

    // Assert
    assert_eq!(first.unwrap(), 1);
    assert_eq!(
        duplicate.unwrap(),
        0,
        "a duplicate event_id must be skipped"
    );
    let error = without_price.expect_err("a purchase without price must be rejected");
    assert_eq!(error.code(), Some(&SqlState::CHECK_VIOLATION));
    assert_eq!(
        error.as_db_error().and_then(|e| e.constraint()),
        Some("events_price_required")
    );
    assert_eq!(view_without_price.unwrap(), 1, "a view may have no price");
}

#[tokio::test]
async fn the_ingestor_role_can_append_events_but_not_delete_them_or_create_tables() {
    // Arrange
    let db = TestDatabase::create().await;
    let mut client = db.client().await;
    let event_id = Uuid::new_v4();

    // Act: insert and read back in one transaction as the ingestor.
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE ingestor").await.unwrap();
    let inserted = insert_purchase(tx.client(), event_id).await;
    let seen = tx
        .query(
            "SELECT event_id FROM events WHERE event_id = $1",
            &[&event_id],
        )
        .await;
    tx.rollback().await.unwrap();
    let delete = execute_as_ingestor(&mut client, "DELETE FROM events").await;
    let create_table = execute_as_ingestor(&mut client, "CREATE TABLE x (i int)").await;

    // Assert
    assert_eq!(inserted.unwrap(), 1);
    assert_eq!(seen.unwrap().len(), 1);
    assert_eq!(
        delete.expect_err("ingestor must not delete events").code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    );
    assert_eq!(
        create_table
            .expect_err("ingestor must not create tables")
            .code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    );
}

#[tokio::test]
async fn grafana_reader_logs_in_as_an_analyst_that_reads_everything_and_writes_nothing() {
    // Arrange
    let db = TestDatabase::create().await;
    let mut client = db.client().await;
    insert_purchase(&client, Uuid::new_v4()).await.unwrap();
    let can_login: bool = client
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'grafana_reader'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Act
    let mut reads = Vec::new();
    for relation in [
        "events",
        "ingest_files",
        "rejected_rows",
        "pruned_files",
        "schema_version",
        "analytics_events_per_minute",
        "analytics_revenue_per_minute",
        "analytics_funnel_by_hour",
        "analytics_top_products",
        "analytics_rejections_by_reason",
    ] {
        reads.push((
            relation,
            execute_as(
                &mut client,
                "grafana_reader",
                &format!("SELECT * FROM {relation}"),
            )
            .await,
        ));
    }
    let insert = execute_as(&mut client, "grafana_reader", "DELETE FROM ingest_files").await;
    // Assert
    assert!(can_login);
    for (relation, read) in reads {
        assert!(
            read.is_ok(),
            "grafana_reader cannot read {relation}: {read:?}"
        );
    }
    assert_eq!(
        insert.expect_err("grafana_reader must not write").code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    );
}

#[tokio::test]
async fn grafana_reader_logs_in_with_a_statement_timeout_and_other_roles_without_one() {
    // Arrange
    let db = TestDatabase::create().await;

    // Act
    let reader = login_as(&db, "grafana_reader").await;
    let reader_timeout: String = reader
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    let admin_timeout: String = db
        .client()
        .await
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);

    // Assert: the Business dashboard's login is cut after 10 s; nobody else is.
    assert_eq!(reader_timeout, "10s");
    assert_eq!(admin_timeout, "0");
}

#[tokio::test]
async fn postgres_exporter_reads_every_sessions_statistics_but_no_rows() {
    // Arrange: a session of another role, with a query the exporter should see.
    let db = TestDatabase::create().await;
    let admin = db.client().await;
    insert_purchase(&admin, Uuid::new_v4()).await.unwrap();
    let exporter = login_as(&db, "postgres_exporter").await;

    // Act
    let rows = exporter.query("SELECT count(*) FROM events", &[]).await;
    let role = exporter
        .query_one(
            "SELECT rolsuper, rolconnlimit, pg_has_role('pg_monitor', 'MEMBER'), \
             (SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO events%') \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();

    // Assert
    assert_eq!(
        rows.expect_err("postgres_exporter must not read events")
            .code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let (superuser, limit, monitor): (bool, i32, bool) = (role.get(0), role.get(1), role.get(2));
    assert!(
        !superuser && monitor,
        "superuser {superuser}, pg_monitor {monitor}"
    );
    assert_eq!(limit, 3, "connection limit");
    let seen: i64 = role.get(3);
    assert!(seen >= 1, "pg_monitor shows another role's query text");
}

#[tokio::test]
async fn test_databases_are_created_concurrently_and_gone_after_drop() {
    // Arrange
    let admin = connect(&database_url()).await.unwrap();

    // Act: two databases at once exercise the concurrent role creation in 001_roles.sql.
    let (first, second) = tokio::join!(TestDatabase::create(), TestDatabase::create());
    let first_name = first.name.clone();
    let second_name = second.name.clone();
    let both_existed =
        database_exists(&admin, &first_name).await && database_exists(&admin, &second_name).await;
    // Leave a connection open: Drop must terminate it, not fail on it.
    let _open = first.client().await;
    drop(first);

    // Assert
    assert_ne!(first_name, second_name);
    assert!(both_existed, "both test databases must exist while in use");
    assert!(
        !database_exists(&admin, &first_name).await,
        "a dropped TestDatabase must remove its database"
    );
    assert!(database_exists(&admin, &second_name).await);
}
