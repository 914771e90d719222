//! The five transactions (clauses 2.4–2.8) as an application writes
//! them: their input drawn once (a retry repeats it), prepared
//! statements, one database transaction each.

use rand::Rng;
use tokio_postgres::{Client, Statement};

use super::gen::{customer_id, item_id, run_last_name};
use super::stats::TxnKind;
use super::{TpccScale, DISTRICTS};

/// Every prepared statement of the five transactions.
pub(crate) struct Statements {
    no_warehouse: Statement,
    no_district: Statement,
    no_district_next: Statement,
    no_customer: Statement,
    no_order: Statement,
    no_new_order: Statement,
    no_item: Statement,
    no_stock: Statement,
    no_stock_update: Statement,
    no_line: Statement,
    p_warehouse: Statement,
    p_district: Statement,
    customer_by_name: Statement,
    p_customer: Statement,
    p_customer_update: Statement,
    p_customer_update_bc: Statement,
    p_history: Statement,
    os_customer: Statement,
    os_order: Statement,
    os_lines: Statement,
    d_new_order: Statement,
    d_delete: Statement,
    d_order: Statement,
    d_lines: Statement,
    d_customer: Statement,
    sl_district: Statement,
    sl_count: Statement,
}

impl Statements {
    pub(crate) async fn prepare(c: &Client) -> Result<Statements, (String, tokio_postgres::Error)> {
        let p = |sql: &'static str| async move {
            c.prepare(sql)
                .await
                .map_err(|e| (format!("preparing {sql}"), e))
        };
        Ok(Statements {
            no_warehouse: p("SELECT w_tax::float8 FROM warehouse WHERE w_id = $1").await?,
            no_district: p("SELECT d_tax::float8, d_next_o_id FROM district \
                 WHERE d_w_id = $1 AND d_id = $2 FOR UPDATE")
            .await?,
            no_district_next: p(
                "UPDATE district SET d_next_o_id = $3 WHERE d_w_id = $1 AND d_id = $2",
            )
            .await?,
            no_customer: p("SELECT c_discount::float8, c_last, c_credit FROM customer \
                 WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3")
            .await?,
            no_order: p(
                "INSERT INTO orders (o_w_id, o_d_id, o_id, o_c_id, o_entry_d, \
                 o_carrier_id, o_ol_cnt, o_all_local) \
                 VALUES ($1, $2, $3, $4, localtimestamp, NULL, $5, $6)",
            )
            .await?,
            no_new_order: p(
                "INSERT INTO new_order (no_w_id, no_d_id, no_o_id) VALUES ($1, $2, $3)",
            )
            .await?,
            no_item: p("SELECT (i_price * 100)::int8, i_name, i_data FROM item WHERE i_id = $1")
                .await?,
            no_stock: p(
                "SELECT s_quantity, (ARRAY[s_dist_01, s_dist_02, s_dist_03, s_dist_04, \
                 s_dist_05, s_dist_06, s_dist_07, s_dist_08, s_dist_09, s_dist_10])[$3::int4], \
                 s_data FROM stock WHERE s_w_id = $1 AND s_i_id = $2 FOR UPDATE",
            )
            .await?,
            no_stock_update: p("UPDATE stock SET s_quantity = $3, s_ytd = s_ytd + $4, \
                 s_order_cnt = s_order_cnt + 1, s_remote_cnt = s_remote_cnt + $5 \
                 WHERE s_w_id = $1 AND s_i_id = $2")
            .await?,
            no_line: p(
                "INSERT INTO order_line (ol_w_id, ol_d_id, ol_o_id, ol_number, ol_i_id, \
                 ol_supply_w_id, ol_delivery_d, ol_quantity, ol_amount, ol_dist_info) \
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8::int8 * 0.01, $9)",
            )
            .await?,
            p_warehouse: p(
                "UPDATE warehouse SET w_ytd = w_ytd + $2::int8 * 0.01 WHERE w_id = $1 \
                 RETURNING w_name, w_street_1, w_street_2, w_city, w_state, w_zip",
            )
            .await?,
            p_district: p("UPDATE district SET d_ytd = d_ytd + $3::int8 * 0.01 \
                 WHERE d_w_id = $1 AND d_id = $2 \
                 RETURNING d_name, d_street_1, d_street_2, d_city, d_state, d_zip")
            .await?,
            customer_by_name: p("SELECT c_id FROM customer \
                 WHERE c_w_id = $1 AND c_d_id = $2 AND c_last = $3 ORDER BY c_first")
            .await?,
            p_customer: p(
                "SELECT c_first, c_middle, c_last, c_street_1, c_street_2, c_city, \
                 c_state, c_zip, c_phone, c_credit, c_credit_lim::float8, \
                 c_discount::float8, c_balance::float8 FROM customer \
                 WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3 FOR UPDATE",
            )
            .await?,
            p_customer_update: p(
                "UPDATE customer SET c_balance = c_balance - $4::int8 * 0.01, \
                 c_ytd_payment = c_ytd_payment + $4::int8 * 0.01, \
                 c_payment_cnt = c_payment_cnt + 1 \
                 WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3",
            )
            .await?,
            p_customer_update_bc: p(
                "UPDATE customer SET c_balance = c_balance - $4::int8 * 0.01, \
                 c_ytd_payment = c_ytd_payment + $4::int8 * 0.01, \
                 c_payment_cnt = c_payment_cnt + 1, \
                 c_data = substr($5::text || ' ' || c_data, 1, 500) \
                 WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3",
            )
            .await?,
            p_history: p(
                "INSERT INTO history (h_c_id, h_c_d_id, h_c_w_id, h_d_id, h_w_id, \
                 h_date, h_amount, h_data) \
                 VALUES ($1, $2, $3, $4, $5, localtimestamp, $6::int8 * 0.01, $7)",
            )
            .await?,
            os_customer: p(
                "SELECT c_balance::float8, c_first, c_middle, c_last FROM customer \
                 WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3",
            )
            .await?,
            os_order: p("SELECT o_id, o_carrier_id, o_entry_d::text FROM orders \
                 WHERE o_w_id = $1 AND o_d_id = $2 AND o_c_id = $3 ORDER BY o_id DESC LIMIT 1")
            .await?,
            os_lines: p(
                "SELECT ol_i_id, ol_supply_w_id, ol_quantity, ol_amount::float8, \
                 ol_delivery_d::text FROM order_line \
                 WHERE ol_w_id = $1 AND ol_d_id = $2 AND ol_o_id = $3",
            )
            .await?,
            d_new_order: p(
                "SELECT no_o_id FROM new_order WHERE no_w_id = $1 AND no_d_id = $2 \
                 ORDER BY no_o_id LIMIT 1 FOR UPDATE",
            )
            .await?,
            d_delete: p("DELETE FROM new_order \
                 WHERE no_w_id = $1 AND no_d_id = $2 AND no_o_id = $3")
            .await?,
            d_order: p("UPDATE orders SET o_carrier_id = $4 \
                 WHERE o_w_id = $1 AND o_d_id = $2 AND o_id = $3 RETURNING o_c_id")
            .await?,
            d_lines: p("UPDATE order_line SET ol_delivery_d = localtimestamp \
                 WHERE ol_w_id = $1 AND ol_d_id = $2 AND ol_o_id = $3 \
                 RETURNING (ol_amount * 100)::int8")
            .await?,
            d_customer: p(
                "UPDATE customer SET c_balance = c_balance + $4::int8 * 0.01, \
                 c_delivery_cnt = c_delivery_cnt + 1 \
                 WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3",
            )
            .await?,
            sl_district: p("SELECT d_next_o_id FROM district WHERE d_w_id = $1 AND d_id = $2")
                .await?,
            sl_count: p("SELECT count(DISTINCT s_i_id) FROM order_line \
                 JOIN stock ON s_w_id = ol_w_id AND s_i_id = ol_i_id \
                 WHERE ol_w_id = $1 AND ol_d_id = $2 \
                 AND ol_o_id >= $3 - 20 AND ol_o_id < $3 AND s_quantity < $4")
            .await?,
        })
    }
}

/// A customer chosen by id or (60 %) by last name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CustomerRef {
    Id(i32),
    Name(String),
}

/// One order line of a New-Order: item, supplying warehouse, quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line {
    pub item: i32,
    pub supply_w: i32,
    pub quantity: i32,
}

/// A transaction's input (the terminal's screen), drawn once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    NewOrder {
        w: i32,
        d: i32,
        c: i32,
        /// In the order they are processed (by supplying warehouse and
        /// item, so that concurrent New-Orders lock stock in one order).
        lines: Vec<Line>,
    },
    Payment {
        w: i32,
        d: i32,
        c_w: i32,
        c_d: i32,
        customer: CustomerRef,
        cents: i64,
    },
    OrderStatus {
        w: i32,
        d: i32,
        customer: CustomerRef,
    },
    Delivery {
        w: i32,
        carrier: i32,
    },
    StockLevel {
        w: i32,
        d: i32,
        threshold: i32,
    },
}

/// Another warehouse than `home` (or `home` when there is only one).
fn remote(rng: &mut impl Rng, scale: &TpccScale, home: i32) -> i32 {
    if scale.warehouses == 1 {
        return home;
    }
    let w = rng.random_range(1..scale.warehouses);
    if w >= home {
        w + 1
    } else {
        w
    }
}

fn customer(rng: &mut impl Rng, scale: &TpccScale) -> CustomerRef {
    if rng.random_range(1..=100) <= 60 {
        CustomerRef::Name(run_last_name(rng, scale))
    } else {
        CustomerRef::Id(customer_id(rng, scale))
    }
}

impl Input {
    /// Draws the input of `kind` for a terminal of warehouse `w` whose
    /// Stock-Level district is `home_d`.
    pub(crate) fn draw(
        kind: TxnKind,
        rng: &mut impl Rng,
        scale: &TpccScale,
        w: i32,
        home_d: i32,
    ) -> Input {
        let d = rng.random_range(1..=DISTRICTS);
        match kind {
            TxnKind::NewOrder => {
                let count = rng.random_range(5..=15);
                let rollback = rng.random_range(1..=100) == 1;
                let mut lines: Vec<Line> = (0..count)
                    .map(|_| Line {
                        item: item_id(rng, scale),
                        supply_w: if rng.random_range(1..=100) == 1 {
                            remote(rng, scale, w)
                        } else {
                            w
                        },
                        quantity: rng.random_range(1..=10),
                    })
                    .collect();
                if rollback {
                    // An unused item id: the application rolls back.
                    if let Some(last) = lines.last_mut() {
                        last.item = scale.items + 1;
                    }
                }
                lines.sort_by_key(|l| (l.supply_w, l.item));
                Input::NewOrder {
                    w,
                    d,
                    c: customer_id(rng, scale),
                    lines,
                }
            }
            TxnKind::Payment => {
                let (c_w, c_d) = if rng.random_range(1..=100) <= 85 {
                    (w, d)
                } else {
                    (remote(rng, scale, w), rng.random_range(1..=DISTRICTS))
                };
                Input::Payment {
                    w,
                    d,
                    c_w,
                    c_d,
                    customer: customer(rng, scale),
                    cents: rng.random_range(100..=500_000),
                }
            }
            TxnKind::OrderStatus => Input::OrderStatus {
                w,
                d,
                customer: customer(rng, scale),
            },
            TxnKind::Delivery => Input::Delivery {
                w,
                carrier: rng.random_range(1..=10),
            },
            TxnKind::StockLevel => Input::StockLevel {
                w,
                d: home_d,
                threshold: rng.random_range(10..=20),
            },
        }
    }

    pub(crate) fn kind(&self) -> TxnKind {
        match self {
            Input::NewOrder { .. } => TxnKind::NewOrder,
            Input::Payment { .. } => TxnKind::Payment,
            Input::OrderStatus { .. } => TxnKind::OrderStatus,
            Input::Delivery { .. } => TxnKind::Delivery,
            Input::StockLevel { .. } => TxnKind::StockLevel,
        }
    }
}

/// How a transaction completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completed {
    Committed,
    /// New-Order with an unused item, rolled back by the application.
    RolledBack,
}

/// Why an attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A statement failed (the step names it).
    Db(&'static str, tokio_postgres::Error),
    /// The data breaks what the loader guarantees (a bug or a bad load).
    Missing(String),
}

type Step<T> = std::result::Result<T, Failure>;

fn at(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Failure {
    move |e| Failure::Db(step, e)
}

/// Runs `input` as one transaction on `c` (BEGIN … COMMIT, or ROLLBACK
/// for an unused item). On a failure the transaction may still be open.
pub(crate) async fn execute(c: &Client, s: &Statements, input: &Input) -> Step<Completed> {
    c.batch_execute("BEGIN").await.map_err(at("BEGIN"))?;
    let done = match input {
        Input::NewOrder {
            w,
            d,
            c: cid,
            lines,
        } => new_order(c, s, *w, *d, *cid, lines).await?,
        Input::Payment {
            w,
            d,
            c_w,
            c_d,
            customer,
            cents,
        } => {
            payment(c, s, (*w, *d), (*c_w, *c_d), customer, *cents).await?;
            Completed::Committed
        }
        Input::OrderStatus { w, d, customer } => {
            order_status(c, s, *w, *d, customer).await?;
            Completed::Committed
        }
        Input::Delivery { w, carrier } => {
            delivery(c, s, *w, *carrier).await?;
            Completed::Committed
        }
        Input::StockLevel { w, d, threshold } => {
            let next: i32 = c
                .query_one(&s.sl_district, &[w, d])
                .await
                .map_err(at("Stock-Level: SELECT district"))?
                .get(0);
            c.query_one(&s.sl_count, &[w, d, &next, threshold])
                .await
                .map_err(at("Stock-Level: count low stock"))?;
            Completed::Committed
        }
    };
    match done {
        Completed::Committed => c.batch_execute("COMMIT").await.map_err(at("COMMIT"))?,
        Completed::RolledBack => c
            .batch_execute("ROLLBACK")
            .await
            .map_err(at("New-Order: ROLLBACK"))?,
    }
    Ok(done)
}

async fn new_order(
    c: &Client,
    s: &Statements,
    w: i32,
    d: i32,
    cid: i32,
    lines: &[Line],
) -> Step<Completed> {
    let w_tax: f64 = c
        .query_one(&s.no_warehouse, &[&w])
        .await
        .map_err(at("New-Order: SELECT warehouse"))?
        .get(0);
    let row = c
        .query_one(&s.no_district, &[&w, &d])
        .await
        .map_err(at("New-Order: SELECT district FOR UPDATE"))?;
    let (d_tax, o_id): (f64, i32) = (row.get(0), row.get(1));
    c.execute(&s.no_district_next, &[&w, &d, &(o_id + 1)])
        .await
        .map_err(at("New-Order: UPDATE district"))?;
    let discount: f64 = c
        .query_one(&s.no_customer, &[&w, &d, &cid])
        .await
        .map_err(at("New-Order: SELECT customer"))?
        .get(0);
    let all_local = i32::from(lines.iter().all(|l| l.supply_w == w));
    let ol_cnt = lines.len() as i32;
    c.execute(&s.no_order, &[&w, &d, &o_id, &cid, &ol_cnt, &all_local])
        .await
        .map_err(at("New-Order: INSERT orders"))?;
    c.execute(&s.no_new_order, &[&w, &d, &o_id])
        .await
        .map_err(at("New-Order: INSERT new_order"))?;
    let mut total_cents = 0i64;
    for (n, line) in (1..).zip(lines) {
        let Some(item) = c
            .query_opt(&s.no_item, &[&line.item])
            .await
            .map_err(at("New-Order: SELECT item"))?
        else {
            // The 1 %: an unused item id rolls the whole order back.
            return Ok(Completed::RolledBack);
        };
        let price: i64 = item.get(0);
        let stock = c
            .query_opt(&s.no_stock, &[&line.supply_w, &line.item, &d])
            .await
            .map_err(at("New-Order: SELECT stock FOR UPDATE"))?
            .ok_or_else(|| {
                Failure::Missing(format!(
                    "no stock of item {} in warehouse {}",
                    line.item, line.supply_w
                ))
            })?;
        let (quantity, dist_info): (i32, String) = (stock.get(0), stock.get(1));
        let left = if quantity >= line.quantity + 10 {
            quantity - line.quantity
        } else {
            quantity - line.quantity + 91
        };
        let remote = i32::from(line.supply_w != w);
        c.execute(
            &s.no_stock_update,
            &[&line.supply_w, &line.item, &left, &line.quantity, &remote],
        )
        .await
        .map_err(at("New-Order: UPDATE stock"))?;
        let amount = i64::from(line.quantity) * price;
        total_cents += amount;
        c.execute(
            &s.no_line,
            &[
                &w,
                &d,
                &o_id,
                &n,
                &line.item,
                &line.supply_w,
                &line.quantity,
                &amount,
                &dist_info,
            ],
        )
        .await
        .map_err(at("New-Order: INSERT order_line"))?;
    }
    // What the terminal would display.
    let _total = total_cents as f64 * (1.0 - discount) * (1.0 + w_tax + d_tax);
    Ok(Completed::Committed)
}

/// The customer's id: by id, or the middle one (rounded up) of those
/// with the last name, ordered by first name.
async fn resolve(c: &Client, s: &Statements, w: i32, d: i32, customer: &CustomerRef) -> Step<i32> {
    match customer {
        CustomerRef::Id(id) => Ok(*id),
        CustomerRef::Name(name) => {
            let rows = c
                .query(&s.customer_by_name, &[&w, &d, name])
                .await
                .map_err(at("SELECT customer by last name"))?;
            if rows.is_empty() {
                return Err(Failure::Missing(format!(
                    "no customer named {name} in district {d} of warehouse {w}"
                )));
            }
            Ok(rows[rows.len().div_ceil(2) - 1].get(0))
        }
    }
}

async fn payment(
    c: &Client,
    s: &Statements,
    (w, d): (i32, i32),
    (c_w, c_d): (i32, i32),
    customer: &CustomerRef,
    cents: i64,
) -> Step<()> {
    let wh = c
        .query_one(&s.p_warehouse, &[&w, &cents])
        .await
        .map_err(at("Payment: UPDATE warehouse"))?;
    let di = c
        .query_one(&s.p_district, &[&w, &d, &cents])
        .await
        .map_err(at("Payment: UPDATE district"))?;
    let cid = resolve(c, s, c_w, c_d, customer).await?;
    let cust = c
        .query_one(&s.p_customer, &[&c_w, &c_d, &cid])
        .await
        .map_err(at("Payment: SELECT customer FOR UPDATE"))?;
    let credit: String = cust.get(9);
    if credit == "BC" {
        let data = format!("{cid} {c_d} {c_w} {d} {w} {}", super::gen::fixed(cents, 2));
        c.execute(&s.p_customer_update_bc, &[&c_w, &c_d, &cid, &cents, &data])
            .await
            .map_err(at("Payment: UPDATE customer (bad credit)"))?;
    } else {
        c.execute(&s.p_customer_update, &[&c_w, &c_d, &cid, &cents])
            .await
            .map_err(at("Payment: UPDATE customer"))?;
    }
    let (w_name, d_name): (String, String) = (wh.get(0), di.get(0));
    let h_data = format!("{w_name}    {d_name}");
    c.execute(&s.p_history, &[&cid, &c_d, &c_w, &d, &w, &cents, &h_data])
        .await
        .map_err(at("Payment: INSERT history"))?;
    Ok(())
}

async fn order_status(
    c: &Client,
    s: &Statements,
    w: i32,
    d: i32,
    customer: &CustomerRef,
) -> Step<()> {
    let cid = resolve(c, s, w, d, customer).await?;
    c.query_one(&s.os_customer, &[&w, &d, &cid])
        .await
        .map_err(at("Order-Status: SELECT customer"))?;
    let order = c
        .query_opt(&s.os_order, &[&w, &d, &cid])
        .await
        .map_err(at("Order-Status: SELECT orders"))?;
    if let Some(order) = order {
        let o_id: i32 = order.get(0);
        c.query(&s.os_lines, &[&w, &d, &o_id])
            .await
            .map_err(at("Order-Status: SELECT order_line"))?;
    }
    Ok(())
}

/// Delivers the oldest new order of every district of `w` (a district
/// without one is skipped, as clause 2.7.4.2 allows).
async fn delivery(c: &Client, s: &Statements, w: i32, carrier: i32) -> Step<()> {
    for d in 1..=DISTRICTS {
        let Some(no) = c
            .query_opt(&s.d_new_order, &[&w, &d])
            .await
            .map_err(at("Delivery: SELECT new_order FOR UPDATE"))?
        else {
            continue;
        };
        let o_id: i32 = no.get(0);
        c.execute(&s.d_delete, &[&w, &d, &o_id])
            .await
            .map_err(at("Delivery: DELETE new_order"))?;
        let cid: i32 = c
            .query_opt(&s.d_order, &[&w, &d, &o_id, &carrier])
            .await
            .map_err(at("Delivery: UPDATE orders"))?
            .ok_or_else(|| Failure::Missing(format!("new order {w}/{d}/{o_id} has no order")))?
            .get(0);
        let amounts = c
            .query(&s.d_lines, &[&w, &d, &o_id])
            .await
            .map_err(at("Delivery: UPDATE order_line"))?;
        let cents: i64 = amounts.iter().map(|r| r.get::<_, i64>(0)).sum();
        c.execute(&s.d_customer, &[&w, &d, &cid, &cents])
            .await
            .map_err(at("Delivery: UPDATE customer"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn inputs_follow_the_specification() {
        let scale = TpccScale {
            warehouses: 3,
            items: 1000,
            customers: 100,
        };
        let mut rng = StdRng::seed_from_u64(11);
        let (mut orders, mut rollbacks, mut remote_lines, mut lines_total) = (0, 0, 0, 0);
        let (mut by_name, mut payments, mut remote_payments) = (0, 0, 0);
        for _ in 0..20_000 {
            match Input::draw(TxnKind::NewOrder, &mut rng, &scale, 2, 4) {
                Input::NewOrder { w, lines, .. } => {
                    assert_eq!(w, 2);
                    assert!((5..=15).contains(&lines.len()));
                    orders += 1;
                    let invalid = lines.iter().filter(|l| l.item > scale.items).count();
                    assert!(invalid <= 1);
                    rollbacks += invalid;
                    for l in &lines {
                        assert!((1..=10).contains(&l.quantity));
                        assert!((1..=3).contains(&l.supply_w));
                        remote_lines += usize::from(l.supply_w != w);
                        lines_total += 1;
                    }
                    assert!(lines
                        .windows(2)
                        .all(|p| (p[0].supply_w, p[0].item) <= (p[1].supply_w, p[1].item)));
                }
                other => panic!("{other:?}"),
            }
            match Input::draw(TxnKind::Payment, &mut rng, &scale, 2, 4) {
                Input::Payment {
                    c_w,
                    customer,
                    cents,
                    ..
                } => {
                    payments += 1;
                    by_name += usize::from(matches!(customer, CustomerRef::Name(_)));
                    remote_payments += usize::from(c_w != 2);
                    assert!((100..=500_000).contains(&cents));
                }
                other => panic!("{other:?}"),
            }
        }
        // 1 % rollbacks, 1 % remote lines, 60 % by name, 15 % remote.
        assert!((100..300).contains(&rollbacks), "{rollbacks} of {orders}");
        let remote_pct = remote_lines as f64 * 100.0 / lines_total as f64;
        assert!((0.7..1.3).contains(&remote_pct), "{remote_pct}");
        assert!(
            (11_500..12_500).contains(&by_name),
            "{by_name} of {payments}"
        );
        assert!(
            (2_600..3_400).contains(&remote_payments),
            "{remote_payments}"
        );
        match Input::draw(TxnKind::StockLevel, &mut rng, &scale, 3, 7) {
            Input::StockLevel { w, d, threshold } => {
                assert_eq!((w, d), (3, 7));
                assert!((10..=20).contains(&threshold));
            }
            other => panic!("{other:?}"),
        }
        for kind in TxnKind::ALL {
            assert_eq!(Input::draw(kind, &mut rng, &scale, 1, 1).kind(), kind);
        }
    }
}
