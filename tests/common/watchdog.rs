//! A watchdog for the tests that run a cluster: a test still running
//! after [`limit`] has the processes it started in its directory
//! SIGKILLed, so that what it waits for fails and the test fails with it,
//! naming itself, instead of hanging the whole run (a test binary waits
//! for its slowest test; CI for the binary).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a test may run its cluster: `TASHKENT_TEST_WATCHDOG_SECS`,
/// else ten minutes (the slowest tests take about one).
fn limit() -> Duration {
    let secs = std::env::var("TASHKENT_TEST_WATCHDOG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

struct Watched {
    test: String,
    dir: PathBuf,
    since: Instant,
    fired: bool,
}

fn watched() -> &'static Mutex<BTreeMap<u64, Watched>> {
    static WATCHED: OnceLock<Mutex<BTreeMap<u64, Watched>>> = OnceLock::new();
    WATCHED.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(5));
            check(limit(), None);
        });
        Mutex::default()
    })
}

/// Watches the test running on this thread, whose processes all name
/// `dir` in their command lines, until dropped.
pub struct Watch(u64);

impl Watch {
    pub fn new(dir: &Path) -> Watch {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let entry = Watched {
            test,
            dir: dir.to_path_buf(),
            since: Instant::now(),
            fired: false,
        };
        watched().lock().unwrap().insert(id, entry);
        Watch(id)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut w) = watched().lock() {
            w.remove(&self.0);
        }
    }
}

/// Fires for every test (or only the `only` one) past `limit`.
fn check(limit: Duration, only: Option<u64>) {
    let mut watched = match watched().lock() {
        Ok(w) => w,
        Err(poisoned) => poisoned.into_inner(),
    };
    for (id, w) in watched.iter_mut() {
        if w.fired || w.since.elapsed() < limit || only.is_some_and(|o| o != *id) {
            continue;
        }
        w.fired = true;
        let pids = children_naming(&w.dir);
        eprintln!(
            "WATCHDOG: {} has run for over {} s; SIGKILLing the processes it \
             started in {} ({pids:?}) so that it fails instead of hanging",
            w.test,
            limit.as_secs(),
            w.dir.display()
        );
        for pid in pids {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// This process's children whose command line names `dir`.
fn children_naming(dir: &Path) -> Vec<i32> {
    let me = std::process::id().to_string();
    let dir = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let ppid = super::proc_stat(*pid).and_then(|f| f.get(1).cloned());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid.as_deref() == Some(me.as_str()) && String::from_utf8_lossy(&cmdline).contains(&dir)
        })
        .collect()
}

#[test]
fn the_watchdog_kills_only_the_children_naming_the_directory() {
    let dir = super::shared_tempdir();
    let other = super::shared_tempdir();
    let spawn = |d: &Path| {
        // A shell waiting in a builtin on its stdin: no child of its own
        // to outlive it, and `d` stays in its command line.
        std::process::Command::new("sh")
            .args(["-c", "read _", d.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut mine, mut theirs) = (spawn(dir.path()), spawn(other.path()));
    let watch = Watch::new(dir.path());
    check(Duration::ZERO, Some(watch.0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = mine.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = mine.kill();
            panic!("the watched test's process was not killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    assert_eq!(
        theirs.try_wait().unwrap(),
        None,
        "a process of another test was killed"
    );
    drop(watch);
    let _ = theirs.kill();
    let _ = theirs.wait();
}
