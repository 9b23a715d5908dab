//! Shopping sessions that walk the funnel: view -> add_to_cart -> purchase, with some
//! remove_from_cart. Many sessions run at once and their events interleave, as on a real site.
//!
//! Funnel probabilities give roughly 80% views, 11% carts, 3% removals and 6% purchases, close
//! to public e-commerce click-stream datasets.

use std::collections::VecDeque;

use event_contract::{EventType, Price, ProductId, UserId};
use rand::Rng;
use rand_distr::{Distribution, Geometric};

use crate::catalog::Catalog;

/// Chance a product view leads to adding it to the cart.
const ADD_TO_CART_PROBABILITY: f64 = 0.14;
/// Chance, after each view, that one item is taken out of the cart again.
const REMOVE_PROBABILITY: f64 = 0.04;
/// Chance a session with a non-empty cart checks out (buying every item left in it).
const CHECKOUT_PROBABILITY: f64 = 0.6;
/// Chance a view event is sent without a price (some trackers do not capture it).
const VIEW_WITHOUT_PRICE_PROBABILITY: f64 = 0.05;
/// Mean number of product views in a session.
const MEAN_VIEWS: f64 = 6.0;
/// Views in a session are capped so one session cannot dominate a file.
const MAX_VIEWS: u64 = 40;

/// One planned action: which user did what to which product, at what price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    /// The user.
    pub user_id: UserId,
    /// The product.
    pub product_id: ProductId,
    /// What happened.
    pub event_type: EventType,
    /// The price, absent only on some views.
    pub price: Option<Price>,
}

/// Sessions in progress; each call to [`Sessions::next_action`] advances one of them.
pub struct Sessions {
    active: Vec<VecDeque<Action>>,
    views: Geometric,
}

impl Sessions {
    /// Starts `count` sessions.
    pub fn new(count: u32, catalog: &Catalog, rng: &mut impl Rng) -> Self {
        let views = Geometric::new(1.0 / MEAN_VIEWS)
            .unwrap_or_else(|_| unreachable!("a constant probability in (0, 1] is valid"));
        let mut sessions = Sessions {
            active: Vec::with_capacity(count as usize),
            views,
        };
        for _ in 0..count.max(1) {
            let plan = sessions.plan(catalog, rng);
            sessions.active.push(plan);
        }
        sessions
    }

    /// The next action of a session chosen at random; a finished session is replaced by a new one.
    pub fn next_action(&mut self, catalog: &Catalog, rng: &mut impl Rng) -> Action {
        let slot = rng.random_range(0..self.active.len());
        loop {
            if let Some(action) = self.active[slot].pop_front() {
                return action;
            }
            self.active[slot] = self.plan(catalog, rng);
        }
    }

    /// Plans a whole session up front: it is a handful of actions, and planning it at once keeps
    /// the funnel logic in one readable place.
    fn plan(&self, catalog: &Catalog, rng: &mut impl Rng) -> VecDeque<Action> {
        let user_id = catalog.pick_user(rng);
        let views = 1 + self.views.sample(rng).min(MAX_VIEWS - 1);
        let mut plan = VecDeque::new();
        let mut cart: Vec<(ProductId, Price)> = Vec::new();
        let action = |product_id, event_type, price| Action {
            user_id,
            product_id,
            event_type,
            price,
        };
        for _ in 0..views {
            let (product, price) = catalog.pick_product(rng);
            let shown = (!rng.random_bool(VIEW_WITHOUT_PRICE_PROBABILITY)).then_some(price);
            plan.push_back(action(product, EventType::View, shown));
            if rng.random_bool(ADD_TO_CART_PROBABILITY) {
                plan.push_back(action(product, EventType::AddToCart, Some(price)));
                cart.push((product, price));
            }
            if !cart.is_empty() && rng.random_bool(REMOVE_PROBABILITY) {
                let (product, price) = cart.swap_remove(rng.random_range(0..cart.len()));
                plan.push_back(action(product, EventType::RemoveFromCart, Some(price)));
            }
        }
        if !cart.is_empty() && rng.random_bool(CHECKOUT_PROBABILITY) {
            for (product, price) in cart {
                plan.push_back(action(product, EventType::Purchase, Some(price)));
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashMap;

    #[test]
    fn the_funnel_has_realistic_proportions() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let catalog = Catalog::new(500, 1_000, &mut rng);
        let mut sessions = Sessions::new(50, &catalog, &mut rng);
        let mut counts: HashMap<EventType, u32> = HashMap::new();
        for _ in 0..100_000 {
            *counts
                .entry(sessions.next_action(&catalog, &mut rng).event_type)
                .or_default() += 1;
        }
        let share = |t| f64::from(counts[&t]) / 100_000.0;
        assert!((0.70..0.90).contains(&share(EventType::View)), "{counts:?}");
        assert!(
            (0.05..0.20).contains(&share(EventType::AddToCart)),
            "{counts:?}"
        );
        assert!(
            (0.005..0.06).contains(&share(EventType::RemoveFromCart)),
            "{counts:?}"
        );
        assert!(
            (0.02..0.12).contains(&share(EventType::Purchase)),
            "{counts:?}"
        );
        assert!(share(EventType::Purchase) < share(EventType::AddToCart));
    }

    #[test]
    fn a_user_only_buys_what_is_in_the_cart() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let catalog = Catalog::new(100, 100, &mut rng);
        let sessions = Sessions::new(1, &catalog, &mut rng);
        for _ in 0..1_000 {
            let plan = sessions.plan(&catalog, &mut rng);
            let mut cart = Vec::new();
            for action in plan {
                match action.event_type {
                    EventType::View => {}
                    EventType::AddToCart => cart.push(action.product_id),
                    EventType::RemoveFromCart | EventType::Purchase => {
                        let at = cart.iter().position(|p| *p == action.product_id);
                        cart.swap_remove(at.expect("removed or bought a product not in the cart"));
                    }
                }
                assert!(action.price.is_some() || action.event_type == EventType::View);
            }
        }
    }
}
