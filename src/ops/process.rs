//! A tashkent server (`tashkent certifier`, `tashkent proxy`) as a child
//! process: started, found by the `listening on ADDR` line it prints,
//! SIGKILLed on drop. A local cluster placed in processes is made of
//! these, so each part can be killed and measured on its own.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

use crate::error::{Error, Result};

/// How long a server may take to print its address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before it is killed.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server process; SIGKILLed (and reaped) when dropped.
///
/// Invariant: `child` has printed `listening on <addr>` (and before it
/// `metrics on <addr>` if it serves metrics); its stdout is drained by a
/// thread of its own, so it never blocks on a full pipe.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
}

impl ChildProcess {
    /// Starts `exe args…` (logging at `RUST_LOG=warn` unless set) and
    /// waits until it listens.
    pub fn spawn(exe: &Path, name: &str, args: &[String]) -> Result<ChildProcess> {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd.spawn().map_err(Error::io(format!(
            "starting the {name} ({})",
            exe.display()
        )))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // The thread reads the address lines, then keeps draining.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut metrics = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("metrics on ") {
                    metrics = Some(a.trim().to_owned());
                } else if let Some(a) = line.strip_prefix("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((a.trim().to_owned(), metrics.take()));
                    }
                }
            }
        });
        let mut process = ChildProcess {
            name: name.to_owned(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: None,
        };
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        let (line, metrics) = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(lines) => break lines,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = process.child.try_wait() {
                        return Err(Error::Config(format!(
                            "the {name} exited ({status}) before listening"
                        )));
                    }
                }
                // Its stdout closed without the line: it exited (its
                // error went to stderr).
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = process
                        .child
                        .wait()
                        .map_err(Error::io(format!("waiting for the {name}")))?;
                    return Err(Error::Config(format!(
                        "the {name} exited ({status}) before listening"
                    )));
                }
                Err(_) => {
                    return Err(Error::Config(format!(
                        "the {name} did not print its address in {} s",
                        LISTEN_TIMEOUT.as_secs()
                    )))
                }
            }
        };
        let parse = |line: &str| -> Result<SocketAddr> {
            line.parse()
                .map_err(|e| Error::Config(format!("the {name} printed the address {line:?}: {e}")))
        };
        process.addr = parse(&line)?;
        process.metrics_addr = metrics.as_deref().map(parse).transpose()?;
        Ok(process)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it serves metrics, if it said so.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited in 10 s.
    pub fn terminate(self) {
        self.stop_with(Signal::SIGTERM);
    }

    /// Sends `signal` and waits up to 10 s for the process to exit: its
    /// exit status, or `None` when it had to be killed.
    pub fn stop_with(mut self, signal: Signal) -> Option<ExitStatus> {
        stop_child(&mut self.child, signal, TERM_TIMEOUT)
    }
}

/// Sends `signal` to `child` and waits up to `timeout` for it to exit:
/// its exit status, or `None` when it had to be SIGKILLed (it is reaped
/// either way). The one stop loop of every process we start.
pub fn stop_child(child: &mut Child, signal: Signal, timeout: Duration) -> Option<ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    if nix::sys::signal::kill(pid, signal).is_ok() {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A loopback TCP port that was free when asked. Another process may
/// take it before the caller binds it, so callers that start a server on
/// it retry on a fresh one when it turns out taken.
///
/// It is chosen at random below the kernel's range of ephemeral ports
/// (`ip_local_port_range`), from [`FIRST_CHOSEN_PORT`] up, when that
/// leaves room: a server keeps its port across restarts (a replica's
/// PostgreSQL, stopped for a checkpoint or killed), and while it is down
/// a port from that range may be handed to any outgoing connection on
/// the machine, after which the server cannot start again (a test saw
/// exactly that). Below the range the kernel hands out no port by itself.
///
/// A port is handed out once per process: one chosen before belongs to a
/// server that may be down for a while (killed, restarting) and must find
/// it free when it comes back, which another part of the same process
/// (parallel tests start clusters side by side) would otherwise choose
/// meanwhile (a CI run failed that way: a certifier node's metrics port).
pub fn free_loopback_port() -> Result<u16> {
    static CHOSEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_from = ephemeral_ports_from();
    if ephemeral_from > FIRST_CHOSEN_PORT + 1_000 {
        let mut chosen = CHOSEN.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..64 {
            let span = u64::from(ephemeral_from - FIRST_CHOSEN_PORT);
            let port = FIRST_CHOSEN_PORT + (random_u64() % span) as u16;
            if !chosen.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                chosen.push(port);
                return Ok(port);
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(Error::io("finding a free TCP port"))
}

/// The lowest port [`free_loopback_port`] chooses (above the well-known
/// ports and the usual fixed ones: PostgreSQL's 5432, our 6432 and 7400).
pub const FIRST_CHOSEN_PORT: u16 = 10_000;

/// The first port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_ports_from() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A random number (std's randomly keyed hasher over a counter and the
/// time): enough to spread the ports of concurrent callers.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_port_is_free_and_below_the_ephemeral_range() {
        let from = ephemeral_ports_from();
        let ports: Vec<u16> = (0..20).map(|_| free_loopback_port().unwrap()).collect();
        for p in &ports {
            if from > FIRST_CHOSEN_PORT + 1_000 {
                assert!(
                    (FIRST_CHOSEN_PORT..from).contains(p),
                    "port {p}, range from {from}"
                );
            }
            std::net::TcpListener::bind(("127.0.0.1", *p)).unwrap();
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 15, "not spread: {ports:?}");
    }
}
