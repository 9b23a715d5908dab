//! `ingestor report` and the analytics views of `sql/040_analytics.sql`, against data loaded by
//! a real ingestor: every number the report prints is checked against a direct SQL query.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use stack_tests::TestDatabase;
use tokio_postgres::GenericClient;

use crate::helpers::*;

/// The analytics views, as created by `sql/040_analytics.sql`.
const VIEWS: [&str; 5] = [
    "analytics_events_per_minute",
    "analytics_revenue_per_minute",
    "analytics_funnel_by_hour",
    "analytics_top_products",
    "analytics_rejections_by_reason",
];

/// A database loaded by an ingestor (in-process) from 5 generated files with invalid and duplicate
/// rows, so every report section has data.
async fn loaded_database(dir: &Path) -> TestDatabase {
    let db = TestDatabase::create().await;
    generate(
        dir,
        5,
        400,
        42,
        Faults {
            invalid: 0.02,
            duplicate: 0.02,
            late: 0.0,
        },
    );
    let running = spawn_app(&ingestor_url(&db), dir, &[]).await;
    wait_for_ledger(&db, dir, 5, Duration::from_secs(60)).await;
    running.stop().await.unwrap();
    db
}

fn report(database_url: &str, input: &Path, json: bool) -> Output {
    let mut command = Command::new(INGESTOR);
    command
        .arg("--input-dir")
        .arg(input)
        .arg("report")
        .env("DATABASE_URL", database_url);
    if json {
        command.arg("--json");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "ingestor report failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn decimal(value: &Value) -> Decimal {
    value
        .as_str()
        .unwrap_or_else(|| panic!("money must be a JSON string, got {value}"))
        .parse()
        .unwrap()
}

fn time(value: &Value) -> DateTime<Utc> {
    serde_json::from_value(value.clone()).unwrap()
}

async fn count(client: &impl GenericClient, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn report_json_agrees_with_direct_sql_on_every_number() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let db = loaded_database(dir.path()).await;
    let client = db.client().await;
    // Act: through the least-privilege ingestor role, as operators run it.
    let output = report(&ingestor_url(&db), dir.path(), true);
    // Assert
    let r: Value = serde_json::from_slice(&output.stdout).unwrap();

    // Totals.
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT user_id), count(DISTINCT product_id), \
             sum(price) FILTER (WHERE event_type = 'purchase'), min(event_timestamp), \
             max(event_timestamp) FROM events",
            &[],
        )
        .await
        .unwrap();
    let totals = &r["totals"];
    let events: i64 = row.get(0);
    assert!(events > 1500, "the fixture stores most of 2000 lines");
    assert_eq!(totals["events"], events);
    assert_eq!(totals["users"], row.get::<_, i64>(1));
    assert_eq!(totals["products"], row.get::<_, i64>(2));
    assert_eq!(decimal(&totals["revenue"]), row.get::<_, Decimal>(3));
    assert_eq!(time(&totals["first_event"]), row.get::<_, DateTime<Utc>>(4));
    assert_eq!(time(&totals["last_event"]), row.get::<_, DateTime<Utc>>(5));

    // Events by type: all four, each equal to its count.
    let by_type = r["events_by_type"].as_array().unwrap();
    assert_eq!(by_type.len(), 4);
    for entry in by_type {
        let event_type = entry["event_type"].as_str().unwrap();
        let stored: i64 = client
            .query_one(
                "SELECT count(*) FROM events WHERE event_type = $1",
                &[&event_type],
            )
            .await
            .unwrap()
            .get(0);
        assert!(stored > 0, "{event_type} missing from the fixture");
        assert_eq!(entry["events"], stored, "{event_type}");
    }

    // Revenue by product: each listed product exact, best first, nobody left out is better.
    let products = r["revenue_by_product"].as_array().unwrap();
    assert_eq!(products.len(), 10);
    let mut previous = Decimal::MAX;
    for p in products {
        let id = p["product_id"].as_i64().unwrap();
        let row = client
            .query_one(
                "SELECT count(*), sum(price) FROM events \
                 WHERE event_type = 'purchase' AND product_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(p["purchases"], row.get::<_, i64>(0), "product {id}");
        let revenue = decimal(&p["revenue"]);
        assert_eq!(revenue, row.get::<_, Decimal>(1), "product {id}");
        assert!(revenue <= previous, "revenue by product is not sorted");
        previous = revenue;
    }
    let listed: Vec<i64> = products
        .iter()
        .map(|p| p["product_id"].as_i64().unwrap())
        .collect();
    let best_unlisted: Option<Decimal> = client
        .query_one(
            "SELECT max(revenue) FROM (SELECT sum(price) AS revenue FROM events \
             WHERE event_type = 'purchase' AND product_id <> ALL($1) GROUP BY product_id) s",
            &[&listed],
        )
        .await
        .unwrap()
        .get(0);
    assert!(best_unlisted.is_none_or(|best| best <= previous));

    // Top users: each listed user exact, most active first, nobody left out is more active.
    let users = r["top_users"].as_array().unwrap();
    assert_eq!(users.len(), 10);
    let mut previous = i64::MAX;
    for u in users {
        let id = u["user_id"].as_i64().unwrap();
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE event_type = 'purchase'), \
                 coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) \
                 FROM events WHERE user_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let events: i64 = row.get(0);
        assert_eq!(u["events"], events, "user {id}");
        assert_eq!(u["purchases"], row.get::<_, i64>(1), "user {id}");
        assert_eq!(
            decimal(&u["revenue"]),
            row.get::<_, Decimal>(2),
            "user {id}"
        );
        assert!(events <= previous, "top users are not sorted");
        previous = events;
    }
    let listed: Vec<i64> = users
        .iter()
        .map(|u| u["user_id"].as_i64().unwrap())
        .collect();
    let most_active_unlisted: Option<i64> = client
        .query_one(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM events \
             WHERE user_id <> ALL($1) GROUP BY user_id) s",
            &[&listed],
        )
        .await
        .unwrap()
        .get(0);
    assert!(most_active_unlisted.is_none_or(|n| n <= previous));

    // Funnel: counts per step and the ratios, rounded by PostgreSQL as the report documents.
    let funnel = &r["funnel"];
    let views = count(
        &client,
        "SELECT count(*) FROM events WHERE event_type = 'view'",
    )
    .await;
    let carts = count(
        &client,
        "SELECT count(*) FROM events WHERE event_type = 'add_to_cart'",
    )
    .await;
    let removals = count(
        &client,
        "SELECT count(*) FROM events WHERE event_type = 'remove_from_cart'",
    )
    .await;
    let purchases = count(
        &client,
        "SELECT count(*) FROM events WHERE event_type = 'purchase'",
    )
    .await;
    assert_eq!(funnel["views"], views);
    assert_eq!(funnel["carts"], carts);
    assert_eq!(funnel["removals"], removals);
    assert_eq!(funnel["purchases"], purchases);
    assert_eq!(views + carts + removals + purchases, events);
    let ratios = client
        .query_one(
            "SELECT round($1::bigint::numeric / $2::bigint, 4), \
             round($3::bigint::numeric / $1::bigint, 4), round($3::bigint::numeric / $2::bigint, 4)",
            &[&carts, &views, &purchases],
        )
        .await
        .unwrap();
    assert_eq!(
        decimal(&funnel["view_to_cart"]),
        ratios.get::<_, Decimal>(0)
    );
    assert_eq!(
        decimal(&funnel["cart_to_purchase"]),
        ratios.get::<_, Decimal>(1)
    );
    assert_eq!(
        decimal(&funnel["view_to_purchase"]),
        ratios.get::<_, Decimal>(2)
    );

    // Latest events: the ten newest by event time, each as stored.
    let latest = r["latest_events"].as_array().unwrap();
    let newest: Vec<uuid::Uuid> = client
        .query(
            "SELECT event_id FROM events ORDER BY event_timestamp DESC, event_id LIMIT 10",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let reported: Vec<uuid::Uuid> = latest
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(reported, newest);
    for e in latest {
        let id: uuid::Uuid = e["event_id"].as_str().unwrap().parse().unwrap();
        let row = client
            .query_one(
                "SELECT user_id, product_id, event_type, price, event_timestamp FROM events \
                 WHERE event_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(e["user_id"], row.get::<_, i64>(0));
        assert_eq!(e["product_id"], row.get::<_, i64>(1));
        assert_eq!(e["event_type"], row.get::<_, String>(2));
        let price: Option<Decimal> = row.get(3);
        assert_eq!(
            e["price"].as_str().map(|p| p.parse::<Decimal>().unwrap()),
            price
        );
        assert_eq!(time(&e["event_timestamp"]), row.get::<_, DateTime<Utc>>(4));
    }

    // Rejections by reason: exactly the stored ones.
    let expected: BTreeMap<String, (i64, i64)> = client
        .query(
            "SELECT reason, count(*), count(DISTINCT file_id) FROM rejected_rows GROUP BY reason",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    assert!(!expected.is_empty(), "the fixture has rejected rows");
    let reported: BTreeMap<String, (i64, i64)> = r["rejections_by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["reason"].as_str().unwrap().to_owned(),
                (c["rows"].as_i64().unwrap(), c["files"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(reported, expected);
}

#[tokio::test]
async fn report_prints_every_section_as_a_table_for_people() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let db = loaded_database(dir.path()).await;
    let events = count(&db.client().await, "SELECT count(*) FROM events").await;
    // Act
    let output = report(&ingestor_url(&db), dir.path(), false);
    // Assert
    let text = String::from_utf8_lossy(&output.stdout);
    for heading in [
        "Totals",
        "Events by type",
        "Revenue by product (top 10)",
        "Top users (top 10 by events)",
        "Funnel",
        "Latest events (10 most recent)",
        "Rejections by reason",
    ] {
        assert!(
            text.lines().any(|l| l == heading),
            "missing heading {heading:?} in:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("  events") && l.ends_with(&format!(" {events}"))),
        "total events not shown:\n{text}"
    );
}

#[tokio::test]
async fn report_on_an_empty_database_prints_zeros_and_no_ratios() {
    // Arrange
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    // Act
    let output = report(&ingestor_url(&db), dir.path(), true);
    // Assert
    let r: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(r["totals"]["events"], 0);
    assert_eq!(r["totals"]["revenue"], "0.00");
    assert!(r["totals"]["first_event"].is_null());
    assert!(r["funnel"]["view_to_cart"].is_null());
    assert_eq!(r["events_by_type"].as_array().unwrap().len(), 4);
    assert!(r["latest_events"].as_array().unwrap().is_empty());
    assert!(r["rejections_by_reason"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn analytics_views_return_the_loaded_data_to_the_analyst_who_cannot_write() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let db = loaded_database(dir.path()).await;
    let mut client = db.client().await;
    let events = count(&client, "SELECT count(*) FROM events").await;
    let revenue: Decimal = client
        .query_one(
            "SELECT sum(price) FROM events WHERE event_type = 'purchase'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rejected = count(&client, "SELECT count(*) FROM rejected_rows").await;
    // Act + Assert: as the analyst, every view has rows and adds up to the base tables.
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE analyst").await.unwrap();
    for view in VIEWS {
        let rows = count(&tx, &format!("SELECT count(*) FROM {view}")).await;
        assert!(rows > 0, "{view} returned no rows");
    }
    let sums = tx
        .query_one(
            "SELECT (SELECT sum(events)::bigint FROM analytics_events_per_minute), \
             (SELECT sum(revenue) FROM analytics_revenue_per_minute), \
             (SELECT sum(revenue) FROM analytics_top_products), \
             (SELECT sum(views + carts + removals + purchases)::bigint FROM analytics_funnel_by_hour), \
             (SELECT sum(rows)::bigint FROM analytics_rejections_by_reason)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(sums.get::<_, i64>(0), events);
    assert_eq!(sums.get::<_, Decimal>(1), revenue);
    assert_eq!(sums.get::<_, Decimal>(2), revenue);
    assert_eq!(sums.get::<_, i64>(3), events);
    assert_eq!(sums.get::<_, i64>(4), rejected);
    // A time-windowed query on a bucket column works (and is what the BRIN indexes serve).
    let recent = count(
        &tx,
        "SELECT count(*) FROM analytics_funnel_by_hour \
         WHERE hour >= (SELECT max(hour) FROM analytics_funnel_by_hour)",
    )
    .await;
    assert_eq!(recent, 1);
    let insert = tx
        .execute(
            "INSERT INTO events (event_id, user_id, product_id, event_type, event_timestamp) \
             VALUES (gen_random_uuid(), 1, 1, 'view', now())",
            &[],
        )
        .await;
    let error = insert.expect_err("the analyst must not write events");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    drop(tx);
}

#[tokio::test]
async fn the_ingestor_role_is_not_granted_the_analytics_views() {
    // Arrange
    let db = TestDatabase::create().await;
    let mut client = db.client().await;
    // Act
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE ingestor").await.unwrap();
    let result = tx.query("SELECT * FROM analytics_top_products", &[]).await;
    // Assert: dashboards are the analyst's; the report reads the base tables instead.
    assert_eq!(
        result.expect_err("ingestor read a view").code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
}
