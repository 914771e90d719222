//! A client connection to a replica's PostgreSQL, for the tools (bench,
//! checkpoint, recover): plain TCP, its connection task spawned.

use crate::error::{Error, Result};

/// Connects with the libpq-style `conninfo`; the connection runs on a
/// spawned task until the client is dropped.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(Error::sql(format!("connecting ({conninfo})")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
