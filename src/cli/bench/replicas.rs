//! What a run checks of a cluster's replicas: that they applied
//! everything before a measured run, and after it the same contents on
//! all and TPC-B's invariant on each.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tashkent_tpcb::Workload;

use tashkent::ops::cluster::LocalCluster;
use tashkent::ops::pg::connect;

use super::DATABASE;

/// How long the replicas may go without applying anything while they are
/// behind the certifier before the bench calls them stuck.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks the replicas after a run: TPC-B's invariant on each, and the
/// same contents on all. Returns the violations found.
pub(super) async fn check(workload: Workload, replicas: &[String]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut prints = Vec::new();
    for (i, conninfo) in replicas.iter().enumerate() {
        if workload == Workload::Tpcb {
            match tashkent_tpcb::tpcb_invariant(conninfo).await {
                Ok(()) => {}
                Err(e @ tashkent_tpcb::Error::Invariant { .. }) => problems.push(format!(
                    "TPC-B invariant violated on replica {}: {e}",
                    i + 1
                )),
                Err(e) => return Err(e).context(format!("checking replica {}", i + 1)),
            }
        }
        prints.push(fingerprint(workload, conninfo).await?);
    }
    if prints.windows(2).any(|w| w[0] != w[1]) {
        let listed: Vec<String> = prints
            .iter()
            .enumerate()
            .map(|(i, p)| format!("replica {}: {p}", i + 1))
            .collect();
        problems.push(format!(
            "replicas diverged after the run ({})",
            listed.join("; ")
        ));
    }
    Ok(problems)
}

/// An order-independent digest of a workload's tables.
async fn fingerprint(workload: Workload, conninfo: &str) -> Result<String> {
    let sql = match workload {
        Workload::AllUpdates => {
            "SELECT count(*)::bigint, coalesce(sum(val), 0)::bigint, \
             coalesce(sum(hashtext(id || ':' || val)), 0)::bigint FROM allupdates"
        }
        Workload::Tpcb => {
            "SELECT (SELECT count(*) FROM pgbench_history)::bigint, \
             (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::bigint, \
             (SELECT coalesce(sum(hashtext(aid || ':' || abalance)), 0) FROM pgbench_accounts)::bigint, \
             (SELECT coalesce(sum(hashtext(tid || ':' || tbalance)), 0) FROM pgbench_tellers)::bigint, \
             (SELECT coalesce(sum(hashtext(bid || ':' || bbalance)), 0) FROM pgbench_branches)::bigint"
        }
        // Compared by `tashkent verify` instead (bench/tpcc.rs).
        Workload::Tpcc => bail!("TPC-C's replicas are compared by verify"),
    };
    let client = connect(conninfo).await?;
    let row = client
        .query_one(sql, &[])
        .await
        .with_context(|| format!("digesting the {workload} tables"))?;
    let values: Vec<String> = (0..row.len())
        .map(|i| row.get::<_, i64>(i).to_string())
        .collect();
    Ok(values.join("/"))
}

/// Waits until every replica of `cluster` has applied the certifier's
/// latest version (everything committed so far). Fails if the replicas
/// make no progress for [`STALL_TIMEOUT`], with the certifier's view of
/// them for the bug report.
pub(crate) async fn wait_applied(cluster: &LocalCluster) -> Result<()> {
    let certifier = cluster.certifier_client().await?;
    let latest = certifier
        .status()
        .await
        .context("asking the certifier for its status")?
        .latest_version;
    let mut clients = Vec::new();
    for r in &cluster.replicas {
        clients.push(connect(&r.conninfo(DATABASE)).await?);
    }
    let mut last: Vec<u64> = Vec::new();
    let mut progress_at = Instant::now();
    loop {
        let mut applied = Vec::new();
        for c in &clients {
            applied.push(
                tashkent::proxy::capture::applied_version(c)
                    .await
                    .context("reading a replica's applied version")?,
            );
        }
        if applied.iter().all(|&v| v >= latest) {
            return Ok(());
        }
        if applied != last {
            last = applied;
            progress_at = Instant::now();
        } else if progress_at.elapsed() >= STALL_TIMEOUT {
            let seen = match certifier.status().await {
                Ok(s) => format!(
                    "certifier: latest {}, durable {}, horizon {} ({}), replicas reported {:?}",
                    s.latest_version,
                    s.durable_version,
                    s.horizon,
                    s.horizon_cause,
                    s.replicas
                        .iter()
                        .map(|r| (r.replica_id, r.applied_version, r.millis_since_report))
                        .collect::<Vec<_>>()
                ),
                Err(e) => format!("certifier status: {e}"),
            };
            bail!(
                "replicas stuck below version {latest}: applied {last:?} unchanged for {} s \
                 ({seen}; (id, applied, ms since report))",
                STALL_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tashkent verify` over every replica of `cluster`: `None` when they are
/// identical (or there is one), else the verdict.
pub(crate) async fn verify_replicas(cluster: &LocalCluster) -> Result<Option<String>> {
    use tashkent::ops::verify::{verify, Options, Target};
    if cluster.replicas.len() < 2 {
        return Ok(None);
    }
    let targets: Vec<Target> = cluster
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| Target {
            name: format!("replica {}", i + 1),
            conninfo: r.conninfo(DATABASE),
        })
        .collect();
    let report = verify(&targets, &Options::default()).await?;
    Ok((!report.identical()).then(|| report.verdict()))
}
