//! A client's startup: TLS negotiated (or declined), bad first packets
//! answered as PostgreSQL would, cancel requests passed on, user and
//! database checked, and authentication relayed to the replica, which
//! decides. All of it within `authentication_timeout`.

use tokio::time::{timeout_at, Instant};

use super::*;
use crate::proxy::wire::WireError;

/// A client that got through startup: its connection (perhaps switched
/// to TLS), its backend, and the backend's process id.
/// The client and backend connections, the backend's pid, and the
/// `tashkent.*` settings the client gave in its startup `options`.
pub(super) type Started = Option<(Conn, Conn, i32, Vec<(String, String)>)>;

/// Startup: an SSLRequest is answered `S` and TLS started when the proxy
/// has a certificate, `N` otherwise; GSSENCRequest is answered `N`; cancel
/// requests are forwarded; then authentication is relayed to the replica,
/// which decides (the client runs nothing before the replica says
/// AuthenticationOk). `peer` is the client's address, for messages.
///
/// Every wait on the client (and on the replica for it) ends at the
/// deadline `authentication_timeout` after the connection was accepted,
/// so a client that connects and says nothing holds no task for long.
pub(super) async fn handshake(shared: &Shared, mut client: Conn, peer: &str) -> Result<Started> {
    let deadline = Instant::now() + shared.cfg.authentication_timeout;
    // As PostgreSQL: one SSLRequest and one GSSENCRequest at most, a GSS
    // request only before TLS, and a repeated one is an unknown protocol.
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        let packet = match timeout_at(deadline, client.read_startup()).await {
            Err(_) => return refuse(client, errors::authentication_timeout()).await,
            Ok(Ok(p)) => p,
            Ok(Err(ConnError::Protocol(e))) => return refuse(client, startup_error(&e)).await,
            Ok(Err(e)) => return Err(SessionError::Client(e)),
        };
        let params = match &packet {
            StartupPacket::SslRequest if ssl_done => {
                // 1234.5679 is the SSLRequest code read as a version.
                return refuse(client, errors::unsupported_protocol(1234, 5679)).await;
            }
            StartupPacket::GssEncRequest if gss_done => {
                return refuse(client, errors::unsupported_protocol(1234, 5680)).await;
            }
            StartupPacket::SslRequest => {
                ssl_done = true;
                let Some(acceptor) = &shared.tls else {
                    client.push_raw(b"N");
                    client.flush().await.map_err(SessionError::Client)?;
                    continue;
                };
                // Bytes sent behind the request were not encrypted: they
                // must not be read as if they came over TLS.
                if client.has_buffered_input() {
                    return refuse(client, errors::unencrypted_data_after_ssl_request()).await;
                }
                client.push_raw(b"S");
                client.flush().await.map_err(SessionError::Client)?;
                client = match timeout_at(deadline, client.start_tls(acceptor)).await {
                    // Mid-handshake nothing can be said in either language.
                    Err(_) => return Ok(None),
                    Ok(Err(e)) => return Err(SessionError::Client(e)),
                    Ok(Ok(c)) => c,
                };
                gss_done = true;
                continue;
            }
            StartupPacket::GssEncRequest => {
                gss_done = true;
                client.push_raw(b"N");
                client.flush().await.map_err(SessionError::Client)?;
                continue;
            }
            StartupPacket::Cancel { .. } => {
                // The client holds the replica's own backend key (relayed
                // at startup), so the request goes on unchanged. Accepted
                // in plaintext even under tls_required: libpq before
                // PostgreSQL 17 never encrypts a cancel.
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
        let settings = param("options")
            .map(crate::proxy::consistency::from_startup_options)
            .unwrap_or_default();
        // Checked before the replica is asked: a bad one refuses the
        // connection, as PostgreSQL refuses a bad `-c`.
        for (name, value) in &settings {
            if let Err(e) = crate::proxy::consistency::Setting::parse(name, Some(value)) {
                return refuse(client, e.into_fatal()).await;
            }
        }
        if shared.cfg.tls_required && !client.is_tls() {
            return refuse(client, errors::tls_required(peer, user, database)).await;
        }
        if !shared.cfg.allow_admin_login && user == shared.cfg.admin_user {
            return refuse(client, errors::admin_login_refused(user)).await;
        }
        if database != shared.cfg.database {
            let e = errors::not_replicated_database(database, &shared.cfg.database);
            return refuse(client, e).await;
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
            let m = match timeout_at(deadline, backend.read()).await {
                Err(_) => return refuse(client, errors::authentication_timeout()).await,
                Ok(m) => m.map_err(SessionError::Backend)?,
            };
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
                        let answer = match timeout_at(deadline, client.read()).await {
                            Err(_) => {
                                return refuse(client, errors::authentication_timeout()).await
                            }
                            Ok(a) => a.map_err(SessionError::Client)?,
                        };
                        if answer.tag() != b'p' {
                            return refuse(client, errors::expected_authentication()).await;
                        }
                        backend.send(&answer).await.map_err(SessionError::Backend)?;
                    }
                }
                b'E' => {
                    client.flush().await.map_err(SessionError::Client)?;
                    client.close().await;
                    return Ok(None);
                }
                b'K' => {
                    if let Some(b) = m.body().get(..4) {
                        backend_pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                b'Z' => {
                    client.flush().await.map_err(SessionError::Client)?;
                    return Ok(Some((client, backend, backend_pid, settings)));
                }
                _ => {}
            }
        }
    }
}

/// The FATAL error for a first packet the proxy cannot take.
fn startup_error(e: &WireError) -> ErrorResponse {
    match e {
        WireError::LengthTooSmall { .. } | WireError::TooLarge { .. } => {
            errors::invalid_startup_length()
        }
        WireError::UnsupportedProtocol { major, minor } => {
            errors::unsupported_protocol(*major, *minor)
        }
        WireError::Malformed { reason, .. } => errors::invalid_startup_packet(reason),
    }
}

/// Sends a FATAL error during startup; the connection then ends.
async fn refuse(mut client: Conn, e: ErrorResponse) -> Result<Started> {
    client
        .send(&e.message())
        .await
        .map_err(SessionError::Client)?;
    client.close().await;
    Ok(None)
}

async fn connect_backend(shared: &Shared) -> std::result::Result<Conn, ConnError> {
    let stream = Stream::connect(&shared.cfg.pg_host, shared.cfg.pg_port).await?;
    Ok(Conn::new(stream, shared.cfg.max_message_bytes))
}
