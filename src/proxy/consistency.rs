//! Consistency levels: how fresh a transaction's snapshot must be
//! (`tashkent.consistency`, per session, per transaction, or the proxy's
//! default).
//!
//! - `eventual` (GSI, the default): the replica's newest applied snapshot;
//!   a session's own commits are visible at once, others' once applied.
//! - `strong`: before the transaction takes its snapshot, the proxy asks
//!   the certifier for the newest version it has acknowledged and waits
//!   until its replica has applied it: the transaction sees everything
//!   acknowledged anywhere before it began (strong snapshot isolation).
//! - `causal`: the transaction waits until the replica has applied the
//!   session's causal floor: its own last commit and every version it
//!   waited for (`SELECT tashkent.wait_for(v)`, e.g. with a version another
//!   session read from `SHOW tashkent.last_commit_version`).
//!
//! Every wait is bounded by `tashkent.consistency_timeout`; then the
//! statement fails with 57014 and nothing runs.
//!
//! `tashkent.lock_conflicts` (on, off) is set the same ways: whether the
//! rows a transaction locks `FOR [NO KEY] UPDATE` are conflict keys of it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `tashkent.consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Eventual,
    Causal,
    Strong,
}

impl Level {
    pub fn parse(v: &str) -> Option<Level> {
        match v.to_ascii_lowercase().as_str() {
            "eventual" => Some(Level::Eventual),
            "causal" => Some(Level::Causal),
            "strong" => Some(Level::Strong),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Eventual => "eventual",
            Level::Causal => "causal",
            Level::Strong => "strong",
        }
    }
}

/// The settings a transaction starts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consistency {
    pub level: Level,
    pub timeout: Duration,
    /// Rows locked `FOR [NO KEY] UPDATE` are conflict keys.
    pub lock_conflicts: bool,
}

/// One of the proxy's own settings, read from `SET tashkent.<name>` or
/// the startup options (None: back to the proxy's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Level(Option<Level>),
    Timeout(Option<Duration>),
    LockConflicts(Option<bool>),
}

impl Setting {
    pub fn parse(
        name: &str,
        value: Option<&str>,
    ) -> Result<Setting, crate::proxy::wire::ErrorResponse> {
        use crate::proxy::errors;
        match (name, value) {
            ("consistency", None) => Ok(Setting::Level(None)),
            ("consistency", Some(v)) => Level::parse(v)
                .map(|l| Setting::Level(Some(l)))
                .ok_or_else(|| {
                    errors::invalid_proxy_setting(name, v, "eventual, causal or strong")
                }),
            ("consistency_timeout", None) => Ok(Setting::Timeout(None)),
            ("consistency_timeout", Some(v)) => parse_timeout(v)
                .map(|t| Setting::Timeout(Some(t)))
                .ok_or_else(|| {
                    errors::invalid_proxy_setting(
                        name,
                        v,
                        "a time from 1 ms to 1 day (milliseconds, or with ms, s or min)",
                    )
                }),
            ("lock_conflicts", None) => Ok(Setting::LockConflicts(None)),
            ("lock_conflicts", Some(v)) => parse_bool(v)
                .map(|b| Setting::LockConflicts(Some(b)))
                .ok_or_else(|| errors::invalid_proxy_setting(name, v, "a Boolean (on or off)")),
            _ => Err(errors::unknown_proxy_setting(name)),
        }
    }
}

/// Reads a Boolean as PostgreSQL does: on, off, true, false, yes, no, 1,
/// 0, or a unique prefix of one (`o` is not).
pub fn parse_bool(v: &str) -> Option<bool> {
    let v = v.trim().to_ascii_lowercase();
    let any = |words: &[&str]| !v.is_empty() && words.iter().any(|w| w.starts_with(v.as_str()));
    match v.as_str() {
        "on" | "1" => Some(true),
        "off" | "0" => Some(false),
        "o" => None,
        _ if any(&["true", "yes"]) => Some(true),
        _ if any(&["false", "no"]) => Some(false),
        _ => None,
    }
}

/// Reads a `tashkent.consistency_timeout` value as PostgreSQL reads a
/// time setting: a number of milliseconds, or a number with a unit (`ms`,
/// `s`, `min`). At least 1 ms, at most a day.
pub fn parse_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: f64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000.0,
        "min" => n * 60_000.0,
        _ => return None,
    };
    (1.0..=86_400_000.0)
        .contains(&ms)
        .then(|| Duration::from_secs_f64(ms / 1000.0))
}

/// The `tashkent.*` settings given at connect time in the startup
/// packet's `options` (`-c name=value` or `--name=value`, as libpq's
/// `options='-c tashkent.consistency=strong'` sends them).
pub fn from_startup_options(options: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = options.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let assignment = if words[i] == "-c" {
            i += 1;
            words.get(i).copied()
        } else if let Some(a) = words[i].strip_prefix("-c") {
            Some(a)
        } else {
            words[i].strip_prefix("--")
        };
        if let Some((name, value)) = assignment.and_then(|a| a.split_once('=')) {
            if let Some(name) = name.strip_prefix("tashkent.") {
                out.push((name.to_ascii_lowercase(), value.to_string()));
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_timeouts_and_startup_options_parse() {
        assert_eq!(Level::parse("Strong"), Some(Level::Strong));
        assert_eq!(Level::parse("serializable"), None);
        assert_eq!(parse_timeout("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_timeout("0"), None);
        assert_eq!(parse_timeout("5 parsecs"), None);
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool("ye"), Some(true));
        assert_eq!(parse_bool("n"), Some(false));
        assert_eq!(parse_bool("o"), None);
        assert_eq!(parse_bool("2"), None);
        assert_eq!(
            from_startup_options(
                "-c tashkent.consistency=strong --tashkent.consistency_timeout=2s -cwork_mem=4MB"
            ),
            vec![
                ("consistency".to_string(), "strong".to_string()),
                ("consistency_timeout".to_string(), "2s".to_string()),
            ]
        );
    }
}
