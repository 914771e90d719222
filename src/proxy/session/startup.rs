//! A client's startup: encryption requests refused, cancel requests
//! passed on, user and database checked, and authentication relayed to the
//! replica, which decides.

use super::*;

/// Startup: SSL/GSS encryption refused ('N'), cancel requests forwarded,
/// and authentication relayed to the replica, which decides (the client
/// runs nothing before the replica says AuthenticationOk).
pub(super) async fn handshake(shared: &Shared, client: &mut Conn) -> Result<Option<(Conn, i32)>> {
    loop {
        let packet = client.read_startup().await.map_err(SessionError::Client)?;
        let params = match &packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                client.push_raw(b"N");
                client.flush().await.map_err(SessionError::Client)?;
                continue;
            }
            StartupPacket::Cancel { .. } => {
                // The client holds the replica's own backend key (relayed
                // at startup), so the request goes on unchanged.
                if let Ok(mut pg) = connect_backend(shared).await {
                    pg.push_raw(&packet.encode());
                    let _ = pg.flush().await;
                }
                return Ok(None);
            }
            StartupPacket::Startup { params, .. } => params,
        };
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(user) = param("user") else {
            return refuse(client, errors::no_user()).await;
        };
        let database = param("database").unwrap_or(user);
        if database != shared.cfg.database {
            return refuse(
                client,
                errors::not_replicated_database(database, &shared.cfg.database),
            )
            .await;
        }
        let mut backend = match connect_backend(shared).await {
            Ok(b) => b,
            Err(e) => {
                return refuse(client, errors::replica_unreachable(e)).await;
            }
        };
        backend.push_raw(&packet.encode());
        backend.flush().await.map_err(SessionError::Backend)?;
        let mut backend_pid = 0;
        loop {
            let m = backend.read().await.map_err(SessionError::Backend)?;
            client.push(&m);
            match m.tag() {
                b'R' => {
                    let code = m
                        .body()
                        .get(..4)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    client.flush().await.map_err(SessionError::Client)?;
                    // Cleartext, MD5, SASL start and SASL continue expect
                    // the client's answer.
                    if matches!(code, Some(3 | 5 | 10 | 11)) {
                        let answer = client.read().await.map_err(SessionError::Client)?;
                        if answer.tag() != b'p' {
                            return refuse(client, errors::expected_authentication()).await;
                        }
                        backend.send(&answer).await.map_err(SessionError::Backend)?;
                    }
                }
                b'E' => {
                    client.flush().await.map_err(SessionError::Client)?;
                    return Ok(None);
                }
                b'K' => {
                    if let Some(b) = m.body().get(..4) {
                        backend_pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                b'Z' => {
                    client.flush().await.map_err(SessionError::Client)?;
                    return Ok(Some((backend, backend_pid)));
                }
                _ => {}
            }
        }
    }
}

/// Sends a FATAL error during startup; the connection then ends.
async fn refuse(client: &mut Conn, e: ErrorResponse) -> Result<Option<(Conn, i32)>> {
    client
        .send(&e.message())
        .await
        .map_err(SessionError::Client)?;
    Ok(None)
}

async fn connect_backend(shared: &Shared) -> std::result::Result<Conn, ConnError> {
    let stream = Stream::connect(&shared.cfg.pg_host, shared.cfg.pg_port).await?;
    Ok(Conn::new(stream, shared.cfg.max_message_bytes))
}
