//! Command-line interface (SPEC §1).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, OutboxUrl};
use crate::providers;

/// hookrelay: receives payment-provider webhooks, stores them durably, and publishes
/// them to RabbitMQ.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, global = true, env = "HOOKRELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (ingress, publisher, admin listener) until SIGTERM/SIGINT.
    Serve,
    /// Load and validate the configuration, print the effective sources (secrets
    /// masked), and exit non-zero on any problem.
    CheckConfig,
}

/// The effective configuration as text, and the problems found in it.
pub fn check_config(config: &Config) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut problems = Vec::new();
    let outbox = match &config.outbox_url {
        OutboxUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
        OutboxUrl::Postgres(_) => "postgres://***".to_owned(),
    };
    let _ = writeln!(out, "listen          {}", config.listen);
    let _ = writeln!(out, "admin_listen    {}", config.admin_listen);
    let _ = writeln!(
        out,
        "amqp_url        {}",
        crate::amqp::redact_url(&config.amqp_url)
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
    match crate::relay::build_sources(config) {
        Err(e) => problems.push(e.to_string()),
        Ok(built) => {
            for (name, source) in &config.sources {
                let spec = providers::find(&source.provider);
                let _ = writeln!(
                    out,
                    "  {name}  (POST /webhooks/{name}, provider {})",
                    source.provider
                );
                for (key, value) in &source.settings {
                    let secret = spec.is_some_and(|s| s.secret_keys.contains(&key.as_str()));
                    let shown = if secret { "********" } else { value.as_str() };
                    let _ = writeln!(out, "    {key} = {shown}");
                }
                if source.allow_unsigned {
                    let _ = writeln!(out, "    WARNING: accepts unsigned webhooks");
                } else if let Some(b) = built.get(name) {
                    for key in b.provider.missing_credentials() {
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
    }
    (out, problems)
}
