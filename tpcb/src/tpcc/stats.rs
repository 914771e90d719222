//! What a TPC-C run measured: tpmC and, per transaction type, Barista's
//! table (share, mean and 90th-percentile response time, count,
//! rollbacks, `40001` retries).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::LatencySummary;

/// The five transactions, in the specification's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxnKind {
    NewOrder,
    Payment,
    OrderStatus,
    Delivery,
    StockLevel,
}

impl TxnKind {
    pub const ALL: [TxnKind; 5] = [
        TxnKind::NewOrder,
        TxnKind::Payment,
        TxnKind::OrderStatus,
        TxnKind::Delivery,
        TxnKind::StockLevel,
    ];

    /// The standard mix (clause 5.2.3): 45 % New-Order, 43 % Payment, 4 %
    /// each of the others, from a roll of 1..=100.
    pub(crate) fn from_roll(roll: u32) -> TxnKind {
        match roll {
            0..=4 => TxnKind::OrderStatus,
            5..=8 => TxnKind::Delivery,
            9..=12 => TxnKind::StockLevel,
            13..=55 => TxnKind::Payment,
            _ => TxnKind::NewOrder,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            TxnKind::NewOrder => "New-Order",
            TxnKind::Payment => "Payment",
            TxnKind::OrderStatus => "Order-Status",
            TxnKind::Delivery => "Delivery",
            TxnKind::StockLevel => "Stock-Level",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TxnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// One transaction type's figures in the measured window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnStats {
    pub kind: TxnKind,
    /// Completed transactions: committed, or (New-Order) rolled back by
    /// the application for an unused item.
    pub count: u64,
    /// `count` ÷ all completed transactions, a fraction.
    pub share: f64,
    /// Response time from the first attempt to the completing one
    /// (retries included), mean and 90th percentile, in milliseconds.
    pub mean_ms: f64,
    pub p90_ms: f64,
    /// New-Orders rolled back by the application (the 1 % unused item).
    pub rollbacks: u64,
    /// Attempts that failed with `40001` (or `40P01`) and were retried.
    pub retries: u64,
    /// Transactions whose outcome is unknown (`08007`; not retried).
    pub unknown: u64,
}

/// A TPC-C run's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TpccStats {
    /// Completed New-Order transactions per minute (rolled-back ones
    /// included, as the specification counts them).
    pub tpmc: f64,
    /// Seconds the load took (through the first target).
    #[serde(default)]
    pub load_s: f64,
    /// One entry per [`TxnKind::ALL`], in that order.
    pub transactions: Vec<TxnStats>,
}

impl TpccStats {
    /// Figures for `kind`.
    pub fn of(&self, kind: TxnKind) -> Option<&TxnStats> {
        self.transactions.iter().find(|t| t.kind == kind)
    }

    /// Retries of every type.
    pub fn retries(&self) -> u64 {
        self.transactions.iter().map(|t| t.retries).sum()
    }
}

/// One client's (or all clients') raw samples of one type.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples {
    pub completed: u64,
    pub rollbacks: u64,
    pub retries: u64,
    pub unknown: u64,
    pub latencies_us: Vec<u64>,
}

impl Samples {
    pub(crate) fn merge(&mut self, other: Samples) {
        self.completed += other.completed;
        self.rollbacks += other.rollbacks;
        self.retries += other.retries;
        self.unknown += other.unknown;
        self.latencies_us.extend(other.latencies_us);
    }
}

impl TpccStats {
    /// Computes the figures from the samples of each type (indexed like
    /// [`TxnKind::ALL`]; latencies sorted in place).
    pub(crate) fn from_samples(samples: &mut [Samples; 5], elapsed: Duration) -> TpccStats {
        let total: u64 = samples.iter().map(|s| s.completed).sum();
        let minutes = elapsed.as_secs_f64() / 60.0;
        let transactions = TxnKind::ALL
            .iter()
            .zip(samples.iter_mut())
            .map(|(&kind, s)| {
                let l = LatencySummary::from_micros(&mut s.latencies_us);
                TxnStats {
                    kind,
                    count: s.completed,
                    share: if total > 0 {
                        s.completed as f64 / total as f64
                    } else {
                        0.0
                    },
                    mean_ms: l.mean,
                    p90_ms: l.p90,
                    rollbacks: s.rollbacks,
                    retries: s.retries,
                    unknown: s.unknown,
                }
            })
            .collect();
        let new_orders = samples[TxnKind::NewOrder.index()].completed;
        TpccStats {
            tpmc: if minutes > 0.0 {
                new_orders as f64 / minutes
            } else {
                0.0
            },
            load_s: 0.0,
            transactions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_45_43_4_4_4() {
        let mut n = [0; 5];
        for roll in 1..=100 {
            n[TxnKind::from_roll(roll).index()] += 1;
        }
        assert_eq!(n, [45, 43, 4, 4, 4]);
    }

    #[test]
    fn tpmc_shares_and_percentiles() {
        let mut samples: [Samples; 5] = Default::default();
        samples[0] = Samples {
            completed: 45,
            rollbacks: 1,
            retries: 3,
            unknown: 0,
            latencies_us: (1..=45).map(|i| i * 1000).collect(),
        };
        samples[1].completed = 55;
        samples[1].latencies_us = vec![2000; 55];
        let s = TpccStats::from_samples(&mut samples, Duration::from_secs(30));
        assert_eq!(s.tpmc, 90.0);
        let no = s.of(TxnKind::NewOrder).unwrap();
        assert_eq!((no.count, no.rollbacks, no.retries), (45, 1, 3));
        assert_eq!(no.share, 0.45);
        assert_eq!(no.mean_ms, 23.0);
        assert_eq!(no.p90_ms, 41.0);
        assert_eq!(s.of(TxnKind::Payment).unwrap().p90_ms, 2.0);
        let d = s.of(TxnKind::Delivery).unwrap();
        assert_eq!((d.count, d.share, d.mean_ms), (0, 0.0, 0.0));
        assert_eq!(s.retries(), 3);
    }
}
