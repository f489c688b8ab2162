//! The deployment artifacts in `deploy/` hold together, as far as this machine can check
//! without a container engine or a cluster:
//! - the self-monitoring alerts pass `promtool check rules` and their unit tests
//!   (`promtool test rules`), and the Kubernetes PrometheusRule carries the same groups;
//! - every Kubernetes manifest parses and is a well-formed object; the kustomize base names
//!   only files that exist; the Deployment's probes, ports, volumes, ConfigMap keys, Secret and
//!   PVC line up with the Service, ServiceMonitor and Herald's config;
//! - the compose stack's Herald config passes `herald check`, its Prometheus config passes
//!   `promtool check config`, and Grafana gets the provisioning and dashboards mounted where the
//!   provider looks;
//! - the Dockerfile is multi-stage, runs as non-root, keeps the state dir in a volume and copies
//!   only files that exist (the image itself is not built here);
//! - the systemd unit passes `systemd-analyze verify` and has the hardening options.

#[path = "support/prometheus.rs"]
mod prometheus;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Parses one YAML document with Herald's own YAML reader.
fn yaml(rel: &str) -> Value {
    let parsed = herald::config::yaml::parse::<Value>(rel, &read(rel)).unwrap_or_else(|d| panic!("{d}"));
    assert!(!parsed.has_errors(), "{rel} has schema errors");
    parsed.value
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn self_monitoring_alerts_pass_promtool_checks_and_unit_tests() {
    let promtool = prometheus::promtool_bin();
    let dir = repo().join("deploy/prometheus");
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules", "herald-alerts.yaml"]).current_dir(&dir));
    assert!(ok && out.contains("SUCCESS: 10 rules found"), "{out}");
    let (ok, out) = run(Command::new(&promtool).args(["test", "rules", "herald-alerts.test.yaml"]).current_dir(&dir));
    assert!(ok && out.contains("SUCCESS"), "{out}");
    // Every alert the issue asks for exists and is unit-tested.
    let alerts = yaml("deploy/prometheus/herald-alerts.yaml");
    let names: Vec<&str> = alerts["groups"][0]["rules"].as_array().unwrap().iter().map(|r| r["alert"].as_str().unwrap()).collect();
    let tests = read("deploy/prometheus/herald-alerts.test.yaml");
    for n in &names {
        assert!(tests.contains(&format!("alertname: {n},")) || tests.contains(&format!("alertname: {n}\n")), "alert {n} has no unit test");
    }
    for n in [
        "HeraldDown",
        "HeraldEvaluationsFailing",
        "HeraldRuleUnknownForEverySubject",
        "HeraldDatasourceDown",
        "HeraldOutboxBacklogGrowing",
        "HeraldDeliveriesFailing",
        "HeraldStateWritesFailing",
        "HeraldConfigReloadFailed",
    ] {
        assert!(names.contains(&n), "{n} missing");
    }
    // The Kubernetes PrometheusRule is the same rule groups.
    let rule = yaml("deploy/kubernetes/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["spec"]["groups"], alerts["groups"], "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/herald-alerts.yaml");
}

#[test]
fn a_broken_alert_rule_file_is_refused_by_the_same_check() {
    let dir = tempfile::tempdir().unwrap();
    let text = read("deploy/prometheus/herald-alerts.yaml").replace("up{job=\"herald\"} == 0", "up{job=\"herald\" == 0");
    std::fs::write(dir.path().join("bad.yaml"), text).unwrap();
    let (ok, out) = run(Command::new(prometheus::promtool_bin()).args(["check", "rules", "bad.yaml"]).current_dir(dir.path()));
    assert!(!ok, "{out}");
}

/// Copies a Herald config to `dir` with the secret paths pointed at files in `dir`, writes
/// those files and the rule pack, and runs `herald check` on it.
fn herald_check(rel: &str, secret_prefix: &str, dir: &Path) -> (bool, String) {
    let text = read(rel);
    let mut rewritten = text.clone();
    for line in text.lines() {
        if let Some(i) = line.find(secret_prefix) {
            let path = line[i..].trim();
            let local = dir.join(Path::new(path).file_name().unwrap());
            std::fs::write(&local, "s3cret-value-for-check\n").unwrap();
            rewritten = rewritten.replace(path, local.to_str().unwrap());
        }
    }
    assert_ne!(rewritten, text, "{rel} references no secret under {secret_prefix}");
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::copy(repo().join("rules/comms-lead.yaml"), dir.join("rules/comms-lead.yaml")).unwrap();
    let cfg = dir.join("herald.yaml");
    std::fs::write(&cfg, rewritten).unwrap();
    run(Command::new(env!("CARGO_BIN_EXE_herald")).args(["check", "--config"]).arg(&cfg))
}

fn docs(rel_dir: &str, files: &[&str]) -> Vec<(String, Value)> {
    files.iter().map(|f| (f.to_string(), yaml(&format!("{rel_dir}/{f}")))).collect()
}

#[test]
fn kubernetes_base_is_consistent() {
    let base = "deploy/kubernetes";
    let k = yaml(&format!("{base}/kustomization.yaml"));
    assert_eq!(k["kind"], "Kustomization");
    let resources: Vec<&str> = k["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    let objects = docs(base, &resources);
    let mut kinds = Vec::new();
    for (file, o) in &objects {
        for key in ["apiVersion", "kind"] {
            assert!(o[key].as_str().is_some_and(|s| !s.is_empty()), "{file}: no {key}");
        }
        assert!(o["metadata"]["name"].as_str().is_some_and(|s| !s.is_empty()), "{file}: no metadata.name");
        kinds.push(o["kind"].as_str().unwrap().to_string());
    }
    for kind in ["Deployment", "Service", "PersistentVolumeClaim", "ServiceMonitor", "PrometheusRule", "ServiceAccount"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {resources:?}");
    }
    let get = |kind: &str| objects.iter().find(|(_, o)| o["kind"] == kind).map(|(_, o)| o.clone()).unwrap();

    // ConfigMap for config and rules: generated from files that exist; the rule pack copy is current.
    let gen = &k["configMapGenerator"][0];
    let cm_name = gen["name"].as_str().unwrap();
    let cm_files: Vec<&str> = gen["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    for f in &cm_files {
        assert!(repo().join(base).join(f).is_file(), "configMapGenerator file {f} missing");
    }
    assert_eq!(read(&format!("{base}/rules/comms-lead.yaml")), read("rules/comms-lead.yaml"), "deploy/kubernetes/rules/comms-lead.yaml must be a copy of rules/comms-lead.yaml");

    let dep = get("Deployment");
    let spec = &dep["spec"]["template"]["spec"];
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&dep["spec"]["selector"]["matchLabels"], pod_labels);
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate", "one writer per state database");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["ports"][0]["containerPort"], 9797);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/-/healthy");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/-/ready");
    for p in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(c[p]["httpGet"]["port"], "http", "{p}");
    }
    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no volume {name}"));
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |name: &str| mounts.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no mount {name}"))["mountPath"].as_str().unwrap().to_string();
    for m in mounts {
        volume(m["name"].as_str().unwrap());
    }
    let config = volume("config");
    assert_eq!(config["configMap"]["name"], cm_name);
    for item in config["configMap"]["items"].as_array().unwrap() {
        let key = item["key"].as_str().unwrap();
        assert!(cm_files.iter().any(|f| Path::new(f).file_name().unwrap() == key), "ConfigMap key {key} is not generated");
    }
    assert_eq!(mount("config"), "/etc/herald");
    assert!(c["args"].as_array().unwrap().iter().any(|a| a == "/etc/herald/herald.yaml"));
    let pvc = get("PersistentVolumeClaim");
    assert_eq!(volume("state")["persistentVolumeClaim"]["claimName"], pvc["metadata"]["name"]);
    let herald_yaml = yaml(&format!("{base}/herald.yaml"));
    assert_eq!(herald_yaml["global"]["state_dir"].as_str().unwrap(), mount("state"));
    assert!(herald_yaml["global"]["listen"].as_str().unwrap().ends_with(":9797"));
    let secret_dir = mount("secrets");
    assert!(volume("secrets")["secret"]["secretName"].as_str().is_some());
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = herald_check(&format!("{base}/herald.yaml"), &format!("{secret_dir}/"), dir.path());
    assert!(ok, "herald check on the Kubernetes config:\n{out}");
    assert!(read(&format!("{base}/herald.yaml")).contains("token_file: /etc/herald-secrets/api-token"));

    let svc = get("Service");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "Service selector {k}");
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    let sm = get("ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k], v, "ServiceMonitor selector {k}");
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(svc["metadata"]["name"], "herald", "the job label the alerts select on is the Service's name");
}

#[test]
fn compose_stack_is_consistent_and_its_configs_pass_their_checks() {
    let base = "deploy/compose";
    let c = yaml(&format!("{base}/compose.yaml"));
    let services = c["services"].as_object().unwrap();
    for s in ["herald", "prometheus", "grafana", "demo-service"] {
        assert!(services.contains_key(s), "no service {s}");
    }
    // Every bind-mounted source exists (secrets are created by the user, see compose.yaml).
    for (name, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if src.starts_with('.') {
                assert!(repo().join(base).join(src).exists(), "service {name}: {src} does not exist");
            }
        }
        if let Some(b) = s.get("build") {
            assert!(repo().join(base).join(b["context"].as_str().unwrap()).join(b["dockerfile"].as_str().unwrap()).is_file());
            assert!(read("deploy/Dockerfile").contains(&format!(" AS {}", b["target"].as_str().unwrap())), "no stage {}", b["target"]);
        }
    }
    // Grafana gets the provisioning files and the dashboards where the provider reads them.
    let provider = yaml("grafana/provisioning/dashboards/herald.yaml");
    let path = provider["providers"][0]["options"]["path"].as_str().unwrap();
    let gv: Vec<&str> = services["grafana"]["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(gv.iter().any(|v| v.starts_with("../../grafana/dashboards:") && v.contains(&format!(":{path}"))), "{gv:?}");
    assert!(gv.iter().any(|v| v.contains(":/etc/grafana/provisioning/datasources")));
    assert!(gv.iter().any(|v| v.contains(":/etc/grafana/provisioning/dashboards")));
    let ds = yaml("grafana/provisioning/datasources/herald.yaml");
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");

    // Herald's config passes `herald check`; Prometheus's passes `promtool check config`.
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = herald_check(&format!("{base}/herald.yaml"), "/run/secrets/", dir.path());
    assert!(ok, "herald check on the compose config:\n{out}");
    let herald_yaml = yaml(&format!("{base}/herald.yaml"));
    assert_eq!(herald_yaml["global"]["state_dir"], "/var/lib/herald");
    assert!(services["herald"]["volumes"].as_array().unwrap().iter().any(|v| v.as_str().unwrap().ends_with(":/var/lib/herald")));
    let prom_dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join(base).join("prometheus.yml"), prom_dir.path().join("prometheus.yml")).unwrap();
    std::fs::copy(repo().join("deploy/prometheus/herald-alerts.yaml"), prom_dir.path().join("herald-alerts.yaml")).unwrap();
    let (ok, out) = run(Command::new(prometheus::promtool_bin()).args(["check", "config", "prometheus.yml"]).current_dir(prom_dir.path()));
    assert!(ok, "{out}");
    let prom = yaml(&format!("{base}/prometheus.yml"));
    let job = prom["scrape_configs"].as_array().unwrap().iter().find(|j| j["job_name"] == "herald").expect("a job named herald");
    assert_eq!(job["static_configs"][0]["targets"][0], "herald:9797");
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_state_volume() {
    let text = read("deploy/Dockerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let froms = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage: {froms} FROM");
    // The default (last) stage is the Herald image; its last USER is not root.
    let runtime_start = lines.iter().position(|l| l.contains(" AS runtime")).expect("a runtime stage");
    let runtime_end = lines[runtime_start + 1..].iter().position(|l| l.starts_with("FROM ")).map_or(lines.len(), |i| runtime_start + 1 + i);
    let runtime = &lines[runtime_start..runtime_end];
    let user = runtime.iter().rev().find(|l| l.starts_with("USER ")).expect("a USER in the runtime stage");
    let uid = user.trim_start_matches("USER ").split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "{user}");
    assert!(runtime.iter().any(|l| l.starts_with("VOLUME ") && l.contains("/var/lib/herald")));
    assert!(runtime.contains(&"EXPOSE 9797"));
    assert!(runtime.iter().any(|l| l.starts_with("ENTRYPOINT ") && l.contains("/usr/local/bin/herald")));
    assert_eq!(lines.last().unwrap(), &"FROM runtime", "the default target is the Herald image");
    // Every file copied from the build context exists.
    for l in lines.iter().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
        let parts: Vec<&str> = l.split_whitespace().skip(1).filter(|p| !p.starts_with("--")).collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY source {src} does not exist");
        }
    }
}

fn systemd_verify(unit_text: &str, dir: &Path) -> (bool, String) {
    let unit = dir.join("herald.service");
    std::fs::write(&unit, unit_text).unwrap();
    let (ok, out) = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit));
    (ok && out.trim().is_empty(), out)
}

#[test]
fn systemd_unit_is_hardened_and_passes_systemd_analyze_verify() {
    let text = read("deploy/systemd/herald.service");
    for opt in ["DynamicUser=yes", "StateDirectory=herald", "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes", "CapabilityBoundingSet=", "RestrictAddressFamilies=", "SystemCallFilter=@system-service"] {
        assert!(text.lines().any(|l| l.starts_with(opt)), "{opt} missing");
    }
    assert!(text.contains("--config /etc/herald/herald.yaml"));
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let local = text.replace("/usr/local/bin/herald", env!("CARGO_BIN_EXE_herald"));
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = systemd_verify(&local, dir.path());
    assert!(ok, "systemd-analyze verify:\n{out}");
    // And it would notice a mistake.
    let (ok, out) = systemd_verify(&local.replace("ProtectSystem=strict", "ProtectSystem=sometimes"), dir.path());
    assert!(!ok, "a bad value went unnoticed: {out}");
}
