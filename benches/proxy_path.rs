//! The proxy's CPU per transaction outside PostgreSQL: what it does for
//! every pgbench TPC-B transaction besides relaying bytes.
//!
//! - `classify`: splitting and classifying the five statements;
//! - `writeset`: the captured read-out of one TPC-B transaction (three
//!   updates, one insert) parsed and built into the writeset the
//!   certifier gets.
//!
//! ```text
//! cargo bench --bench proxy_path
//! ```

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tashkent::proxy::capture::entry::{self, Entry, RowChange};
use tashkent::proxy::sql::{classify, split_statements};
use tashkent::proxy::writeset;

const TPCB: &str = "UPDATE pgbench_accounts SET abalance = abalance + -4213 WHERE aid = 81234;\
SELECT abalance FROM pgbench_accounts WHERE aid = 81234;\
UPDATE pgbench_tellers SET tbalance = tbalance + -4213 WHERE tid = 7;\
UPDATE pgbench_branches SET bbalance = bbalance + -4213 WHERE bid = 1;\
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 81234, -4213, CURRENT_TIMESTAMP);";

/// A conflict key as the capture library writes it: index name, NUL,
/// tag 1, the 8-byte hash.
fn key(index: &str, hash: i64) -> Bytes {
    let mut k = index.as_bytes().to_vec();
    k.extend_from_slice(&[0, 1]);
    k.extend_from_slice(&hash.to_le_bytes());
    k.into()
}

fn tpcb_readout() -> Vec<u8> {
    let update = |table: &str, index: &str, row: &str| {
        Entry::Update(RowChange {
            table: table.into(),
            pk: key(index, 0x5eed_1234_abcd),
            row: Bytes::copy_from_slice(row.as_bytes()),
            ..RowChange::default()
        })
    };
    entry::encode(&[
        update(
            "public.pgbench_accounts",
            "public.pgbench_accounts_pkey",
            "(81234,1,-4213,\"                                                                                    \")",
        ),
        update("public.pgbench_tellers", "public.pgbench_tellers_pkey", "(7,1,-4213,)"),
        update("public.pgbench_branches", "public.pgbench_branches_pkey", "(1,-4213,)"),
        Entry::Insert(RowChange {
            table: "public.pgbench_history".into(),
            row: Bytes::from_static(b"(7,1,81234,-4213,\"2026-11-30 13:00:00.123456\",)"),
            ..RowChange::default()
        }),
    ])
}

fn proxy_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("proxy_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("classify", |b| {
        b.iter(|| {
            split_statements(std::hint::black_box(TPCB))
                .into_iter()
                .map(classify)
                .count()
        })
    });
    let readout = tpcb_readout();
    g.bench_function("writeset", |b| {
        b.iter(|| {
            writeset::build(
                Bytes::from_static(b"txn-1"),
                1,
                42,
                std::hint::black_box(&readout),
                u64::MAX,
            )
            .expect("build")
            .expect("not empty")
        })
    });
    g.finish();
}

criterion_group!(benches, proxy_path);
criterion_main!(benches);
