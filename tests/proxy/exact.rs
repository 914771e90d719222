//! Exact values (I7): random rows of every built-in type, written through
//! one proxy with the simple and the extended protocol, read back
//! byte-identical on the other replica after every apply path: one version
//! per replica transaction, a catch-up batch (its proxy was down), and a
//! rebuild from a checkpoint followed by replay of the log; through one
//! certifier and through three certifier nodes.
//!
//! Seeded: the seed is printed; `TASHKENT_EXACT_SEED=<seed>` replays a run.

use crate::common;

use std::time::Duration;

use common::cluster::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// A column: its name, type, and how to draw a value (SQL text; `None`
/// is NULL).
struct Column {
    name: &'static str,
    ty: &'static str,
    draw: fn(&mut StdRng) -> String,
}

fn pick(rng: &mut StdRng, edge: &[&str]) -> String {
    edge[rng.random_range(0..edge.len())].to_string()
}

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n.max(1))
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

fn numeric(rng: &mut StdRng) -> String {
    if rng.random_bool(0.4) {
        return pick(
            rng,
            &[
                "NaN",
                "Infinity",
                "-Infinity",
                "0",
                "-0.000",
                "2.50",
                "12345678901234567890.0123456789",
                "0.000000000000000000000000000000000000001",
                "-99999999999999999999999999999999999999.99",
                "1e-20",
            ],
        );
    }
    let (n_int, n_frac) = (rng.random_range(1..30), rng.random_range(0..25));
    let int = digits(rng, n_int);
    let frac = digits(rng, n_frac);
    let sign = if rng.random_bool(0.3) { "-" } else { "" };
    format!("{sign}{int}.{frac}0")
}

fn float8(rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        return pick(
            rng,
            &[
                "-0",
                "0",
                "NaN",
                "Infinity",
                "-Infinity",
                "1.7976931348623157e308",
                "-2.2250738585072014e-308",
                "5e-324",
                "0.1",
                "-3.141592653589793",
                "1e-310",
            ],
        );
    }
    let bits: u64 = rng.random();
    let f = f64::from_bits(bits);
    if f.is_finite() {
        format!("{f:e}")
    } else {
        "1.5".into()
    }
}

fn float4(rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        return pick(
            rng,
            &[
                "-0",
                "NaN",
                "Infinity",
                "-Infinity",
                "3.4028235e38",
                "1e-45",
                "1.1754944e-38",
                "0.1",
            ],
        );
    }
    let f = f32::from_bits(rng.random());
    if f.is_finite() {
        format!("{f:e}")
    } else {
        "2.5".into()
    }
}

fn int8(rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        return rng.random::<i64>().to_string();
    }
    pick(
        rng,
        &[
            "9223372036854775807",
            "-9223372036854775808",
            "9007199254740993",
            "-9007199254740993",
            "0",
        ],
    )
}

fn jsonb(rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        // JSON numbers: finite, no leading zero; long and with trailing
        // zeros, as numeric keeps them.
        let (a, b) = (rng.random_range(0..30), rng.random_range(0..20));
        let n = format!(
            "{}{}{}.{}0",
            if rng.random_bool(0.3) { "-" } else { "" },
            rng.random_range(1..10),
            digits(rng, a),
            digits(rng, b)
        );
        let t = serde_json::to_string(&text(rng)).unwrap();
        return format!(r#"{{"n": {n}, "t": {t}}}"#);
    }
    pick(
        rng,
        &[
            r#"{"x": 2.50, "big": 123456789012345678901234567890}"#,
            r#"[1.0, 1e400, -0.0, 0.100, null, true]"#,
            r#"{"s": "é\n\t\"q\" \\ \u0001", "nested": {"a": [[], {}]}}"#,
            r#""just a string""#,
        ],
    )
}

fn json(rng: &mut StdRng) -> String {
    pick(
        rng,
        &[
            r#"{"b":1,  "a":2, "a":3}"#,
            "[ 1.50 ,\n 2 ]",
            r#""\u0000 escaped""#,
            r#"{"deep": {"er": [1e400, -0]}}"#,
        ],
    )
}

fn text(rng: &mut StdRng) -> String {
    const PIECES: [&str; 24] = [
        "a", "Z", " ", "'", "\"", "\\", ",", "(", ")", "{", "}", "\n", "\t", "\r", "é", "中", "😀",
        "NULL", "\\N", "$$", "--", "/*", ";", "x",
    ];
    (0..rng.random_range(0..12))
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

fn bytea(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..40);
    let bytes: String = (0..n)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect();
    format!("\\x{bytes}")
}

fn float8_array(rng: &mut StdRng) -> String {
    pick(
        rng,
        &[
            "{-0,NaN,Infinity,-Infinity}",
            "{{1.5,2},{3,4e-300}}",
            "{NULL,0.1}",
            "{}",
        ],
    )
}

fn text_array(rng: &mut StdRng) -> String {
    let a = text(rng).replace('\\', "\\\\").replace('"', "\\\"");
    format!("{{\"{a}\",NULL,\"NULL\",\"\",\"a,b\"}}")
}

fn int_range(rng: &mut StdRng) -> String {
    pick(rng, &["[1,5)", "empty", "(,3]", "[2,)", "(,)"])
}

fn num_range(rng: &mut StdRng) -> String {
    pick(rng, &["[1.50,2.500]", "(-Infinity,0.10)", "empty"])
}

fn tstz_range(rng: &mut StdRng) -> String {
    pick(
        rng,
        &[
            "[\"2024-01-01 00:00:00+05\",infinity)",
            "(\"1999-12-31 23:59:59.999999+08\",\"2000-01-01 00:00:00+00\"]",
        ],
    )
}

fn timestamp(rng: &mut StdRng) -> String {
    pick(
        rng,
        &[
            "2024-02-29 23:59:59.999999",
            "infinity",
            "-infinity",
            "4713-01-01 00:00:00 BC",
            "294276-12-31 23:59:59.999999",
            "2000-01-01 00:00:00.000001",
        ],
    )
}

fn timestamptz(rng: &mut StdRng) -> String {
    pick(
        rng,
        &[
            "2024-06-01 12:00:00.123456+05:30",
            "infinity",
            "1900-01-01 00:00:00+00",
            "2038-01-19 03:14:08-07",
        ],
    )
}

fn date(rng: &mut StdRng) -> String {
    pick(
        rng,
        &["2000-02-29", "infinity", "0001-01-01 BC", "5874897-12-31"],
    )
}

fn time(rng: &mut StdRng) -> String {
    pick(rng, &["24:00:00", "00:00:00.000001", "13:37:00"])
}

fn timetz(rng: &mut StdRng) -> String {
    pick(
        rng,
        &["12:34:56.789+14", "00:00:00-12:00", "23:59:59.999999+05:45"],
    )
}

fn interval(rng: &mut StdRng) -> String {
    pick(
        rng,
        &[
            "1 year 2 mons 3 days 04:05:06.789",
            "-1 days +02:00:00",
            "178000000 years",
            "@ 1 minute ago",
            "0",
        ],
    )
}

fn uuid(rng: &mut StdRng) -> String {
    let b: u128 = rng.random();
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn inet(rng: &mut StdRng) -> String {
    pick(
        rng,
        &["192.168.0.1/24", "::1", "2001:db8::ff/64", "10.0.0.1"],
    )
}

fn cidr(rng: &mut StdRng) -> String {
    pick(rng, &["10.0.0.0/8", "2001:db8::/32", "192.168.100.128/25"])
}

fn macaddr(rng: &mut StdRng) -> String {
    let b: [u8; 6] = rng.random();
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn boolean(rng: &mut StdRng) -> String {
    pick(rng, &["true", "false"])
}

fn bits(rng: &mut StdRng) -> String {
    (0..5)
        .map(|_| if rng.random_bool(0.5) { '1' } else { '0' })
        .collect()
}

fn varbits(rng: &mut StdRng) -> String {
    (0..rng.random_range(0..20))
        .map(|_| if rng.random_bool(0.5) { '1' } else { '0' })
        .collect()
}

fn chars(rng: &mut StdRng) -> String {
    pick(rng, &["ab", "abcd", "", "é "])
}

fn point(rng: &mut StdRng) -> String {
    pick(rng, &["(1.5,-0)", "(NaN,Infinity)", "(1e-300,-1e300)"])
}

fn tsvector(rng: &mut StdRng) -> String {
    pick(rng, &["'a' 'b':1A", "'fat':2 'rat':3", "'it''s' 'x\\\\y'"])
}

fn money(rng: &mut StdRng) -> String {
    pick(rng, &["1000.25", "-0.01", "92233720368547758.07", "0"])
}

fn xml(rng: &mut StdRng) -> String {
    pick(rng, &["<a b=\"1\">x &amp; y</a>", "plain text", "<e/>"])
}

fn pair(rng: &mut StdRng) -> String {
    pick(rng, &["(2.50,\"x y\")", "(,)", "(-0,\"\")"])
}

fn mood(rng: &mut StdRng) -> String {
    pick(rng, &["sad", "ok", "happy"])
}

const COLUMNS: &[Column] = &[
    Column {
        name: "c_numeric",
        ty: "numeric",
        draw: numeric,
    },
    Column {
        name: "c_float8",
        ty: "float8",
        draw: float8,
    },
    Column {
        name: "c_float4",
        ty: "float4",
        draw: float4,
    },
    Column {
        name: "c_int8",
        ty: "int8",
        draw: int8,
    },
    Column {
        name: "c_jsonb",
        ty: "jsonb",
        draw: jsonb,
    },
    Column {
        name: "c_json",
        ty: "json",
        draw: json,
    },
    Column {
        name: "c_text",
        ty: "text",
        draw: text,
    },
    Column {
        name: "c_bytea",
        ty: "bytea",
        draw: bytea,
    },
    Column {
        name: "c_float8_arr",
        ty: "float8[]",
        draw: float8_array,
    },
    Column {
        name: "c_text_arr",
        ty: "text[]",
        draw: text_array,
    },
    Column {
        name: "c_int4range",
        ty: "int4range",
        draw: int_range,
    },
    Column {
        name: "c_numrange",
        ty: "numrange",
        draw: num_range,
    },
    Column {
        name: "c_tstzrange",
        ty: "tstzrange",
        draw: tstz_range,
    },
    Column {
        name: "c_timestamp",
        ty: "timestamp",
        draw: timestamp,
    },
    Column {
        name: "c_timestamptz",
        ty: "timestamptz",
        draw: timestamptz,
    },
    Column {
        name: "c_date",
        ty: "date",
        draw: date,
    },
    Column {
        name: "c_time",
        ty: "time",
        draw: time,
    },
    Column {
        name: "c_timetz",
        ty: "timetz",
        draw: timetz,
    },
    Column {
        name: "c_interval",
        ty: "interval",
        draw: interval,
    },
    Column {
        name: "c_uuid",
        ty: "uuid",
        draw: uuid,
    },
    Column {
        name: "c_inet",
        ty: "inet",
        draw: inet,
    },
    Column {
        name: "c_cidr",
        ty: "cidr",
        draw: cidr,
    },
    Column {
        name: "c_macaddr",
        ty: "macaddr",
        draw: macaddr,
    },
    Column {
        name: "c_bool",
        ty: "bool",
        draw: boolean,
    },
    Column {
        name: "c_bit",
        ty: "bit(5)",
        draw: bits,
    },
    Column {
        name: "c_varbit",
        ty: "varbit",
        draw: varbits,
    },
    Column {
        name: "c_char",
        ty: "char(4)",
        draw: chars,
    },
    Column {
        name: "c_point",
        ty: "point",
        draw: point,
    },
    Column {
        name: "c_tsvector",
        ty: "tsvector",
        draw: tsvector,
    },
    Column {
        name: "c_money",
        ty: "money",
        draw: money,
    },
    Column {
        name: "c_xml",
        ty: "xml",
        draw: xml,
    },
    Column {
        name: "c_pair",
        ty: "pair",
        draw: pair,
    },
    Column {
        name: "c_mood",
        ty: "mood",
        draw: mood,
    },
];

fn draw_row(rng: &mut StdRng) -> Vec<Option<String>> {
    COLUMNS
        .iter()
        .map(|c| (!rng.random_bool(0.1)).then(|| (c.draw)(rng)))
        .collect()
}

fn literal(v: &Option<String>, ty: &str) -> String {
    match v {
        None => format!("NULL::{ty}"),
        Some(v) => format!("'{}'::{ty}", v.replace('\'', "''")),
    }
}

/// Writes through a proxy, alternating the simple and the extended
/// protocol.
struct Writer {
    client: Client,
    insert: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
    n: u64,
}

impl Writer {
    async fn new(client: Client) -> Writer {
        let cols: Vec<String> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::text::{}", i + 2, c.ty))
            .collect();
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        let types = vec![Type::TEXT; COLUMNS.len() + 1];
        let insert = client
            .prepare_typed(
                &format!(
                    "INSERT INTO vals (id, {}) VALUES ($1::text::int, {})",
                    names.join(", "),
                    cols.join(", ")
                ),
                &types,
            )
            .await
            .unwrap();
        let sets: Vec<String> = COLUMNS
            .iter()
            .zip(&cols)
            .map(|(c, v)| format!("{} = {v}", c.name))
            .collect();
        let update = client
            .prepare_typed(
                &format!(
                    "UPDATE vals SET {} WHERE id = $1::text::int",
                    sets.join(", ")
                ),
                &types,
            )
            .await
            .unwrap();
        Writer {
            client,
            insert,
            update,
            n: 0,
        }
    }

    /// One statement of its own (autocommit): one version.
    async fn write(&mut self, id: i32, row: &[Option<String>], update: bool) {
        self.n += 1;
        if self.n.is_multiple_of(2) {
            let sql = if update {
                let sets: Vec<String> = COLUMNS
                    .iter()
                    .zip(row)
                    .map(|(c, v)| format!("{} = {}", c.name, literal(v, c.ty)))
                    .collect();
                format!("UPDATE vals SET {} WHERE id = {id}", sets.join(", "))
            } else {
                let values: Vec<String> = COLUMNS
                    .iter()
                    .zip(row)
                    .map(|(c, v)| literal(v, c.ty))
                    .collect();
                format!("INSERT INTO vals VALUES ({id}, {})", values.join(", "))
            };
            self.client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        } else {
            let id = id.to_string();
            let mut params: Vec<Option<&str>> = vec![Some(&id)];
            params.extend(row.iter().map(|v| v.as_deref()));
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p as _).collect();
            let st = if update { &self.update } else { &self.insert };
            self.client
                .execute(st, &refs)
                .await
                .unwrap_or_else(|e| panic!("row {id}: {e:?} ({row:?})"));
        }
    }
}

/// Every value of every row as text, per replica, in default settings.
async fn texts(c: &Client) -> Vec<Vec<Option<String>>> {
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("{}::text", c.name))
        .collect();
    c.query(
        &format!("SELECT id::text, {} FROM vals ORDER BY id", cols.join(", ")),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (0..=COLUMNS.len()).map(|i| r.get(i)).collect())
    .collect()
}

async fn assert_exact(cluster: &Cluster, phase: &str, seed: u64) {
    cluster.wait_converged().await;
    let a = texts(&cluster.replica(0).await).await;
    let b = texts(&cluster.replica(1).await).await;
    assert_eq!(a.len(), b.len(), "{phase}: row counts differ (seed {seed})");
    for (ra, rb) in a.iter().zip(&b) {
        for (i, (va, vb)) in ra.iter().zip(rb).enumerate() {
            let name = if i == 0 { "id" } else { COLUMNS[i - 1].name };
            assert_eq!(
                va, vb,
                "{phase}: row {:?}, column {name} differs (seed {seed})",
                ra[0]
            );
        }
    }
    cluster.assert_identical().await;
}

/// Waits until replica 2 has applied what replica 1 has.
async fn caught_up(cluster: &Cluster) {
    let a = cluster.replica(0).await;
    let b = cluster.replica(1).await;
    let target = tashkent::proxy::capture::applied_version(&a).await.unwrap();
    // A deadline, not a count of tries: an applier backing off after an
    // error waits up to 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if tashkent::proxy::capture::applied_version(&b).await.unwrap() >= target {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("replica 2 did not reach version {target}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_value_reads_back_identical_on_every_apply_path() {
    every_value_reads_back_identical(Cluster::start(2).await).await;
}

/// The same through three certifier nodes, with no tail cache: the
/// replicas' streams, catch-up and replay after a rebuild read the
/// versions the nodes stamped into their versions logs at apply, from
/// disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_value_reads_back_identical_through_three_certifier_nodes() {
    let cluster = Cluster::start_file(2, |f| {
        f.cluster.certifiers = 3;
        f.certifier.tail_cache_bytes = 0;
    })
    .await;
    every_value_reads_back_identical(cluster).await;
}

/// Writes random rows of every type we accept through replica 1's proxy
/// and checks replica 2 reads back each value as written, on every apply
/// path: one version at a time, catch-up in batches, replay after a
/// rebuild from a checkpoint.
async fn every_value_reads_back_identical(mut cluster: Cluster) {
    let seed: u64 = std::env::var("TASHKENT_EXACT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("exact values: seed {seed} (TASHKENT_EXACT_SEED={seed} replays this run)");
    let mut rng = StdRng::seed_from_u64(seed);
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TYPE pair AS (a numeric, b text)")
        .await
        .unwrap();
    c.batch_execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        .await
        .unwrap();
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("{} {}", c.name, c.ty))
        .collect();
    c.batch_execute(&format!(
        "CREATE TABLE vals (id int PRIMARY KEY, {})",
        cols.join(", ")
    ))
    .await
    .unwrap();
    let mut w = Writer::new(c).await;

    // 1. One version per replica transaction: each write waits for the
    // other replica to apply it.
    let mut id = 0;
    for _ in 0..30 {
        id += 1;
        w.write(id, &draw_row(&mut rng), false).await;
        caught_up(&cluster).await;
        w.write(id, &draw_row(&mut rng), true).await;
        caught_up(&cluster).await;
    }
    assert_exact(&cluster, "one version at a time", seed).await;

    // 2. Catching up: with replica 2's proxy down, rows are inserted and
    // updated at once (also several in one transaction); back up, it
    // applies them in batches.
    cluster.kill_proxy(1).await;
    for _ in 0..120 {
        id += 1;
        w.write(id, &draw_row(&mut rng), false).await;
        w.write(id, &draw_row(&mut rng), true).await;
        let other = rng.random_range(1..=id);
        w.write(other, &draw_row(&mut rng), true).await;
    }
    w.client.batch_execute("BEGIN").await.unwrap();
    for _ in 0..20 {
        id += 1;
        w.write(id, &draw_row(&mut rng), false).await;
        w.write(id, &draw_row(&mut rng), true).await;
    }
    w.client.batch_execute("COMMIT").await.unwrap();
    cluster.restart_proxy(1).await;
    assert_exact(&cluster, "catch-up batches", seed).await;

    // 3. A rebuild: a checkpoint of replica 1, more writes, then replica 2
    // restored from the checkpoint replays the log after it.
    let ckpt = cluster.dir().join("checkpoints");
    cluster.checkpoint_cli(0, &ckpt);
    for _ in 0..60 {
        id += 1;
        w.write(id, &draw_row(&mut rng), false).await;
        let other = rng.random_range(1..=id);
        w.write(other, &draw_row(&mut rng), true).await;
    }
    cluster.kill_proxy(1).await;
    cluster.rebuild_replica(1, &ckpt, "rebuilt").await;
    assert_exact(&cluster, "rebuild and replay", seed).await;
}
