//! The four kinds of event on the shopping funnel.

use std::fmt;

use crate::column::Column;
use crate::reject::{RejectReason, Rejection};

use super::ids::require;

/// What the user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// Looked at a product page.
    View,
    /// Put the product in the cart.
    AddToCart,
    /// Took the product out of the cart.
    RemoveFromCart,
    /// Bought the product.
    Purchase,
}

impl EventType {
    /// Every type, in funnel order.
    pub const ALL: [EventType; 4] = [
        EventType::View,
        EventType::AddToCart,
        EventType::RemoveFromCart,
        EventType::Purchase,
    ];

    /// The wire and database spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::View => "view",
            EventType::AddToCart => "add_to_cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::Purchase => "purchase",
        }
    }

    /// Parses the exact lowercase spelling.
    ///
    /// # Errors
    /// [`RejectReason::MissingField`] when empty, [`RejectReason::UnknownEventType`] otherwise.
    pub fn parse(raw: &str) -> Result<Self, Rejection> {
        require(raw, Column::EventType)?;
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == raw)
            .ok_or_else(|| {
                Rejection::field(
                    RejectReason::UnknownEventType,
                    Column::EventType,
                    raw,
                    "expected one of view, add_to_cart, remove_from_cart, purchase",
                )
            })
    }

    /// Whether an event of this type must carry a price.
    pub const fn requires_price(self) -> bool {
        !matches!(self, EventType::View)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Ok(t));
        }
    }

    #[test]
    fn spelling_is_exact() {
        for raw in ["View", "VIEW", " view", "add-to-cart", "checkout"] {
            assert_eq!(
                EventType::parse(raw).unwrap_err().reason,
                RejectReason::UnknownEventType
            );
        }
    }
}
