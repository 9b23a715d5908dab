//! The contract's columns: their names, their canonical order and the header line. The only place
//! in the workspace that knows the column names. A module of its own, below [`crate::layout`],
//! [`crate::reject`] and [`crate::domain`], which all name columns.

use std::fmt;

/// A contract column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    /// `event_id`
    EventId,
    /// `user_id`
    UserId,
    /// `product_id`
    ProductId,
    /// `event_type`
    EventType,
    /// `price`
    Price,
    /// `event_timestamp`
    EventTimestamp,
}

/// The contract's columns in canonical order (the order the writer uses).
pub const COLUMNS: [Column; 6] = [
    Column::EventId,
    Column::UserId,
    Column::ProductId,
    Column::EventType,
    Column::Price,
    Column::EventTimestamp,
];

/// The canonical header line, without line terminator.
pub const HEADER_LINE: &str = "event_id,user_id,product_id,event_type,price,event_timestamp";

impl Column {
    /// The column's name in the header and in the `events` table.
    pub const fn name(self) -> &'static str {
        match self {
            Column::EventId => "event_id",
            Column::UserId => "user_id",
            Column::ProductId => "product_id",
            Column::EventType => "event_type",
            Column::Price => "price",
            Column::EventTimestamp => "event_timestamp",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
