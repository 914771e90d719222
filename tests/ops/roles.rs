//! `tashkent admin`: roles made alike on every replica, and a client
//! authenticating with SCRAM through a proxy (authentication is relayed
//! to the replica, which decides).

use std::process::Command;

use crate::common::cluster::{blocking, tashkent, Cluster};
use crate::common::connect_str;

/// Runs `tashkent admin …` with the password in `$TASHKENT_TEST_PW`.
fn admin(state: &str, args: &[&str], password: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tashkent"));
    cmd.arg("admin").args(args).args(["--state-dir", state]);
    if let Some(p) = password {
        cmd.env("TASHKENT_TEST_PW", p)
            .args(["--password-env", "TASHKENT_TEST_PW"]);
    }
    let out = blocking(|| cmd.output().unwrap());
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn secrets(cluster: &Cluster, role: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for i in 0..cluster.replicas.len() {
        let c = cluster.replica(i).await;
        let row = c
            .query_opt(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap();
        out.push(row.map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()));
    }
    out
}

/// Password authentication for every role but the proxy's own admin
/// user (which it uses over the replica's socket), then reload.
async fn require_scram(cluster: &Cluster) {
    for (i, r) in cluster.replicas.iter().enumerate() {
        let hba = r.data_dir().join("pg_hba.conf");
        std::fs::write(
            &hba,
            "local all postgres trust\nlocal all all scram-sha-256\n\
             host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        cluster
            .replica(i)
            .await
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_creates_roles_alike_everywhere_and_scram_logins_go_through_the_proxy() {
    let mut cluster = Cluster::start(2).await;
    let state = cluster.state_dir().display().to_string();

    // Through a proxy, role statements are refused with the way to do it.
    let err = cluster
        .client(0)
        .await
        .batch_execute("CREATE ROLE nope LOGIN")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(
        db.hint()
            .is_some_and(|h| h.contains("tashkent admin create-role")),
        "{db:?}"
    );

    let (ok, out) = admin(&state, &["create-role", "app"], Some("first pass'word"));
    assert!(ok, "{out}");
    let s = secrets(&cluster, "app").await;
    let first = s[0].clone().expect("app exists on replica 1");
    assert!(first.starts_with("SCRAM-SHA-256$4096:"), "{first}");
    assert_eq!(
        s[1].as_deref(),
        Some(first.as_str()),
        "one verifier everywhere"
    );
    assert!(!first.contains("first pass"), "only the verifier is stored");

    // Again: it exists, so nothing changes anywhere.
    let (ok, out) = admin(&state, &["create-role", "app"], Some("other"));
    assert!(
        !ok && out.contains("nothing changed on any replica"),
        "{out}"
    );

    // The role may create tables (PostgreSQL 15 keeps that from PUBLIC).
    cluster
        .client(0)
        .await
        .batch_execute("GRANT CREATE ON SCHEMA public TO app")
        .await
        .unwrap();
    require_scram(&cluster).await;
    // Proxies keep their addresses across restarts.
    let proxies: Vec<String> = (0..2).map(|i| cluster.proxy_conninfo(i)).collect();
    let as_app = |i: usize, password: &str| {
        format!(
            "{} user=app password='{}'",
            proxies[i],
            password.replace('\'', "\\'")
        )
    };
    let wrong = tokio_postgres::connect(&as_app(1, "wrong"), tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password is refused");
    assert_eq!(
        wrong.as_db_error().map(|d| d.code().code()),
        Some("28P01"),
        "{wrong}"
    );
    let a = connect_str(&as_app(0, "first pass'word")).await;
    a.batch_execute("CREATE TABLE owned (k int PRIMARY KEY); INSERT INTO owned VALUES (1)")
        .await
        .unwrap();
    let b = connect_str(&as_app(1, "first pass'word")).await;
    cluster.wait_converged().await;
    let n: i64 = b
        .query_one("SELECT count(*) FROM owned", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop((a, b));

    // A new password works on every replica, the old one nowhere.
    let (ok, out) = admin(&state, &["set-password", "app"], Some("second"));
    assert!(ok, "{out}");
    for i in 0..2 {
        connect_str(&as_app(i, "second")).await;
        let old =
            tokio_postgres::connect(&as_app(i, "first pass'word"), tokio_postgres::NoTls).await;
        assert!(
            old.is_err(),
            "the old password still works on replica {}",
            i + 1
        );
    }

    // app owns a table: dropping it fails on the first replica, so it
    // stays on both; a role without objects goes from both.
    let (ok, out) = admin(&state, &["drop-role", "app"], None);
    assert!(
        !ok && out.contains("nothing changed on any replica"),
        "{out}"
    );
    assert!(secrets(&cluster, "app").await.iter().all(Option::is_some));
    let (ok, out) = admin(&state, &["create-role", "readers", "--nologin"], None);
    assert!(ok, "{out}");
    assert_eq!(
        secrets(&cluster, "readers").await,
        vec![Some(String::new()); 2]
    );
    let (ok, out) = admin(&state, &["drop-role", "readers"], None);
    assert!(ok && out.contains("replica 1, replica 2"), "{out}");
    assert_eq!(secrets(&cluster, "readers").await, vec![None, None]);

    // The admin user is trusted on the replicas' sockets, which client
    // sessions are relayed over too: `allow_admin_login = false` shuts
    // that door, and application roles still log in.
    cluster
        .restart_proxies_with(|p| p.allow_admin_login = false)
        .await;
    let refused = tokio_postgres::connect(&cluster.proxy_conninfo(0), tokio_postgres::NoTls)
        .await
        .err()
        .expect("the admin user may not log in through a proxy");
    assert_eq!(
        refused.as_db_error().map(|d| d.code().code()),
        Some("28000"),
        "{refused}"
    );
    let a = connect_str(&as_app(0, "second")).await;
    a.batch_execute("INSERT INTO owned VALUES (2)")
        .await
        .unwrap();
    drop(a);
    cluster.wait_converged().await;

    // Verify still reads the whole cluster with the admin user.
    let (ok, out) = blocking(|| tashkent(&["verify", "--state-dir", &state]));
    assert!(ok, "{out}");
}
