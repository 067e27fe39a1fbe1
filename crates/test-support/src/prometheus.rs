//! A real Prometheus for one test: it scrapes the targets the test names every second, may
//! evaluate rule files, and answers PromQL over its HTTP API, so a test can check that a
//! dashboard's queries return data and name only metrics the services export.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::binaries::Binary;
use crate::launch::{StartFailure, launch};
use crate::probe::free_port;
use crate::process::ChildProcess;

/// Ports tried before giving up when other processes keep taking the free one first.
const PORT_ATTEMPTS: usize = 5;
/// How long one API call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the targets are scraped and the rules evaluated.
const INTERVAL: &str = "1s";

/// Why a call to Prometheus's API failed.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("request to prometheus failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("prometheus refused {what}: {kind}: {message}")]
    Api {
        what: String,
        kind: String,
        message: String,
    },
    #[error("prometheus answered {what} with an unexpected body: {body}")]
    Unexpected { what: String, body: String },
}

/// One series of an instant query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels, `__name__` included when the expression kept it.
    pub labels: BTreeMap<String, String>,
    /// Its value (`NaN` for, e.g., a quantile of no observations).
    pub value: f64,
}

/// A rule as Prometheus evaluates it (`/api/v1/rules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHealth {
    pub name: String,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    pub health: String,
    pub last_error: Option<String>,
}

/// A `prometheus` server on a free loopback port with a data directory of its own, killed
/// when dropped.
#[derive(Debug)]
pub struct PrometheusServer {
    /// Declared first so that it is dropped (killed) before its directory is removed.
    process: ChildProcess,
    url: String,
    client: reqwest::Client,
    _dir: TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `/metrics` of each `(job, address)` every second and
    /// evaluating `rule_files` every second; returns once it is ready.
    ///
    /// # Panics
    /// When `prometheus` cannot be found (it comes with Debian's `prometheus` package, which
    /// `cargo xtask test` installs) or does not come up; the message quotes its output.
    pub async fn start(targets: &[(&str, SocketAddr)], rule_files: &[&Path]) -> PrometheusServer {
        let binary = Binary::Prometheus.locate();
        let dir = tempfile::Builder::new()
            .prefix("agentwire-prometheus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create a directory for prometheus: {e}"));
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(targets, rule_files))
            .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_else(|e| panic!("build an HTTP client: {e}"));
        let mut attempt = 1;
        loop {
            let port = free_port();
            match run(&binary, dir.path(), &config, port, &client).await {
                Ok(process) => {
                    return PrometheusServer {
                        process,
                        url: format!("http://127.0.0.1:{port}"),
                        client,
                        _dir: dir,
                    };
                }
                Err(failure) if failure.port_taken() && attempt < PORT_ATTEMPTS => attempt += 1,
                Err(failure) => panic!("{failure}"),
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The file that receives the server's output.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Runs the instant query `promql` now. A scalar answer is one sample without labels.
    ///
    /// # Errors
    /// When Prometheus cannot be reached, refuses the query (a syntax error, for instance)
    /// or answers something else than a vector or a scalar.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, PrometheusError> {
        let what = format!("the query {promql:?}");
        let data = self
            .get("/api/v1/query", &[("query", promql)], &what)
            .await?;
        let unexpected = || PrometheusError::Unexpected {
            what: what.clone(),
            body: data.to_string(),
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .ok_or_else(unexpected)?
                .iter()
                .map(|series| {
                    let labels = series["metric"]
                        .as_object()
                        .ok_or_else(unexpected)?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    let value = sample_value(&series["value"]).ok_or_else(unexpected)?;
                    Ok(Sample { labels, value })
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: sample_value(&data["result"]).ok_or_else(unexpected)?,
            }]),
            _ => Err(unexpected()),
        }
    }

    /// Every metric name Prometheus holds series of (`/api/v1/label/__name__/values`): what
    /// the scraped targets export, plus Prometheus's own `up`, `scrape_*` and recorded rules.
    ///
    /// # Errors
    /// When Prometheus cannot be reached or answers something unexpected.
    pub async fn metric_names(&self) -> Result<BTreeSet<String>, PrometheusError> {
        let what = "the metric names";
        let data = self.get("/api/v1/label/__name__/values", &[], what).await?;
        data.as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .ok_or_else(|| PrometheusError::Unexpected {
                what: what.to_owned(),
                body: data.to_string(),
            })
    }

    /// Every recording and alert rule with its health after the last evaluation.
    ///
    /// # Errors
    /// When Prometheus cannot be reached or answers something unexpected.
    pub async fn rules(&self) -> Result<Vec<RuleHealth>, PrometheusError> {
        let what = "the rules";
        let data = self.get("/api/v1/rules", &[], what).await?;
        let groups = data["groups"]
            .as_array()
            .ok_or_else(|| PrometheusError::Unexpected {
                what: what.to_owned(),
                body: data.to_string(),
            })?;
        Ok(groups
            .iter()
            .filter_map(|group| group["rules"].as_array())
            .flatten()
            .map(|rule| RuleHealth {
                name: rule["name"].as_str().unwrap_or_default().to_owned(),
                health: rule["health"].as_str().unwrap_or_default().to_owned(),
                last_error: rule["lastError"]
                    .as_str()
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned),
            })
            .collect())
    }

    /// `GET path?params` and the `data` of a `success` answer.
    async fn get(
        &self,
        path: &str,
        params: &[(&str, &str)],
        what: &str,
    ) -> Result<Value, PrometheusError> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), params).map_err(
            |e| PrometheusError::Unexpected {
                what: what.to_owned(),
                body: format!("bad URL: {e}"),
            },
        )?;
        let mut body: Value = self.client.get(url).send().await?.json().await?;
        if body["status"] == "success" {
            return Ok(body["data"].take());
        }
        Err(PrometheusError::Api {
            what: what.to_owned(),
            kind: body["errorType"].as_str().unwrap_or("unknown").to_owned(),
            message: body["error"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// The path of `promtool`, Prometheus's config and rule checker.
///
/// # Panics
/// When it cannot be found (it comes with Debian's `prometheus` package).
pub fn promtool() -> PathBuf {
    Binary::Promtool.locate()
}

/// `[unix seconds, "value"]` → the value.
fn sample_value(pair: &Value) -> Option<f64> {
    pair.get(1)?.as_str()?.parse().ok()
}

/// A configuration scraping each target under its job name. JSON strings are YAML strings, so
/// names and paths are written with `serde_json`'s quoting.
fn config_text(targets: &[(&str, SocketAddr)], rule_files: &[&Path]) -> String {
    let quote = |s: &str| Value::from(s).to_string();
    let mut text = format!(
        "global:\n  scrape_interval: {INTERVAL}\n  scrape_timeout: {INTERVAL}\n  evaluation_interval: {INTERVAL}\n"
    );
    if !rule_files.is_empty() {
        text.push_str("rule_files:\n");
        for file in rule_files {
            let _ = writeln!(text, "  - {}", quote(&file.display().to_string()));
        }
    }
    text.push_str("scrape_configs:\n");
    for (job, address) in targets {
        let _ = write!(
            text,
            "  - job_name: {}\n    static_configs:\n      - targets: [{}]\n",
            quote(job),
            quote(&address.to_string())
        );
    }
    text
}

async fn run(
    binary: &Path,
    dir: &Path,
    config: &Path,
    port: u16,
    client: &reqwest::Client,
) -> Result<ChildProcess, StartFailure> {
    let mut command = Command::new(binary);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .current_dir(dir);
    let name = format!("prometheus on 127.0.0.1:{port}");
    let ready = format!("http://127.0.0.1:{port}/-/ready");
    launch(&name, command, &dir.join("prometheus.log"), || {
        let request = client.get(&ready).send();
        async move {
            let response = request.await.map_err(io::Error::other)?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "/-/ready answered {}",
                    response.status()
                )))
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_every_job_target_and_rule_file() {
        let text = config_text(
            &[
                ("agentwire-gateway", "127.0.0.1:8080".parse().expect("addr")),
                ("agentwire-relay", "127.0.0.1:9464".parse().expect("addr")),
            ],
            &[Path::new("/repo/infra/prometheus/rules.yml")],
        );
        assert_eq!(
            text,
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - \"/repo/infra/prometheus/rules.yml\"\n\
             scrape_configs:\n\
             \x20 - job_name: \"agentwire-gateway\"\n    static_configs:\n      - targets: [\"127.0.0.1:8080\"]\n\
             \x20 - job_name: \"agentwire-relay\"\n    static_configs:\n      - targets: [\"127.0.0.1:9464\"]\n"
        );
    }

    #[test]
    fn sample_values_are_read_from_the_pair() {
        let pair = serde_json::json!([1_700_000_000.5, "0.25"]);
        assert_eq!(sample_value(&pair), Some(0.25));
        assert!(sample_value(&serde_json::json!([1, "NaN"])).is_some_and(f64::is_nan));
        assert_eq!(sample_value(&serde_json::json!([1])), None);
    }
}
