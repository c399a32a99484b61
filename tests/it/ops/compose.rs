//! docker-compose.yml and deploy/Dockerfile: their wiring (ports, volumes, names,
//! healthchecks) and their settings through `hookrelay check-config`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::rabbitmq::{definitions_exchange, rabbitmq_password_matches};
use super::{
    check_config, json_file, port_of, read, relay_job_name, root, sqlite_path, text, yaml_file,
};

/// Dockerfile instructions with continuation lines joined: (INSTRUCTION, rest).
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((instruction.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

/// The `ENV` of the Dockerfile's final stage.
fn dockerfile_env() -> BTreeMap<String, String> {
    let instructions = dockerfile();
    let last_from = instructions
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("FROM");
    let mut env = BTreeMap::new();
    for (_, rest) in instructions[last_from..].iter().filter(|(i, _)| i == "ENV") {
        for pair in rest.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    env
}

#[test]
fn dockerfile_builds_in_stages_and_runs_non_root_with_a_healthcheck_on_healthz() {
    let instructions = dockerfile();
    let stages: Vec<&String> = instructions
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, r)| r)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let last_from = instructions
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("FROM");
    let final_stage = &instructions[last_from..];
    let user = final_stage
        .iter()
        .rfind(|(i, _)| i == "USER")
        .map(|(_, r)| r.clone())
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        !uid.is_empty() && uid != "root" && uid != "0",
        "non-root: {user}"
    );
    let env = dockerfile_env();
    let admin = &env["HOOKRELAY_ADMIN_LISTEN"];
    assert!(
        admin.starts_with("0.0.0.0:"),
        "admin listens on every interface in a container"
    );
    let healthcheck = final_stage
        .iter()
        .find(|(i, _)| i == "HEALTHCHECK")
        .map(|(_, r)| r.clone())
        .expect("HEALTHCHECK");
    assert!(
        healthcheck.contains(&format!("127.0.0.1:{}/healthz", port_of(admin))),
        "the healthcheck asks /healthz on the admin port: {healthcheck}"
    );
    // What the healthcheck runs is in the image.
    let program = healthcheck
        .split('"')
        .nth(1)
        .expect("HEALTHCHECK CMD [\"program\", …]");
    assert!(
        final_stage
            .iter()
            .any(|(i, r)| i == "COPY" && r.ends_with(&format!(" {program}"))),
        "{program} is copied into the final stage"
    );
    let entry = final_stage
        .iter()
        .rfind(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    let cmd = final_stage
        .iter()
        .rfind(|(i, _)| i == "CMD")
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    assert!(
        entry.contains("hookrelay") && cmd.contains("\"serve\""),
        "runs `hookrelay serve`: {entry} {cmd}"
    );
    // The build context (narrowed by Dockerfile.dockerignore) holds what COPY takes.
    let ignore = read("deploy/Dockerfile.dockerignore");
    for (_, rest) in instructions
        .iter()
        .filter(|(i, r)| i == "COPY" && !r.starts_with("--from"))
    {
        let mut parts: Vec<&str> = rest.split_whitespace().collect();
        parts.pop(); // destination
        for source in parts {
            assert!(root().join(source).exists(), "COPY source {source} exists");
            let name = source.trim_end_matches('/');
            assert!(
                ignore
                    .lines()
                    .any(|l| l.trim().trim_end_matches('/') == format!("!{name}")),
                "{source} is let into the build context by Dockerfile.dockerignore"
            );
        }
    }
    // The image's settings are a valid configuration (unknown variables are errors).
    let mut config = env.clone();
    config.insert(
        "HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN".into(),
        "t".into(),
    );
    let (ok, output) = check_config(&config);
    assert!(ok, "hookrelay check-config with the image's ENV:\n{output}");
}

fn compose() -> Value {
    yaml_file("docker-compose.yml")
}

fn depends_on(service: &Value) -> BTreeMap<String, String> {
    service["depends_on"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, v)| (name.clone(), text(&v["condition"]).to_owned()))
        .collect()
}

#[test]
fn compose_starts_rabbitmq_relay_prometheus_grafana_in_order_through_healthchecks() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    // Every service has a healthcheck, every dependency waits for one, and the
    // dependencies order the stack.
    let mut order: Vec<String> = Vec::new();
    while order.len() < services.len() {
        let next = services
            .iter()
            .filter(|(name, _)| !order.contains(name))
            .find(|(_, s)| depends_on(s).keys().all(|d| order.contains(d)))
            .map(|(name, _)| name.clone())
            .expect("depends_on has no cycle");
        order.push(next);
    }
    assert_eq!(order, ["rabbitmq", "relay", "prometheus", "grafana"]);
    for (name, service) in services {
        assert!(
            service["healthcheck"]["test"].is_array(),
            "{name} has a healthcheck"
        );
        for (dependency, condition) in depends_on(service) {
            assert_eq!(
                condition, "service_healthy",
                "{name} waits for {dependency} to be healthy"
            );
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            assert!(
                text(port).starts_with("127.0.0.1:"),
                "{name} publishes {port} on loopback only"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = text(volume).split(':').next().unwrap_or_default();
            if let Some(rel) = source.strip_prefix("./") {
                assert!(root().join(rel).exists(), "{name} mounts {source}");
            } else {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name}'s volume {source} is declared"
                );
            }
        }
    }

    // RabbitMQ loads the definitions from where they are mounted.
    let rabbitmq = &services["rabbitmq"];
    let mounts = |service: &Value| -> BTreeMap<String, String> {
        service["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let mut parts = text(v).split(':');
                Some((
                    parts.nth(1)?.to_owned(),
                    text(v).split(':').next()?.to_owned(),
                ))
            })
            .collect()
    };
    let conf = read("deploy/rabbitmq/rabbitmq.conf");
    let conf_value = |key: &str| {
        conf.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| panic!("rabbitmq.conf sets {key}"))
    };
    let rabbit_mounts = mounts(rabbitmq);
    assert_eq!(
        rabbit_mounts
            .get(&conf_value("load_definitions"))
            .map(String::as_str),
        Some("./deploy/rabbitmq/definitions.json")
    );
    assert_eq!(
        rabbit_mounts
            .get("/etc/rabbitmq/rabbitmq.conf")
            .map(String::as_str),
        Some("./deploy/rabbitmq/rabbitmq.conf")
    );
    assert!(
        read("deploy/rabbitmq/enabled_plugins").contains("rabbitmq_prometheus"),
        "the Prometheus plugin is enabled"
    );

    // The relay: image settings + compose environment is a valid configuration,
    // its broker credentials are a user of definitions.json, its outbox is on the
    // named volume, and its healthcheck asks the admin port.
    let relay = &services["relay"];
    assert!(root().join(text(&relay["build"]["dockerfile"])).is_file());
    let mut env = dockerfile_env();
    for (k, v) in relay["environment"].as_object().expect("relay environment") {
        // Compose's ${VAR:-default} interpolation, as compose would resolve it
        // with VAR unset.
        let value = text(v);
        let value = match value.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(inner) => inner.split_once(":-").map_or("", |(_, d)| d).to_owned(),
            None => value.to_owned(),
        };
        env.insert(k.clone(), value);
    }
    let (ok, output) = check_config(&env);
    assert!(
        ok,
        "check-config with the compose relay's environment:\n{output}"
    );
    let amqp = &env["HOOKRELAY_AMQP_URL"];
    let (userinfo, host) = amqp
        .strip_prefix("amqp://")
        .and_then(|r| r.split_once('@'))
        .expect("amqp://user:pass@host");
    let (user, password) = userinfo.split_once(':').expect("user:password");
    assert!(
        host.starts_with(&format!("rabbitmq:{}", conf_value("listeners.tcp.default"))),
        "{host}"
    );
    let definitions = json_file("deploy/rabbitmq/definitions.json");
    let account = definitions["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["name"] == user)
        .unwrap_or_else(|| panic!("definitions.json has the relay's user {user}"));
    assert!(
        rabbitmq_password_matches(text(&account["password_hash"]), password),
        "the password hash of {user} in definitions.json is the password in the relay's URL"
    );
    assert!(
        definitions["permissions"]
            .as_array()
            .expect("permissions")
            .iter()
            .any(|p| p["user"] == user && p["write"] == ".*" && p["configure"] == ".*"),
        "{user} may declare and publish"
    );
    assert_eq!(
        env.get("HOOKRELAY_EXCHANGE")
            .map(String::as_str)
            .unwrap_or("webhooks"),
        definitions_exchange(&definitions)
    );
    let outbox_dir = sqlite_path(&env["HOOKRELAY_OUTBOX_URL"])
        .parent()
        .expect("outbox directory")
        .to_string_lossy()
        .into_owned();
    let relay_mounts = mounts(relay);
    let outbox_volume = relay_mounts
        .get(&outbox_dir)
        .unwrap_or_else(|| panic!("a volume is mounted at {outbox_dir}"));
    assert!(
        compose["volumes"].get(outbox_volume).is_some(),
        "named volume"
    );
    let admin_port = port_of(&env["HOOKRELAY_ADMIN_LISTEN"]);
    let health: Vec<&str> = relay["healthcheck"]["test"]
        .as_array()
        .expect("test")
        .iter()
        .map(text)
        .collect();
    assert!(
        health.contains(&format!("http://127.0.0.1:{admin_port}/healthz").as_str()),
        "{health:?}"
    );

    // Prometheus scrapes services that exist, on the ports they listen on, and
    // loads the rules from beside its config.
    let prometheus_config = yaml_file("deploy/prometheus/prometheus.yml");
    let listening: BTreeMap<&str, u16> = [
        ("relay", admin_port),
        (
            "rabbitmq",
            conf_value("prometheus.tcp.port").parse().expect("port"),
        ),
    ]
    .into_iter()
    .collect();
    for job in prometheus_config["scrape_configs"]
        .as_array()
        .expect("jobs")
    {
        for target in job["static_configs"][0]["targets"]
            .as_array()
            .expect("targets")
        {
            let (host, port) = text(target).split_once(':').expect("host:port");
            assert_eq!(
                listening.get(host),
                Some(&port.parse().expect("port")),
                "scrape target {target}"
            );
        }
    }
    let prom_mounts = mounts(&services["prometheus"]);
    let config_in_container = prom_mounts
        .iter()
        .find(|(_, source)| source.ends_with("prometheus.yml"))
        .map(|(target, _)| PathBuf::from(target))
        .expect("prometheus.yml is mounted");
    for rule_file in prometheus_config["rule_files"]
        .as_array()
        .expect("rule_files")
    {
        let path = config_in_container
            .parent()
            .expect("dir")
            .join(text(rule_file));
        let source = prom_mounts
            .get(&*path.to_string_lossy())
            .unwrap_or_else(|| panic!("rule file {} is mounted", path.display()));
        assert!(root().join(source.trim_start_matches("./")).is_file());
    }
    assert_eq!(relay_job_name(), "hookrelay", "the job the alerts select");

    // Grafana's data source points at the prometheus service.
    let datasources = yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    let url = text(&datasources["datasources"][0]["url"]);
    assert_eq!(url, "http://prometheus:9090");
    let grafana_mounts = mounts(&services["grafana"]);
    let provider = yaml_file("deploy/grafana/provisioning/dashboards/hookrelay.yml");
    let dashboards_path = text(&provider["providers"][0]["options"]["path"]);
    assert_eq!(
        grafana_mounts.get(dashboards_path).map(String::as_str),
        Some("./deploy/grafana/dashboards"),
        "the provisioned dashboard folder is mounted"
    );
}
