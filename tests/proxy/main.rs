//! The proxy, end to end against real PostgreSQL replicas, a certifier
//! and `tashkent proxy` processes: one test target per part of the system
//! (`tests/proxy`, `tests/ops`), one module per concern.
//!
//! - `session`: the transaction life cycle through real clients;
//! - `protocol`: the wire-protocol edge (psql, COPY, cancel, bad input);
//! - `tls`: TLS from clients to the proxy (psql, pgbench, tokio-postgres
//!   with rustls, psycopg2), `tls_required`, no certificate;
//! - `capture`: writeset capture on one replica, applied on another;
//! - `consistency`: the consistency levels (eventual, causal, strong);
//! - `fairness`: a session losing on a hot row gets its turn (fair turns);
//! - `locks`: rows locked FOR UPDATE conflict across proxies;
//! - `exact`: every accepted type reads back byte-identical (I7);
//! - `extensions`: CREATE/ALTER/DROP EXTENSION, and values of extension types;
//! - `large`: transactions of any size in bounded memory (I8).

#[path = "../common/mod.rs"]
mod common;

mod capture;
mod consistency;
mod exact;
mod extensions;
mod fairness;
mod large;
mod locks;
mod protocol;
mod session;
mod tls;
