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
pub fn free_loopback_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(Error::io("finding a free TCP port"))
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
}
