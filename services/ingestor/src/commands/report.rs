//! `ingestor report`: the analytics questions of the old pipelines' interactive query tool
//! (asked in `store::analytics`), printed as tables for people or as JSON, where money is a
//! decimal string so no amount is rounded through a float.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;

use crate::config::Settings;
pub use crate::store::analytics::Report;
use crate::store::{analytics, connect_once};

/// Prints the report as tables or JSON.
///
/// # Errors
/// When the database cannot be read or standard output cannot be written (a closed pipe is
/// not an error).
pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let mut client = connect_once(settings, "ingestor-report").await?;
    let report = analytics::read(&mut client).await?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        text.push('\n');
        text
    } else {
        render(&report)
    };
    // A reader that stops early (`| head`) is not an error, and must not be a panic.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write the report"))
        }
        _ => Ok(()),
    }
}

/// The report as aligned tables for people, one titled section each.
pub fn render(r: &Report) -> String {
    let t = &r.totals;
    let mut out = String::new();
    section(
        &mut out,
        "Totals",
        &["", ""],
        vec![
            vec!["events".into(), t.events.to_string()],
            vec!["users".into(), t.users.to_string()],
            vec!["products".into(), t.products.to_string()],
            vec!["revenue".into(), t.revenue.to_string()],
            vec!["first event".into(), time_or_dash(t.first_event)],
            vec!["last event".into(), time_or_dash(t.last_event)],
        ],
    );
    section(
        &mut out,
        "Events by type",
        &["type", "events"],
        r.events_by_type
            .iter()
            .map(|c| vec![c.event_type.clone(), c.events.to_string()])
            .collect(),
    );
    section(
        &mut out,
        "Revenue by product (top 10)",
        &["product", "purchases", "revenue"],
        r.revenue_by_product
            .iter()
            .map(|p| {
                vec![
                    p.product_id.to_string(),
                    p.purchases.to_string(),
                    p.revenue.to_string(),
                ]
            })
            .collect(),
    );
    section(
        &mut out,
        "Top users (top 10 by events)",
        &["user", "events", "purchases", "revenue"],
        r.top_users
            .iter()
            .map(|u| {
                vec![
                    u.user_id.to_string(),
                    u.events.to_string(),
                    u.purchases.to_string(),
                    u.revenue.to_string(),
                ]
            })
            .collect(),
    );
    let f = &r.funnel;
    section(
        &mut out,
        "Funnel",
        &["step", "events", "conversion"],
        vec![
            vec!["view".into(), f.views.to_string(), String::new()],
            vec![
                "add_to_cart".into(),
                f.carts.to_string(),
                format!("{} of views", ratio(f.view_to_cart)),
            ],
            vec![
                "remove_from_cart".into(),
                f.removals.to_string(),
                String::new(),
            ],
            vec![
                "purchase".into(),
                f.purchases.to_string(),
                format!(
                    "{} of carts, {} of views",
                    ratio(f.cart_to_purchase),
                    ratio(f.view_to_purchase)
                ),
            ],
        ],
    );
    section(
        &mut out,
        "Latest events (10 most recent)",
        &["time", "type", "user", "product", "price", "event id"],
        r.latest_events
            .iter()
            .map(|e| {
                vec![
                    time(e.event_timestamp),
                    e.event_type.clone(),
                    e.user_id.to_string(),
                    e.product_id.to_string(),
                    e.price.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    e.event_id.to_string(),
                ]
            })
            .collect(),
    );
    section(
        &mut out,
        "Rejections by reason",
        &["reason", "rows", "files", "last seen"],
        r.rejections_by_reason
            .iter()
            .map(|c| {
                vec![
                    c.reason.clone(),
                    c.rows.to_string(),
                    c.files.to_string(),
                    time(c.last_seen),
                ]
            })
            .collect(),
    );
    out
}

/// Appends a titled table: columns padded to their widest cell, numbers right-aligned. An empty
/// header row (all titles empty) is left out; no rows prints `(none)`.
fn section(out: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    use std::fmt::Write as _;

    let _ = writeln!(out, "{title}");
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)\n");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| {
            rows.iter().all(|row| {
                row.get(i).is_some_and(|c| {
                    !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit() || ch == '.')
                })
            })
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(&numeric)
            .map(|((cell, &width), &right)| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        format!("  {}", padded.join("  ").trim_end())
    };
    if headers.iter().any(|h| !h.is_empty()) {
        let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
        let _ = writeln!(out, "{}", line(&header));
    }
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    out.push('\n');
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn time_or_dash(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), time)
}

fn ratio(r: Option<Decimal>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| r.to_string())
}
