//! The parallel loader (clause 4.3.3): rows generated in the driver with
//! the specification's distributions and streamed with `COPY … FROM
//! STDIN` over several connections, so it also runs through a proxy.
//! Every job is one table's slice (items, a warehouse's districts, a
//! range of a warehouse's stock, one district's customers and orders);
//! the foreign keys come after all jobs are done.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::SinkExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use super::gen::{astring, data, fixed, load_last_name, nstring, zip};
use super::schema::{CREATE, FINISH};
use super::{TpccScale, DISTRICTS};
use crate::error::{Error, Result};
use crate::workload::connect;

/// Items or stock rows per `COPY`.
const CHUNK: i32 = 10_000;

/// One slice of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Items {
        lo: i32,
        hi: i32,
    },
    /// The warehouse row and its districts.
    Warehouse {
        w: i32,
    },
    Stock {
        w: i32,
        lo: i32,
        hi: i32,
    },
    /// Customers, history, orders, order lines and new orders.
    District {
        w: i32,
        d: i32,
    },
}

impl Job {
    /// A seed of its own, so a load is the same for the same seed
    /// whatever the order the jobs run in.
    fn seed(&self, seed: u64) -> u64 {
        let (tag, a, b) = match *self {
            Job::Items { lo, .. } => (1u64, lo, 0),
            Job::Warehouse { w } => (2, w, 0),
            Job::Stock { w, lo, .. } => (3, w, lo),
            Job::District { w, d } => (4, w, d),
        };
        seed ^ (tag << 56 ^ (a as u64) << 24 ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// Every job of a load of `scale`; workers pop from the end, so the
/// biggest (districts) go first.
fn jobs(scale: &TpccScale) -> Vec<Job> {
    let mut jobs = Vec::new();
    for w in 1..=scale.warehouses {
        for d in 1..=DISTRICTS {
            jobs.push(Job::District { w, d });
        }
    }
    for w in 1..=scale.warehouses {
        jobs.extend(chunks(scale.items).map(|(lo, hi)| Job::Stock { w, lo, hi }));
    }
    jobs.extend(chunks(scale.items).map(|(lo, hi)| Job::Items { lo, hi }));
    for w in 1..=scale.warehouses {
        jobs.push(Job::Warehouse { w });
    }
    jobs.reverse();
    jobs
}

fn chunks(n: i32) -> impl Iterator<Item = (i32, i32)> {
    (0..(n + CHUNK - 1) / CHUNK).map(move |i| (i * CHUNK + 1, ((i + 1) * CHUNK).min(n)))
}

/// Creates the TPC-C tables at `conninfo` (dropping previous ones) and
/// fills them for `scale` over `parallel` connections, then adds the
/// secondary indexes and foreign keys. `seed` fixes every generated value.
pub async fn load(conninfo: &str, scale: &TpccScale, parallel: usize, seed: u64) -> Result<()> {
    load_split(conninfo, conninfo, scale, parallel, seed).await
}

/// [`load`] with the schema (tables, then indexes and foreign keys) at
/// `schema` and the rows streamed into `rows`: for a bulk load straight
/// into one replica, the schema through a proxy (so every replica has
/// it) and the rows into the replica, whose checkpoint then rebuilds the
/// others.
pub async fn load_split(
    schema: &str,
    rows: &str,
    scale: &TpccScale,
    parallel: usize,
    seed: u64,
) -> Result<()> {
    scale.validate()?;
    let client = connect(schema, "loading TPC-C").await?;
    for sql in CREATE {
        exec(&client, sql).await?;
    }
    // One timestamp for every loaded date, the server's.
    let now: String = client
        .query_one("SELECT localtimestamp::text", &[])
        .await
        .map_err(|e| Error::db("loading TPC-C: reading the time", e))?
        .get(0);
    let queue = Arc::new(Mutex::new(jobs(scale)));
    let workers = (0..parallel.max(1)).map(|i| {
        let queue = Arc::clone(&queue);
        let now = now.clone();
        async move {
            let client = connect(rows, &format!("TPC-C loader {i}")).await?;
            loop {
                let job = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                let Some(job) = job else {
                    return Ok::<(), Error>(());
                };
                run_job(&client, scale, job, &now, seed).await?;
            }
        }
    });
    futures::future::try_join_all(workers).await?;
    for sql in FINISH {
        exec(&client, sql).await?;
    }
    Ok(())
}

async fn exec(client: &Client, sql: &str) -> Result<()> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| Error::db(format!("loading TPC-C: {sql}"), e))
}

/// Streams `rows` (COPY text format) into `table (columns)`.
async fn copy(client: &Client, table: &str, columns: &str, rows: String) -> Result<()> {
    let sql = format!("COPY {table} ({columns}) FROM STDIN");
    let context = || format!("loading TPC-C: {sql}");
    let sink = client
        .copy_in::<_, Bytes>(sql.as_str())
        .await
        .map_err(|e| Error::db(context(), e))?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(rows))
        .await
        .map_err(|e| Error::db(context(), e))?;
    sink.finish().await.map_err(|e| Error::db(context(), e))?;
    Ok(())
}

/// Appends one COPY row of tab-separated fields.
fn row(out: &mut String, fields: &[&dyn std::fmt::Display]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        let _ = write!(out, "{f}");
    }
    out.push('\n');
}

/// COPY's NULL.
const NULL: &str = "\\N";

async fn run_job(client: &Client, scale: &TpccScale, job: Job, now: &str, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(job.seed(seed));
    let rng = &mut rng;
    match job {
        Job::Items { lo, hi } => {
            let mut out = String::new();
            for i in lo..=hi {
                let price = fixed(rng.random_range(100..=10_000), 2);
                row(
                    &mut out,
                    &[
                        &i,
                        &rng.random_range(1..=10_000),
                        &astring(rng, 14, 24),
                        &price,
                        &data(rng),
                    ],
                );
            }
            copy(
                client,
                "item",
                "i_id, i_im_id, i_name, i_price, i_data",
                out,
            )
            .await
        }
        Job::Warehouse { w } => {
            let d_ytd = i64::from(scale.customers) * 1000;
            let mut out = String::new();
            let tax = fixed(rng.random_range(0..=2000), 4);
            let (name, addr) = (astring(rng, 6, 10), address(rng));
            row(
                &mut out,
                &[
                    &w,
                    &name,
                    &addr,
                    &tax,
                    &fixed(d_ytd * i64::from(DISTRICTS), 2),
                ],
            );
            copy(
                client,
                "warehouse",
                "w_id, w_name, w_street_1, w_street_2, w_city, w_state, w_zip, w_tax, w_ytd",
                out,
            )
            .await?;
            let mut out = String::new();
            for d in 1..=DISTRICTS {
                let tax = fixed(rng.random_range(0..=2000), 4);
                let (name, addr) = (astring(rng, 6, 10), address(rng));
                let next = scale.customers + 1;
                row(
                    &mut out,
                    &[&w, &d, &name, &addr, &tax, &fixed(d_ytd, 2), &next],
                );
            }
            copy(
                client,
                "district",
                "d_w_id, d_id, d_name, d_street_1, d_street_2, d_city, d_state, d_zip, \
                 d_tax, d_ytd, d_next_o_id",
                out,
            )
            .await
        }
        Job::Stock { w, lo, hi } => {
            let mut out = String::new();
            for i in lo..=hi {
                let _ = write!(out, "{w}\t{i}\t{}", rng.random_range(10..=100));
                for _ in 0..10 {
                    let _ = write!(out, "\t{}", astring(rng, 24, 24));
                }
                let _ = writeln!(out, "\t0\t0\t0\t{}", data(rng));
            }
            copy(
                client,
                "stock",
                "s_w_id, s_i_id, s_quantity, s_dist_01, s_dist_02, s_dist_03, s_dist_04, \
                 s_dist_05, s_dist_06, s_dist_07, s_dist_08, s_dist_09, s_dist_10, \
                 s_ytd, s_order_cnt, s_remote_cnt, s_data",
                out,
            )
            .await
        }
        Job::District { w, d } => district(client, scale, w, d, now, rng).await,
    }
}

/// street 1, street 2, city, state, zip as four tab-separated fields.
fn address(rng: &mut StdRng) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        astring(rng, 10, 20),
        astring(rng, 10, 20),
        astring(rng, 10, 20),
        astring(rng, 2, 2),
        zip(rng)
    )
}

/// One district's customers (with one history row each), orders (for a
/// random permutation of the customers), order lines and new orders.
async fn district(
    client: &Client,
    scale: &TpccScale,
    w: i32,
    d: i32,
    now: &str,
    rng: &mut StdRng,
) -> Result<()> {
    let (mut customers, mut history) = (String::new(), String::new());
    for c in 1..=scale.customers {
        let credit = if rng.random_range(0..10) == 0 {
            "BC"
        } else {
            "GC"
        };
        let discount = fixed(rng.random_range(0..=5000), 4);
        let (first, last) = (astring(rng, 8, 16), load_last_name(rng, scale, c));
        let (addr, phone) = (address(rng), nstring(rng, 16));
        row(
            &mut customers,
            &[
                &w,
                &d,
                &c,
                &first,
                &"OE",
                &last,
                &addr,
                &phone,
                &now,
                &credit,
                &"50000.00",
                &discount,
                &"-10.00",
                &"10.00",
                &1,
                &0,
                &astring(rng, 300, 500),
            ],
        );
        row(
            &mut history,
            &[&c, &d, &w, &d, &w, &now, &"10.00", &astring(rng, 12, 24)],
        );
    }
    copy(
        client,
        "customer",
        "c_w_id, c_d_id, c_id, c_first, c_middle, c_last, c_street_1, c_street_2, c_city, \
         c_state, c_zip, c_phone, c_since, c_credit, c_credit_lim, c_discount, c_balance, \
         c_ytd_payment, c_payment_cnt, c_delivery_cnt, c_data",
        customers,
    )
    .await?;
    copy(
        client,
        "history",
        "h_c_id, h_c_d_id, h_c_w_id, h_d_id, h_w_id, h_date, h_amount, h_data",
        history,
    )
    .await?;

    let mut owners: Vec<i32> = (1..=scale.customers).collect();
    owners.shuffle(rng);
    let first_new = scale.first_new_order();
    let (mut orders, mut lines, mut new_orders) = (String::new(), String::new(), String::new());
    for (o, &c) in (1..).zip(&owners) {
        let delivered = o < first_new;
        let carrier: &dyn std::fmt::Display = if delivered {
            &rng.random_range(1..=10)
        } else {
            &NULL
        };
        let ol_cnt = rng.random_range(5..=15);
        row(&mut orders, &[&w, &d, &o, &c, &now, carrier, &ol_cnt, &1]);
        for n in 1..=ol_cnt {
            let item = rng.random_range(1..=scale.items);
            let (when, amount): (&dyn std::fmt::Display, String) = if delivered {
                (&now, "0.00".into())
            } else {
                (&NULL, fixed(rng.random_range(1..=999_999), 2))
            };
            let info = astring(rng, 24, 24);
            row(
                &mut lines,
                &[&w, &d, &o, &n, &item, &w, when, &5, &amount, &info],
            );
        }
        if !delivered {
            row(&mut new_orders, &[&w, &d, &o]);
        }
    }
    copy(
        client,
        "orders",
        "o_w_id, o_d_id, o_id, o_c_id, o_entry_d, o_carrier_id, o_ol_cnt, o_all_local",
        orders,
    )
    .await?;
    copy(
        client,
        "order_line",
        "ol_w_id, ol_d_id, ol_o_id, ol_number, ol_i_id, ol_supply_w_id, ol_delivery_d, \
         ol_quantity, ol_amount, ol_dist_info",
        lines,
    )
    .await?;
    copy(client, "new_order", "no_w_id, no_d_id, no_o_id", new_orders).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_cover_every_slice_once() {
        let scale = TpccScale {
            warehouses: 2,
            items: 25_000,
            customers: 30,
        };
        let jobs = jobs(&scale);
        // Popped from the end: the districts, the biggest jobs, first.
        assert!(matches!(jobs.last(), Some(Job::District { .. })));
        let mut items: Vec<(i32, i32)> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Items { lo, hi } => Some((*lo, *hi)),
                _ => None,
            })
            .collect();
        items.sort_unstable();
        assert_eq!(items, vec![(1, 10_000), (10_001, 20_000), (20_001, 25_000)]);
        let count = |f: fn(&Job) -> bool| jobs.iter().filter(|j| f(j)).count();
        assert_eq!(count(|j| matches!(j, Job::Stock { .. })), 6);
        assert_eq!(count(|j| matches!(j, Job::District { .. })), 20);
        assert_eq!(count(|j| matches!(j, Job::Warehouse { .. })), 2);
        let seeds: std::collections::HashSet<u64> = jobs.iter().map(|j| j.seed(5)).collect();
        assert_eq!(seeds.len(), jobs.len(), "every job draws its own values");
        assert_eq!(scale.first_new_order(), 22);
        assert_eq!(TpccScale::new(1).first_new_order(), 2101);
    }
}
