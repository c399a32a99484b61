//! `hookrelay check-config`: the effective configuration, secrets masked, and every
//! problem found in it.

use std::fmt::Write as _;
use std::process::ExitCode;

use crate::config::Config;
use crate::providers;

/// Prints the report, then the problems to stderr; fails when there is any.
pub(crate) fn run(config: &Config) -> ExitCode {
    let (report, problems) = check(config);
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
    let _ = writeln!(
        out,
        "amqp_url        {}",
        crate::amqp::redact_url(config.amqp_url.expose())
    );
    let _ = writeln!(out, "exchange        {}", config.exchange);
    let _ = writeln!(out, "outbox_url      {outbox}");
    let _ = writeln!(
        out,
        "retention       {}",
        humantime::format_duration(config.retention)
    );
    let _ = writeln!(out, "max_body        {} bytes", config.max_body);
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
