//! The Prometheus files of `infra/prometheus/` with the Prometheus we run (Debian's, which
//! `cargo xtask test` installs): both configs and the rules pass `promtool check`, the alerts
//! fire as `rules.test.yml` says (`promtool test rules`), and every metric the rules and the
//! Grafana dashboard name is one the code declares (a `"agentwire_…"` name in a `src/` file;
//! histograms add `_bucket`, `_sum` and `_count`) or a rule records. That last check covers
//! series a healthy test stack never produces (errors, rollbacks, a GPU); the dashboard test
//! (`dashboard.rs`) checks the panels against what the services actually export.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use agentwire_test_support::{promql, promtool};
use serde_yaml_ng::Value;
use source_files::root;

mod source_files;

fn prometheus_dir() -> PathBuf {
    root().join("infra/prometheus")
}

/// Runs `promtool args` in `infra/prometheus/` and fails with its output unless it succeeds.
fn run_promtool(args: &[&str]) {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every `"agentwire_…"` string in the `src/` folders of the services and crates.
fn metrics_the_code_declares() -> BTreeSet<String> {
    source_files::rust_sources(true)
        .iter()
        .flat_map(|(_, text)| {
            source_files::names_with_prefix(text, "agentwire_", |c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
            })
        })
        .collect()
}

fn rules() -> Value {
    let path = prometheus_dir().join("rules.yml");
    let text = std::fs::read_to_string(&path).expect("rules.yml");
    serde_yaml_ng::from_str(&text).expect("rules.yml is YAML")
}

/// Every rule's expression, named by its record or alert.
fn rule_expressions(rules: &Value) -> Vec<(String, String)> {
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
        .map(|rule| {
            let name = rule["record"]
                .as_str()
                .or_else(|| rule["alert"].as_str())
                .expect("a record or an alert");
            (
                name.to_owned(),
                rule["expr"].as_str().expect("expr").to_owned(),
            )
        })
        .collect()
}

fn dashboard_expressions(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("expr").to_owned()))
        })
        .collect()
}

#[test]
fn the_configs_and_the_rules_pass_promtool_check() {
    // `check config` also checks the rule files a config loads.
    run_promtool(&["check", "config", "prometheus.yml"]);
    run_promtool(&["check", "config", "compose.yml"]);
    run_promtool(&["check", "rules", "rules.yml"]);
}

#[test]
fn the_alerts_fire_as_their_unit_tests_say() {
    run_promtool(&["test", "rules", "rules.test.yml"]);
}

#[test]
fn the_rules_and_the_dashboard_name_only_metrics_the_code_declares() {
    let declared = metrics_the_code_declares();
    assert!(
        declared.contains("agentwire_gateway_publishes_total")
            && declared.contains("agentwire_relay_events_written_total"),
        "the scan found {declared:?}"
    );
    let rules = rules();
    let expressions = rule_expressions(&rules);
    let recorded: BTreeSet<&str> = expressions
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| name.contains(':'))
        .collect();
    let known = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| declared.contains(*base));
        declared.contains(name) || base.is_some() || recorded.contains(name) || name == "up"
    };
    let dashboard = root().join("infra/grafana/dashboards/agentwire.json");
    let mut unknown = Vec::new();
    for (owner, expr) in expressions.iter().chain(&dashboard_expressions(&dashboard)) {
        let names = promql::metric_names(expr);
        assert!(!names.is_empty(), "{owner}: no metric in {expr}");
        for name in names {
            if !known(&name) {
                unknown.push(format!("{owner}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics no code declares:\n{}",
        unknown.join("\n")
    );
}
