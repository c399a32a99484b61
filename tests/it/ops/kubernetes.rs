//! deploy/k8s (SQLite, one replica) and deploy/k8s/postgres (the PostgreSQL outbox,
//! several replicas): the manifests agree with each other (selectors, ports,
//! names) and their settings are a configuration the relay accepts.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{check_config, port_of, postgres_url, root, sqlite_path, text, yaml_docs};

type Manifests = BTreeMap<String, (String, Value)>;

/// Every manifest of one folder (not its subfolders), by kind.
fn k8s(dir: &str) -> Manifests {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join(dir)).expect(dir) {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("name")
            .to_owned();
        for doc in yaml_docs(&format!("{dir}/{file}")) {
            let kind = text(&doc["kind"]).to_owned();
            assert!(
                out.insert(kind.clone(), (file.clone(), doc)).is_none(),
                "{dir}: one {kind}"
            );
        }
    }
    out
}

fn get<'a>(manifests: &'a Manifests, kind: &str) -> &'a Value {
    &manifests
        .get(kind)
        .unwrap_or_else(|| panic!("a {kind} manifest"))
        .1
}

fn subset(small: &Value, big: &Value) -> bool {
    small
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| big.get(k) == Some(v)))
}

/// What both variants must get right: kustomization, selectors, ports, probes,
/// Service and ServiceMonitor, settings from the ConfigMap and the Secret. Returns
/// the settings (ConfigMap, then the example Secret).
fn check_wiring(dir: &str, manifests: &Manifests) -> BTreeMap<String, String> {
    let (deployment, service, config_map, secret, pdb, monitor) = (
        get(manifests, "Deployment"),
        get(manifests, "Service"),
        get(manifests, "ConfigMap"),
        get(manifests, "Secret"),
        get(manifests, "PodDisruptionBudget"),
        get(manifests, "ServiceMonitor"),
    );
    // kustomization.yaml lists every manifest except the example Secret.
    let listed: BTreeSet<String> = get(manifests, "Kustomization")["resources"]
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
    assert_eq!(listed, expected, "{dir}/kustomization.yaml");

    let spec = &deployment["spec"];
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
        "{dir}: non-root pod"
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
        assert_eq!(container[probe]["httpGet"]["path"], path, "{dir}: {probe}");
        assert_eq!(
            container[probe]["httpGet"]["port"], "admin",
            "{dir}: {probe}"
        );
    }
    for kind in ["requests", "limits"] {
        assert!(
            container["resources"][kind]["memory"].is_string(),
            "{dir}: memory {kind}"
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

    // The settings come from this ConfigMap and Secret.
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
            assert!(
                env.insert(k.clone(), text(v).to_owned()).is_none(),
                "{dir}: {k} is set once, not in both the ConfigMap and the Secret"
            );
        }
    }
    env
}

#[test]
fn kubernetes_manifests_agree_with_each_other_and_with_the_relay() {
    let manifests = k8s("deploy/k8s");
    let env = check_wiring("deploy/k8s", &manifests);
    let (deployment, pvc) = (
        get(&manifests, "Deployment"),
        get(&manifests, "PersistentVolumeClaim"),
    );

    // One replica, replaced (not rolled) so the ReadWriteOnce claim is released.
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1, "one replica with the SQLite outbox");
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"];
    let container = &pod["spec"]["containers"][0];

    // The outbox is on the claim, at the directory the ConfigMap's URL names.
    let outbox_dir = sqlite_path(&env["HOOKRELAY_OUTBOX_URL"])
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

    // Together the ConfigMap and the Secret are a configuration the relay accepts.
    let (ok, output) = check_config(&env);
    assert!(
        ok,
        "check-config with the ConfigMap and the example Secret:\n{output}"
    );
}

#[test]
fn kubernetes_postgres_variant_rolls_three_replicas_over_one_shared_outbox() {
    let dir = "deploy/k8s/postgres";
    let manifests = k8s(dir);
    let env = check_wiring(dir, &manifests);
    let sqlite = k8s("deploy/k8s");
    let (deployment, config_map, pdb) = (
        get(&manifests, "Deployment"),
        get(&manifests, "ConfigMap"),
        get(&manifests, "PodDisruptionBudget"),
    );

    // The same Service and ServiceMonitor as the SQLite variant (same names, so the
    // alerts' job and the ingress's backend do not depend on the variant).
    for kind in ["Service", "ServiceMonitor"] {
        assert_eq!(
            get(&manifests, kind),
            get(&sqlite, kind),
            "{dir}: the {kind} is deploy/k8s's"
        );
    }
    assert!(
        !manifests.contains_key("PersistentVolumeClaim"),
        "no volume for the outbox: it is the database"
    );

    // Several replicas, rolled one at a time.
    let spec = &deployment["spec"];
    let replicas = spec["replicas"].as_u64().expect("replicas");
    assert_eq!(replicas, 3);
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1);

    // Voluntary evictions leave all but one replica up, and never block a drain.
    let budget = &pdb["spec"];
    match (
        budget["maxUnavailable"].as_u64(),
        budget["minAvailable"].as_u64(),
    ) {
        (Some(max), None) => assert_eq!(max, 1, "one pod at a time"),
        (None, Some(min)) => assert_eq!(min, replicas - 1, "all but one"),
        other => panic!("the budget is maxUnavailable or minAvailable: {other:?}"),
    }

    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    assert!(
        pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|v| v.get("persistentVolumeClaim").is_none()),
        "no claim mounted"
    );
    // Long enough for the publisher to finish: at least the SQLite variant's grace,
    // plus the preStop pause.
    let sqlite_pod = &get(&sqlite, "Deployment")["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    let pre_stop = &container["lifecycle"]["preStop"]["exec"]["command"];
    let pause: u64 = if pre_stop.is_null() {
        0
    } else {
        let words: Vec<&str> = pre_stop
            .as_array()
            .expect("command")
            .iter()
            .map(text)
            .collect();
        // The runtime image has no shell: busybox (copied in by deploy/Dockerfile
        // for the healthcheck) does the sleeping.
        assert_eq!(words[..2], ["/usr/local/bin/busybox", "sleep"], "{words:?}");
        words[2].parse().expect("seconds")
    };
    assert!(
        grace
            >= sqlite_pod["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("grace")
                + pause,
        "terminationGracePeriodSeconds {grace} covers the drain and the {pause} s preStop pause"
    );

    // The outbox URL, which carries a password, comes from the Secret only; the
    // lease from the ConfigMap.
    assert!(
        config_map["data"].get("HOOKRELAY_OUTBOX_URL").is_none(),
        "the outbox URL is in the Secret"
    );
    assert!(config_map["data"]["HOOKRELAY_OUTBOX_LEASE"].is_string());
    let url = postgres_url(&env["HOOKRELAY_OUTBOX_URL"]);
    assert_eq!(
        url.params.get("sslmode").map(String::as_str),
        Some("verify-full"),
        "the example checks the server's certificate and name"
    );
    // sslrootcert names a file of a mounted volume.
    if let Some(ca) = url.params.get("sslrootcert") {
        let mount = container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| ca.starts_with(&format!("{}/", text(&m["mountPath"]))))
            .unwrap_or_else(|| panic!("sslrootcert {ca} is in a mounted volume"));
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mounted volume");
        let file = ca.rsplit('/').next().expect("file");
        assert!(
            volume["secret"]["secretName"].is_string(),
            "the CA comes from a Secret"
        );
        let secret_doc = std::fs::read_to_string(root().join(dir).join("secret.example.yaml"))
            .expect("secret.example.yaml");
        assert!(
            secret_doc.contains(&format!(
                "kubectl create secret generic {} --from-file={file}=",
                text(&volume["secret"]["secretName"])
            )),
            "secret.example.yaml says how to create the CA's Secret with the key {file}"
        );
    }

    // Together the ConfigMap and the Secret are a configuration the relay accepts.
    let (ok, output) = check_config(&env);
    assert!(
        ok,
        "check-config with {dir}'s ConfigMap and example Secret:\n{output}"
    );
}
