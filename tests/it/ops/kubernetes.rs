//! deploy/k8s: the manifests agree with each other (selectors, ports, names) and
//! their settings are a configuration the relay accepts.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{check_config, port_of, root, sqlite_path, text, yaml_docs};

fn k8s() -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    let dir = root().join("deploy/k8s");
    for entry in std::fs::read_dir(&dir).expect("deploy/k8s") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("name")
            .to_owned();
        for doc in yaml_docs(&format!("deploy/k8s/{file}")) {
            let kind = text(&doc["kind"]).to_owned();
            assert!(
                out.insert(kind.clone(), (file.clone(), doc)).is_none(),
                "one {kind}"
            );
        }
    }
    out
}

fn subset(small: &Value, big: &Value) -> bool {
    small
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| big.get(k) == Some(v)))
}

#[test]
fn kubernetes_manifests_agree_with_each_other_and_with_the_relay() {
    let manifests = k8s();
    let get = |kind: &str| -> &Value {
        &manifests
            .get(kind)
            .unwrap_or_else(|| panic!("deploy/k8s has a {kind}"))
            .1
    };
    let (deployment, service, config_map, secret, pvc, pdb, monitor) = (
        get("Deployment"),
        get("Service"),
        get("ConfigMap"),
        get("Secret"),
        get("PersistentVolumeClaim"),
        get("PodDisruptionBudget"),
        get("ServiceMonitor"),
    );
    // kustomization.yaml lists every manifest except the example Secret.
    let listed: BTreeSet<String> = get("Kustomization")["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| text(r).to_owned())
        .collect();
    let expected: BTreeSet<String> = manifests
        .values()
        .map(|(file, _)| file.clone())
        .filter(|f| f != "kustomization.yaml" && f != "secret.example.yaml")
        .collect();
    assert_eq!(listed, expected);

    // One replica, replaced (not rolled) so the ReadWriteOnce claim is released.
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1, "one replica with the SQLite outbox");
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(subset(&spec["selector"]["matchLabels"], pod_labels));
    assert!(subset(&service["spec"]["selector"], pod_labels));
    assert!(subset(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    assert!(subset(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    assert!(
        pod["spec"]["securityContext"]["runAsNonRoot"] == true,
        "non-root pod"
    );

    let container = &pod["spec"]["containers"][0];
    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (text(&p["name"]), p["containerPort"].as_u64().expect("port")))
        .collect();
    let settings = &config_map["data"];
    assert_eq!(
        ports["admin"],
        u64::from(port_of(text(&settings["HOOKRELAY_ADMIN_LISTEN"])))
    );
    assert_eq!(
        ports["http"],
        u64::from(port_of(text(&settings["HOOKRELAY_LISTEN"])))
    );
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    for kind in ["requests", "limits"] {
        assert!(
            container["resources"][kind]["memory"].is_string(),
            "memory {kind}"
        );
    }
    for port in service["spec"]["ports"].as_array().expect("service ports") {
        assert!(
            ports.contains_key(text(&port["targetPort"])),
            "Service port {} targets a container port",
            port["name"]
        );
    }
    let service_ports: BTreeSet<&str> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| text(&p["name"]))
        .collect();
    for endpoint in monitor["spec"]["endpoints"].as_array().expect("endpoints") {
        assert!(service_ports.contains(text(&endpoint["port"])));
        assert_eq!(endpoint["path"], "/metrics");
    }
    assert_eq!(
        service["metadata"]["name"], "hookrelay",
        "the ServiceMonitor's job label is the Service name, which the alerts select"
    );

    // The outbox is on the claim, at the directory the ConfigMap's URL names.
    let outbox_dir = sqlite_path(text(&settings["HOOKRELAY_OUTBOX_URL"]))
        .parent()
        .expect("dir")
        .to_string_lossy()
        .into_owned();
    let mount = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["mountPath"] == outbox_dir.as_str())
        .unwrap_or_else(|| panic!("a volume is mounted at {outbox_dir}"));
    let volume = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );
    assert!(
        pvc["spec"]["accessModes"]
            .as_array()
            .expect("accessModes")
            .contains(&json!("ReadWriteOnce"))
    );

    // The settings come from this ConfigMap and Secret, and together they are a
    // configuration the relay accepts.
    let refs: Vec<(&str, &Value)> = container["envFrom"]
        .as_array()
        .expect("envFrom")
        .iter()
        .flat_map(|e| e.as_object().expect("ref").iter())
        .map(|(k, v)| (k.as_str(), &v["name"]))
        .collect();
    assert!(refs.contains(&("configMapRef", &config_map["metadata"]["name"])));
    assert!(refs.contains(&("secretRef", &secret["metadata"]["name"])));
    let mut env = BTreeMap::new();
    for data in [&config_map["data"], &secret["stringData"]] {
        for (k, v) in data.as_object().expect("data") {
            env.insert(k.clone(), text(v).to_owned());
        }
    }
    let (ok, output) = check_config(&env);
    assert!(
        ok,
        "check-config with the ConfigMap and the example Secret:\n{output}"
    );
}
