//! The side-by-side ratios a run reports: the design's claims as
//! throughput of one system over another's, same workload and replicas.

use std::fmt::Write as _;

use serde::Serialize;
use tashkent_tpcb::{Report, Workload};

use super::System;

/// A side-by-side ratio of two systems' throughput.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    pub workload: Workload,
    pub replicas: u32,
    /// `system ÷ versus`.
    pub system: String,
    pub versus: String,
    pub ratio: f64,
}

/// Ratios that the design's claims are about: Tashkent-MW against the
/// standalone server at one replica, and against Base at every replica
/// count both ran at; Tashkent-API against Base, Tashkent-MW against
/// Tashkent-API, and Tashkent-MW on three certifier nodes against one,
/// likewise.
pub fn ratios(report: &Report) -> Vec<Ratio> {
    let tps = |w: Workload, system: &str, n: u32| {
        report
            .rows(w)
            .find(|r| r.system == system && r.replicas == n)
            .map(|r| r.stats.throughput_tps)
    };
    let mut out = Vec::new();
    for w in report.workloads() {
        let counts_of = |system: System| {
            let mut counts: Vec<u32> = report
                .rows(w)
                .filter(|r| r.system == system.name())
                .map(|r| r.replicas)
                .collect();
            counts.sort_unstable();
            counts.dedup();
            counts
        };
        let mut push = |mw: &str, n: u32, versus: &str| {
            if let (Some(a), Some(b)) = (tps(w, mw, n), tps(w, versus, n)) {
                if b > 0.0 {
                    out.push(Ratio {
                        workload: w,
                        replicas: n,
                        system: mw.to_owned(),
                        versus: versus.to_owned(),
                        ratio: a / b,
                    });
                }
            }
        };
        let (mw, api, base) = (
            System::TashkentMw.name(),
            System::TashkentApi.name(),
            System::Base.name(),
        );
        for standalone in [
            System::PostgresFsync,
            System::PostgresNofsync,
            System::PostgresRr,
            System::Pgbouncer,
        ] {
            push(mw, 1, standalone.name());
        }
        // The pooler's own cost: the same server, directly and through it.
        push(System::Pgbouncer.name(), 1, System::PostgresNofsync.name());
        for n in counts_of(System::Base) {
            push(mw, n, base);
        }
        for n in counts_of(System::Base) {
            push(api, n, base);
        }
        for n in counts_of(System::TashkentApi) {
            push(mw, n, api);
        }
        for n in counts_of(System::TashkentMw) {
            push(System::TashkentMwRaft.name(), n, mw);
        }
    }
    out
}

/// The ratios as text lines.
pub fn ratios_text(ratios: &[Ratio]) -> String {
    let mut out = String::new();
    for r in ratios {
        let _ = writeln!(
            out,
            "{:<10}  {} ÷ {}, {} replica{}: {:.2}×",
            r.workload.title(),
            r.system,
            r.versus,
            r.replicas,
            if r.replicas == 1 { "" } else { "s" },
            r.ratio
        );
    }
    out
}
