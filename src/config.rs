//! Configuration: defaults, an optional TOML file, and `HOOKRELAY_*` environment
//! variables on top (contract §2).
//!
//! The loader is deliberately small: every setting is read as text and parsed by the
//! crate that owns its format (`humantime` for durations, `bytesize` for sizes,
//! `ipnet` for CIDRs), so a value reads the same whether it came from the file or
//! from the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

const ENV_PREFIX: &str = "HOOKRELAY_";
const SOURCES_ENV_PREFIX: &str = "HOOKRELAY_SOURCES__";

/// Top-level keys, as written in the TOML file (lower case) and, upper-cased with
/// the `HOOKRELAY_` prefix, in the environment.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "admin_token",
    "admin_hosts",
    "amqp_url",
    "unrouted_queue_type",
    "exchange",
    "outbox_url",
    "outbox_lease",
    "outbox_require_sync_standby",
    "outbox_max_pending",
    "retention",
    "sequence_retention",
    "max_body",
    "body_budget",
    "body_budget_per_client",
    "trusted_proxies",
    "log_format",
    "read_timeout",
];

/// Environment variables with the prefix that are not settings keys.
const NON_SETTING_ENV: &[&str] = &["HOOKRELAY_CONFIG"];

/// A configuration problem, worded for the operator who has to fix it. Each message
/// includes its cause's, and no variant also exposes it as `source`, so a printed
/// chain names every cause once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The file named by `--config` or `HOOKRELAY_CONFIG`.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// A key the relay does not know: almost always a typo.
    #[error("unknown setting `{0}`: see the configuration table in the README")]
    UnknownKey(String),
    /// A value that does not parse.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The setting, as the operator wrote it.
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Text that may hold a credential (a password in a URL, a signing key): its
/// `Debug` and `Display` show `****`, so a logged or printed configuration never
/// carries it. [`Secret::expose`] is the one way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The text itself, for the code that needs it (a connection, a signature).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"****\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

/// Log output format (`HOOKRELAY_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole relay configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Webhook ingress address.
    pub listen: SocketAddr,
    /// Admin listener address (`/metrics`, `/healthz`, `/readyz`, the admin API
    /// and console).
    pub admin_listen: SocketAddr,
    /// Bearer token of the admin API and console; without one they are served
    /// only on a loopback admin address.
    pub admin_token: Option<Secret>,
    /// Host names, besides the loopback ones, that the admin API and console
    /// answer to without a token (lower case, without a port or a trailing dot).
    pub admin_hosts: Vec<String>,
    /// RabbitMQ URLs, one per node of a cluster (each may hold a password):
    /// the relay publishes through one and moves to the next when it fails.
    pub amqp_urls: Vec<Secret>,
    /// Whether the queue of unroutable messages is a quorum queue (survives the
    /// loss of a cluster node) or a classic one.
    pub unrouted_queue_type: QueueType,
    /// Topic exchange the relay publishes to.
    pub exchange: String,
    /// Outbox location, as written: the outbox parses it, so that only `outbox/`
    /// knows which backends exist (it may hold a password: never log it whole).
    pub outbox_url: Secret,
    /// How long a replica's lease on its share of a shared (PostgreSQL) outbox
    /// lasts: a dead replica's subjects are taken over within about this long.
    pub outbox_lease: Duration,
    /// Refuse to start unless the outbox's commits wait for a synchronous
    /// standby, so a failover cannot lose an acknowledged webhook.
    pub outbox_require_sync_standby: bool,
    /// Pending rows past which webhooks get 503 instead of filling the disk.
    pub outbox_max_pending: u64,
    /// How long published rows are kept.
    pub retention: Duration,
    /// How long a subject's sequence is kept after its last change once none of
    /// its rows is left (a later event of it starts again at 1).
    pub sequence_retention: Duration,
    /// Largest accepted body in bytes.
    pub max_body: usize,
    /// Bytes all request bodies being read may hold at once, before they are
    /// authenticated.
    pub body_budget: usize,
    /// Of those, what one client may hold.
    pub body_budget_per_client: usize,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Log output format.
    pub log_format: LogFormat,
    /// Longest wait for a request's headers, and for its body.
    pub read_timeout: Duration,
    /// Sources by name (the URL path segment).
    pub sources: BTreeMap<String, SourceConfig>,
}

/// One source: a URL path segment bound to one provider and its credentials.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Name, `[a-z0-9_]+`, served at `/webhooks/{name}`.
    pub name: String,
    /// Provider whose rules apply.
    pub provider: String,
    /// Accept webhooks without verification.
    pub allow_unsigned: bool,
    /// Override of the provider's timestamp window.
    pub timestamp_tolerance: Option<Duration>,
    /// How long the source may go without an accepted webhook before the
    /// `HookrelaySourceSilent` alert fires (exported per source).
    pub silence_threshold: Duration,
    /// Client networks allowed to post; empty means any.
    pub allow_ips: Vec<IpNet>,
    /// JSON paths redacted in published payloads; `None` means the provider default.
    pub redact: Option<Vec<String>>,
    /// Whether the relay recovers this source's missed webhooks from the provider's
    /// API (`recover`); `None`: `auto` when the provider has a recovery API and the
    /// source its credentials, else `off` (`docs/recovery.md`).
    pub recover: Option<RecoverMode>,
    /// Gaps shorter than this are left to the provider's own retries.
    pub recover_after: Duration,
    /// How long a subject may stay at a status that is not final before its
    /// provider is asked where it stands.
    pub stuck_after: Duration,
    /// The provider API's base URL; `None`: the provider's production host.
    pub api_url: Option<String>,
    /// Every key of the source as text (lists comma-joined), for the provider to read
    /// its own credential keys from. Values are [`Secret`]s: which keys are
    /// credentials is the provider's to say, so none is printed by accident.
    pub settings: BTreeMap<String, Secret>,
}

impl SourceConfig {
    /// A setting's text, if set and not blank.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .get(key)
            .map(Secret::expose)
            .filter(|v| !v.trim().is_empty())
    }

    /// A comma-separated setting as a list of non-empty, trimmed items.
    pub fn get_list(&self, key: &str) -> Vec<String> {
        self.get(key).map(split_list).unwrap_or_default()
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A day without an accepted webhook is a silent source unless the source says
/// otherwise: it catches a dead integration without paging for a quiet one.
const DEFAULT_SILENCE_THRESHOLD: &str = "24h";

/// A provider that keeps retrying covers a minute's outage on its own.
const DEFAULT_RECOVER_AFTER: &str = "60s";

/// A day at a status that is not final makes a subject worth asking about.
const DEFAULT_STUCK_AFTER: &str = "24h";

/// What a source's `recover` setting asks of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoverMode {
    /// Gaps and stuck subjects are recovered by the relay on its own.
    Auto,
    /// Only `hookrelay recover` and `POST /api/v1/recover` ask the provider.
    Manual,
    /// The provider is never asked; gaps are recorded and alerted on.
    Off,
}

impl RecoverMode {
    fn parse(key: &str, value: &str) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "manual" => Ok(Self::Manual),
            "off" => Ok(Self::Off),
            other => Err(invalid(
                key,
                format!("expected `auto`, `manual` or `off`, got `{other}`"),
            )),
        }
    }

    /// The setting's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
            Self::Off => "off",
        }
    }
}

/// Keys every source may set, whatever its provider (contract §6).
const COMMON_SOURCE_KEYS: &[&str] = &[
    "provider",
    "allow_unsigned",
    "timestamp_tolerance",
    "silence_threshold",
    "allow_ips",
    "redact",
    "recover",
    "recover_after",
    "stuck_after",
    "api_url",
];

impl Config {
    /// Loads the configuration from an optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// Loads from an optional file and the given environment (tests pass their own).
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let (top, mut sources) = match file {
            Some(path) => read_file(path)?,
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let mut top = top;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if NON_SETTING_ENV.contains(&name.as_str()) {
                continue;
            }
            if let Some(path) = name.strip_prefix(SOURCES_ENV_PREFIX) {
                let Some((source, key)) = path.split_once("__") else {
                    return Err(invalid(
                        name.clone(),
                        "expected HOOKRELAY_SOURCES__NAME__KEY (two underscores around NAME)",
                    ));
                };
                sources
                    .entry(source.to_ascii_lowercase())
                    .or_default()
                    .insert(key.to_ascii_lowercase(), value.clone());
            } else {
                let key = rest.to_ascii_lowercase();
                if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                    return Err(ConfigError::UnknownKey(name.clone()));
                }
                top.insert(key, value.clone());
            }
        }
        Self::from_maps(&top, sources)
    }

    fn from_maps(
        top: &BTreeMap<String, String>,
        raw_sources: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let get = |key: &str, default: &str| -> String {
            top.get(key).cloned().unwrap_or_else(|| default.to_owned())
        };
        let listen = parse_addr("listen", &get("listen", "0.0.0.0:8080"))?;
        let admin_listen = parse_addr("admin_listen", &get("admin_listen", "127.0.0.1:9090"))?;
        let admin_token = match top.get("admin_token").map(|t| t.trim()) {
            None | Some("") => None,
            // A short token can be guessed, and a guess costs one HTTP request.
            Some(token) if token.len() < 16 => {
                return Err(invalid(
                    "admin_token",
                    "must be at least 16 characters (e.g. `openssl rand -hex 32`)",
                ));
            }
            Some(token) => Some(Secret(token.to_owned())),
        };
        let admin_hosts = parse_host_names("admin_hosts", &get("admin_hosts", ""))?;
        let amqp_urls = parse_amqp_urls(&get("amqp_url", "amqp://guest:guest@127.0.0.1:5672/%2f"))?;
        let unrouted_queue_type = match get("unrouted_queue_type", "quorum").as_str() {
            "quorum" => QueueType::Quorum,
            "classic" => QueueType::Classic,
            other => {
                return Err(invalid(
                    "unrouted_queue_type",
                    format!("`{other}`: expected quorum or classic"),
                ));
            }
        };
        let exchange = get("exchange", "webhooks");
        if exchange.is_empty() || exchange.len() > 200 {
            return Err(invalid("exchange", "must be 1 to 200 characters"));
        }
        let outbox_url = get("outbox_url", "sqlite://data/outbox.db");
        let outbox_lease = parse_duration("outbox_lease", &get("outbox_lease", "10s"))?;
        if outbox_lease < Duration::from_secs(2) {
            return Err(invalid(
                "outbox_lease",
                "must be at least 2s (leases are renewed every fifth of it)",
            ));
        }
        let outbox_require_sync_standby = parse_bool(
            "outbox_require_sync_standby",
            &get("outbox_require_sync_standby", "false"),
        )?;
        let outbox_max_pending = match get("outbox_max_pending", "1000000").trim().parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(invalid(
                    "outbox_max_pending",
                    "expected a whole number of rows greater than zero",
                ));
            }
        };
        let retention = parse_duration("retention", &get("retention", "7d"))?;
        let sequence_retention =
            parse_duration("sequence_retention", &get("sequence_retention", "90d"))?;
        if sequence_retention < retention {
            return Err(invalid(
                "sequence_retention",
                "must be at least `retention`: a replay of a row still kept must find its subject's sequence",
            ));
        }
        let max_body = parse_size("max_body", &get("max_body", "1MiB"))?;
        let body_budget = parse_size("body_budget", &get("body_budget", "64MiB"))?;
        let body_budget_per_client = parse_size(
            "body_budget_per_client",
            &get("body_budget_per_client", "16MiB"),
        )?;
        if body_budget_per_client < max_body || body_budget < body_budget_per_client {
            return Err(invalid(
                "body_budget_per_client",
                format!(
                    "a client's share ({body_budget_per_client} bytes) must hold one body of max_body ({max_body} bytes) and fit in body_budget ({body_budget} bytes)"
                ),
            ));
        }
        let trusted_proxies = parse_cidrs("trusted_proxies", &get("trusted_proxies", ""))?;
        let read_timeout = parse_duration("read_timeout", &get("read_timeout", "30s"))?;
        if read_timeout.is_zero() {
            return Err(invalid("read_timeout", "must be greater than zero"));
        }
        let log_format = match get("log_format", "text").as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("`{other}`: expected text or json"),
                ));
            }
        };
        let mut sources = BTreeMap::new();
        for (name, settings) in raw_sources {
            let source = SourceConfig::from_settings(&name, settings)?;
            sources.insert(name, source);
        }
        Ok(Self {
            listen,
            admin_listen,
            admin_token,
            admin_hosts,
            amqp_urls,
            unrouted_queue_type,
            exchange,
            outbox_url: Secret(outbox_url),
            outbox_lease,
            outbox_require_sync_standby,
            outbox_max_pending,
            retention,
            sequence_retention,
            max_body,
            body_budget,
            body_budget_per_client,
            trusted_proxies,
            log_format,
            read_timeout,
            sources,
        })
    }
}

/// The kind of a queue the relay declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated over the cluster's nodes (RabbitMQ 3.8 and later).
    Quorum,
    /// On one node: lost to publishers while that node is down.
    Classic,
}

/// `amqp_url`: one URL, or several separated by commas (one per cluster node).
/// Each is checked alone, so a mistake names the URL's place, never its text
/// (it may hold a password).
fn parse_amqp_urls(text: &str) -> Result<Vec<Secret>, ConfigError> {
    let mut urls = Vec::new();
    for (i, url) in text.split(',').map(str::trim).enumerate() {
        let place = i + 1;
        if url.is_empty() {
            return Err(invalid(
                "amqp_url",
                format!("URL {place} is empty: separate the nodes' URLs by single commas"),
            ));
        }
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(invalid(
                "amqp_url",
                format!("URL {place}: expected amqp://… or amqps://…"),
            ));
        }
        urls.push(Secret(url.to_owned()));
    }
    Ok(urls)
}

/// Settings as text, by key.
type Settings = BTreeMap<String, String>;

fn read_file(path: &Path) -> Result<(Settings, BTreeMap<String, Settings>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            path: path.to_owned(),
            message: toml_problem(&text, &e),
        })?;
    let mut top = BTreeMap::new();
    let mut sources = BTreeMap::new();
    for (key, value) in table {
        if key == "sources" {
            let toml::Value::Table(defs) = value else {
                return Err(invalid("sources", "expected tables [sources.NAME]"));
            };
            for (name, def) in defs {
                let toml::Value::Table(def) = def else {
                    return Err(invalid(format!("sources.{name}"), "expected a table"));
                };
                let mut settings = BTreeMap::new();
                for (k, v) in def {
                    let text = value_text(&format!("sources.{name}.{k}"), &v)?;
                    settings.insert(k, text);
                }
                sources.insert(name, settings);
            }
        } else if TOP_LEVEL_KEYS.contains(&key.as_str()) {
            let text = value_text(&key, &value)?;
            top.insert(key, text);
        } else {
            return Err(ConfigError::UnknownKey(key));
        }
    }
    Ok((top, sources))
}

/// Where and what the TOML parser found wrong, without the parser's quote of the
/// line: that line may hold a secret (`sign_key = "…`).
fn toml_problem(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

/// TOML values as the text the environment form would carry; arrays are joined with
/// commas, matching the comma-separated environment form.
fn value_text(key: &str, value: &toml::Value) -> Result<String, ConfigError> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => {
            let parts = items
                .iter()
                .map(|item| match item {
                    toml::Value::Array(_) | toml::Value::Table(_) => {
                        Err(invalid(key, "lists may hold only plain values"))
                    }
                    other => value_text(key, other),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(parts.join(","))
        }
        toml::Value::Float(_) => Err(invalid(key, "write numbers as integers or strings")),
        toml::Value::Datetime(_) | toml::Value::Table(_) => {
            Err(invalid(key, "expected a string, integer, boolean or list"))
        }
    }
}

impl SourceConfig {
    /// A source from its settings as text. Only the keys every source shares are
    /// read here; the provider (`providers`) checks its own keys and that it exists.
    pub(crate) fn from_settings(
        name: &str,
        settings: BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(
                format!("sources.{name}"),
                "source names are lower case letters, digits and underscores",
            ));
        }
        let provider = settings
            .get("provider")
            .cloned()
            .unwrap_or_else(|| name.to_owned());
        let key = |k: &str| format!("sources.{name}.{k}");
        let allow_unsigned = parse_bool(
            &key("allow_unsigned"),
            settings.get("allow_unsigned").map_or("", String::as_str),
        )?;
        let timestamp_tolerance = settings
            .get("timestamp_tolerance")
            .map(|v| parse_duration(&key("timestamp_tolerance"), v))
            .transpose()?;
        let silence_threshold = parse_duration(
            &key("silence_threshold"),
            settings
                .get("silence_threshold")
                .map_or(DEFAULT_SILENCE_THRESHOLD, String::as_str),
        )?;
        let allow_ips = parse_cidrs(
            &key("allow_ips"),
            settings.get("allow_ips").map_or("", String::as_str),
        )?;
        let redact = settings.get("redact").map(|v| split_list(v));
        let recover = settings
            .get("recover")
            .filter(|v| !v.trim().is_empty())
            .map(|v| RecoverMode::parse(&key("recover"), v))
            .transpose()?;
        let duration_or = |k: &str, default: &str| {
            parse_duration(&key(k), settings.get(k).map_or(default, String::as_str))
        };
        let recover_after = duration_or("recover_after", DEFAULT_RECOVER_AFTER)?;
        let stuck_after = duration_or("stuck_after", DEFAULT_STUCK_AFTER)?;
        let api_url = settings
            .get("api_url")
            .map(|v| v.trim().trim_end_matches('/').to_owned())
            .filter(|v| !v.is_empty());
        if let Some(url) = &api_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(invalid(
                key("api_url"),
                "expected an http:// or https:// base URL",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            provider,
            allow_unsigned,
            timestamp_tolerance,
            silence_threshold,
            allow_ips,
            redact,
            recover,
            recover_after,
            stuck_after,
            api_url,
            settings: settings
                .into_iter()
                .map(|(key, value)| (key, Secret(value)))
                .collect(),
        })
    }

    /// Keys of this source that are neither common to every source nor in `known`
    /// (the provider's own keys): almost always typos.
    pub(crate) fn unknown_keys<'a>(
        &'a self,
        known: &'a [&'a str],
    ) -> impl Iterator<Item = &'a str> {
        self.settings
            .keys()
            .map(String::as_str)
            .filter(|key| !COMMON_SOURCE_KEYS.contains(key) && !known.contains(key))
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}`: expected IP:PORT, e.g. 0.0.0.0:8080"),
        )
    })
}

/// `true` or `false`; empty is `false`.
fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "" | "false" => Ok(false),
        "true" => Ok(true),
        other => Err(invalid(key, format!("`{other}`: expected true or false"))),
    }
}

/// Durations are humantime text (`7d`, `90s`, `1h 30m`) or a bare number of seconds.
fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(value)
        .map_err(|e| invalid(key, format!("`{value}`: {e} (examples: 120s, 7d)")))
}

fn parse_size(key: &str, value: &str) -> Result<usize, ConfigError> {
    let size: bytesize::ByteSize = value.trim().parse().map_err(|e| {
        invalid(
            key,
            format!("`{value}`: {e} (examples: 1MiB, 512KiB, 65536)"),
        )
    })?;
    let bytes = usize::try_from(size.as_u64()).map_err(|_| invalid(key, "too large"))?;
    if bytes == 0 {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(bytes)
}

/// A host name as the admin listener compares it: lower case, without a trailing
/// dot, an IPv6 address without its brackets.
pub(crate) fn normalize_host(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.to_ascii_lowercase()
}

/// A comma-separated list of host names (or IP addresses), each matched with any
/// port. A port, a wildcard or a URL is refused: it would not mean what it says.
fn parse_host_names(key: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    split_list(value)
        .into_iter()
        .map(|item| {
            let host = normalize_host(&item);
            let name = !host.is_empty()
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if name || host.parse::<std::net::IpAddr>().is_ok() {
                Ok(host)
            } else {
                Err(invalid(
                    key,
                    format!(
                        "`{item}` is not a host name: give names such as relay.internal, without a scheme, a port (any port is accepted) or a wildcard"
                    ),
                ))
            }
        })
        .collect()
}

fn parse_cidrs(key: &str, value: &str) -> Result<Vec<IpNet>, ConfigError> {
    split_list(value)
        .into_iter()
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(key, format!("`{item}` is not an IP address or CIDR")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn several_broker_urls_are_one_per_node_and_a_bad_one_is_named_by_its_place_not_its_text() {
        let urls =
            parse_amqp_urls("amqp://u:p1@n1:5672/%2f, amqp://u:p2@n2:5673/%2f").expect("two URLs");
        let urls: Vec<&str> = urls.iter().map(Secret::expose).collect();
        assert_eq!(urls, ["amqp://u:p1@n1:5672/%2f", "amqp://u:p2@n2:5673/%2f"]);
        for (text, problem) in [
            ("amqp://u:p1@n1/%2f,", "URL 2 is empty"),
            (
                "amqp://u:p1@n1/%2f,http://u:s3cret@n2",
                "URL 2: expected amqp://",
            ),
        ] {
            let error = parse_amqp_urls(text).expect_err(text).to_string();
            assert!(error.contains(problem), "{error}");
            assert!(
                !error.contains("s3cret") && !error.contains("p1"),
                "{error}"
            );
        }
    }

    #[test]
    fn defaults_need_no_file_and_no_variables() {
        let cfg = Config::load_from(None, &[]).expect("defaults are valid");
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(cfg.exchange, "webhooks");
        assert_eq!(cfg.outbox_url.expose(), "sqlite://data/outbox.db");
        assert_eq!(cfg.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(cfg.max_body, 1024 * 1024);
        assert_eq!(cfg.outbox_max_pending, 1_000_000);
        assert_eq!(cfg.outbox_lease, Duration::from_secs(10));
        for (key, value) in [
            ("HOOKRELAY_OUTBOX_MAX_PENDING", "0"),
            ("HOOKRELAY_OUTBOX_MAX_PENDING", "lots"),
            ("HOOKRELAY_OUTBOX_LEASE", "1s"),
        ] {
            let env = [(key.to_owned(), value.to_owned())];
            let err = Config::load_from(None, &env).map(|_| ()).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&key["HOOKRELAY_".len()..].to_ascii_lowercase()),
                "{key}={value}: {err}"
            );
        }
        assert!(
            cfg.sources.is_empty(),
            "no sources configured: `providers` enables its defaults"
        );
    }

    #[test]
    fn environment_source_names_and_keys_are_case_insensitive() {
        let cfg = Config::load_from(
            None,
            &env(&[
                ("HOOKRELAY_SOURCES__WP_EU__PROVIDER", "whitepay"),
                ("HOOKRELAY_SOURCES__WP_EU__WEBHOOK_TOKEN", "a, b"),
                ("HOOKRELAY_MAX_BODY", "64KiB"),
            ]),
        )
        .expect("valid");
        let source = &cfg.sources["wp_eu"];
        assert_eq!(source.provider, "whitepay");
        assert_eq!(source.get_list("webhook_token"), vec!["a", "b"]);
        assert_eq!(cfg.max_body, 64 * 1024);
        assert!(
            !cfg.sources.contains_key("whitepay"),
            "explicit sources replace the defaults"
        );
    }

    #[test]
    fn environment_overrides_file_keys_and_adds_to_its_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hookrelay.toml");
        std::fs::write(
            &path,
            "exchange = \"from-file\"\n[sources.shop]\nprovider = \"whitepay\"\nwebhook_token = [\"t1\", \"t2\"]\nallow_unsigned = false\n",
        )
        .expect("write");
        let cfg = Config::load_from(
            Some(&path),
            &env(&[
                ("HOOKRELAY_EXCHANGE", "from-env"),
                ("HOOKRELAY_SOURCES__SHOP__ALLOW_UNSIGNED", "true"),
            ]),
        )
        .expect("valid");
        assert_eq!(cfg.exchange, "from-env");
        let shop = &cfg.sources["shop"];
        assert_eq!(shop.get_list("webhook_token"), vec!["t1", "t2"]);
        assert!(shop.allow_unsigned);
    }

    #[test]
    fn secrets_never_show_in_debug_output_or_toml_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hookrelay.toml");
        std::fs::write(
            &path,
            "amqp_url = \"amqp://relay:pa55word@mq/%2f\"\n[sources.shop]\nprovider = \"whitepay\"\nwebhook_token = \"t0ken-s3cret\"\n",
        )
        .expect("write");
        let cfg = Config::load_from(Some(&path), &[]).expect("valid");
        let debug = format!("{cfg:?}");
        for secret in ["pa55word", "t0ken-s3cret"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert_eq!(
            cfg.sources["shop"].get("webhook_token"),
            Some("t0ken-s3cret")
        );
        std::fs::write(&path, "[sources.shop]\nwebhook_token = \"t0ken-s3cret\n").expect("write");
        let err = Config::load_from(Some(&path), &[]).map(|_| ()).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("t0ken-s3cret"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn admin_host_names_are_read_without_case_or_trailing_dot_and_ports_are_refused() {
        let cfg = Config::load_from(
            None,
            &env(&[("HOOKRELAY_ADMIN_HOSTS", "Relay.Internal., [::1], 10.0.0.7")]),
        )
        .expect("valid");
        assert_eq!(cfg.admin_hosts, ["relay.internal", "::1", "10.0.0.7"]);
        assert!(
            Config::load_from(None, &[])
                .expect("defaults")
                .admin_hosts
                .is_empty()
        );
        for bad in ["relay.internal:9090", "*.example", "http://relay", "a..b"] {
            let err = Config::load_from(None, &env(&[("HOOKRELAY_ADMIN_HOSTS", bad)]))
                .map(|_| ())
                .unwrap_err();
            assert!(err.to_string().contains("admin_hosts"), "{bad}: {err}");
            assert!(err.to_string().contains("not a host name"), "{bad}: {err}");
        }
    }

    #[test]
    fn typos_and_bad_values_are_rejected_with_the_key_named() {
        let err = Config::load_from(None, &env(&[("HOOKRELAY_LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("HOOKRELAY_LISTN"), "{err}");
        let err = Config::load_from(None, &env(&[("HOOKRELAY_MAX_BODY", "lots")])).unwrap_err();
        assert!(err.to_string().contains("max_body"), "{err}");
        let err = Config::load_from(
            None,
            &env(&[("HOOKRELAY_SOURCES__X__ALLOW_UNSIGNED", "yes")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("sources.x.allow_unsigned"),
            "{err}"
        );
    }
}
