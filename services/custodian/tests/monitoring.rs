//! deploy/monitoring as CI keeps it: the PrometheusRule for the operator
//! carries exactly the groups of rules.yml (generate.sh writes it), the
//! rules load in Prometheus's own checker, and each alert's unit tests pass
//! (`promtool`, from Debian's `prometheus` package). That every metric the
//! rules and the dashboard name is one the suite exports is checked by
//! tests/metrics.rs, against a real Prometheus.

use std::{path::PathBuf, process::Command};

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitoring")
}

fn yaml(name: &str) -> serde_yaml_ng::Value {
    let text = std::fs::read_to_string(monitoring().join(name)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_prometheus_rule_carries_the_rules_file() {
    let rules = yaml("rules.yml");
    let resource = yaml("prometheusrule.yaml");
    assert_eq!(resource["kind"].as_str(), Some("PrometheusRule"));
    assert!(
        rules["groups"].as_sequence().is_some_and(|g| g.len() >= 4),
        "rules.yml has its groups"
    );
    assert_eq!(
        resource["spec"]["groups"], rules["groups"],
        "prometheusrule.yaml differs from rules.yml: run deploy/monitoring/generate.sh"
    );
}

#[test]
fn every_alert_has_severity_a_runbook_section_and_a_unit_test() {
    let rules = yaml("rules.yml");
    let tests = std::fs::read_to_string(monitoring().join("rules.test.yml")).unwrap();
    let runbook = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"),
    )
    .unwrap();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{alert}: severity"
            );
            let link = rule["annotations"]["runbook"].as_str().unwrap_or_default();
            let anchor = link
                .strip_prefix("docs/operations.md#")
                .unwrap_or_else(|| panic!("{alert}: runbook link {link:?}"));
            // GitHub's anchor of a heading: lower case, spaces as dashes.
            let heading = runbook.lines().any(|l| {
                l.starts_with('#')
                    && l.trim_start_matches('#')
                        .trim()
                        .to_lowercase()
                        .replace(' ', "-")
                        .chars()
                        .filter(|c| c.is_alphanumeric() || *c == '-')
                        .collect::<String>()
                        == anchor
            });
            assert!(
                heading,
                "{alert}: docs/operations.md has no section #{anchor}"
            );
            assert!(
                tests.contains(&format!("alertname: {alert}\n")),
                "{alert}: no unit test in rules.test.yml"
            );
        }
    }
    assert!(alerts >= 8, "{alerts} alerts");
}

fn promtool(args: &[&str]) {
    let Ok(output) = Command::new("promtool")
        .args(args)
        .current_dir(monitoring())
        .output()
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing: `apt-get install prometheus` (.ci/run does)"
        );
        eprintln!("skipped: promtool is missing (apt-get install prometheus)");
        return;
    };
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_rules_load_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "rules.yml"]);
    promtool(&["test", "rules", "rules.test.yml"]);
}

#[test]
fn the_dashboard_is_grafana_json_with_prometheus_queries() {
    let text = std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
}
