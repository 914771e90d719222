//! `--systems pgbouncer`: Debian's pgbouncer in session mode in front of
//! one standalone PostgreSQL with fsync off (the server a Tashkent-MW
//! replica runs). This is the proxy users put in front of PostgreSQL
//! instead, so its overhead sits beside the tashkent proxy's in one run.
//!
//! Session mode, because pgbench's `-M prepared` keeps prepared statements
//! on the server connection (pgbouncer 1.18, Debian 12's, cannot carry them
//! across transactions). The pool is as large as the clients may be, so no
//! client waits for a server connection. Its files (`pgbouncer.ini`, the
//! user list and its log) live in the server's base directory, which the
//! server's account can reach and which goes with the server.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tashkent::ops::pg::PgServer;
use tashkent::ops::process::{free_loopback_port, stop_child, Signal};

/// How long pgbouncer may take to accept connections, and to stop.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts on a fresh port after a port turned out taken, this many times.
const PORT_ATTEMPTS: u32 = 5;

/// Where Debian installs it, then `PATH`.
fn locate() -> Result<PathBuf> {
    let debian = Path::new("/usr/sbin/pgbouncer");
    if debian.is_file() {
        return Ok(debian.to_owned());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("pgbouncer"))
        .find(|p| p.is_file())
        .context("pgbouncer not found (install the Debian package `pgbouncer`; `bash scripts/setup.sh` does)")
}

/// A running pgbouncer; stopped by [`Pgbouncer::stop`], killed on drop.
pub struct Pgbouncer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Pgbouncer {
    /// Starts pgbouncer in front of `server`, on a free loopback port, as
    /// the server's account (pgbouncer refuses to run as root). A port
    /// another process took meanwhile makes it exit: then it starts again
    /// on another.
    pub fn start(server: &PgServer) -> Result<Pgbouncer> {
        let exe = locate()?;
        let dir = server.base_dir().join("pgbouncer");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        server.run_as().own(&dir)?;
        let mut attempt = 1;
        loop {
            match Pgbouncer::start_on_free_port(&exe, &dir, server) {
                Err(e)
                    if attempt < PORT_ATTEMPTS
                        && format!("{e:#}").contains("Address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_on_free_port(exe: &Path, dir: &Path, server: &PgServer) -> Result<Pgbouncer> {
        let port = free_loopback_port()?;
        let log = dir.join("pgbouncer.log");
        // A fresh log per attempt: its tail explains a failed start.
        let _ = std::fs::remove_file(&log);
        let users = dir.join("userlist.txt");
        std::fs::write(&users, format!("\"{}\" \"\"\n", server.user()))
            .with_context(|| format!("writing {}", users.display()))?;
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host={host} port={pg_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = session\n\
                 max_client_conn = 1000\n\
                 default_pool_size = 1000\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {log}\n",
                host = server.host(),
                pg_port = server.port(),
                users = users.display(),
                log = log.display(),
            ),
        )
        .with_context(|| format!("writing {}", ini.display()))?;
        for f in [&users, &ini] {
            server.run_as().own(f)?;
        }
        let mut cmd = Command::new(exe);
        cmd.arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        server.run_as().apply(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut bouncer = Pgbouncer {
            child: Some(child),
            port,
            log,
        };
        bouncer.wait_ready()?;
        Ok(bouncer)
    }

    /// A libpq connection string for `dbname` through pgbouncer.
    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname}",
            self.port
        )
    }

    /// Until its log says it listens on its port (so the port is its own,
    /// not another process's) and a connection goes through.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("waiting for pgbouncer")? {
                    self.child = None;
                    bail!("pgbouncer exited at start ({status}): {}", self.log_tail());
                }
            }
            let logged = std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(&listening));
            if logged && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pgbouncer did not listen on {addr} within {READY_TIMEOUT:?}: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// SIGTERM (pgbouncer's immediate shutdown), then waits; kills it if
    /// it does not exit in time.
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        match stop_child(&mut child, Signal::SIGTERM, STOP_TIMEOUT) {
            Some(_) => Ok(()),
            None => bail!("pgbouncer did not stop within {STOP_TIMEOUT:?}; killed"),
        }
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
