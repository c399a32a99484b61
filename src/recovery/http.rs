//! Sends a provider's [`ApiRequest`] and reads its answer, bounded: one request
//! takes at most [`TIMEOUT`], an answer at most [`MAX_ANSWER`] bytes, and no
//! redirect is followed (it would carry the credentials elsewhere).

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;

use crate::providers::api::{ApiError, ApiRequest};

/// The longest a provider's answer may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(15);

/// The largest answer read; a status or resend answer is a few KiB.
const MAX_ANSWER: usize = 1024 * 1024;

/// A provider's answer as received.
pub(crate) struct Answer {
    /// HTTP status.
    pub(crate) status: u16,
    /// Headers.
    pub(crate) headers: HeaderMap,
    /// Body, at most [`MAX_ANSWER`] bytes.
    pub(crate) body: Vec<u8>,
}

/// The HTTP client of recovery: TLS with the system's roots, on rustls' ring
/// provider (the one the broker and PostgreSQL links use).
#[derive(Clone)]
pub(crate) struct Client(reqwest::Client);

impl Client {
    /// A client, or why none could be made.
    pub(crate) fn new() -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        // A root that does not load is skipped, as the system's other clients do.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// Sends `request` to `base_url`; a failure to get an answer is transient.
    pub(crate) async fn send(
        &self,
        base_url: &str,
        request: &ApiRequest,
    ) -> Result<Answer, ApiError> {
        let url = format!("{base_url}{}", request.path);
        let method = match request.method {
            "GET" => reqwest::Method::GET,
            _ => reqwest::Method::POST,
        };
        let mut builder = self.0.request(method, &url);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body.clone());
        }
        let unreachable = |e: reqwest::Error| {
            ApiError::Transient(format!("cannot reach the provider at {url}: {e}"))
        };
        let mut response = builder.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(ApiError::Transient(format!(
                    "the provider's answer from {url} is larger than {MAX_ANSWER} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}
