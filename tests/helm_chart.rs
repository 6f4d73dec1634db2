//! The Helm chart (`helm/smki-extract/`), checked with tools nobody here wrote, and against
//! the service itself.
//!
//! `tests/support/helm_chart.py` (run once, shared by the tests below) lints the chart with
//! Helm's own Go library (PyPI helm-python-sdk, offline), renders it with every value set of
//! `tests/helm/`, validates each manifest against the Kubernetes schemas (PyPI
//! kubernetes-validate, strict), checks that the PrometheusRule and the dashboard ConfigMap
//! carry `files/` unchanged (promtool on the rendered rules), scans everything with checkov,
//! and makes sure wrong values are refused at install time. The tests here then read the
//! rendered objects: the ConfigMap's TOML must load with the service's own config loader,
//! and every path in it must be where the StatefulSet mounts the volume or Secret it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use smki_extract::config::{Config, Overrides, SECRET_PROPERTY_FILES};

mod common;

const SETS: [&str; 4] = ["defaults", "monitoring", "sftp", "tls-sasl"];

struct Rendered {
    dir: PathBuf,
    summary: Value,
}

/// Run the helper once for all tests of this file.
fn rendered() -> &'static Rendered {
    static R: OnceLock<Rendered> = OnceLock::new();
    R.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // Under the target directory, replaced by every run, kept for a look after a failure.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-chart");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(common::python())
            .arg(root.join("tests/support/helm_chart.py"))
            .arg(root.join("helm/smki-extract"))
            .arg(root.join("tests/helm"))
            .arg(&dir)
            .output()
            .expect("running tests/support/helm_chart.py");
        assert!(
            out.status.success(),
            "the chart check failed (rendered manifests in {}):\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let summary = serde_json::from_slice(&out.stdout).expect("the helper's JSON summary");
        Rendered { dir, summary }
    })
}

/// The objects rendered with one value set.
fn manifests(set: &str) -> Vec<Value> {
    let path = rendered().dir.join(set).join("manifests.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn one<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect()
}

fn statefulset(docs: &[Value]) -> &Value {
    one(docs, "StatefulSet", "smki-extract")
}

fn container<'a>(sts: &'a Value, name: &str) -> &'a Value {
    sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The mount of `path` (or of a directory holding it) and the volume (or claim template)
/// behind it.
fn mount_of<'a>(sts: &'a Value, ctr: &'a Value, path: &str) -> (&'a Value, &'a Value) {
    let m = arr(&ctr["volumeMounts"])
        .iter()
        .filter(|m| {
            let at = m["mountPath"].as_str().unwrap();
            path == at || path.starts_with(&format!("{at}/"))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        .unwrap_or_else(|| panic!("{path} is on no volume mount of {}", ctr["name"]));
    // A pod volume, or a claim of the StatefulSet's volumeClaimTemplates.
    let vol = arr(&sts["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == m["name"])
        .or_else(|| {
            arr(&sts["spec"]["volumeClaimTemplates"])
                .iter()
                .find(|t| t["metadata"]["name"] == m["name"])
        })
        .unwrap_or_else(|| panic!("mount {} has no volume", m["name"]));
    (m, vol)
}

/// A file under a Secret volume: (secret name, key), checking that the key is projected at
/// exactly that path.
fn secret_file(sts: &Value, ctr: &Value, path: &str) -> (String, String) {
    let (m, vol) = mount_of(sts, ctr, path);
    let secret = &vol["secret"];
    assert!(
        secret.is_object(),
        "{path} is not on a Secret volume: {vol}"
    );
    assert_eq!(
        m["readOnly"], true,
        "Secret mount {} not read-only",
        m["name"]
    );
    let rel = path
        .strip_prefix(m["mountPath"].as_str().unwrap())
        .unwrap()
        .trim_start_matches('/');
    let item = arr(&secret["items"])
        .iter()
        .find(|i| i["path"] == rel)
        .unwrap_or_else(|| panic!("Secret volume {} projects no {rel}", vol["name"]));
    (
        secret["secretName"].as_str().unwrap().to_string(),
        item["key"].as_str().unwrap().to_string(),
    )
}

fn config_toml(docs: &[Value]) -> String {
    one(docs, "ConfigMap", "smki-extract")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The service container's plain environment (name → value).
fn plain_env(ctr: &Value) -> BTreeMap<String, String> {
    arr(&ctr["env"])
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect()
}

/// Load the rendered configuration as `smki-extract run -c` would: the ConfigMap's file, the
/// container's environment, no flags. Files the environment names (mounted Secrets) are
/// replaced by local files holding `secret:<path>`.
fn load_as_the_pod_would(set: &str) -> (Config, BTreeMap<String, String>) {
    let docs = manifests(set);
    let sts = statefulset(&docs);
    let ctr = container(sts, "smki-extract");
    let args: Vec<&str> = arr(&ctr["args"])
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["run", "-c"], "{args:?}");
    let (m, vol) = mount_of(sts, ctr, args[2]);
    assert_eq!(vol["configMap"]["name"], "smki-extract");
    assert_eq!(m["subPath"], "config.toml");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config_toml(&docs)).unwrap();
    let mut env = plain_env(ctr);
    let mut secret_env = BTreeMap::new();
    for (name, _) in SECRET_PROPERTY_FILES {
        if let Some(path) = env.get(*name).cloned() {
            secret_file(sts, ctr, &path);
            let local = dir.path().join(name);
            std::fs::write(&local, format!("secret:{path}\n")).unwrap();
            env.insert(name.to_string(), local.to_str().unwrap().to_string());
            secret_env.insert(name.to_string(), path);
        }
    }
    let c = Config::load(Some(&file), |k| env.get(k).cloned(), &Overrides::default())
        .unwrap_or_else(|e| {
            panic!("value set {set}: the service refuses the rendered config: {e:#}")
        });
    (c, secret_env)
}

#[test]
fn chart_lints_renders_validates_and_passes_the_security_scan() {
    let s = &rendered().summary;
    let sets: BTreeSet<&str> = s["sets"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(sets, SETS.into_iter().collect(), "value sets checked");
    assert_eq!(s["checkov"]["failed"], 0);
    assert!(
        s["checkov"]["passed"].as_u64().unwrap() > 100,
        "{}",
        s["checkov"]
    );
    // The exceptions are the two justified in the chart; a new one must be looked at.
    let skipped: BTreeSet<&str> = s["checkov"]["skipped"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(skipped, BTreeSet::from(["CKV_K8S_15", "CKV_K8S_43"]));
    assert!(arr(&s["refused"]).len() >= 15, "{}", s["refused"]);
}

#[test]
fn rendered_config_is_accepted_by_the_service_and_matches_the_pod() {
    for set in SETS {
        let (c, _) = load_as_the_pod_would(set);
        let docs = manifests(set);
        let sts = statefulset(&docs);
        let ctr = container(sts, "smki-extract");
        // The store and the output directory are the two claims of the StatefulSet.
        let claims: Vec<&str> = arr(&sts["spec"]["volumeClaimTemplates"])
            .iter()
            .map(|t| t["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(claims, ["store", "output"], "{set}");
        for (path, claim) in [(&c.store.path, "store"), (&c.output.dir, "output")] {
            let (m, _) = mount_of(sts, ctr, path.to_str().unwrap());
            assert_eq!(
                m["name"],
                claim,
                "{set}: {} is not on the {claim} claim",
                path.display()
            );
            assert_eq!(m["mountPath"], path.to_str().unwrap(), "{set}");
            assert_ne!(m["readOnly"], true, "{set}: {claim} must be writable");
        }
        // /metrics, /healthz and /readyz on the port the probes and the Service use.
        let port = &arr(&ctr["ports"])[0];
        assert_eq!(port["name"], "http-metrics");
        assert_eq!(
            c.http.address,
            format!("0.0.0.0:{}", port["containerPort"]),
            "{set}"
        );
        assert_eq!(ctr["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(ctr["startupProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(ctr["readinessProbe"]["httpGet"]["path"], "/readyz");
        for p in ["livenessProbe", "readinessProbe", "startupProbe"] {
            assert_eq!(ctr[p]["httpGet"]["port"], "http-metrics", "{set} {p}");
        }
        let svc = one(&docs, "Service", "smki-extract");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http-metrics");
        assert_eq!(c.log.format, "json");
        assert_eq!(c.kafka.closes_topic(), "smki.certificate-events.closes");
    }
}

#[test]
fn tls_and_sasl_credentials_come_from_secrets_by_reference() {
    let set = "tls-sasl";
    let (c, secret_env) = load_as_the_pod_would(set);
    let docs = manifests(set);
    let sts = statefulset(&docs);
    let ctr = container(sts, "smki-extract");
    let p = &c.kafka.properties;
    assert_eq!(p["security.protocol"], "SASL_SSL");
    assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
    assert_eq!(p["sasl.username"], "smki-extract");
    assert_eq!(p["client.id"], "smki-extract", "pass-through property");
    let mut files = BTreeMap::new();
    for key in [
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
    ] {
        files.insert(key, secret_file(sts, ctr, &p[key]));
    }
    assert_eq!(
        files["ssl.ca.location"],
        ("kafka-ca".into(), "ca.crt".into())
    );
    let client = "smki-extract-kafka-client".to_string();
    assert_eq!(
        files["ssl.certificate.location"],
        (client.clone(), "tls.crt".into())
    );
    assert_eq!(files["ssl.key.location"], (client, "tls.key".into()));
    // The passwords reach the service from mounted Secrets, never from the ConfigMap.
    let sasl = &secret_env["SMKI_KAFKA_SASL_PASSWORD_FILE"];
    assert_eq!(
        secret_file(sts, ctr, sasl),
        ("smki-extract-kafka-sasl".into(), "password".into())
    );
    assert_eq!(p["sasl.password"], format!("secret:{sasl}"));
    let key_pw = &secret_env["SMKI_KAFKA_SSL_KEY_PASSWORD_FILE"];
    assert_eq!(
        secret_file(sts, ctr, key_pw),
        ("smki-extract-kafka-key-password".into(), "password".into())
    );
    assert_eq!(p["ssl.key.password"], format!("secret:{key_pw}"));
    assert!(arr(&ctr["env"])
        .iter()
        .all(|e| e.get("valueFrom").is_none()));

    let toml = config_toml(&docs);
    for (_, secret) in SECRET_PROPERTY_FILES {
        assert!(!toml.contains(secret), "{secret} in the ConfigMap:\n{toml}");
    }
    assert!(
        !kinds(&docs).contains("Secret"),
        "the chart creates no Secret"
    );
}

/// The binary's librdkafka accepts what the chart configures for TLS + SCRAM: a client is
/// created from the loaded configuration with real PEM files (made here by openssl) where
/// the Secrets would be mounted, including an encrypted key and its password.
#[test]
fn the_services_librdkafka_accepts_the_tls_sasl_configuration() {
    use rdkafka::consumer::BaseConsumer;
    let (mut c, _) = load_as_the_pod_would("tls-sasl");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-days",
            "1",
            "-subj",
            "/CN=smki-extract-test",
            "-passout",
            "pass:kp",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = &mut c.kafka.properties;
    for (k, v) in [
        ("ssl.ca.location", &cert),
        ("ssl.certificate.location", &cert),
        ("ssl.key.location", &key),
    ] {
        p.insert(k.into(), v.to_str().unwrap().into());
    }
    p.insert("ssl.key.password".into(), "kp".into());
    let mut cc = c.kafka.client_config();
    cc.set("group.id", &c.kafka.group_id);
    if let Err(e) = cc.create::<BaseConsumer>() {
        panic!("librdkafka refuses the chart's TLS + SASL configuration: {e}");
    }
    // And the check can fail: a wrong key password is refused at creation.
    cc.set("ssl.key.password", "wrong");
    assert!(
        cc.create::<BaseConsumer>().is_err(),
        "a wrong key password was accepted"
    );
}

#[test]
fn every_value_set_keeps_the_security_defaults() {
    for set in SETS {
        let docs = manifests(set);
        let sts = statefulset(&docs);
        let pod = &sts["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{set}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{set}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());
        for ctr in arr(&pod["containers"]) {
            let sc = &ctr["securityContext"];
            let who = format!("{set}: container {}", ctr["name"]);
            assert_eq!(sc["runAsNonRoot"], true, "{who}");
            assert!(sc["runAsUser"].as_u64().unwrap() > 10000, "{who}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
            assert_eq!(sc["privileged"], false, "{who}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{who}"
            );
            assert!(sc["capabilities"].get("add").is_none(), "{who}");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{who}");
            assert!(ctr["resources"]["limits"]["memory"].is_string(), "{who}");
            assert!(
                !ctr["image"].as_str().unwrap().ends_with(":latest"),
                "{who}"
            );
        }
        for vol in arr(&pod["volumes"]) {
            assert!(
                vol.get("hostPath").is_none(),
                "{set}: hostPath volume {vol}"
            );
        }
        if let Some(sa) = docs.iter().find(|d| d["kind"] == "ServiceAccount") {
            assert_eq!(sa["automountServiceAccountToken"], false, "{set}");
        }
    }
}

#[test]
fn one_stateful_consumer_with_its_disruption_budget() {
    let docs = manifests("defaults");
    let sts = statefulset(&docs);
    let spec = &sts["spec"];
    assert_eq!(
        spec["replicas"], 1,
        "publication needs exactly one instance"
    );
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Retain"
    );
    for t in arr(&spec["volumeClaimTemplates"]) {
        assert_eq!(
            t["spec"]["accessModes"],
            serde_json::json!(["ReadWriteOnce"])
        );
    }
    let headless = one(&docs, "Service", spec["serviceName"].as_str().unwrap());
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let pod_labels = spec["template"]["metadata"]["labels"].as_object().unwrap();
    let selects = |sel: &Value| {
        sel.as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(selects(&spec["selector"]["matchLabels"]));
    let pdb = one(&docs, "PodDisruptionBudget", "smki-extract");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]));
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    for svc in docs.iter().filter(|d| d["kind"] == "Service") {
        assert!(
            selects(&svc["spec"]["selector"]),
            "{}",
            svc["metadata"]["name"]
        );
    }
    let np = one(&docs, "NetworkPolicy", "smki-extract");
    assert!(selects(&np["spec"]["podSelector"]["matchLabels"]));
    // Optional parts stay off by default.
    let k = kinds(&docs);
    for off in ["ServiceMonitor", "PrometheusRule"] {
        assert!(!k.contains(off), "{off} rendered by default");
    }
    assert_eq!(arr(&spec["template"]["spec"]["containers"]).len(), 1);
}

#[test]
fn monitoring_resources_carry_the_chart_files() {
    let docs = manifests("monitoring");
    let sm = one(&docs, "ServiceMonitor", "smki-extract");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let rule = one(&docs, "PrometheusRule", "smki-extract");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules =
        std::fs::read_to_string(root.join("helm/smki-extract/files/smki-extract.rules.yml"))
            .unwrap();
    let alerts = rules.matches("- alert:").count();
    let rendered: usize = arr(&rule["spec"]["groups"])
        .iter()
        .map(|g| {
            arr(&g["rules"])
                .iter()
                .filter(|r| r.get("alert").is_some())
                .count()
        })
        .sum();
    assert_eq!(
        rendered, alerts,
        "every alert of the rules file is in the PrometheusRule"
    );
    let dash = one(&docs, "ConfigMap", "smki-extract-dashboard");
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(
        dash["data"]["smki-extract-dashboard.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["uid"], "smki-extract");
}

#[test]
fn sftp_sidecar_serves_the_output_directory_read_only() {
    let docs = manifests("sftp");
    let sts = statefulset(&docs);
    let sftp = container(sts, "sftp");
    let (c, _) = load_as_the_pod_would("sftp");
    let service_mount = mount_of(
        sts,
        container(sts, "smki-extract"),
        c.output.dir.to_str().unwrap(),
    )
    .0;
    let out = arr(&sftp["volumeMounts"])
        .iter()
        .find(|m| m["name"] == "output")
        .expect("the sidecar mounts the output claim");
    assert_eq!(
        out["readOnly"], true,
        "the output directory must be read-only to Parties"
    );
    assert_eq!(
        service_mount["name"], "output",
        "same claim as the service writes"
    );
    // Every mount of the sidecar is read-only except its own scratch space.
    for m in arr(&sftp["volumeMounts"]) {
        let scratch = ["sftp-state", "sftp-home", "tmp"].contains(&m["name"].as_str().unwrap());
        assert!(
            scratch || m["readOnly"] == true,
            "sidecar mount {m} writable"
        );
    }
    let env = plain_env(sftp);
    assert_eq!(env["SFTPGO_SFTPD__PASSWORD_AUTHENTICATION"], "false");
    assert_eq!(env["SFTPGO_HTTPD__BINDINGS__0__PORT"], "0", "no web admin");
    let (host_key_secret, _) = secret_file(sts, sftp, &env["SFTPGO_SFTPD__HOST_KEYS"]);
    assert_eq!(host_key_secret, "smki-sftp-host-key");
    // Accounts: list and download only, home = the read-only mount.
    let users_cm = one(&docs, "ConfigMap", "smki-extract-sftp-users");
    let users: Value =
        serde_json::from_str(users_cm["data"]["users.json"].as_str().unwrap()).unwrap();
    let names: Vec<&str> = arr(&users["users"])
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["party-a", "party-b"]);
    for u in arr(&users["users"]) {
        assert_eq!(
            u["permissions"],
            serde_json::json!({"/": ["list", "download"]})
        );
        assert_eq!(u["home_dir"], out["mountPath"]);
    }
    let svc = one(&docs, "Service", "smki-extract-sftp");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "sftp");
    assert_eq!(arr(&sftp["ports"])[0]["name"], "sftp");
    let np = one(&docs, "NetworkPolicy", "smki-extract");
    let sftp_rule = arr(&np["spec"]["ingress"])
        .iter()
        .find(|r| r["ports"][0]["port"] == "sftp")
        .expect("ingress to the SFTP port");
    assert_eq!(sftp_rule["from"][0]["ipBlock"]["cidr"], "198.51.100.0/24");
}
