//! The specification's consistency conditions 1–4 (clause 3.3.2), checked
//! on one database after a run.

use crate::error::{Error, Result};
use crate::workload::connect;

/// Each condition: its number, what it says, and a query returning up to
/// three violations, each as one line of text.
const CONDITIONS: [(u8, &str, &str); 4] = [
    (
        1,
        "W_YTD = sum(D_YTD)",
        "SELECT format('warehouse %s: w_ytd %s, sum(d_ytd) %s', w_id, w_ytd, d.s) \
         FROM warehouse LEFT JOIN (SELECT d_w_id, sum(d_ytd) AS s FROM district GROUP BY d_w_id) d \
           ON d.d_w_id = w_id \
         WHERE w_ytd IS DISTINCT FROM d.s ORDER BY w_id LIMIT 3",
    ),
    (
        2,
        "D_NEXT_O_ID - 1 = max(O_ID) = max(NO_O_ID)",
        "SELECT format('district %s/%s: d_next_o_id - 1 = %s, max(o_id) %s, max(no_o_id) %s', \
                d_w_id, d_id, d_next_o_id - 1, o.m, n.m) \
         FROM district \
         LEFT JOIN (SELECT o_w_id, o_d_id, max(o_id) AS m FROM orders GROUP BY 1, 2) o \
           ON o.o_w_id = d_w_id AND o.o_d_id = d_id \
         LEFT JOIN (SELECT no_w_id, no_d_id, max(no_o_id) AS m FROM new_order GROUP BY 1, 2) n \
           ON n.no_w_id = d_w_id AND n.no_d_id = d_id \
         WHERE o.m IS DISTINCT FROM d_next_o_id - 1 \
            OR (n.m IS NOT NULL AND n.m <> d_next_o_id - 1) \
         ORDER BY d_w_id, d_id LIMIT 3",
    ),
    (
        3,
        "max(NO_O_ID) - min(NO_O_ID) + 1 = rows in NEW-ORDER, per district",
        "SELECT format('district %s/%s: new orders %s..%s, %s rows', no_w_id, no_d_id, \
                min(no_o_id), max(no_o_id), count(*)) \
         FROM new_order GROUP BY no_w_id, no_d_id \
         HAVING max(no_o_id) - min(no_o_id) + 1 <> count(*) \
         ORDER BY no_w_id, no_d_id LIMIT 3",
    ),
    (
        4,
        "sum(O_OL_CNT) = rows in ORDER-LINE, per district",
        "SELECT format('district %s/%s: sum(o_ol_cnt) %s, %s order lines', \
                coalesce(o.w, l.w), coalesce(o.d, l.d), o.n, l.n) \
         FROM (SELECT o_w_id AS w, o_d_id AS d, sum(o_ol_cnt) AS n FROM orders GROUP BY 1, 2) o \
         FULL JOIN (SELECT ol_w_id AS w, ol_d_id AS d, count(*) AS n FROM order_line GROUP BY 1, 2) l \
           ON o.w = l.w AND o.d = l.d \
         WHERE o.n IS DISTINCT FROM l.n ORDER BY 1 LIMIT 3",
    ),
];

/// Checks consistency conditions 1–4 on the database at `conninfo`; the
/// first one violated is the error ([`Error::TpccCondition`]), naming up
/// to three of its violations.
pub async fn check(conninfo: &str) -> Result<()> {
    let client = connect(conninfo, "checking the TPC-C consistency conditions").await?;
    // One snapshot for all four.
    let tx_context = "checking the TPC-C consistency conditions";
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| Error::db(tx_context, e))?;
    for (condition, says, sql) in CONDITIONS {
        let rows = client
            .query(sql, &[])
            .await
            .map_err(|e| Error::db(format!("{tx_context}: condition {condition}"), e))?;
        if !rows.is_empty() {
            let cases: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            return Err(Error::TpccCondition {
                condition,
                detail: format!("{says} does not hold: {}", cases.join("; ")),
            });
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| Error::db(tx_context, e))
}
