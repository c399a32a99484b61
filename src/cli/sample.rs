//! `hookrelay sample PROVIDER`: posts a correctly signed example webhook to a running
//! relay, signed with the credentials configured for the source.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::providers;

/// Arguments of `hookrelay sample`.
#[derive(Debug, clap::Args)]
pub(crate) struct SampleArgs {
    /// Provider to imitate: wcheckout, oslpay, ccpayment, whitepay or standard.
    provider: String,
    /// Relay base URL (the webhook path is added) or a full `/webhooks/…` URL.
    /// Default: the configured HOOKRELAY_LISTEN port on 127.0.0.1.
    #[arg(long)]
    url: Option<String>,
    /// Source to sign for. Default: the source named like the provider, else the
    /// only source using that provider.
    #[arg(long)]
    source: Option<String>,
    /// PEM (PKCS#8) private key to sign oslpay samples with.
    #[arg(long, value_name = "FILE")]
    private_key: Option<PathBuf>,
}

/// Why `hookrelay sample` could not post its webhook.
#[derive(Debug, thiserror::Error)]
pub enum SampleCommandError {
    /// No such provider.
    #[error("unknown provider `{0}`; known: {1}")]
    UnknownProvider(String, String),
    /// No source to sign for.
    #[error("{0}")]
    NoSource(String),
    /// The sources do not build.
    #[error("invalid configuration: {0}")]
    Config(crate::config::ConfigError),
    /// The key file could not be read.
    #[error("cannot read {path}: {error}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Signing failed.
    #[error("cannot sign the sample: {0}")]
    Sign(providers::SampleError),
    /// The relay could not be reached.
    #[error("cannot reach the relay at {url}: {error} (is `hookrelay serve` running?)")]
    Http {
        /// The URL.
        url: String,
        /// The client error.
        error: reqwest::Error,
    },
}

/// `hookrelay sample`: builds, signs and posts one example webhook, prints what the
/// relay answered, and succeeds when that was a 2xx.
pub(crate) async fn run(
    config: &Config,
    args: &SampleArgs,
) -> Result<ExitCode, SampleCommandError> {
    let spec = providers::find(&args.provider).ok_or_else(|| {
        SampleCommandError::UnknownProvider(args.provider.clone(), providers::known_names())
    })?;
    let sources = providers::build_sources(config).map_err(SampleCommandError::Config)?;
    let source = match &args.source {
        Some(name) => sources.get(name).map(|s| &s.config).ok_or_else(|| {
            SampleCommandError::NoSource(format!("no source `{name}` in the configuration"))
        })?,
        None => sources.get(spec.name).map(|s| &s.config).map_or_else(
            || {
                let mut matching = sources
                    .values()
                    .map(|s| &s.config)
                    .filter(|s| s.provider == spec.name);
                match (matching.next(), matching.next()) {
                    (Some(only), None) => Ok(only),
                    (None, _) => Err(SampleCommandError::NoSource(format!(
                        "no source uses provider `{}`; configure one or pass --source",
                        spec.name
                    ))),
                    (Some(_), Some(_)) => Err(SampleCommandError::NoSource(format!(
                        "several sources use provider `{}`; pass --source NAME",
                        spec.name
                    ))),
                }
            },
            Ok,
        )?,
    };
    let private_key = args
        .private_key
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|error| SampleCommandError::KeyFile {
                path: path.clone(),
                error,
            })
        })
        .transpose()?;
    let unique = uuid::Uuid::new_v4().to_string();
    let ctx = providers::SampleContext {
        source,
        now: time::OffsetDateTime::now_utc(),
        unique: &unique,
        private_key_pem: private_key.as_deref(),
    };
    let body = (spec.sample_body)(&ctx);
    let headers = (spec.sign)(&ctx, &body).map_err(SampleCommandError::Sign)?;
    let url = match &args.url {
        Some(url) if url.contains("/webhooks/") => url.clone(),
        Some(base) => format!("{}/webhooks/{}", base.trim_end_matches('/'), source.name),
        None => format!(
            "http://127.0.0.1:{}/webhooks/{}",
            config.listen.port(),
            source.name
        ),
    };
    let client = reqwest::Client::new();
    let mut request = client.post(&url).body(body);
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let http = |error| SampleCommandError::Http {
        url: url.clone(),
        error,
    };
    let response = request.send().await.map_err(http)?;
    let status = response.status();
    let body = response.text().await.map_err(http)?;
    println!("POST {url}");
    println!("{}", status.as_u16());
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
