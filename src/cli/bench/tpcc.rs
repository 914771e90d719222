//! `tashkent bench --workloads tpcc`: loads TPC-C through the first
//! proxy (or into the standalone server), runs the standard mix over all
//! proxies, then checks consistency conditions 1–4 on every replica and,
//! on a cluster, that `tashkent verify` finds the replicas identical.

use std::time::Instant;

use anyhow::{Context, Result};
use tashkent_tpcb::tpcc::{self, TpccRunConfig};
use tashkent_tpcb::{Report, ResultRow, Workload};

use tashkent::ops::pg::connect;
use tashkent::ops::verify;

use super::{one_line, Step};

/// Connections the loader fills tables over.
const LOAD_PARALLEL: usize = 4;

/// Loads, runs and checks TPC-C on one running system.
pub(super) async fn run_workload(
    step: &Step<'_>,
    report: &mut Report,
    problems: &mut Vec<String>,
) -> Result<()> {
    let (plan, name, spinner) = (step.plan, step.name, step.spinner);
    spinner.set_message(format!(
        "{name}: loading {} warehouse(s) over {LOAD_PARALLEL} connections",
        plan.tpcc.warehouses
    ));
    let started = Instant::now();
    tpcc::load(
        &step.target.clients[0],
        &plan.tpcc,
        LOAD_PARALLEL,
        plan.seed,
    )
    .await
    .context("loading")?;
    let load_s = started.elapsed().as_secs_f64();
    spinner.set_message(format!(
        "{name}: waiting until every replica applied the load"
    ));
    step.running.converge().await?;
    eprintln!(
        "{name}: loaded in {load_s:.1} s (applied everywhere after {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    // The loader's ANALYZE ran where it was served only: every replica
    // gets its own statistics, so all plan alike.
    for (i, r) in step.target.replicas.iter().enumerate() {
        connect(r)
            .await?
            .batch_execute("ANALYZE")
            .await
            .with_context(|| format!("ANALYZE on replica {}", i + 1))?;
    }

    let cfg = TpccRunConfig {
        targets: step.target.clients.clone(),
        scale: plan.tpcc,
        clients: plan.clients,
        duration: plan.duration,
        warmup: plan.warmup,
        seed: plan.seed,
    };
    let bar = step.run_bar();
    let callback = tashkent_tpcb::bar_callback(&bar);
    let result = tpcc::run(&cfg, Some(&callback)).await;
    step.end_bar(&bar);
    let (stats, mut figures) = result.context("running")?;
    figures.load_s = load_s;
    eprintln!(
        "{name}: {:.0} tpmC, {}, {} retries",
        figures.tpmc,
        one_line(&stats),
        figures.retries()
    );
    report.results.push(ResultRow {
        workload: Workload::Tpcc,
        system: step.system.name().to_owned(),
        replicas: step.replicas,
        stats,
        tpcc: Some(figures),
    });

    spinner.set_message(format!("{name}: checking the replicas"));
    step.running.converge().await?;
    for p in check(&step.target.replicas).await? {
        let msg = format!("{name}: {p}");
        eprintln!("!! BUG: {msg}");
        problems.push(msg);
    }
    Ok(())
}

/// Consistency conditions 1–4 on every replica, then (with more than
/// one) `tashkent verify` across them. Returns the violations found.
async fn check(replicas: &[String]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for (i, conninfo) in replicas.iter().enumerate() {
        match tpcc::check(conninfo).await {
            Ok(()) => {}
            Err(e @ tashkent_tpcb::Error::TpccCondition { .. }) => {
                problems.push(format!("replica {}: {e}", i + 1))
            }
            Err(e) => return Err(e).context(format!("checking replica {}", i + 1)),
        }
    }
    if replicas.len() > 1 {
        let targets: Vec<verify::Target> = replicas
            .iter()
            .enumerate()
            .map(|(i, conninfo)| verify::Target {
                name: format!("replica {}", i + 1),
                conninfo: conninfo.clone(),
            })
            .collect();
        let report = verify::verify(&targets, &verify::Options::default())
            .await
            .context("verifying the replicas")?;
        if !report.identical() {
            problems.push(format!("replicas diverged: {}", report.verdict()));
        }
    }
    Ok(problems)
}
