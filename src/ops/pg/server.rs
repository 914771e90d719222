//! One PostgreSQL server managed by the harness.
//!
//! Layout of a server's base directory:
//!
//! ```text
//! <base>/data/            the data directory (initdb), owned by the server account
//! <base>/data/tashkent.conf   settings written at every start, included from postgresql.conf
//! <base>/postgres.log     the server's stderr, appended across restarts
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::binaries::PgBinaries;
use super::process::{server_processes, RunAs, ServerIdentity};
use super::settings::{self, Durability};
use crate::error::{Error, Result};
use crate::ops::process::{free_loopback_port, stop_child};

/// How long a server may take to accept connections or to shut down.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the processes of a SIGKILLed server may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try when an automatically chosen one is taken.
const PORT_ATTEMPTS: usize = 5;
/// The superuser `initdb` creates; clients connect as this role.
pub const SUPERUSER: &str = "postgres";

/// What to create or open.
#[derive(Debug, Clone, Default)]
pub struct PgConfig {
    /// Base directory (see the module docs). `None`: a fresh directory
    /// under the system temporary directory, removed when the server is
    /// dropped. A given directory is kept, and reused if it already holds
    /// a data directory.
    pub base_dir: Option<PathBuf>,
    /// TCP port on 127.0.0.1. `None`: a free port, chosen at first start
    /// and kept across restarts.
    pub port: Option<u16>,
    /// fsync and friends; see [`Durability`].
    pub durability: Durability,
    /// Extra `postgresql.conf` settings (`name`, literal value), overriding
    /// the harness's defaults.
    pub settings: Vec<(String, String)>,
    /// The installation to use; `None`: [`PgBinaries::locate`].
    pub binaries: Option<PgBinaries>,
}

/// A real PostgreSQL server: a data directory and, while running, a
/// postmaster child process.
///
/// Invariants: while `child` is `Some`, a postmaster started by this value
/// may be running, and every process it spawned has the server log as its
/// stderr (`identity`); after [`PgServer::stop`] or [`PgServer::kill`] returns Ok,
/// none of them is alive. Dropping the value stops the server (killing it
/// if a clean stop fails) and removes a temporary base directory, also
/// during a panic.
#[derive(Debug)]
pub struct PgServer {
    bins: PgBinaries,
    run_as: RunAs,
    base: PathBuf,
    port: u16,
    /// The port is not ours to change: it was given, or the server has
    /// served on it (its proxy and clients know it, so a restart after a
    /// crash must come back there or fail, never move silently).
    port_fixed: bool,
    durability: Durability,
    settings: Vec<(String, String)>,
    /// Set once the log file exists; see [`ServerIdentity`].
    identity: Option<ServerIdentity>,
    child: Option<Child>,
    remove_on_drop: bool,
}

impl PgServer {
    /// Creates (or reopens) the server described by `config` and starts it.
    pub fn start(config: PgConfig) -> Result<PgServer> {
        let mut server = Self::create(config)?;
        server.start_postmaster()?;
        Ok(server)
    }

    /// Creates (or reopens) the server's data directory without starting it.
    pub fn create(config: PgConfig) -> Result<PgServer> {
        let bins = match config.binaries {
            Some(bins) => bins,
            None => PgBinaries::locate()?,
        };
        let run_as = RunAs::for_current_process()?;
        let (base, remove_on_drop) = match config.base_dir {
            Some(dir) => (dir, false),
            None => (fresh_temp_dir()?, true),
        };
        // From here on, dropping `server` cleans up whatever was created.
        let mut server = PgServer {
            bins,
            run_as,
            base,
            port: config.port.unwrap_or(0),
            port_fixed: config.port.is_some(),
            durability: config.durability,
            settings: config.settings,
            identity: None,
            child: None,
            remove_on_drop,
        };
        server.prepare_base()?;
        if !server.data_dir().join("PG_VERSION").exists() {
            server.initdb()?;
        }
        Ok(server)
    }

    /// The host clients connect to.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory of the server's Unix socket (`.s.PGSQL.<port>`): the
    /// base directory, or the system's temporary directory when the base
    /// directory's path is too long for a socket address.
    pub fn socket_dir(&self) -> PathBuf {
        // sun_path holds 108 bytes: the directory, '/', ".s.PGSQL.65535"
        // and a NUL must fit.
        if self.base.as_os_str().len() + 16 <= 100 {
            self.base.clone()
        } else {
            std::env::temp_dir()
        }
    }

    /// The TCP port (0 until the first start when chosen automatically).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser role clients connect as.
    pub fn user(&self) -> &'static str {
        SUPERUSER
    }

    /// A libpq key/value connection string for `dbname`.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host(),
            self.port,
            SUPERUSER,
            dbname
        )
    }

    /// A `postgresql://` URL for `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://{}@{}:{}/{}",
            SUPERUSER,
            self.host(),
            self.port,
            dbname
        )
    }

    /// The base directory (see the module docs).
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.base.join("postgres.log")
    }

    /// The installation this server runs from.
    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// The account the server processes run as.
    pub fn run_as(&self) -> &RunAs {
        &self.run_as
    }

    /// The durability the server runs (or will run at its next start) with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Changes the durability; it takes effect at the next start.
    pub fn set_durability(&mut self, durability: Durability) {
        self.durability = durability;
    }

    /// The postmaster's pid while it is running.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// What identifies this server's processes (see [`server_processes`]);
    /// `None` before its first start.
    pub fn identity(&self) -> Option<ServerIdentity> {
        self.identity
    }

    /// The live processes of this server: the postmaster and its backends.
    pub fn processes(&self) -> Vec<i32> {
        self.identity.map(server_processes).unwrap_or_default()
    }

    /// True while the postmaster runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Starts a stopped (or crashed) server on its data directory.
    pub fn start_postmaster(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::PgState {
                data_dir: self.data_dir(),
                state: "already running",
            });
        }
        // Leftovers of a crash (orphaned backends) would keep the shared
        // memory interlock busy and make the new postmaster refuse to start.
        self.kill_leftovers()?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if self.port == 0 || (attempts > 1 && !self.port_fixed) {
                self.port = free_loopback_port()?;
            }
            match self.spawn_and_wait() {
                Err(Error::PgStart { log_tail, .. })
                    if !self.port_fixed
                        && attempts < PORT_ATTEMPTS
                        && log_tail.contains("Address already in use") =>
                {
                    continue
                }
                Ok(()) => {
                    self.port_fixed = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops the server with a fast shutdown (clients are disconnected,
    /// open transactions roll back, the server checkpoints).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id() as i32;
        if stop_child(&mut child, Signal::SIGINT, STOP_TIMEOUT).is_none() {
            self.kill_leftovers()?;
            return Err(Error::PgStop {
                pid,
                reason: format!(
                    "no exit within {}s of SIGINT; killed",
                    STOP_TIMEOUT.as_secs()
                ),
            });
        }
        self.kill_leftovers()
    }

    /// Crashes the server: SIGKILL to the postmaster and every process it
    /// started, as a machine crash would. Returns once none is alive.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // The postmaster first, so that it cannot fork any more.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_leftovers()
    }

    /// Stops (cleanly) and starts again on the same data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_postmaster()
    }

    fn prepare_base(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.base)
            .map_err(Error::io(format!("creating {}", self.base.display())))?;
        self.run_as.check_reachable(&self.base)?;
        self.run_as.own(&self.base)
    }

    fn initdb(&self) -> Result<()> {
        let data = self.data_dir();
        let mut cmd = Command::new(self.bins.dir().join("initdb"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            .current_dir(&self.base)
            .stdin(Stdio::null());
        if self.durability == Durability::Off {
            // The data directory of a durability-off replica is never
            // trusted after a host crash anyway.
            cmd.arg("--no-sync");
        }
        self.run_as.apply(&mut cmd);
        let out = cmd
            .output()
            .map_err(Error::io(format!("running initdb for {}", data.display())))?;
        if !out.status.success() {
            return Err(Error::InitDb {
                data_dir: data,
                status: out.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .map_err(Error::io(format!("reading {}", conf.display())))?;
        text.push_str("\ninclude_if_exists = 'tashkent.conf'\n");
        std::fs::write(&conf, text).map_err(Error::io(format!("writing {}", conf.display())))
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let data = self.data_dir();
        let conf = data.join("tashkent.conf");
        std::fs::write(
            &conf,
            settings::render(
                self.port,
                &self.socket_dir(),
                self.durability,
                &self.settings,
            ),
        )
        .map_err(Error::io(format!("writing {}", conf.display())))?;
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::io(format!("opening {}", log_path.display())))?;
        let log_start = log
            .metadata()
            .map_err(Error::io(format!("reading {}", log_path.display())))?
            .len();
        self.identity = Some(
            ServerIdentity::of_log(&log_path)
                .map_err(Error::io(format!("reading {}", log_path.display())))?,
        );
        let log_err = log
            .try_clone()
            .map_err(Error::io(format!("opening {}", log_path.display())))?;
        let mut cmd = Command::new(self.bins.dir().join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a terminal's Ctrl-C reaches the
            // program that owns the server, which then stops it in order.
            .process_group(0);
        self.run_as.apply(&mut cmd);
        let child = cmd.spawn().map_err(Error::io(format!(
            "starting postgres for {}",
            data.display()
        )))?;
        let pid = child.id() as i32;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => None,
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                None => Some("lost".to_string()),
            };
            if let Some(status) = exited {
                self.child = None;
                let _ = self.kill_leftovers();
                return Err(self.start_error(format!("postmaster exited ({status})"), log_start));
            }
            if postmaster_ready(&data, pid) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                return Err(self.start_error(
                    format!("not ready within {}s", START_TIMEOUT.as_secs()),
                    log_start,
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_error(&self, reason: String, log_start: u64) -> Error {
        Error::PgStart {
            port: self.port,
            data_dir: self.data_dir(),
            reason,
            log_tail: read_from(&self.log_path(), log_start),
        }
    }

    /// SIGKILLs every process of this server until none is left.
    fn kill_leftovers(&self) -> Result<()> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.processes();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::PgStop {
                    pid: pids[0],
                    reason: format!("processes {pids:?} survived SIGKILL"),
                });
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.stop().is_err() {
            let _ = self.kill();
        }
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

/// True once `data/postmaster.pid` names `pid` and says "ready".
fn postmaster_ready(data: &Path, pid: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    // Line 1 is the pid, line 8 the status (LOCK_FILE_LINE_PM_STATUS).
    lines.first().and_then(|l| l.trim().parse::<i32>().ok()) == Some(pid)
        && lines.get(7).map(|l| l.trim()) == Some("ready")
}

/// A name no concurrent harness (in this or another process) uses.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

fn fresh_temp_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tashkent-pg-{}", unique_name()));
    std::fs::create_dir(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

/// The log from byte `start` on, at most its last 4 KiB.
fn read_from(path: &Path, start: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = start.max(len.saturating_sub(4096));
    let mut text = String::new();
    if file.seek(SeekFrom::Start(from)).is_ok() {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}
