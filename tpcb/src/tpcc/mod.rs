//! TPC-C: the nine tables, a parallel loader, the five transactions in the
//! standard mix, and the specification's consistency conditions 1–4.
//!
//! Written the way an application would use PostgreSQL: prepared
//! statements through tokio-postgres, `SELECT … FOR UPDATE` where a row
//! is read and then changed (the district's next order id, stock, the
//! paying customer, the oldest new order), money as `numeric` (the
//! transactions pass cents as integers, so nothing is rounded).
//!
//! Deviations from the specification (README, "Measuring"):
//! - no terminals, keying or think times (throughput mode): every client
//!   runs transactions back to back, with a home warehouse
//!   (`client % W + 1`) and, for Stock-Level, a home district;
//! - `history` has a surrogate primary key `h_id` (tashkent replicates
//!   UPDATE/DELETE only on tables with one, and checks convergence by it);
//! - the item count and the customers (= orders) per district may be
//!   reduced ([`TpccScale`]) for tests; the specification's 100,000 items
//!   and 3,000 customers are the defaults;
//! - Delivery runs at once as one database transaction over the ten
//!   districts (no deferred execution queue);
//! - a transaction failing with `40001` (serialization failure, also a
//!   certification abort) or `40P01` is retried with the same input, and
//!   its response time runs from the first attempt to the last.

mod check;
mod gen;
mod load;
mod run;
mod schema;
mod stats;
mod txn;

pub use check::check;
pub use load::{load, load_split};
pub use run::{run, TpccRunConfig};
pub use schema::TABLES;
pub use stats::{TpccStats, TxnKind, TxnStats};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Districts per warehouse (fixed by the specification).
pub const DISTRICTS: i32 = 10;
/// Items of the specification.
pub const ITEMS: i32 = 100_000;
/// Customers (and initial orders) per district of the specification.
pub const CUSTOMERS: i32 = 3_000;

/// How big the database is: warehouses, and the item and customer
/// counts (reduced only for tests; stock rows per warehouse = items).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpccScale {
    pub warehouses: i32,
    pub items: i32,
    /// Customers per district; also the orders loaded per district.
    pub customers: i32,
}

impl TpccScale {
    /// `warehouses` at the specification's item and customer counts.
    pub fn new(warehouses: i32) -> TpccScale {
        TpccScale {
            warehouses,
            items: ITEMS,
            customers: CUSTOMERS,
        }
    }

    /// Fails unless every count is at least 1 (at least 10 customers, so
    /// that some loaded orders are delivered and some are new) and the
    /// keys fit.
    pub fn validate(&self) -> Result<()> {
        if self.warehouses < 1 || self.items < 1 || self.customers < 10 {
            return Err(Error::Config(format!(
                "TPC-C needs at least 1 warehouse, 1 item and 10 customers per district, got {self:?}"
            )));
        }
        if self.items == i32::MAX || self.warehouses > 100_000 {
            return Err(Error::Config(format!("TPC-C scale too large: {self:?}")));
        }
        Ok(())
    }

    /// Loaded orders `1..first_new_order()` are delivered, the rest are
    /// new orders (the specification's 2,101 of 3,000: the last 30 %).
    pub fn first_new_order(&self) -> i32 {
        self.customers - self.customers * 3 / 10 + 1
    }
}
