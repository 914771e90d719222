//! Reading a scrape: fetching `/metrics` over plain HTTP and parsing the
//! text format into samples (for `tashkent status` and tests; Prometheus
//! itself needs none of this).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::MetricsError;

/// Largest scrape accepted (a tashkent process sends a few KiB).
const MAX_SCRAPE_BYTES: u64 = 4 << 20;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text exposition format; comment lines are skipped and a
    /// line that is not a sample is an error.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line}", n + 1))?);
        }
        Ok(Scrape { samples })
    }

    /// The value of the sample `name` whose labels include all of `labels`
    /// (the first one, if several match).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).map(|s| s.value).next()
    }

    /// The sum of every sample `name` whose labels include all of `labels`
    /// (0 when none does).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_string();
    if name.is_empty() {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        loop {
            let Some((i, c)) = chars.next() else {
                return Err("unterminated labels");
            };
            match c {
                '}' if key.is_empty() => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' if key.is_empty() => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("label value not quoted");
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c) => value.push(c),
                                None => return Err("unterminated label value"),
                            },
                            Some(c) => value.push(c),
                            None => return Err("unterminated label value"),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| "value is not a number")?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Fetches and parses `http://<addr>/metrics`, giving up after `timeout`.
pub async fn fetch(addr: &str, timeout: Duration) -> Result<Scrape, MetricsError> {
    let failed = |reason: String| MetricsError::Scrape {
        addr: addr.to_string(),
        reason,
    };
    let text = tokio::time::timeout(timeout, get(addr))
        .await
        .map_err(|_| failed(format!("no answer within {timeout:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed("not an HTTP answer".into()))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(failed(format!("answered {status}")));
    }
    Scrape::parse(body).map_err(failed)
}

async fn get(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_SCRAPE_BYTES)
        .read_to_end(&mut raw)
        .await?;
    String::from_utf8(raw).map_err(|_| std::io::Error::other("the answer is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels_and_escapes() {
        let text = "# HELP x_total a counter.\n# TYPE x counter\nx_total 3\n\
                    y_seconds_bucket{le=\"0.5\",cause=\"a \\\"b\\\"\\\\c\"} 7 1700000000\n\
                    z{a=\"1\"} +Inf\n# EOF\n";
        let s = Scrape::parse(text).unwrap();
        assert_eq!(s.samples.len(), 3);
        assert_eq!(s.value("x_total", &[]), Some(3.0));
        assert_eq!(
            s.value("y_seconds_bucket", &[("cause", "a \"b\"\\c")]),
            Some(7.0)
        );
        assert_eq!(s.value("y_seconds_bucket", &[("cause", "other")]), None);
        assert_eq!(s.value("z", &[("a", "1")]), Some(f64::INFINITY));
        assert_eq!(s.sum("y_seconds_bucket", &[]), 7.0);
    }

    #[test]
    fn garbage_is_an_error_not_a_sample() {
        assert!(Scrape::parse("x{a=\"1\" 3\n").is_err());
        assert!(Scrape::parse("x notanumber\n").is_err());
        assert!(Scrape::parse("x{a=1} 3\n").is_err());
    }

    #[tokio::test]
    async fn a_served_registry_reads_back() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::registry::Registry;
        use std::sync::Arc;

        let counter: Counter = Counter::default();
        let mut registry = Registry::with_prefix("t");
        registry.register("things", "Things done.", counter.clone());
        counter.inc_by(5);
        let registry = Arc::new(registry);
        let render: crate::Render = Arc::new(move || crate::encode(&registry));
        let server = crate::MetricsServer::serve("127.0.0.1:0".parse().unwrap(), render)
            .await
            .unwrap();
        let addr = server.local_addr().to_string();
        let scrape = fetch(&addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(scrape.value("t_things_total", &[]), Some(5.0));
        counter.inc();
        let scrape = fetch(&addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(scrape.value("t_things_total", &[]), Some(6.0));
    }
}
