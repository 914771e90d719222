//! Compiles the writeset-capture trigger library (`src/capture/
//! tashkent_capture.c`) against the PostgreSQL server headers, for the
//! proxy to ship to its replica (see `src/capture/mod.rs`).
//!
//! `pg_config` is looked up like the server binaries at run time: `PG_CONFIG`,
//! then `$PG_BIN/pg_config`, then the newest `/usr/lib/postgresql/<major>/bin`,
//! then `pg_config` on the PATH. The headers come with Debian's
//! `postgresql-server-dev-<major>` (scripts/setup.sh installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "src/proxy/capture/tashkent_capture.c";
/// Included by `SOURCE` (the row-lock capture).
const INCLUDED: &str = "src/proxy/capture/tashkent_locks.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed={INCLUDED}");
    println!("cargo:rerun-if-env-changed=PG_CONFIG");
    println!("cargo:rerun-if-env-changed=PG_BIN");
    let pg_config = find_pg_config();
    let query = |flag: &str| -> String {
        let out = Command::new(&pg_config)
            .arg(flag)
            .output()
            .unwrap_or_else(|e| panic!("running {} {flag}: {e}", pg_config.display()));
        assert!(
            out.status.success(),
            "{} {flag} failed",
            pg_config.display()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let include = PathBuf::from(query("--includedir-server"));
    if !include.join("postgres.h").exists() {
        panic!(
            "PostgreSQL server headers not found in {} (from {}): install them \
             (Debian: apt-get install postgresql-server-dev-<major>, or run scripts/setup.sh)",
            include.display(),
            pg_config.display()
        );
    }
    let version = query("--version");
    let major: String = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let cc = std::env::var("CC").unwrap_or_else(|_| query("--cc"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("tashkent_capture.so");
    let status = Command::new(cc.split_whitespace().next().unwrap_or("cc"))
        .args(query("--cflags").split_whitespace())
        .args(["-fPIC", "-shared", "-O2", "-Werror", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(&out)
        .arg(SOURCE)
        .status()
        .expect("running the C compiler for the capture library");
    assert!(status.success(), "compiling {SOURCE} failed");
    println!("cargo:rustc-env=TASHKENT_CAPTURE_LIB={}", out.display());
    println!("cargo:rustc-env=TASHKENT_CAPTURE_PG_MAJOR={major}");
}

fn find_pg_config() -> PathBuf {
    if let Ok(p) = std::env::var("PG_CONFIG") {
        return PathBuf::from(p);
    }
    if let Ok(dir) = std::env::var("PG_BIN") {
        let p = Path::new(&dir).join("pg_config");
        if p.exists() {
            return p;
        }
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin/pg_config");
            p.exists().then_some((major, p))
        })
        .max_by_key(|(major, _)| *major);
    match newest {
        Some((_, p)) => p,
        None => PathBuf::from("pg_config"),
    }
}
