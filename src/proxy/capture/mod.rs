//! Writeset capture and apply on a replica.
//!
//! Capture happens inside PostgreSQL: a row trigger in C
//! (`tashkent_capture.c`, compiled by `build.rs` against the server headers
//! and shipped to the replica by [`install`]) appends one entry per changed
//! row to a buffer that follows the transaction; `tashkent.ws_read()` hands
//! it out before COMMIT ([`entry`] reads it). TRUNCATE and DDL are captured
//! too (`sql/`: the install script, in ordered parts, with the event
//! triggers, the applied version log and the striping of sequences;
//! `FORMAT.md` maps every layer of the format to the code that writes it). [`change`] is the packed
//! form rows travel in inside certifier items, and [`apply`] replays them
//! on another replica.

pub mod apply;
pub mod change;
pub mod entry;

use bytes::{Bytes, BytesMut};
use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The install script, run in this order as one transaction (`FORMAT.md`
/// says what each part does); `@LIBRARY@` stands for the capture
/// library's path.
const INSTALL_SQL: [&str; 9] = [
    include_str!("sql/00_schema.sql"),
    include_str!("sql/10_relations.sql"),
    include_str!("sql/20_sequences.sql"),
    include_str!("sql/30_library.sql"),
    include_str!("sql/40_triggers.sql"),
    include_str!("sql/50_ddl.sql"),
    include_str!("sql/60_commit_order.sql"),
    include_str!("sql/80_privileges.sql"),
    include_str!("sql/90_existing.sql"),
];

/// The compiled capture library (see `build.rs`).
static LIBRARY: &[u8] = include_bytes!(env!("TASHKENT_CAPTURE_LIB"));
/// The PostgreSQL major version the library was compiled for.
const LIBRARY_PG_MAJOR: &str = env!("TASHKENT_CAPTURE_PG_MAJOR");

/// Reads the current transaction's captured entries: one bytea per chunk
/// of the buffer (no row when nothing was captured). Read in binary.
/// The SQLSTATE of `tashkent.wait_turn` when the predecessor did not
/// commit (`sql/60_commit_order.sql`).
pub const PREDECESSOR_FAILED: &str = "T0001";

pub const READ_SQL: &str = "SELECT tashkent.ws_read()";

/// Reads the replica's applied version: one bigint, the newest row of the
/// insert-only log (an index-only backward scan). Sent as the first
/// statement of a REPEATABLE READ transaction, it is exactly the version
/// of that transaction's snapshot.
pub const SNAPSHOT_VERSION_SQL: &str = "SELECT max(version) FROM tashkent.applied";

/// The snapshot's version as a client session's transactions read it
/// first: the same, and it loads the capture library into the session
/// (`tashkent.capture_version()`, immutable: evaluated once, when the
/// statement is planned), whose executor hook must be in place before
/// the client's first `SELECT ... FOR UPDATE` (`tashkent_locks.c`).
pub const OPENING_SQL: &str =
    "SELECT max(version), tashkent.capture_version() FROM tashkent.applied";

/// Default cap on one transaction's captured bytes (`max_writeset_bytes`).
pub const DEFAULT_MAX_WRITESET_BYTES: u64 = 256 << 20;

/// The statement that records version `v` as applied, to run in the
/// transaction that commits it. It inserts a row of its own, so commits in
/// REPEATABLE READ never update a row changed after their snapshot.
pub fn record_applied_sql(v: u64) -> String {
    format!("INSERT INTO tashkent.applied (version) VALUES ({v})")
}

/// The statement that moves this replica's sequences past the values of
/// its own stripe in the serial/identity columns of `tables` (qualified
/// names as captured; every table when `None`): run after rows this
/// replica once inserted are restored or replayed from the log (see
/// `tashkent.advance_sequences`).
pub fn advance_sequences_sql(tables: Option<&[String]>) -> String {
    let arg = match tables {
        None => "NULL".to_owned(),
        Some(tables) => {
            let quoted: Vec<String> = tables.iter().map(|t| apply::literal(t)).collect();
            format!("ARRAY[{}]::text[]", quoted.join(","))
        }
    };
    format!("SELECT tashkent.advance_sequences({arg})")
}

/// The statement that deletes applied-log rows older than `below`; the
/// newest row always survives, whatever `below` is.
pub fn prune_applied_sql(below: u64) -> String {
    format!(
        "DELETE FROM tashkent.applied WHERE version < {below} \
         AND version < (SELECT max(version) FROM tashkent.applied)"
    )
}

/// Reads the replica's applied version.
pub async fn applied_version(client: &Client) -> Result<u64> {
    let row = client
        .query_one(SNAPSHOT_VERSION_SQL, &[])
        .await
        .map_err(Error::sql("reading the applied version"))?;
    let v: Option<i64> = row.get(0);
    let v = v.ok_or_else(|| Error::Capture {
        reason: "tashkent.applied is empty: capture is not installed properly".to_string(),
    })?;
    u64::try_from(v).map_err(|_| Error::Capture {
        reason: format!("negative applied version {v}"),
    })
}

/// Records this replica's place among `replicas` replicas (`id` in
/// `1..=replicas`) and stripes its sequences: every user sequence (and
/// every one created later, also by replicated DDL) hands out only values
/// congruent to `id` modulo `replicas`, so replicas never draw the same
/// serial value.
pub async fn configure_replica(client: &Client, id: u32, replicas: u32) -> Result<()> {
    if replicas == 0 || id == 0 || id > replicas {
        return Err(Error::Config(format!(
            "replica id {id} is not in 1..={replicas}"
        )));
    }
    let (id, replicas) = match (i32::try_from(id), i32::try_from(replicas)) {
        (Ok(id), Ok(replicas)) => (id, replicas),
        _ => {
            return Err(Error::Config(format!(
                "{replicas} replicas are more than tashkent supports"
            )))
        }
    };
    client
        .execute(
            "SELECT tashkent.configure_replica($1, $2)",
            &[&id, &replicas],
        )
        .await
        .map(drop)
        .map_err(Error::sql("configuring the replica's sequences"))
}

/// The library's file name: its PostgreSQL major version and a checksum
/// of its bytes, so a different build never overwrites a library that
/// running backends have loaded.
fn library_file() -> String {
    format!(
        "tashkent_capture_{LIBRARY_PG_MAJOR}_{:08x}.so",
        crc32fast::hash(LIBRARY)
    )
}

/// Installs (or refreshes) capture in the database `client` is connected
/// to, as a superuser: writes the capture library into the server's data
/// directory (over the connection, so the server may be remote), runs the
/// install script, and caps each transaction's captured bytes at
/// `max_writeset_bytes`.
pub async fn install(client: &Client, max_writeset_bytes: u64) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000, \
                    current_setting('server_encoding'), current_database()",
            &[],
        )
        .await
        .map_err(Error::sql("reading the server's version"))?;
    let major: i32 = row.get(0);
    let encoding: String = row.get(1);
    let database: String = row.get(2);
    if major.to_string() != LIBRARY_PG_MAJOR {
        return Err(Error::Capture {
            reason: format!(
                "this tashkent was built for PostgreSQL {LIBRARY_PG_MAJOR} and the replica runs \
                 PostgreSQL {major}: build it with PG_CONFIG pointing at that version's pg_config"
            ),
        });
    }
    if encoding != "UTF8" {
        return Err(Error::Capture {
            reason: format!(
                "database {database} has encoding {encoding}; tashkent replicates UTF8 databases"
            ),
        });
    }
    let file = library_file();
    let size: Option<i64> = client
        .query_one("SELECT (pg_stat_file($1, true)).size", &[&file])
        .await
        .map_err(Error::sql("looking for the capture library"))?
        .get(0);
    if size != Some(LIBRARY.len() as i64) {
        write_library(client, &file)
            .await
            .map_err(Error::sql(format!(
                "writing the capture library {file} into the data directory"
            )))?;
    }
    let sql = INSTALL_SQL
        .concat()
        .replace("@LIBRARY@", &format!("./{file}"));
    client
        .batch_execute(&sql)
        .await
        .map_err(Error::sql("installing writeset capture"))?;
    let format: i32 = client
        .query_one("SELECT tashkent.capture_version()", &[])
        .await
        .map_err(Error::sql("checking the capture library"))?
        .get(0);
    if format != entry::CAPTURE_FORMAT {
        return Err(Error::Capture {
            reason: format!(
                "the capture library speaks format {format}, this proxy reads {}",
                entry::CAPTURE_FORMAT
            ),
        });
    }
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} SET tashkent.max_writeset_bytes = {}",
            apply::ident(&database),
            apply::literal(&max_writeset_bytes.to_string())
        ))
        .await
        .map_err(Error::sql("setting tashkent.max_writeset_bytes"))
}

/// Writes the library as a server-side file through a large object (one
/// transaction: nothing is left behind if it fails).
async fn write_library(
    client: &Client,
    file: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let written = async {
        let oid: tokio_postgres::types::Oid = client
            .query_one("SELECT lo_from_bytea(0, $1)", &[&LIBRARY])
            .await?
            .get(0);
        client
            .execute("SELECT lo_export($1, $2)", &[&oid, &file])
            .await?;
        client.execute("SELECT lo_unlink($1)", &[&oid]).await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if written.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    written
}

/// Reads what the open transaction on `client` has captured so far (all
/// chunks, concatenated).
pub async fn read(client: &Client) -> Result<Bytes> {
    let rows = client
        .query(READ_SQL, &[])
        .await
        .map_err(Error::sql("reading the captured writeset"))?;
    let mut out = BytesMut::new();
    for row in rows {
        let chunk: &[u8] = row.get(0);
        out.extend_from_slice(chunk);
    }
    Ok(out.freeze())
}

/// Prepares a session to apply writesets: capture triggers and foreign-key
/// checks (already certified at the origin) must not fire there, and rows
/// are read under the settings capture renders them with.
pub async fn become_applier(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!(
            "SET session_replication_role = replica; {}",
            apply::SESSION_SETTINGS
        ))
        .await
        .map_err(Error::sql("entering applier mode"))
}

/// Applies a whole writeset in the transaction open on an applier session
/// (tests and tools; the proxy's applier streams, see `proxy::applier`).
pub async fn apply_writeset(client: &Client, ws: &tashkent_certifier::Writeset) -> Result<()> {
    let mut a = apply::Apply::new();
    let mut ddl = ws.ddl.iter().peekable();
    for (i, item) in ws.items.iter().enumerate() {
        while let Some(d) = ddl.next_if(|d| d.before_item <= i as u64) {
            a.ddl(client, d).await?;
        }
        a.item(client, item).await?;
    }
    for d in ddl {
        a.ddl(client, d).await?;
    }
    a.finish(client).await
}
