//! The Business dashboard's SQL over ten hours of events, with the time ranges a user picks
//! (the last 30 minutes, 6 hours, 7 days), the Grafana macros expanded by the test: every panel
//! returns rows, and the figures are the rows whose event time is in the range, no more and no
//! fewer. The range deliberately starts and ends off the hour and off the minute, where a filter
//! on hour or minute buckets would drop or add a partial bucket.
//!
//! Why its own module: `dashboards.rs` runs the same queries against a live load (do they run,
//! as the read-only role?); this one checks what they count against data the test laid out.

use serde_json::Value;
use stack_tests::{workspace_root, TestDatabase};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::dashboards::{collect_queries, expand_sql};

/// The end of the test's data and of every range: a time off the hour and off the minute.
const END: &str = "2026-11-28T10:17:23.5Z";
/// The test's events: one every 2 s for ten hours before [`END`].
const EVENTS: i64 = 18_000;
/// The ranges a user picks, as PostgreSQL intervals before [`END`].
const RANGES: [&str; 3] = ["30 minutes", "6 hours", "7 days"];

/// Lays out ten hours of events of every type (the generator's mix), and ledger entries with
/// rejected rows every ten minutes.
async fn ten_hours_of_events(client: &Client) {
    client
        .batch_execute(&format!(
            "INSERT INTO events (event_id, user_id, product_id, event_type, price, event_timestamp)
             SELECT gen_random_uuid(), 1 + i % 97, 1 + i % 13,
                    CASE WHEN r < 80 THEN 'view' WHEN r < 91 THEN 'add_to_cart'
                         WHEN r < 94 THEN 'remove_from_cart' ELSE 'purchase' END,
                    CASE WHEN r < 80 AND i % 20 = 0 THEN NULL ELSE 1 + (i % 5000) / 100.0 END,
                    timestamptz '{END}' - i * interval '2 seconds'
             FROM generate_series(0, {EVENTS} - 1) AS i, LATERAL (SELECT i * 37 % 100 AS r) AS t;
             INSERT INTO ingest_files (file_name, size_bytes, content_hash, status, lines,
                                       accepted, rejected, committed_at)
             SELECT format('events-%s.csv', f), 100, decode(md5(f::text), 'hex'), 'loaded', 3, 0,
                    3, timestamptz '{END}' - f * interval '10 minutes'
             FROM generate_series(0, 59) AS f;
             INSERT INTO rejected_rows (file_id, line_number, raw_line, reason, message,
                                        rejected_at)
             SELECT file_id, 1 + k, 'x', (ARRAY['bad_price', 'bad_uuid', 'bad_timestamp'])[k],
                    'synthetic', committed_at
             FROM ingest_files, generate_series(1, 3) AS k;"
        ))
        .await
        .unwrap();
}

/// Runs `sql` as the read-only `analyst` role; returns its rows as text cells (NULL: `None`).
async fn rows_as_analyst(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(&format!("SET ROLE analyst; {sql}; RESET ROLE"))
        .await
        .unwrap_or_else(|e| panic!("{sql}\nfailed: {e:?}"));
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A cell as a number.
fn number(cell: &Option<String>) -> f64 {
    cell.as_deref().and_then(|c| c.parse().ok()).unwrap()
}

/// The sum of column `column` over `rows`.
fn column_sum(rows: &[Vec<Option<String>>], column: usize) -> f64 {
    rows.iter().map(|row| number(&row[column])).sum()
}

#[tokio::test]
async fn every_business_panel_returns_the_rows_of_30_minutes_6_hours_and_7_days_exactly() {
    // Arrange
    let db = TestDatabase::create().await;
    let client = db.client().await;
    ten_hours_of_events(&client).await;
    let path = workspace_root().join("grafana/dashboards/business.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut promql, mut panels) = (Vec::new(), Vec::new());
    collect_queries(&dashboard, &mut promql, &mut panels);
    assert!(promql.is_empty() && panels.len() >= 9, "{panels:#?}");
    let sql_of = |title: &str| -> &str {
        let found = panels.iter().find(|(t, _)| t.starts_with(title));
        &found
            .unwrap_or_else(|| panic!("no Business panel {title:?}"))
            .1
    };

    for range in RANGES {
        let from = format!("timestamptz '{END}' - interval '{range}'");
        let to = format!("timestamptz '{END}'");
        let client = &client;
        let panel_rows = |title: &str| {
            let sql = expand_sql(sql_of(title), &from, &to);
            async move { rows_as_analyst(client, &sql).await }
        };
        // The figures, counted directly from the rows whose event time is in the range.
        let direct = rows_as_analyst(
            client,
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE event_type = 'view'),
                        count(*) FILTER (WHERE event_type = 'add_to_cart'),
                        count(*) FILTER (WHERE event_type = 'purchase'),
                        sum(price) FILTER (WHERE event_type = 'purchase')
                 FROM events WHERE event_timestamp >= {from} AND event_timestamp <= {to}"
            ),
        )
        .await;
        let [all, views, carts, purchases, revenue] =
            [0, 1, 2, 3, 4].map(|i| number(&direct[0][i]));
        assert!(
            views > 0.0 && carts > 0.0 && purchases > 0.0,
            "{range}: {direct:?}"
        );

        // Act + Assert: every panel returns rows, none of them only NULLs.
        for (title, raw) in &panels {
            let rows = rows_as_analyst(client, &expand_sql(raw, &from, &to)).await;
            assert!(
                !rows.is_empty(),
                "{range}: panel {title:?} returned no rows"
            );
            assert!(
                rows.iter().any(|row| row.iter().all(Option::is_some)),
                "{range}: panel {title:?} returned only rows with NULLs: {rows:?}"
            );
        }
        // The Funnel's totals are the direct counts; Conversion is their ratio (4 digits).
        let funnel: Vec<f64> = panel_rows("Funnel").await[0].iter().map(number).collect();
        assert_eq!(funnel, [views, carts, purchases], "{range}: Funnel");
        let conversion: Vec<f64> = panel_rows("Conversion").await[0]
            .iter()
            .map(number)
            .collect();
        let expected = [carts / views, purchases / carts];
        let close = conversion
            .iter()
            .zip(expected)
            .all(|(c, e)| (c - e).abs() <= 0.5e-4);
        assert!(
            close,
            "{range}: Conversion {conversion:?}, direct {expected:?}"
        );
        // The per-minute series add up to the same rows: no partial minute is lost or added.
        let per_minute = column_sum(&panel_rows("Events per minute").await, 2);
        assert_eq!(per_minute, all, "{range}: Events per minute by type");
        let summed = column_sum(&panel_rows("Revenue per minute").await, 1);
        assert!(
            (summed - revenue).abs() < 0.005,
            "{range}: revenue {summed} != {revenue}"
        );
    }
}
