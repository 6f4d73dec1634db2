#!/usr/bin/env python3
"""Lints, renders, validates and scans the Helm chart for tests/helm_chart.rs.

  helm_chart.py CHART_DIR VALUES_DIR OUT_DIR

Tools, all from PyPI, none written here (scripts/setup installs them into its venv):
  helm-python-sdk      Helm's own Go library (lint, schema validation, rendering), offline
  kubernetes-validate  the Kubernetes OpenAPI schemas, strict (unknown fields are errors)
  checkov              the security scan of the rendered manifests
and promtool (Debian `prometheus`) for the rule groups the PrometheusRule carries.

For every VALUES_DIR/*.yaml value set: `helm lint --strict` is clean, the chart renders,
every manifest validates against the Kubernetes schemas of the oldest supported (the chart's
kubeVersion) and the newest known Kubernetes, the PrometheusRule holds exactly the rule
groups of files/smki-extract.rules.yml (and promtool accepts them as rendered), the dashboard
ConfigMap holds exactly files/smki-extract-dashboard.json, and the ServiceMonitor selects the
metrics Service by a port it has. Then checkov scans every rendered manifest: no check may
fail; each skipped one must carry its justification in the chart. Last, wrong values must be
refused at install time, each with a message naming the offending value.

Writes OUT_DIR/<set>/manifests.json (the rendered objects, for the Rust side of the test,
which checks them against the service's own config loader) and OUT_DIR/<set>/manifests.yaml;
prints a JSON summary on stdout. Exits non-zero with the reason on stderr on any failure.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

NAMESPACE = "smki"
RELEASE = "smki-extract"
# The chart's kubeVersion floor, and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.27.0", None]
CRD_GROUP = "monitoring.coreos.com/"

# Values that must be refused at install time: (what, values, text the refusal must contain).
WRONG_VALUES = [
    ("two replicas (publication needs one instance)", {"replicaCount": 2}, "/replicaCount"),
    ("a replica count that is not a number", {"replicaCount": "one"}, "/replicaCount"),
    ("an unknown top-level key", {"replicas": 1}, "'replicas' not allowed"),
    ("a misspelt nested key", {"kafka": {"bootstrapServer": "k:9092"}}, "'bootstrapServer' not allowed"),
    ("a SASL password in the ConfigMap", {"kafka": {"properties": {"sasl.password": "x"}}}, "sasl.password"),
    ("a property the service owns", {"kafka": {"properties": {"group.id": "g"}}}, "group.id"),
    ("a property kafka.tls sets", {"kafka": {"tls": {"enabled": True}, "properties": {"ssl.ca.location": "/x"}}},
     "kafka.properties.ssl.ca.location is set by kafka.tls"),
    ("SASL without a username and password Secret", {"kafka": {"sasl": {"enabled": True}}}, "/kafka/sasl/username"),
    ("an unknown SASL mechanism", {"kafka": {"sasl": {"mechanism": "GSSAPI"}}}, "/kafka/sasl/mechanism"),
    ("a weekday that is not one", {"output": {"fullWeekday": "Caturday"}}, "/output/fullWeekday"),
    ("a deflate level past 9", {"output": {"gzipLevel": 10}}, "/output/gzipLevel"),
    ("a deadline shorter than the grace", {"window": {"graceSecs": 9000}}, "window.deadlineSecs"),
    ("the latest tag", {"image": {"tag": "latest"}}, "/image/tag"),
    ("a writable root filesystem", {"containerSecurityContext": {"readOnlyRootFilesystem": False}},
     "/containerSecurityContext/readOnlyRootFilesystem"),
    ("a root pod", {"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ("SFTP without host key and accounts", {"sftp": {"enabled": True}}, "/sftp/hostKeySecret/name"),
    ("an SFTP account with a key that is not an OpenSSH public key",
     {"sftp": {"enabled": True, "hostKeySecret": {"name": "k"}, "users": [{"name": "p", "publicKeys": ["hunter2"]}]}},
     "/sftp/users/0/publicKeys/0"),
    ("a privileged SFTP port", {"sftp": {"port": 22}}, "/sftp/port"),
    ("both PDB bounds", {"podDisruptionBudget": {"minAvailable": 1}}, "exactly one of maxUnavailable and minAvailable"),
]


def die(msg):
    print(f"helm_chart.py: {msg}", file=sys.stderr)
    sys.exit(1)


def need(module, package):
    try:
        return __import__(module)
    except ImportError:
        print(f"helm_chart.py: the Python package {package} is missing from {sys.executable}: "
              f"run the suite with scripts/test, whose scripts/setup installs it", file=sys.stderr)
        sys.exit(2)


helm = need("helm_python", "helm-python-sdk")
kv = need("kubernetes_validate", "kubernetes-validate")
yaml = need("yaml", "PyYAML")
helm.disable_logging()


def tool(name, hint):
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        print(f"helm_chart.py: `{name}` not found ({hint}); run the suite with scripts/test", file=sys.stderr)
        sys.exit(2)
    return found


def lint(chart_dir, values, where):
    for kube in KUBE_VERSIONS:
        opts = {"strict": True, "namespace": NAMESPACE}
        if kube:
            opts["kube_version"] = "v" + kube
        report = helm.lint(chart_dir, values, **opts)
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        if report["errors"] or bad:
            die(f"{where}: helm lint --strict (kube {kube or 'default'}): {json.dumps(report, indent=1)}")


def render(chart, values):
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs, notes = [], ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", None)
                if doc["metadata"]["annotations"] is None:
                    del doc["metadata"]["annotations"]
                docs.append((path, doc))
    return docs, notes


def by_kind(docs, kind):
    return [d for _, d in docs if d["kind"] == kind]


def check_set(chart, chart_dir, name, values, out_dir, promtool):
    where = f"value set {name}"
    lint(chart_dir, values, where)
    docs, notes = render(chart, values)
    if not notes.strip():
        die(f"{where}: NOTES.txt rendered empty")
    rules_file = yaml.safe_load((chart_dir / "files/smki-extract.rules.yml").read_text())
    dashboard_file = json.loads((chart_dir / "files/smki-extract-dashboard.json").read_text())
    kinds = []
    for path, doc in docs:
        ident = f"{where}: {path}: {doc['kind']} {doc['metadata'].get('name')}"
        kinds.append(doc["kind"])
        if doc["metadata"].get("namespace") != NAMESPACE:
            die(f"{ident}: not in the release namespace")
        if doc["apiVersion"].startswith(CRD_GROUP):
            continue  # Prometheus Operator kinds: not in the Kubernetes schemas; checked below
        for kube in KUBE_VERSIONS:
            try:
                kv.validate(doc, kube or kv.utils.latest_version(), strict=True)
            except kv.utils.ValidationError as e:
                die(f"{ident}: invalid for Kubernetes {e.version}: {e.message} at {list(e.absolute_path)}")
            except kv.utils.SchemaNotFoundError as e:
                die(f"{ident}: {e.message}")
    for rule in by_kind(docs, "PrometheusRule"):
        if rule["spec"] != rules_file:
            die(f"{where}: the PrometheusRule's spec differs from files/smki-extract.rules.yml")
        rendered = out_dir / "prometheusrule.rules.yml"
        rendered.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
        r = subprocess.run([promtool, "check", "rules", str(rendered)], capture_output=True, text=True)
        if r.returncode != 0:
            die(f"{where}: promtool check rules on the rendered PrometheusRule: {r.stdout}{r.stderr}")
        if len(rules_file["groups"][0]["rules"]) == 0:
            die(f"{where}: the PrometheusRule has no rule")
    for cm in by_kind(docs, "ConfigMap"):
        if "smki-extract-dashboard.json" in cm.get("data", {}):
            if json.loads(cm["data"]["smki-extract-dashboard.json"]) != dashboard_file:
                die(f"{where}: the dashboard ConfigMap differs from files/smki-extract-dashboard.json")
    services = by_kind(docs, "Service")
    for sm in by_kind(docs, "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        ports = {e["port"] for e in sm["spec"]["endpoints"]}
        hits = [s for s in services if sel.items() <= s["metadata"]["labels"].items()
                and ports & {p["name"] for p in s["spec"]["ports"]}]
        # Exactly one Service: two Services over the same pods (the headless one included)
        # would have the Prometheus Operator scrape every pod twice, under two jobs.
        if len(hits) != 1 or hits[0]["spec"].get("clusterIP") == "None":
            names = [s["metadata"]["name"] for s in hits]
            die(f"{where}: the ServiceMonitor must select exactly the metrics Service "
                f"with a port named {ports}; it selects {names}")
    (out_dir / "manifests.json").write_text(json.dumps([d for _, d in docs], indent=1))
    (out_dir / "manifests.yaml").write_text(yaml.safe_dump_all([d for _, d in docs], sort_keys=False))
    (out_dir / "NOTES.txt").write_text(notes)
    return sorted(kinds)


def checkov_scan(out_root, checkov, chart_dir):
    """Every rendered manifest; no failed check; every skip justified in the chart."""
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false",
               LOG_LEVEL="ERROR", ANSI_COLORS_DISABLED="1")
    # From inside the directory: checkov skips whatever lies under a hidden directory (such
    # as ~/.cache, where the target directory may be) when given an absolute path.
    r = subprocess.run([checkov, "--directory", ".", "--framework", "kubernetes",
                        "--output", "json", "--skip-download", "--compact"],
                       capture_output=True, text=True, env=env, cwd=out_root)
    try:
        reports = json.loads(r.stdout)
    except json.JSONDecodeError:
        die(f"checkov produced no JSON report (exit {r.returncode}): {r.stdout[-2000:]}{r.stderr[-2000:]}")
    if isinstance(reports, dict):
        reports = [reports]
    passed, failed, skipped = 0, [], {}
    for rep in reports:
        if rep.get("check_type") != "kubernetes":
            continue
        res = rep["results"]
        passed += len(res["passed_checks"])
        failed += [f"{c['check_id']} {c['check_name']} ({c['file_path']} {c['resource']})" for c in res["failed_checks"]]
        for c in res["skipped_checks"]:
            reason = (c.get("check_result") or {}).get("suppress_comment", "")
            skipped.setdefault(c["check_id"], reason)
    if passed == 0:
        die(f"checkov passed no check at all: did it scan anything? {r.stderr[-2000:]}")
    if failed:
        die("checkov: failed checks:\n  " + "\n  ".join(sorted(set(failed))))
    templates = "".join(p.read_text() for p in (chart_dir / "templates").glob("*"))
    for check, reason in skipped.items():
        if len(reason) < 40 or f"{check}=" not in templates:
            die(f"checkov: {check} skipped without a justification in the chart: {reason!r}")
    return {"passed": passed, "failed": 0, "skipped": skipped}


def check_wrong_values(chart, chart_dir):
    refused = []
    for what, values, expect in WRONG_VALUES:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except (helm.HelmValuesError, helm.HelmRenderError) as e:
            if expect not in str(e):
                die(f"wrong value ({what}) refused, but the message does not name {expect!r}: {e}")
            by_schema = isinstance(e, helm.HelmValuesError)
        else:
            die(f"wrong value accepted at install time: {what}: {json.dumps(values)}")
        # `helm lint` reports schema violations; it deliberately ignores a template's `fail`
        # (the cross-field rules), which install and template still enforce (above).
        if by_schema and not helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE)["errors"]:
            die(f"helm lint accepts a wrong value: {what}: {json.dumps(values)}")
        refused.append(f"{what} ({'schema' if by_schema else 'template'})")
    return refused


def main():
    if len(sys.argv) != 4:
        die(__doc__)
    chart_dir, values_dir, out_root = (Path(a).resolve() for a in sys.argv[1:])
    promtool = tool("promtool", "Debian package prometheus")
    checkov = tool("checkov", "PyPI package checkov")
    sets = sorted(values_dir.glob("*.yaml"))
    if not sets:
        die(f"no value sets in {values_dir}")
    summary = {"sets": {}}
    with helm.Chart.load(str(chart_dir)) as chart:
        if chart.schema is None:
            die("the chart has no values.schema.json")
        for path in sets:
            values = yaml.safe_load(path.read_text()) or {}
            out_dir = out_root / path.stem
            out_dir.mkdir(parents=True, exist_ok=True)
            summary["sets"][path.stem] = check_set(chart, chart_dir, path.stem, values, out_dir, promtool)
        summary["refused"] = check_wrong_values(chart, chart_dir)
    summary["checkov"] = checkov_scan(out_root, checkov, chart_dir)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
