//! The shop: a product catalog with stable prices and popularity, and the user base.
//!
//! Prices are log-normal (many cheap items, a long tail of expensive ones) and end in .99 or .49
//! like real price tags; popularity follows a Zipf law, so a few products get most views.

use event_contract::{Price, ProductId, UserId};
use rand::Rng;
use rand_distr::{Distribution, LogNormal, Zipf};

/// First product id: ids look like a real shop's, not like array indices.
const PRODUCT_ID_BASE: i64 = 1_000_000;
/// First user id.
const USER_ID_BASE: i64 = 500_000_000;
/// Median price in currency units.
const MEDIAN_PRICE: f64 = 35.0;
/// Spread of the log-normal price distribution (1.0: a tenth of items cost over ~125).
const PRICE_SIGMA: f64 = 1.0;
/// Zipf exponent of product popularity: ~1 matches web shop click-streams.
const POPULARITY_EXPONENT: f64 = 1.05;

/// Products with fixed prices, and a popularity law to pick them by.
pub struct Catalog {
    prices: Vec<Price>,
    popularity: Zipf<f64>,
    users: u32,
}

impl Catalog {
    /// Builds a catalog of `products` items and `users` users, drawing prices from `rng`.
    pub fn new(products: u32, users: u32, rng: &mut impl Rng) -> Self {
        let products = products.max(1);
        let price_law = LogNormal::new(MEDIAN_PRICE.ln(), PRICE_SIGMA)
            .unwrap_or_else(|_| unreachable!("constant parameters are valid"));
        let prices = (0..products)
            .map(|_| price_tag(price_law.sample(rng), rng))
            .collect();
        let popularity = Zipf::new(f64::from(products), POPULARITY_EXPONENT)
            .unwrap_or_else(|_| unreachable!("n >= 1 and a positive exponent are valid"));
        Catalog {
            prices,
            popularity,
            users: users.max(1),
        }
    }

    /// Picks a product, popular ones more often, with its price.
    pub fn pick_product(&self, rng: &mut impl Rng) -> (ProductId, Price) {
        // Zipf samples lie in 1..=n; the cast is exact for any u32 count.
        let rank = (self.popularity.sample(rng) as usize).clamp(1, self.prices.len());
        let index = rank - 1;
        (product_id(index), self.prices[index])
    }

    /// Picks a user uniformly.
    pub fn pick_user(&self, rng: &mut impl Rng) -> UserId {
        let offset = i64::from(rng.random_range(0..self.users));
        UserId::new(USER_ID_BASE + offset).unwrap_or_else(|| unreachable!("base is positive"))
    }
}

fn product_id(index: usize) -> ProductId {
    let index = i64::try_from(index).unwrap_or(i64::MAX - PRODUCT_ID_BASE);
    ProductId::new(PRODUCT_ID_BASE + index).unwrap_or_else(|| unreachable!("base is positive"))
}

/// Rounds a raw amount to a shop-like tag: whole units minus 1 cent, or .49, capped to range.
fn price_tag(amount: f64, rng: &mut impl Rng) -> Price {
    let units = amount.round().clamp(1.0, 99_999.0) as i64;
    let cents = if rng.random_bool(0.8) {
        units * 100 - 1
    } else {
        units * 100 - 51
    };
    Price::from_cents(cents.max(49)).unwrap_or_else(|| unreachable!("clamped into range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn popular_products_dominate_and_prices_are_stable() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let catalog = Catalog::new(1_000, 10, &mut rng);
        let mut top = 0;
        for _ in 0..10_000 {
            let (id, price) = catalog.pick_product(&mut rng);
            let index = usize::try_from(id.get() - PRODUCT_ID_BASE).unwrap();
            assert_eq!(
                price, catalog.prices[index],
                "a product's price never changes"
            );
            if index < 10 {
                top += 1;
            }
        }
        assert!(
            top > 3_000,
            "top 1% of products should get a large share, got {top}"
        );
    }
}
