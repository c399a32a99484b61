//! `hookrelay check-config`: the effective configuration, secrets masked, and every
//! problem found in it; with `--connect`, also whether the broker and the outbox
//! can be reached, as `vector validate` checks its sinks.

use std::fmt::Write as _;
use std::process::ExitCode;

use crate::config::Config;
use crate::providers;

/// Arguments of `hookrelay check-config`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckConfigArgs {
    /// Also reach the broker (open a connection and a channel; nothing is
    /// declared) and the outbox (it must exist; its schema version is read,
    /// nothing is created or migrated), and say for each what failed and what
    /// to do.
    #[arg(long)]
    pub(crate) connect: bool,
}

/// What `--connect` found of one service: a line of the report, and the
/// problem when it could not be reached.
pub(crate) struct Reached {
    /// `broker` or `outbox`.
    what: &'static str,
    /// Where, as it may be shown (no password).
    target: String,
    /// What was found, or what failed and what to do.
    outcome: Result<String, String>,
}

/// Reaches the broker and the outbox at once (each has its own time bound);
/// an outbox URL already reported as invalid is not tried again.
pub(crate) async fn connect(config: &Config) -> Vec<Reached> {
    // Every node of a cluster is checked: one the relay cannot reach is one it
    // cannot move to.
    let mut checks = tokio::task::JoinSet::new();
    for (place, url) in config.amqp_urls.iter().enumerate() {
        let url = url.expose().to_owned();
        checks.spawn(async move {
            let reached = Reached {
                what: "broker",
                target: crate::amqp::redact_url(&url),
                outcome: crate::amqp::check_reachable(&url)
                    .await
                    .map(|()| "connected, a channel opened, nothing declared".to_owned())
                    .map_err(|e| e.to_string()),
            };
            (place, reached)
        });
    }
    let brokers = async {
        let mut reached = checks.join_all().await;
        reached.sort_by_key(|(place, _)| *place);
        reached.into_iter().map(|(_, reached)| reached)
    };
    let outbox_url = config.outbox_url.expose();
    let require_sync = config.outbox_require_sync_standby;
    let outbox = async {
        let target = crate::outbox::describe_url(outbox_url).ok()?;
        let outcome = match crate::outbox::inspect(outbox_url).await {
            Err(e) => Err(match e.reason() {
                // The database's own words (a database that does not exist, a
                // role it refuses) carry no advice of their own.
                "other" => format!(
                    "{e}: check the database, user and password in HOOKRELAY_OUTBOX_URL, and that it names a hookrelay outbox"
                ),
                _ => e.to_string(),
            }),
            Ok((_, replication)) if require_sync && !replication.synchronous() => Err(format!(
                "the outbox's commits do not wait for a synchronous standby ({}), and HOOKRELAY_OUTBOX_REQUIRE_SYNC_STANDBY=true: `serve` would refuse to start; set synchronous_standby_names on the primary, or unset the requirement",
                replication.describe()
            )),
            Ok((version, replication)) => {
                let version = match version {
                    0 => {
                        "schema version 0 (empty: `hookrelay serve` creates its tables)".to_owned()
                    }
                    n => format!("schema version {n}"),
                };
                Ok(format!("{version}; {}", replication.describe()))
            }
        };
        Some(Reached {
            what: "outbox",
            target,
            outcome,
        })
    };
    let (brokers, outbox) = tokio::join!(brokers, outbox);
    brokers.into_iter().chain(outbox).collect()
}

/// Prints the report (with what `--connect` found, if it ran), then the
/// problems to stderr; fails when there is any.
pub(crate) fn run(config: &Config, reached: &[Reached]) -> ExitCode {
    let (mut report, mut problems) = check(config);
    if !reached.is_empty() {
        let _ = writeln!(report, "connections:");
    }
    for service in reached {
        let found = match &service.outcome {
            Ok(found) => found.as_str(),
            Err(problem) => {
                problems.push(problem.clone());
                "FAILED (see below)"
            }
        };
        let _ = writeln!(report, "  {:<13} {}: {found}", service.what, service.target);
    }
    print!("{report}");
    if problems.is_empty() {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        for problem in &problems {
            eprintln!("problem: {problem}");
        }
        ExitCode::FAILURE
    }
}

/// The effective configuration as text, and the problems found in it.
fn check(config: &Config) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut problems = Vec::new();
    let outbox = crate::outbox::describe_url(config.outbox_url.expose()).unwrap_or_else(|e| {
        problems.push(e.to_string());
        "(invalid)".to_owned()
    });
    let _ = writeln!(out, "listen          {}", config.listen);
    let _ = writeln!(out, "admin_listen    {}", config.admin_listen);
    let console = match (&config.admin_token, config.admin_listen.ip().is_loopback()) {
        (Some(_), _) => "token set (****)",
        (None, true) => "no token: served on this loopback address only",
        (None, false) => {
            "no token: the admin API and console answer 403 (set HOOKRELAY_ADMIN_TOKEN)"
        }
    };
    let _ = writeln!(out, "admin_token     {console}");
    if config.admin_token.is_none() {
        let mut names = vec!["localhost", "127.0.0.0/8", "[::1]"];
        names.extend(config.admin_hosts.iter().map(String::as_str));
        let _ = writeln!(out, "admin_hosts     {} (any port)", names.join(", "));
    }
    let urls: Vec<String> = config
        .amqp_urls
        .iter()
        .map(|url| crate::amqp::redact_url(url.expose()))
        .collect();
    let _ = writeln!(out, "amqp_url        {}", urls.join(","));
    if urls.len() > 1 {
        let _ = writeln!(
            out,
            "                {} nodes: publishes through one, moves to the next when it fails",
            urls.len()
        );
    }
    let _ = writeln!(
        out,
        "unrouted_queue  {}",
        match config.unrouted_queue_type {
            crate::config::QueueType::Quorum => "quorum",
            crate::config::QueueType::Classic =>
                "classic (stops taking messages while its node is down)",
        }
    );
    let _ = writeln!(out, "exchange        {}", config.exchange);
    let _ = writeln!(out, "outbox_url      {outbox}");
    if config.outbox_require_sync_standby {
        let _ = writeln!(
            out,
            "                a synchronous standby required (checked with --connect and at start)"
        );
    }
    let _ = writeln!(
        out,
        "retention       {}",
        humantime::format_duration(config.retention)
    );
    // In whole days when it is (humantime writes 90 days as months of 30.44).
    let sequence_retention = match config.sequence_retention.as_secs() {
        secs if secs % 86_400 == 0 => format!("{}days", secs / 86_400),
        _ => humantime::format_duration(config.sequence_retention).to_string(),
    };
    let _ = writeln!(out, "sequence_retention {sequence_retention}");
    let _ = writeln!(out, "max_body        {} bytes", config.max_body);
    let _ = writeln!(
        out,
        "body_budget     {} bytes ({} per client)",
        config.body_budget, config.body_budget_per_client
    );
    let _ = writeln!(out, "sources:");
    match providers::build_sources(config) {
        Err(e) => problems.push(e.to_string()),
        Ok(sources) => {
            for (name, source) in &sources {
                let settings = &source.config;
                let _ = writeln!(
                    out,
                    "  {name}  (POST /webhooks/{name}, provider {})",
                    settings.provider
                );
                for (key, value) in &settings.settings {
                    let secret = source.spec.secret_keys.contains(&key.as_str());
                    let shown = if secret { "********" } else { value.expose() };
                    let _ = writeln!(out, "    {key} = {shown}");
                }
                if settings.allow_unsigned {
                    let _ = writeln!(out, "    WARNING: accepts unsigned webhooks");
                    continue;
                }
                for key in source.provider.missing_credentials() {
                    problems.push(format!(
                        "source `{name}` is missing `{key}` and will refuse every webhook with 401 \
                         (set HOOKRELAY_SOURCES__{}__{}, or allow_unsigned = true)",
                        name.to_ascii_uppercase(),
                        key.to_ascii_uppercase()
                    ));
                }
            }
        }
    }
    (out, problems)
}
