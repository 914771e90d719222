//! The certifier's Prometheus metrics (`tashkent_certifier_*`): counted
//! where things happen (certifications, WAL groups, subscriber streams),
//! and read from the service's state when scraped (versions, window,
//! replicas).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tashkent_metrics::prometheus_client::metrics::counter::Counter;
use tashkent_metrics::prometheus_client::metrics::family::Family;
use tashkent_metrics::prometheus_client::metrics::gauge::Gauge;
use tashkent_metrics::prometheus_client::metrics::histogram::Histogram;
use tashkent_metrics::prometheus_client::registry::Registry;

use super::service::CertifierService;

type Labels = Vec<(&'static str, String)>;
type Value = Gauge<f64, AtomicU64>;

/// Every metric of one certifier.
pub struct CertifierMetrics {
    registry: Registry,
    certifications: Family<[(&'static str, &'static str); 1], Counter>,
    pub(crate) subscribers: Gauge,
    versions: Family<[(&'static str, &'static str); 1], Value>,
    window: Family<[(&'static str, &'static str); 1], Value>,
    poisoned: Gauge,
    replica_applied: Family<Labels, Value>,
    replica_silent: Family<Labels, Value>,
    wal_sync: Histogram,
    wal_group: Histogram,
    /// A node of a replicated certifier: its raft gauges.
    raft: Option<RaftGauges>,
}

/// What a raft node adds: its role, term and contact with its group.
struct RaftGauges {
    role: Family<[(&'static str, &'static str); 1], Gauge>,
    term: Gauge,
    out_of_contact: Gauge,
}

/// The roles `raft_role` has a series for.
const ROLES: [&str; 6] = [
    "leader",
    "follower",
    "candidate",
    "learner",
    "shutdown",
    "stopped",
];

impl RaftGauges {
    fn register(registry: &mut Registry) -> RaftGauges {
        let role = Family::default();
        registry.register(
            "raft_role",
            "1 for this node's raft role (leader, follower, candidate, learner, shutdown; \
             stopped once its log failed), 0 for the others",
            role.clone(),
        );
        let term = Gauge::default();
        registry.register("raft_term", "This node's raft term", term.clone());
        let out_of_contact = Gauge::default();
        registry.register(
            "raft_out_of_contact",
            "1 while this node is cut off from its group (a leader no majority answered \
             within the leader lease, a follower that knows no leader): it certifies nothing",
            out_of_contact.clone(),
        );
        RaftGauges {
            role,
            term,
            out_of_contact,
        }
    }
}

impl CertifierMetrics {
    /// The metrics of a single certifier, or (`raft`) of a raft node.
    pub(crate) fn new(raft: bool) -> Self {
        let mut registry = Registry::with_prefix("tashkent_certifier");
        let certifications = Family::default();
        registry.register(
            "certifications",
            "Writesets decided, by outcome (committed; aborted by the GSI rule; \
             repeated: a retry answered with its earlier outcome)",
            certifications.clone(),
        );
        let subscribers = Gauge::default();
        registry.register(
            "subscribers",
            "Open Subscribe streams (one per proxy's applier, plus catch-ups)",
            subscribers.clone(),
        );
        let versions = Family::default();
        registry.register(
            "version",
            "Versions by kind: latest certified, durable, first retained in the log, \
             newest checkpoint reported, conflict-window horizon",
            versions.clone(),
        );
        let window = Family::default();
        registry.register(
            "window",
            "Size of the conflict window: key entries and versions",
            window.clone(),
        );
        let poisoned = Gauge::default();
        registry.register(
            "wal_poisoned",
            "1 once the log failed (a write or fsync error): nothing commits until a restart",
            poisoned.clone(),
        );
        let replica_applied = Family::default();
        registry.register(
            "replica_applied_version",
            "Newest version each replica reported applied",
            replica_applied.clone(),
        );
        let replica_silent = Family::default();
        registry.register(
            "replica_report_age_seconds",
            "Time since each replica's last progress report",
            replica_silent.clone(),
        );
        let wal_sync = Histogram::new(tashkent_metrics::seconds_buckets());
        registry.register(
            "wal_sync_seconds",
            "Write and fdatasync of one group of log records",
            wal_sync.clone(),
        );
        let wal_group = Histogram::new(tashkent_metrics::count_buckets());
        registry.register(
            "wal_group_records",
            "Records made durable by one fdatasync (group commit)",
            wal_group.clone(),
        );
        let raft = raft.then(|| RaftGauges::register(&mut registry));
        CertifierMetrics {
            raft,
            registry,
            certifications,
            subscribers,
            versions,
            window,
            poisoned,
            replica_applied,
            replica_silent,
            wal_sync,
            wal_group,
        }
    }
}

impl CertifierMetrics {
    pub(crate) fn decided(&self, outcome: &'static str) {
        self.certifications
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// What the WAL tells of each group it syncs.
    pub(crate) fn sync_observer(self: &Arc<Self>) -> tashkent_wal::SyncObserver {
        let me = self.clone();
        Arc::new(move |g: tashkent_wal::GroupSync| {
            me.wal_sync.observe(g.duration.as_secs_f64());
            me.wal_group.observe(g.records as f64);
        })
    }

    /// The metrics as of now, as OpenMetrics text.
    pub fn render(&self, svc: &CertifierService) -> String {
        let s = svc.status();
        for (kind, v) in [
            ("latest", s.latest_version),
            ("durable", s.durable_version),
            ("first_retained", s.first_version),
            ("checkpoint", s.checkpoint_version),
            ("horizon", s.horizon),
        ] {
            self.versions.get_or_create(&[("kind", kind)]).set(v as f64);
        }
        self.window
            .get_or_create(&[("of", "entries")])
            .set(s.window_entries as f64);
        self.window
            .get_or_create(&[("of", "versions")])
            .set(s.window_versions as f64);
        self.poisoned.set(i64::from(s.poisoned));
        for r in &s.replicas {
            let labels = vec![("replica", r.replica_id.to_string())];
            self.replica_applied
                .get_or_create(&labels)
                .set(r.applied_version as f64);
            self.replica_silent
                .get_or_create(&labels)
                .set(r.millis_since_report as f64 / 1000.0);
        }
        if let (Some(r), Some(node)) = (&self.raft, svc.node()) {
            for role in ROLES {
                r.role
                    .get_or_create(&[("role", role)])
                    .set(i64::from(s.role == role));
            }
            r.term.set(s.term as i64);
            r.out_of_contact
                .set(i64::from(node.contact.lost().is_some()));
        }
        tashkent_metrics::encode(&self.registry)
    }
}
