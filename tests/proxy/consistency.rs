//! Consistency levels (`tashkent.consistency`): a list-append history
//! checked for reads that miss an append acknowledged before they began
//! (strong snapshot isolation's real-time order), with a replica held
//! back, then under concurrent load through three proxies; the timeouts;
//! `wait_for` and `last_commit_version`; SET LOCAL and connect-time
//! options.
//!
//! Seeded: the seed is printed; `TASHKENT_CONSISTENCY_SEED=<seed>`
//! replays a run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::cluster::Cluster;
use crate::common::connect_str;

/// An append acknowledged at `acked`, or a read of `key` begun at
/// `began` that saw `seen`.
#[derive(Debug, Clone)]
enum Event {
    Append {
        key: i32,
        value: String,
        acked: Instant,
    },
    Read {
        key: i32,
        began: Instant,
        seen: String,
        proxy: usize,
    },
}

/// Reads that miss an append acknowledged before they began.
fn stale_reads(history: &[Event]) -> Vec<String> {
    let mut out = Vec::new();
    for e in history {
        let Event::Read {
            key,
            began,
            seen,
            proxy,
        } = e
        else {
            continue;
        };
        for a in history {
            if let Event::Append {
                key: k,
                value,
                acked,
            } = a
            {
                if k == key && acked < began && !seen.split(',').any(|s| s == value) {
                    out.push(format!(
                        "a read of key {key} through proxy {proxy} began {:?} after \"{value}\" \
                         was acknowledged and saw \"{seen}\"",
                        began.duration_since(*acked)
                    ));
                }
            }
        }
    }
    out
}

async fn append(c: &Client, key: i32, value: &str) -> Event {
    c.execute(
        "UPDATE lists SET v = v || $2 || ',' WHERE k = $1",
        &[&key, &value],
    )
    .await
    .unwrap();
    Event::Append {
        key,
        value: value.to_string(),
        acked: Instant::now(),
    }
}

async fn read(c: &Client, key: i32, proxy: usize) -> Result<Event, tokio_postgres::Error> {
    let began = Instant::now();
    let row = c
        .query_one("SELECT v FROM lists WHERE k = $1", &[&key])
        .await?;
    Ok(Event::Read {
        key,
        began,
        seen: row.get(0),
        proxy,
    })
}

async fn show(c: &Client, name: &str) -> String {
    let rows = c
        .simple_query(&format!("SHOW tashkent.{name}"))
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

fn code(e: &tokio_postgres::Error) -> &str {
    e.as_db_error().map_or("", |d| d.code().code())
}

#[tokio::test(flavor = "multi_thread")]
async fn strong_reads_see_every_acknowledged_append_and_eventual_ones_may_not() {
    let seed: u64 = std::env::var("TASHKENT_CONSISTENCY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("consistency: seed {seed} (TASHKENT_CONSISTENCY_SEED={seed} replays this run)");
    let cluster = Cluster::start(3).await;
    let a = cluster.client(0).await;
    a.batch_execute(
        "CREATE TABLE lists (k int PRIMARY KEY, v text NOT NULL); \
         INSERT INTO lists SELECT g, '' FROM generate_series(1, 8) g",
    )
    .await
    .unwrap();
    cluster.wait_converged().await;
    let b = cluster.client(1).await;

    // Replica 2 held back: reads go through, its applier cannot update.
    let holder = cluster.hold_applier(1, "lists").await;
    let mut history = vec![append(&a, 1, "x1").await];
    let v1: u64 = show(&a, "last_commit_version").await.parse().unwrap();
    assert!(v1 > 0);

    // Eventual: the stale read happens, and the checker finds it.
    history.push(read(&b, 1, 2).await.unwrap());
    let stale = stale_reads(&history);
    assert_eq!(stale.len(), 1, "the check can fail: {stale:?}");

    // Strong and wait_for: they wait, up to the timeout, and say why.
    b.batch_execute(
        "SET tashkent.consistency_timeout = '300ms'; SET tashkent.consistency = strong",
    )
    .await
    .unwrap();
    assert_eq!(show(&b, "consistency").await, "strong");
    let e = read(&b, 1, 2).await.unwrap_err();
    assert_eq!(code(&e), "57014", "{e:?}");
    let message = e.as_db_error().unwrap().message();
    assert!(message.contains("replica 2"), "{message}");
    b.batch_execute("SET tashkent.consistency = eventual")
        .await
        .unwrap();
    let e = b
        .simple_query(&format!("SELECT tashkent.wait_for({v1})"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "57014", "{e:?}");

    // Released: wait_for returns once the replica has v1, and a causal
    // session reads it from then on.
    let waiter = {
        let b = cluster.client(1).await;
        tokio::spawn(async move {
            b.batch_execute(
                "SET tashkent.consistency_timeout = '20s'; SET tashkent.consistency = causal",
            )
            .await
            .unwrap();
            b.simple_query(&format!("SELECT tashkent.wait_for({v1})"))
                .await
                .unwrap();
            read(&b, 1, 2).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let Event::Read { seen, .. } = waiter.await.unwrap() else {
        unreachable!()
    };
    assert_eq!(seen, "x1,");

    // Concurrent appends and strong reads through three proxies: no read
    // misses an acknowledged append.
    let history = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for p in 0..3 {
        for w in 0..2 {
            let client = cluster.client(p).await;
            let history = history.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (p * 2 + w) as u64);
            tasks.push(tokio::spawn(async move {
                client
                    .batch_execute(
                        "SET tashkent.consistency = 'strong'; \
                         SET tashkent.consistency_timeout = '30s'",
                    )
                    .await
                    .unwrap();
                for i in 0..40 {
                    let key = rng.random_range(1..=8);
                    let e = if rng.random_bool(0.5) {
                        let value = format!("p{p}w{w}i{i}");
                        let r = client
                            .execute(
                                "UPDATE lists SET v = v || $2 || ',' WHERE k = $1",
                                &[&key, &value],
                            )
                            .await;
                        match r {
                            Ok(_) => Event::Append {
                                key,
                                value,
                                acked: Instant::now(),
                            },
                            // Lost a certification race: not acknowledged.
                            Err(e) if code(&e) == "40001" => continue,
                            Err(e) => panic!("append: {e}"),
                        }
                    } else {
                        read(&client, key, p + 1).await.unwrap()
                    };
                    history.lock().push(e);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let history = history.lock().clone();
    let reads = history
        .iter()
        .filter(|e| matches!(e, Event::Read { .. }))
        .count();
    assert!(reads > 50, "{reads} reads");
    let stale = stale_reads(&history);
    assert!(stale.is_empty(), "strong reads missed appends: {stale:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn set_local_lasts_one_transaction_and_connect_options_set_the_level() {
    let cluster = Cluster::start(2).await;
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE t (k int PRIMARY KEY)")
        .await
        .unwrap();
    c.batch_execute("BEGIN; SET LOCAL tashkent.consistency = strong")
        .await
        .unwrap();
    assert_eq!(show(&c, "consistency").await, "strong");
    c.batch_execute("SELECT count(*) FROM t").await.unwrap();
    // The snapshot is taken: too late to ask for a fresher one.
    let e = c
        .batch_execute("SET LOCAL tashkent.consistency = causal")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "25001", "{e:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(show(&c, "consistency").await, "eventual");
    // Over the extended protocol too.
    c.execute("SET tashkent.consistency = 'causal'", &[])
        .await
        .unwrap();
    assert_eq!(show(&c, "consistency").await, "causal");
    c.execute("RESET tashkent.consistency", &[]).await.unwrap();
    assert_eq!(show(&c, "consistency").await, "eventual");
    let e = c
        .batch_execute("SET tashkent.consistency = serializable")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023", "{e:?}");
    // The capture's own settings stay out of reach.
    let e = c
        .batch_execute("SET tashkent.max_writeset_bytes = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{e:?}");

    // At connect time, through libpq's options.
    let strong = connect_str(&format!(
        "{} options='-c tashkent.consistency=strong -c tashkent.consistency_timeout=2s'",
        cluster.proxy_conninfo(1)
    ))
    .await;
    assert_eq!(show(&strong, "consistency").await, "strong");
    assert_eq!(show(&strong, "consistency_timeout").await, "2000ms");
    // Replica 2 has the table: a strong transaction waits at most 2 s.
    cluster.wait_converged().await;
    strong
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert!(
        show(&strong, "last_commit_version")
            .await
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let bad = tokio_postgres::connect(
        &format!(
            "{} options='-c tashkent.consistency=sometimes'",
            cluster.proxy_conninfo(1)
        ),
        tokio_postgres::NoTls,
    )
    .await;
    let e = bad.err().expect("a bad level refuses the connection");
    assert_eq!(code(&e), "22023", "{e:?}");
}
