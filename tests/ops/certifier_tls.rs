//! TLS between the proxies and the certifier (`[cluster] certifier_tls`):
//! a cluster replicates through it, the tools given `--state-dir` find the
//! certificate to trust on their own, and a client that speaks plaintext
//! or trusts another certificate gets an error that says why — a proxy
//! among them, at its start — never a hang.

use std::time::Duration;

use tashkent::ops::config::ConfigFile;
use tashkent_certifier::{CertifierClient, ClientOptions, ClientTls};

use crate::common::cluster::{blocking, tashkent, Cluster};

/// A connection and one call, bounded so that a hang fails the test (the
/// bound detects a hang, it measures nothing).
async fn first_call(addr: &str, opts: ClientOptions) -> Result<u64, String> {
    tokio::time::timeout(Duration::from_secs(60), async {
        let client = CertifierClient::connect_with(addr, opts)
            .await
            .map_err(|e| e.to_string())?;
        let status = client.status().await.map_err(|e| e.to_string())?;
        Ok(status.latest_version)
    })
    .await
    .expect("an answer or an error, not a hang")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_with_certifier_tls_replicates_and_its_tools_follow() {
    let mut cluster = Cluster::start_file(2, |f| f.cluster.certifier_tls = true).await;
    let state = cluster.state_dir().to_path_buf();
    // The certifier serves the state directory's certificate, the proxies
    // trust the recorded copy of it.
    let ca = state.join("tls/certifier-ca.crt");
    assert_eq!(cluster.certifier_tls_ca(), Some(ca.as_path()));
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        std::fs::read(state.join("tls/server.crt")).unwrap()
    );
    let certifier_file = ConfigFile::load(&state.join("certifier.toml")).unwrap();
    assert_eq!(
        certifier_file.certifier.tls_cert,
        Some(state.join("tls/server.crt"))
    );

    // Writes through both proxies replicate (certify over TLS, Subscribe
    // over TLS).
    let a = cluster.client(0).await;
    let b = cluster.client(1).await;
    a.batch_execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    a.execute("INSERT INTO t VALUES (1, 'a')", &[])
        .await
        .unwrap();
    cluster.wait_converged().await;
    b.execute("INSERT INTO t VALUES (2, 'b')", &[])
        .await
        .unwrap();
    b.execute("UPDATE t SET v = 'a2' WHERE k = 1", &[])
        .await
        .unwrap();
    let tables = cluster.assert_identical().await;
    assert_eq!(tables["public.t"].0, 2, "{tables:?}");

    // The tools find the certificate in the state directory.
    let dir = state.display().to_string();
    // A generous answer time: each part must read "up" on a loaded machine.
    let (ok, out) =
        blocking(|| tashkent(&["status", "--state-dir", &dir, "--json", "--timeout", "30"]));
    assert!(ok, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["certifier"]["state"], "up", "{out}");
    assert_eq!(json["certifier"]["tls"], true, "{out}");
    assert!(
        json["certifier"]["latest_version"].as_u64() >= Some(4),
        "{out}"
    );
    for r in json["replicas"].as_array().unwrap() {
        assert_eq!(r["state"], "serving", "{out}");
    }
    let (ok, out) = blocking(|| tashkent(&["status", "--state-dir", &dir, "--timeout", "30"]));
    assert!(ok && out.contains("(TLS): up"), "{out}");
    let (ok, out) = blocking(|| tashkent(&["checkpoint", "--state-dir", &dir]));
    assert!(ok, "{out}");
    // It reported the checkpoint to the certifier, so it reached it.
    assert!(out.contains("certifier log starts at version"), "{out}");

    // `--certifier` alone names a plaintext certifier: status says it is
    // down and why, with `--certifier-tls-ca` it is up.
    let addr = cluster.certifier();
    let (ok, out) = blocking(|| tashkent(&["status", "--certifier", &addr, "--json"]));
    assert!(ok, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["certifier"]["state"], "down", "{out}");
    let ca_arg = ca.display().to_string();
    let (ok, out) = blocking(|| {
        tashkent(&[
            "status",
            "--certifier",
            &addr,
            "--certifier-tls-ca",
            &ca_arg,
            "--json",
            "--timeout",
            "30",
        ])
    });
    assert!(ok, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["certifier"]["state"], "up", "{out}");

    // A plaintext client of the TLS certifier: an error, not a hang.
    let err = first_call(&addr, ClientOptions::default())
        .await
        .unwrap_err();
    println!("plaintext client: {err}");
    // A client trusting another certificate: the handshake fails and says so.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, other_key) = (other.path().join("ca.crt"), other.path().join("ca.key"));
    tashkent::ops::tls::ensure_self_signed(&other_ca, &other_key).unwrap();
    let untrusting = ClientOptions {
        tls: Some(ClientTls::from_ca_file(&other_ca).unwrap()),
        ..ClientOptions::default()
    };
    let err = first_call(&addr, untrusting).await.unwrap_err();
    assert!(
        err.contains("over TLS") && err.contains("certificate"),
        "{err}"
    );
    println!("untrusting client: {err}");

    // A proxy trusting another certificate fails its start, saying TLS;
    // one that speaks plaintext fails too. Both after connect_timeout.
    cluster.stop_proxy(1).await;
    let template = ConfigFile::load(&state.join("proxy-2.toml")).unwrap().proxy;
    let wrong = tashkent::proxy::ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        connect_timeout: Duration::from_secs(1),
        certifier_tls_ca: Some(other_ca.clone()),
        ..template.clone()
    };
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        tashkent::proxy::start(wrong.clone()),
    )
    .await
    .expect("the untrusting proxy's start: an error, not a hang")
    .err()
    .expect("a proxy that does not trust the certifier does not start")
    .to_string();
    assert!(
        err.contains("over TLS") && err.contains("certificate"),
        "{err}"
    );
    println!("untrusting proxy: {err}");
    let plaintext = tashkent::proxy::ProxyConfig {
        certifier_tls_ca: None,
        ..wrong
    };
    let err = tokio::time::timeout(Duration::from_secs(60), tashkent::proxy::start(plaintext))
        .await
        .expect("the plaintext proxy's start: an error, not a hang")
        .err()
        .expect("a plaintext proxy of a TLS certifier does not start")
        .to_string();
    assert!(err.contains("certifier_tls_ca"), "{err}");
    println!("plaintext proxy: {err}");

    // The proxy as the cluster starts it still works.
    cluster.restart_proxy(1).await;
    let b = cluster.client(1).await;
    b.execute("INSERT INTO t VALUES (3, 'c')", &[])
        .await
        .unwrap();
    let tables = cluster.assert_identical().await;
    assert_eq!(tables["public.t"].0, 3, "{tables:?}");

    // After a kill -9 of the certifier the proxies reconnect, over TLS
    // again (the applier's log stream on a connection of its own).
    cluster.restart_certifier().await;
    let mut wrote = false;
    for attempt in 0..100 {
        // ON CONFLICT: a failed attempt may have committed (08007).
        let insert = "INSERT INTO t VALUES (4, 'd') ON CONFLICT DO NOTHING";
        match b.execute(insert, &[]).await {
            Ok(_) => {
                wrote = true;
                break;
            }
            // Until the proxy's connection is back.
            Err(e) => println!("attempt {attempt}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        wrote,
        "no write through proxy 2 after the certifier's restart"
    );
    let tables = cluster.assert_identical().await;
    assert_eq!(tables["public.t"].0, 4, "{tables:?}");
}

/// Three certifier nodes with `certifier_tls`: every node serves the state
/// directory's certificate, to the proxies and to its peers (raft over
/// TLS, trusting that certificate: `[certifier] peer_tls_ca` left out).
/// Writes replicate, the leader's SIGKILL is survived (the election and
/// the catch-up run over TLS), and a plaintext client of any node gets an
/// error, not an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_certifier_nodes_speak_tls_to_the_proxies_and_to_each_other() {
    let mut cluster = Cluster::start_file(2, |f| {
        f.cluster.certifier_tls = true;
        f.cluster.certifiers = 3;
    })
    .await;
    let a = cluster.client(0).await;
    a.batch_execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    for k in 0..20 {
        a.execute("INSERT INTO t VALUES ($1, 'a')", &[&k])
            .await
            .unwrap();
    }
    let json = crate::certifier_raft::status_json(&cluster);
    let nodes = json["certifier_nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{json}");
    for n in nodes {
        assert_eq!(n["state"], "up", "{json}");
        assert_eq!(n["tls"], true, "{json}");
    }
    for addr in cluster.certifier_node_addrs() {
        let err = first_call(&addr.to_string(), ClientOptions::default())
            .await
            .unwrap_err();
        println!("plaintext client of node {addr}: {err}");
    }

    let leader = crate::certifier_raft::leader(&cluster).await;
    cluster.kill_certifier_node(leader).await.unwrap();
    let b = cluster.client(1).await;
    for k in 20..40 {
        // ON CONFLICT: an attempt during the election may have committed.
        let insert = "INSERT INTO t VALUES ($1, 'b') ON CONFLICT DO NOTHING";
        let mut tries = 0;
        while let Err(e) = b.execute(insert, &[&k]).await {
            tries += 1;
            assert!(tries < 100, "insert {k} after the leader's SIGKILL: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let next = crate::certifier_raft::leader(&cluster).await;
    assert_ne!(next, leader);
    cluster.start_certifier_node(leader).await.unwrap();
    let tables = cluster.assert_identical().await;
    assert_eq!(tables["public.t"].0, 40, "{tables:?}");
    // The restarted node catches up from the leader, over TLS.
    let latest = crate::certifier_raft::status_json(&cluster)["certifier"]["committed_version"]
        .as_u64()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let json = crate::certifier_raft::status_json(&cluster);
        if json["certifier_nodes"][leader]["durable_version"].as_u64() >= Some(latest) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The operator's raft calls speak TLS too, given the nodes' CA; in
    // plaintext they fail, saying so for each node.
    let ca = tashkent::ops::state_dir::StateDir::new(cluster.state_dir()).certifier_tls_ca();
    let ca = ca.display().to_string();
    let addrs = cluster.certifier_addrs().unwrap();
    let leader = crate::certifier_raft::leader(&cluster).await;
    let to = ((leader + 1) % 3 + 1).to_string();
    let hand_over = |tls: bool| {
        let mut args = vec![
            "certifier",
            "transfer-leader",
            "--certifier",
            &addrs,
            "--to",
            &to,
        ];
        if tls {
            args.extend(["--certifier-tls-ca", &ca]);
        }
        blocking(|| tashkent(&args))
    };
    let (ok, out) = hand_over(false);
    assert!(!ok, "{out}");
    let (ok, out) = hand_over(true);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("node {to} leads")), "{out}");
    assert_eq!(
        (crate::certifier_raft::leader(&cluster).await + 1).to_string(),
        to
    );
    let tables = cluster.assert_identical().await;
    assert_eq!(tables["public.t"].0, 40, "{tables:?}");
}
