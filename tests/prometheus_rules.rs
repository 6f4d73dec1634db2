//! The alert rules shipped with the Helm chart (`helm/smki-extract/files/`) pass
//! `promtool check rules`, and `promtool test rules` exercises every alert, firing and not
//! firing (`tests/prometheus/smki-extract.rules.test.yml`). This test also makes sure the
//! test file keeps up with the rules: every alert of the rules file is tested, both ways.

use std::collections::BTreeSet;
use std::path::Path;

#[path = "common/prom.rs"]
mod prom;
use prom::*;

const RULES: &str = "helm/smki-extract/files/smki-extract.rules.yml";
const RULE_TESTS: &str = "tests/prometheus/smki-extract.rules.test.yml";

fn alert_names(text: &str, key: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn rules_are_valid_and_every_alert_is_tested_firing_and_quiet() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = promtool(&["check", "rules", RULES], root, None);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", RULE_TESTS], root, None);
    assert!(out.contains("SUCCESS"), "{out}");

    let rules = std::fs::read_to_string(root.join(RULES)).unwrap();
    let alerts = alert_names(&rules, "- alert:");
    assert!(alerts.len() >= 6, "{alerts:?}");
    // Pair each `alertname:` with whether its `exp_alerts` is empty (a quiet case) or not.
    let tests = std::fs::read_to_string(root.join(RULE_TESTS)).unwrap();
    let mut quiet = BTreeSet::new();
    let mut firing = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            let name = current.clone().expect("exp_alerts after alertname");
            if rest.trim() == "[]" {
                quiet.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    for a in &alerts {
        assert!(firing.contains(a), "{a} is never tested firing");
        assert!(quiet.contains(a), "{a} is never tested quiet");
    }
}
