//! Finding a cluster's replicas, for the tools that talk to each one
//! directly as a superuser (`verify`, `admin`): from a local cluster's
//! state directory, or by asking each replica's proxy.

use std::path::Path;

use crate::error::{Error, Result};
use crate::ops::pg::connect;
use crate::ops::state_dir::StateDir;

/// One replica, reached directly.
#[derive(Debug, Clone)]
pub struct Target {
    /// How it is named in reports.
    pub name: String,
    /// libpq conninfo of its PostgreSQL, as a superuser.
    pub conninfo: String,
}

/// Every replica of the cluster: those of the state directory (running
/// servers), else those the `proxies` (host:port, one per replica) name.
/// `app` is the application_name the tool connects with.
pub async fn replicas(
    state_dir: Option<&Path>,
    proxies: &[String],
    user: &str,
    database: &str,
    app: &str,
) -> Result<Vec<Target>> {
    match (state_dir, proxies.is_empty()) {
        (Some(state), true) => {
            let local = StateDir::new(state);
            let mut targets = Vec::new();
            for id in 1..=local.replicas()? {
                let port = local.running_port(id)?;
                targets.push(Target {
                    name: format!("replica {id}"),
                    conninfo: format!(
                        "host=127.0.0.1 port={port} user={user} dbname={database} application_name={app}"
                    ),
                });
            }
            Ok(targets)
        }
        (None, false) => {
            let mut targets = Vec::new();
            for p in proxies {
                targets.push(of_proxy(p, user, app).await?);
            }
            Ok(targets)
        }
        _ => Err(Error::Config(
            "say which cluster: --state-dir of a local cluster, or --proxy for each replica's proxy"
                .into(),
        )),
    }
}

/// The replica of a proxy, by asking it (`SHOW tashkent.replica`).
pub async fn of_proxy(proxy: &str, user: &str, app: &str) -> Result<Target> {
    let (host, port) = proxy
        .rsplit_once(':')
        .ok_or_else(|| Error::Config(format!("proxy address {proxy:?} is not host:port")))?;
    let client = connect(&format!(
        "host={host} port={port} user={user} dbname=postgres application_name={app}"
    ))
    .await?;
    let ask = |name: &'static str| {
        let client = &client;
        async move {
            let rows = client
                .simple_query(&format!("SHOW tashkent.{name}"))
                .await
                .map_err(Error::sql(format!(
                    "asking proxy {proxy} for tashkent.{name}"
                )))?;
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .ok_or_else(|| Error::Config(format!("proxy {proxy} did not say tashkent.{name}")))
        }
    };
    let replica = ask("replica").await?;
    let id = ask("replica_id").await?;
    Ok(Target {
        name: format!("replica {id}"),
        conninfo: format!("{replica} user={user} application_name={app}"),
    })
}
