//! Prometheus metrics of tashkent's processes: the HTTP endpoint every
//! proxy and certifier serves them on, and the reader of such a scrape
//! (`tashkent status`, tests).
//!
//! Each process keeps its metrics in a `prometheus_client` registry and
//! hands [`MetricsServer::serve`] a [`Render`]: a function that brings the
//! gauges read from live state up to date and encodes the registry. So a
//! scrape always shows the state at that moment, and nothing on the hot
//! path pays for a gauge it could read later.
//!
//! The endpoint answers `GET /metrics` with the OpenMetrics text format
//! (Prometheus reads it); any other path gets 404. Names follow Prometheus
//! conventions: `tashkent_<process>_<what>` with `_total` on counters and
//! `_seconds` on durations.

mod scrape;
mod server;

pub use prometheus_client;
pub use scrape::{fetch, Sample, Scrape};
pub use server::{MetricsServer, Render};

use prometheus_client::registry::Registry;

/// The metrics crate's errors.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: {reason}")]
    Scrape { addr: String, reason: String },
}

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("encoding metrics into a String");
    out
}

/// Counts one in a gauge while it lives (an open connection, an open
/// stream): incremented when made, decremented when dropped.
pub struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl GaugeGuard {
    pub fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Buckets for durations in seconds: 50 µs to about 3.3 s, doubling.
pub fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 17)
}

/// Buckets for counts (group and batch sizes): 1 to 4096, doubling.
pub fn count_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 13)
}
