//! The analytics questions of `ingestor report`, asked of the database: totals, events by
//! type, revenue by product, top users, the funnel, the latest events and rejections by reason.
//!
//! It queries the base tables rather than the `analytics_*` views of `sql/040_analytics.sql`, so
//! it works with the least-privilege `ingestor` role (which may SELECT `events` and the ledger,
//! but is not granted the views) and with a database that predates the views. Money is read as
//! `numeric` into [`Decimal`], so no amount is rounded through a float. Every section is a
//! whole-table aggregate: run it against a replica, or accept one scan of `events` per section,
//! on a large database.

use anyhow::Context;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// How many rows the top lists (products, users) and the latest events show.
const TOP: i64 = 10;

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whole-table totals.
    pub totals: Totals,
    /// Stored events per type, every known type listed (0 when absent).
    pub events_by_type: Vec<TypeCount>,
    /// The products with the most revenue, best first.
    pub revenue_by_product: Vec<ProductRevenue>,
    /// The users with the most events, most active first.
    pub top_users: Vec<UserActivity>,
    /// Views, carts, removals and purchases with conversion ratios.
    pub funnel: Funnel,
    /// The most recent events by event time, newest first.
    pub latest_events: Vec<LatestEvent>,
    /// Rejected rows per reason code (within the ledger's retention), most frequent first.
    pub rejections_by_reason: Vec<RejectionCount>,
}

/// Whole-table totals over `events`.
#[derive(Debug, Serialize)]
pub struct Totals {
    /// Events stored.
    pub events: i64,
    /// Distinct users.
    pub users: i64,
    /// Distinct products.
    pub products: i64,
    /// Sum of purchase prices, exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub revenue: Decimal,
    /// Earliest event time, if any event is stored.
    pub first_event: Option<DateTime<Utc>>,
    /// Latest event time, if any event is stored.
    pub last_event: Option<DateTime<Utc>>,
}

/// Events of one type.
#[derive(Debug, Serialize)]
pub struct TypeCount {
    /// The event type.
    pub event_type: String,
    /// How many are stored.
    pub events: i64,
}

/// One product's purchases and revenue.
#[derive(Debug, Serialize)]
pub struct ProductRevenue {
    /// The product.
    pub product_id: i64,
    /// Purchase events.
    pub purchases: i64,
    /// Sum of its purchase prices, exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub revenue: Decimal,
}

/// One user's activity.
#[derive(Debug, Serialize)]
pub struct UserActivity {
    /// The user.
    pub user_id: i64,
    /// Events of any type.
    pub events: i64,
    /// Purchase events.
    pub purchases: i64,
    /// Sum of the user's purchase prices, exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub revenue: Decimal,
}

/// The funnel over all stored events: counts per step, independent of users.
#[derive(Debug, Serialize)]
pub struct Funnel {
    /// `view` events.
    pub views: i64,
    /// `add_to_cart` events.
    pub carts: i64,
    /// `remove_from_cart` events.
    pub removals: i64,
    /// `purchase` events.
    pub purchases: i64,
    /// carts / views, 4 digits; `None` without views.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub view_to_cart: Option<Decimal>,
    /// purchases / carts, 4 digits; `None` without carts.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub cart_to_purchase: Option<Decimal>,
    /// purchases / views, 4 digits; `None` without views.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub view_to_purchase: Option<Decimal>,
}

/// One stored event.
#[derive(Debug, Serialize)]
pub struct LatestEvent {
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// The user.
    pub user_id: i64,
    /// The product.
    pub product_id: i64,
    /// The event type.
    pub event_type: String,
    /// The price, exact; `None` for a view without one.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub price: Option<Decimal>,
    /// When it happened.
    pub event_timestamp: DateTime<Utc>,
}

/// Rejections with one reason code.
#[derive(Debug, Serialize)]
pub struct RejectionCount {
    /// The reason code.
    pub reason: String,
    /// Rejected rows.
    pub rows: i64,
    /// Files they came from.
    pub files: i64,
    /// The most recent rejection.
    pub last_seen: DateTime<Utc>,
}

/// Gathers the report. The sections run in one REPEATABLE READ, READ ONLY transaction, so they
/// agree with each other even while an ingestor commits.
///
/// # Errors
/// When the database cannot be read.
pub async fn read(client: &mut tokio_postgres::Client) -> anyhow::Result<Report> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .context("cannot start the report transaction")?;

    let row = tx
        .query_one(
            "SELECT count(*), count(DISTINCT user_id), count(DISTINCT product_id), \
             coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0.00), \
             min(event_timestamp), max(event_timestamp) FROM events",
            &[],
        )
        .await
        .context("cannot read the totals")?;
    let totals = Totals {
        events: row.get(0),
        users: row.get(1),
        products: row.get(2),
        revenue: row.get(3),
        first_event: row.get(4),
        last_event: row.get(5),
    };

    let events_by_type = tx
        .query(
            "SELECT t.event_type, count(e.event_type) \
             FROM (VALUES (1, 'view'), (2, 'add_to_cart'), (3, 'remove_from_cart'), (4, 'purchase')) \
                 AS t(step, event_type) \
             LEFT JOIN events e ON e.event_type = t.event_type \
             GROUP BY t.step, t.event_type ORDER BY t.step",
            &[],
        )
        .await
        .context("cannot read events by type")?
        .iter()
        .map(|r| TypeCount {
            event_type: r.get(0),
            events: r.get(1),
        })
        .collect();

    let revenue_by_product = tx
        .query(
            "SELECT product_id, count(*), sum(price) FROM events WHERE event_type = 'purchase' \
             GROUP BY product_id ORDER BY sum(price) DESC, product_id LIMIT $1",
            &[&TOP],
        )
        .await
        .context("cannot read revenue by product")?
        .iter()
        .map(|r| ProductRevenue {
            product_id: r.get(0),
            purchases: r.get(1),
            revenue: r.get(2),
        })
        .collect();

    let top_users = tx
        .query(
            "SELECT user_id, count(*), count(*) FILTER (WHERE event_type = 'purchase'), \
             coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0.00) \
             FROM events GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT $1",
            &[&TOP],
        )
        .await
        .context("cannot read the top users")?
        .iter()
        .map(|r| UserActivity {
            user_id: r.get(0),
            events: r.get(1),
            purchases: r.get(2),
            revenue: r.get(3),
        })
        .collect();

    let row = tx
        .query_one(
            "SELECT views, carts, removals, purchases, \
             round(carts::numeric / NULLIF(views, 0), 4), \
             round(purchases::numeric / NULLIF(carts, 0), 4), \
             round(purchases::numeric / NULLIF(views, 0), 4) \
             FROM (SELECT count(*) FILTER (WHERE event_type = 'view') AS views, \
                   count(*) FILTER (WHERE event_type = 'add_to_cart') AS carts, \
                   count(*) FILTER (WHERE event_type = 'remove_from_cart') AS removals, \
                   count(*) FILTER (WHERE event_type = 'purchase') AS purchases FROM events) AS f",
            &[],
        )
        .await
        .context("cannot read the funnel")?;
    let funnel = Funnel {
        views: row.get(0),
        carts: row.get(1),
        removals: row.get(2),
        purchases: row.get(3),
        view_to_cart: row.get(4),
        cart_to_purchase: row.get(5),
        view_to_purchase: row.get(6),
    };

    let latest_events = tx
        .query(
            "SELECT event_id, user_id, product_id, event_type, price, event_timestamp \
             FROM events ORDER BY event_timestamp DESC, event_id LIMIT $1",
            &[&TOP],
        )
        .await
        .context("cannot read the latest events")?
        .iter()
        .map(|r| LatestEvent {
            event_id: r.get(0),
            user_id: r.get(1),
            product_id: r.get(2),
            event_type: r.get(3),
            price: r.get(4),
            event_timestamp: r.get(5),
        })
        .collect();

    let rejections_by_reason = tx
        .query(
            "SELECT reason, count(*), count(DISTINCT file_id), max(rejected_at) \
             FROM rejected_rows GROUP BY reason ORDER BY count(*) DESC, reason",
            &[],
        )
        .await
        .context("cannot read rejections by reason")?
        .iter()
        .map(|r| RejectionCount {
            reason: r.get(0),
            rows: r.get(1),
            files: r.get(2),
            last_seen: r.get(3),
        })
        .collect();

    tx.commit()
        .await
        .context("cannot end the report transaction")?;
    Ok(Report {
        totals,
        events_by_type,
        revenue_by_product,
        top_users,
        funnel,
        latest_events,
        rejections_by_reason,
    })
}
