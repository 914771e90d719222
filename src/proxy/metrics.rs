//! The proxy's Prometheus metrics (`tashkent_proxy_*`): counted where
//! things happen (commits, aborts, the applier's batches, connections) and
//! read from the shared state when scraped (applied version, lag, state).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tashkent_certifier::Version;
use tashkent_metrics::prometheus_client::metrics::counter::Counter;
use tashkent_metrics::prometheus_client::metrics::family::Family;
use tashkent_metrics::prometheus_client::metrics::gauge::Gauge;
use tashkent_metrics::prometheus_client::metrics::histogram::Histogram;
use tashkent_metrics::prometheus_client::registry::Registry;

use super::coordination::Shared;

type Label = [(&'static str, &'static str); 1];
type Value = Gauge<f64, AtomicU64>;

/// Received versions remembered for the lag in seconds; beyond this many
/// unapplied, the oldest ones still say how far behind the replica is.
const LAG_SAMPLES: usize = 1024;

/// A replica more than this many versions or this long behind is
/// "catching_up" rather than "serving".
const CATCHING_UP_VERSIONS: f64 = 1000.0;
const CATCHING_UP_SECONDS: f64 = 5.0;

/// Why a transaction did not commit.
#[derive(Debug, Clone, Copy)]
pub enum AbortCause {
    /// The certifier found a write-write conflict (40001).
    Certification,
    /// The applier needed its locks and cancelled it (40001).
    EarlyAbort,
    /// The client rolled it back.
    Client,
    /// A statement failed on the replica (a serialization failure, a
    /// constraint) and the client then ended the transaction.
    StatementError,
    /// The certifier went away after the writeset was sent (08007).
    UnknownOutcome,
    /// Anything else that failed the COMMIT.
    Error,
}

impl AbortCause {
    fn label(self) -> &'static str {
        match self {
            AbortCause::Certification => "certification",
            AbortCause::EarlyAbort => "early_abort",
            AbortCause::Client => "client",
            AbortCause::StatementError => "statement_error",
            AbortCause::UnknownOutcome => "unknown_outcome",
            AbortCause::Error => "error",
        }
    }
}

/// Every metric of one proxy.
pub struct ProxyMetrics {
    registry: Registry,
    commits: Family<Label, Counter>,
    aborts: Family<Label, Counter>,
    commit_seconds: Histogram,
    turn_wait_seconds: Histogram,
    flush_wait_seconds: Histogram,
    apply_batch: Histogram,
    connections: Gauge,
    versions: Family<Label, Value>,
    lag_versions: Value,
    lag_seconds: Value,
    state: Family<Label, Gauge>,
    /// (version, when the stream brought it), oldest first.
    received: Mutex<VecDeque<(Version, Instant)>>,
    newest_received: AtomicU64,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tashkent_proxy");
        let commits = Family::default();
        registry.register(
            "commits",
            "Transactions committed, by kind (update: certified; read_only)",
            commits.clone(),
        );
        let aborts = Family::default();
        registry.register(
            "aborts",
            "Transactions that did not commit, by cause (certification, early_abort, \
             client, statement_error, unknown_outcome, error)",
            aborts.clone(),
        );
        let commit_seconds = Histogram::new(tashkent_metrics::seconds_buckets());
        registry.register(
            "commit_seconds",
            "COMMIT of an update transaction: read-out, certification, ordered commit",
            commit_seconds.clone(),
        );
        let turn_wait_seconds = Histogram::new(tashkent_metrics::seconds_buckets());
        registry.register(
            "turn_wait_seconds",
            "From the certifier's answer until the transaction's turn in the commit order",
            turn_wait_seconds.clone(),
        );
        let flush_wait_seconds = Histogram::new(tashkent_metrics::seconds_buckets());
        registry.register(
            "flush_wait_seconds",
            "ack_after_flush: from the ordered commit until the replica's WAL is flushed past it",
            flush_wait_seconds.clone(),
        );
        let apply_batch = Histogram::new(tashkent_metrics::count_buckets());
        registry.register(
            "apply_batch_versions",
            "Versions the applier committed in one replica transaction",
            apply_batch.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "client_connections",
            "Open client connections",
            connections.clone(),
        );
        let versions = Family::default();
        registry.register(
            "version",
            "Versions: applied on the replica, newest received from the certifier",
            versions.clone(),
        );
        let lag_versions = Value::default();
        registry.register(
            "apply_lag_versions",
            "Versions received from the certifier and not yet applied",
            lag_versions.clone(),
        );
        let lag_seconds = Value::default();
        registry.register(
            "apply_lag_seconds",
            "How long the oldest received and unapplied version has waited",
            lag_seconds.clone(),
        );
        let state = Family::default();
        registry.register(
            "state",
            "1 for the replica's state: serving, catching_up, apply_stuck, needs_rebuild",
            state.clone(),
        );
        ProxyMetrics {
            registry,
            commits,
            aborts,
            commit_seconds,
            turn_wait_seconds,
            flush_wait_seconds,
            apply_batch,
            connections,
            versions,
            lag_versions,
            lag_seconds,
            state,
            received: Mutex::new(VecDeque::new()),
            newest_received: AtomicU64::new(0),
        }
    }
}

impl ProxyMetrics {
    pub fn committed(&self, update: bool, took: Option<Duration>) {
        let kind = if update { "update" } else { "read_only" };
        self.commits.get_or_create(&[("kind", kind)]).inc();
        if let Some(t) = took {
            self.commit_seconds.observe(t.as_secs_f64());
        }
    }

    pub fn aborted(&self, cause: AbortCause) {
        self.aborts.get_or_create(&[("cause", cause.label())]).inc();
    }

    pub fn waited_for_turn(&self, d: Duration) {
        self.turn_wait_seconds.observe(d.as_secs_f64());
    }

    pub fn waited_for_flush(&self, d: Duration) {
        self.flush_wait_seconds.observe(d.as_secs_f64());
    }

    pub fn applied_batch(&self, versions: usize) {
        self.apply_batch.observe(versions as f64);
    }

    /// Counts a client connection while the guard lives.
    pub fn connection(&self) -> tashkent_metrics::GaugeGuard {
        tashkent_metrics::GaugeGuard::new(&self.connections)
    }

    /// The certifier's stream brought `v`; `applied` is applied.
    pub fn received(&self, v: Version, applied: Version) {
        self.newest_received
            .fetch_max(v, std::sync::atomic::Ordering::Relaxed);
        let mut r = self.received.lock();
        while r.front().is_some_and(|&(f, _)| f <= applied) {
            r.pop_front();
        }
        if r.len() < LAG_SAMPLES {
            r.push_back((v, Instant::now()));
        }
    }

    /// The metrics as of now, as OpenMetrics text.
    pub fn render(&self, shared: &Shared) -> String {
        let applied = *shared.applied.borrow();
        let received = self
            .newest_received
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(applied);
        self.versions
            .get_or_create(&[("kind", "applied")])
            .set(applied as f64);
        self.versions
            .get_or_create(&[("kind", "received")])
            .set(received as f64);
        let lag_versions = (received - applied) as f64;
        let lag_seconds = {
            let mut r = self.received.lock();
            while r.front().is_some_and(|&(f, _)| f <= applied) {
                r.pop_front();
            }
            r.front().map_or(0.0, |(_, at)| at.elapsed().as_secs_f64())
        };
        self.lag_versions.set(lag_versions);
        self.lag_seconds.set(lag_seconds);
        let state = if shared.recovery_needed().is_some() {
            "needs_rebuild"
        } else if shared.apply_stuck.borrow().is_some() {
            "apply_stuck"
        } else if lag_versions > CATCHING_UP_VERSIONS || lag_seconds > CATCHING_UP_SECONDS {
            "catching_up"
        } else {
            "serving"
        };
        for s in ["serving", "catching_up", "apply_stuck", "needs_rebuild"] {
            self.state
                .get_or_create(&[("state", s)])
                .set(i64::from(s == state));
        }
        tashkent_metrics::encode(&self.registry)
    }
}
