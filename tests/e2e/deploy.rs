//! The deployment files agree with the server: every metric the Grafana dashboard and the alert
//! rules query is one the server exports, and promtool accepts the rules and the live exposition.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{Server, repo};

/// `fer_*` metric families named in a text (histogram series map to their family).
fn metric_families(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("fer_") {
        if start > 0 {
            let before = text.as_bytes()[start - 1];
            if before.is_ascii_alphanumeric() || before == b'_' {
                continue;
            }
        }
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.len() <= "fer_".len() {
            continue;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        names.insert(family);
    }
    names
}

fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is missing: scripts/setup-system.sh installs it (Debian package prometheus)"
    );
    Command::new("promtool")
}

async fn live_metrics() -> String {
    let server = Server::start(&[]);
    let face = crate::common::ferplus_faces(9, 1).remove(0);
    assert_eq!(crate::common::classify_png(&server, face.png).await, 200);
    crate::common::get_text(&server, "/metrics").await
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = exported(&live_metrics().await);
    for file in [
        "deploy/grafana/fer-server.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let used = metric_families(&text);
        assert!(used.len() >= 5, "{file} queries only {used:?}");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} queries {missing:?}, which the server does not export"
        );
    }
    // The dashboard covers what the issue asks for.
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/fer-server.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    for needed in [
        "fer_http_requests_total",
        "fer_stage_duration_seconds_bucket",
        "fer_batch_size",
        "fer_queue_depth",
        "fer_predictions_total",
        "fer_failures_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needed)),
            "no panel uses {needed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn promtool_accepts_the_rules_and_the_live_exposition() {
    let rules = promtool()
        .args(["check", "rules"])
        .arg(repo().join("deploy/prometheus/alerts.yml"))
        .output()
        .unwrap();
    assert!(
        rules.status.success(),
        "{}{}",
        String::from_utf8_lossy(&rules.stdout),
        String::from_utf8_lossy(&rules.stderr)
    );
    let metrics = live_metrics().await;
    let mut check = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    // promtool exits non-zero on errors; lint warnings are printed too and must be none.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.trim().is_empty(), "promtool lint: {report}");
}
