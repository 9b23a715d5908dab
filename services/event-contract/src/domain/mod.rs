//! The validated domain types. Each newtype has a private inner value and a `parse` constructor,
//! so a value that exists past the CSV boundary is valid by construction.

mod event_type;
mod ids;
mod price;
mod timestamp;

pub use event_type::EventType;
pub use ids::{EventId, ProductId, UserId};
pub use price::Price;
pub use timestamp::{EventTimestamp, ValidationContext, DEFAULT_MAX_FUTURE_SKEW};

/// One e-commerce event, valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Globally unique id; the deduplication key.
    pub event_id: EventId,
    /// The user who acted.
    pub user_id: UserId,
    /// The product acted on.
    pub product_id: ProductId,
    /// What happened.
    pub event_type: EventType,
    /// Unit price; `None` only for [`EventType::View`].
    pub price: Option<Price>,
    /// When it happened, at microsecond precision (what PostgreSQL stores).
    pub event_timestamp: EventTimestamp,
}

impl Event {
    /// The event's fields as CSV text, in canonical column order ([`crate::COLUMNS`]).
    pub fn to_fields(&self) -> [String; 6] {
        [
            self.event_id.to_string(),
            self.user_id.to_string(),
            self.product_id.to_string(),
            self.event_type.to_string(),
            self.price.map(|p| p.to_string()).unwrap_or_default(),
            self.event_timestamp.to_string(),
        ]
    }
}
