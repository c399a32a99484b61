//! Sends a provider's [`ApiRequest`] and reads its answer, bounded: one request
//! takes at most [`TIMEOUT`], an answer at most [`MAX_ANSWER`] bytes, and no
//! redirect is followed (it would carry the credentials elsewhere).
//!
//! hyper's client with hyper-rustls rather than reqwest: reqwest's TLS needs a
//! process-wide rustls provider (or aws-lc), and the relay's other reqwest uses
//! (`hookrelay sample`, OTLP export) would then need one installed too.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::providers::api::{ApiAnswer, ApiError, ApiRequest};

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
    pub(crate) body: Bytes,
}

impl Answer {
    /// The answer as a provider reads it.
    pub(crate) fn as_api(&self) -> ApiAnswer<'_> {
        ApiAnswer {
            status: self.status,
            headers: &self.headers,
            body: &self.body,
        }
    }
}

/// The HTTP client of recovery: TLS with the system's roots, on rustls' ring
/// provider (the one the broker and PostgreSQL links use).
#[derive(Clone)]
pub(crate) struct Client(Hyper<HttpsConnector<HttpConnector>, Full<Bytes>>);

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
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self(Hyper::builder(TokioExecutor::new()).build(connector)))
    }

    /// Sends `request` to `base_url`; a failure to get an answer is transient.
    pub(crate) async fn send(
        &self,
        base_url: &str,
        request: &ApiRequest,
    ) -> Result<Answer, ApiError> {
        let url = format!("{base_url}{}", request.path);
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::Transient(format!("cannot reach the provider at {url}: {e}"))
        };
        let method = if request.method == "GET" {
            Method::GET
        } else {
            Method::POST
        };
        let mut built = Request::builder().method(method).uri(&url).header(
            "user-agent",
            concat!("hookrelay/", env!("CARGO_PKG_VERSION")),
        );
        for (name, value) in &request.headers {
            let name = HeaderName::from_static(name);
            let value = HeaderValue::from_str(value).map_err(|e| unreachable(&e))?;
            built = built.header(name, value);
        }
        let built = built
            .body(Full::new(Bytes::from(request.body.clone())))
            .map_err(|e| unreachable(&e))?;
        let exchange = async {
            let response = self.0.request(built).await.map_err(|e| unreachable(&e))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| {
                    ApiError::Transient(format!(
                        "cannot read the provider's answer from {url} (at most {MAX_ANSWER} bytes): {e}"
                    ))
                })?
                .to_bytes();
            Ok(Answer {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| {
            ApiError::Transient(format!(
                "the provider at {url} did not answer within {} s",
                TIMEOUT.as_secs()
            ))
        })?
    }
}
