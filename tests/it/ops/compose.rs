//! docker-compose.yml and deploy/Dockerfile: their wiring (ports, volumes, names,
//! healthchecks) and their settings through `hookrelay check-config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use super::rabbitmq::{definitions_exchange, rabbitmq_password_matches};
use super::{
    check_config, json_file, port_of, postgres_url, read, relay_job_name, root, sqlite_path, text,
    yaml_file,
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

/// Compose's interpolation as compose resolves it with the variables unset:
/// `${VAR:-default}` is the default, `${VAR}` is empty.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing }") + start;
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, default)| default));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A relay service's settings: the image's `ENV`, then the service's `environment`.
fn relay_env(service: &Value) -> BTreeMap<String, String> {
    let mut env = dockerfile_env();
    for (k, v) in service["environment"]
        .as_object()
        .expect("relay environment")
    {
        env.insert(k.clone(), interpolate(text(v)));
    }
    env
}

fn profiles(service: &Value) -> Vec<&str> {
    service["profiles"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect()
}

/// `(target in the container, source)` of each of a service's volumes.
fn mounts(service: &Value) -> BTreeMap<String, String> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let mut parts = text(v).split(':');
            let source = parts.next()?.to_owned();
            Some((parts.next()?.to_owned(), source))
        })
        .collect()
}

/// The container port of a `127.0.0.1:HOST:CONTAINER` mapping published on `host`.
fn published(service: &Value, host: u16) -> Option<u16> {
    service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|p| {
            let mut parts = text(p).rsplit(':');
            let container = parts.next()?.parse().ok()?;
            (parts.next()?.parse::<u16>().ok()? == host).then_some(container)
        })
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
    // dependencies order the stack. The default stack (services without a profile)
    // never depends on a service of a profile, which compose would refuse to start.
    let default_stack: BTreeMap<&String, &Value> = services
        .iter()
        .filter(|(_, s)| profiles(s).is_empty())
        .collect();
    let mut order: Vec<String> = Vec::new();
    while order.len() < default_stack.len() {
        let next = default_stack
            .iter()
            .filter(|(name, _)| !order.contains(name))
            .find(|(_, s)| depends_on(s).keys().all(|d| order.contains(d)))
            .map(|(name, _)| (*name).clone())
            .expect("depends_on has no cycle, and stays within the default stack");
        order.push(next);
    }
    assert_eq!(order, ["rabbitmq", "relay", "prometheus", "grafana"]);
    let mut host_ports = BTreeMap::new();
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
            let host = text(port).split(':').nth(1).expect("HOST:CONTAINER");
            if let Some(other) = host_ports.insert(host.to_owned(), name.clone()) {
                panic!("{name} and {other} both publish port {host}");
            }
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
    let env = relay_env(relay);
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
    // loads the rules from beside its config. The replicas of the profile `ha` are
    // found by DNS, so a stack without them has no target for them.
    let prometheus_config = yaml_file("deploy/prometheus/prometheus.yml");
    let mut listening: BTreeMap<&str, u16> = [
        ("relay", admin_port),
        (
            "rabbitmq",
            conf_value("prometheus.tcp.port").parse().expect("port"),
        ),
    ]
    .into_iter()
    .collect();
    for (name, service) in services {
        if profiles(service).contains(&"ha") && service.get("build").is_some() {
            listening.insert(name, port_of(&relay_env(service)["HOOKRELAY_ADMIN_LISTEN"]));
        }
    }
    let mut scraped = BTreeSet::new();
    for job in prometheus_config["scrape_configs"]
        .as_array()
        .expect("jobs")
    {
        let static_targets = job["static_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["targets"].as_array().cloned().unwrap_or_default());
        for target in static_targets {
            let (host, port) = text(&target).split_once(':').expect("host:port");
            assert!(
                profiles(&services[host]).is_empty(),
                "a static target ({target}) is in the default stack, or it would be down without its profile"
            );
            assert_eq!(
                listening.get(host),
                Some(&port.parse().expect("port")),
                "scrape target {target}"
            );
            scraped.insert(host.to_owned());
        }
        for dns in job["dns_sd_configs"].as_array().into_iter().flatten() {
            assert_eq!(dns["type"], "A", "names resolved to addresses");
            for name in dns["names"].as_array().expect("names") {
                assert_eq!(
                    listening.get(text(name)).map(|&p| u64::from(p)),
                    dns["port"].as_u64(),
                    "scrape target {name}:{}",
                    dns["port"]
                );
                assert_eq!(job["job_name"], "hookrelay", "{name} is scraped as a relay");
                scraped.insert(text(name).to_owned());
            }
        }
    }
    let unscraped: Vec<&&str> = listening
        .keys()
        .filter(|name| !scraped.contains(**name))
        .collect();
    assert!(unscraped.is_empty(), "Prometheus scrapes {unscraped:?}");
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

/// deploy/haproxy/haproxy.cfg: each section (`backend relays`, …) with its lines
/// split into words, comments dropped.
fn haproxy_sections() -> BTreeMap<String, Vec<Vec<String>>> {
    let mut sections: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    let mut current = String::new();
    for line in read("deploy/haproxy/haproxy.cfg").lines() {
        let line = line.split('#').next().unwrap_or_default();
        if line.trim().is_empty() {
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if line.starts_with(char::is_whitespace) {
            sections.entry(current.clone()).or_default().push(words);
        } else {
            current = words.join(" ");
            sections.entry(current.clone()).or_default();
        }
    }
    sections
}

/// The word after `key` in a line, e.g. the port of `check port 9090`.
fn word_after<'a>(words: &'a [String], key: &str) -> Option<&'a str> {
    let at = words.iter().position(|w| w == key)?;
    words.get(at + 1).map(String::as_str)
}

fn bind_port(lines: &[Vec<String>]) -> u16 {
    let bind = lines.iter().find(|l| l[0] == "bind").expect("a bind line");
    port_of(&bind[1])
}

#[test]
fn compose_profile_ha_runs_two_relays_on_postgres_behind_one_balancer() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let ha: BTreeSet<&str> = services
        .iter()
        .filter(|(_, s)| profiles(s) == ["ha"])
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        ha,
        BTreeSet::from(["postgres", "relay-a", "relay-b", "relay-lb"]),
        "the profile `ha`"
    );

    // PostgreSQL 17, on loopback, its data on a named volume, healthy when it
    // accepts connections.
    let postgres = &services["postgres"];
    assert!(
        text(&postgres["image"]).starts_with("postgres:17"),
        "{}",
        postgres["image"]
    );
    let pg_env: BTreeMap<String, String> = postgres["environment"]
        .as_object()
        .expect("postgres environment")
        .iter()
        .map(|(k, v)| (k.clone(), interpolate(text(v))))
        .collect();
    assert!(
        text(&postgres["environment"]["POSTGRES_PASSWORD"]).starts_with("${POSTGRES_PASSWORD:-"),
        "the password can be set from the environment"
    );
    assert!(!pg_env.contains_key("PGPORT"), "PostgreSQL listens on 5432");
    assert_eq!(published(postgres, 5432), Some(5432));
    let health: Vec<&str> = postgres["healthcheck"]["test"]
        .as_array()
        .expect("test")
        .iter()
        .map(text)
        .collect();
    assert!(health.contains(&"pg_isready"), "{health:?}");
    let data = mounts(postgres)
        .get("/var/lib/postgresql/data")
        .cloned()
        .expect("a volume at the image's PGDATA");
    assert!(
        compose["volumes"].get(&data).is_some(),
        "named volume {data}"
    );

    // Two replicas of one definition, on that database, reached only through the
    // balancer, keeping nothing on disk.
    assert_eq!(
        services["relay-a"], services["relay-b"],
        "relay-a and relay-b are one definition"
    );
    let replica = &services["relay-a"];
    let env = relay_env(replica);
    let url = postgres_url(&env["HOOKRELAY_OUTBOX_URL"]);
    assert_eq!(url.host, "postgres", "the outbox is the postgres service");
    assert_eq!(url.port, 5432);
    assert_eq!(url.user, pg_env["POSTGRES_USER"]);
    assert_eq!(url.password, pg_env["POSTGRES_PASSWORD"]);
    assert_eq!(url.database, pg_env["POSTGRES_DB"]);
    assert!(
        ["disable", "prefer", "require", "verify-full"]
            .contains(&url.params.get("sslmode").map_or("prefer", String::as_str)),
        "sslmode: {:?}",
        url.params
    );
    assert_eq!(
        text(&replica["environment"]["HOOKRELAY_OUTBOX_URL"])
            .split_once("${POSTGRES_PASSWORD:-")
            .map(|(before, _)| before),
        Some("postgres://hookrelay:"),
        "the replicas take the password postgres is given"
    );
    assert_eq!(
        depends_on(replica),
        BTreeMap::from([
            ("postgres".to_owned(), "service_healthy".to_owned()),
            ("rabbitmq".to_owned(), "service_healthy".to_owned()),
        ])
    );
    assert!(
        replica.get("ports").is_none(),
        "replicas publish no port: relay-lb is the one way in"
    );
    assert!(mounts(replica).is_empty(), "no SQLite volume");
    assert_eq!(
        env["HOOKRELAY_AMQP_URL"],
        relay_env(&services["relay"])["HOOKRELAY_AMQP_URL"],
        "the same broker as the default relay"
    );
    assert_eq!(replica["image"], services["relay"]["image"]);
    let admin_port = port_of(&env["HOOKRELAY_ADMIN_LISTEN"]);
    let ingress_port = port_of(&env["HOOKRELAY_LISTEN"]);
    let health: Vec<&str> = replica["healthcheck"]["test"]
        .as_array()
        .expect("test")
        .iter()
        .map(text)
        .collect();
    assert!(
        health.contains(&format!("http://127.0.0.1:{admin_port}/healthz").as_str()),
        "{health:?}"
    );
    let (ok, output) = check_config(&env);
    assert!(
        ok,
        "check-config with the compose replicas' environment:\n{output}"
    );

    // The balancer: HAProxy with deploy/haproxy/haproxy.cfg, round robin over both
    // replicas' ingress ports, each in rotation while its /readyz says 200.
    let lb = &services["relay-lb"];
    assert_eq!(
        mounts(lb)
            .get("/usr/local/etc/haproxy/haproxy.cfg")
            .map(String::as_str),
        Some("./deploy/haproxy/haproxy.cfg")
    );
    assert_eq!(
        depends_on(lb)
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["relay-a", "relay-b"]
    );
    let cfg = haproxy_sections();
    let (frontend, backend) = cfg
        .iter()
        .filter(|(name, _)| name.starts_with("frontend "))
        .find_map(|(_, lines)| {
            let backend = lines.iter().find(|l| l[0] == "default_backend")?;
            Some((lines, format!("backend {}", backend[1])))
        })
        .expect("a frontend with a default_backend");
    let webhooks = bind_port(frontend);
    assert_eq!(
        published(lb, 8081),
        Some(webhooks),
        "127.0.0.1:8081 is the webhook frontend"
    );
    let backend = &cfg[&backend];
    assert!(backend.contains(&vec!["balance".to_owned(), "roundrobin".to_owned()]));
    assert!(
        backend
            .iter()
            .any(|l| l.join(" ") == "http-check send meth GET uri /readyz"),
        "health is /readyz"
    );
    assert!(
        backend
            .iter()
            .any(|l| l.join(" ") == "http-check expect status 200")
    );
    let defaults: Vec<String> = backend
        .iter()
        .find(|l| l[0] == "default-server")
        .cloned()
        .unwrap_or_default();
    let servers: BTreeMap<&str, Vec<String>> = backend
        .iter()
        .filter(|l| l[0] == "server")
        .map(|l| (l[2].as_str(), [defaults.clone(), l.clone()].concat()))
        .collect();
    assert_eq!(
        servers.keys().copied().collect::<Vec<_>>(),
        [
            format!("relay-a:{ingress_port}"),
            format!("relay-b:{ingress_port}")
        ],
        "both replicas, on their ingress port"
    );
    for (server, words) in &servers {
        assert!(words.iter().any(|w| w == "check"), "{server} is checked");
        assert_eq!(
            word_after(words, "port").map(|p| p.parse::<u16>().expect("port")),
            Some(admin_port),
            "{server} is checked on its admin port"
        );
    }
    // Its healthcheck asks the monitor URI of a frontend that is not the webhooks'.
    let health = lb["healthcheck"]["test"]
        .as_array()
        .expect("test")
        .iter()
        .map(text)
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .expect("an URL");
    let (port, path) = health
        .trim_start_matches("http://127.0.0.1:")
        .split_once('/')
        .expect("port/path");
    let monitor = cfg
        .values()
        .find(|lines| lines.iter().any(|l| l[0] == "monitor-uri"))
        .expect("a monitor-uri");
    assert_eq!(bind_port(monitor), port.parse::<u16>().expect("port"));
    assert_ne!(bind_port(monitor), webhooks);
    assert!(
        monitor
            .iter()
            .any(|l| l[0] == "monitor-uri" && l[1] == format!("/{path}"))
    );
}
