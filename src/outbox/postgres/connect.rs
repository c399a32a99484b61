//! `postgres://` URLs: libpq's form, with `sslmode` handled here so that
//! `verify-full` exists (tokio-postgres knows only disable, prefer and require) and
//! every mode runs on rustls.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::outbox::OutboxError;

/// How long a new connection may take before the caller gets a 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the URL's `sslmode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tls {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, its certificate not checked (libpq's default).
    Prefer,
    /// TLS always, the certificate not checked: encrypted, but not safe from a
    /// machine in the middle (libpq's meaning).
    Require,
    /// TLS always, the chain checked against the system's roots and `sslrootcert`,
    /// and the host name against the certificate.
    VerifyFull,
}

/// A parsed outbox URL: the driver's config (password inside, never printed) and
/// the TLS settings taken out of it.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: Tls,
    root_cert: Option<String>,
}

impl Target {
    /// Parses `postgres://user:password@host:port/db?sslmode=…&sslrootcert=…`.
    pub(super) fn parse(url: &str) -> Result<Self, OutboxError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut tls = Tls::Prefer;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("sslmode", mode) => {
                    tls = match mode {
                        "disable" => Tls::Disable,
                        "prefer" => Tls::Prefer,
                        "require" => Tls::Require,
                        "verify-full" => Tls::VerifyFull,
                        _ => {
                            return Err(OutboxError::InvalidUrl(
                                "sslmode must be disable, prefer, require or verify-full",
                            ));
                        }
                    }
                }
                ("sslrootcert", path) => root_cert = Some(path.to_owned()),
                _ => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        // The driver's own message could quote the URL; ours names the problem only.
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            OutboxError::InvalidUrl(
                "not a valid postgres:// URL (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)",
            )
        })?;
        if config.get_hosts().is_empty() {
            return Err(OutboxError::InvalidUrl("the postgres:// URL names no host"));
        }
        config.ssl_mode(match tls {
            Tls::Disable => SslMode::Disable,
            Tls::Prefer => SslMode::Prefer,
            Tls::Require | Tls::VerifyFull => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("hookrelay");
        }
        // The relay gives up on a statement after its own bound and drops the
        // future, but the server would go on running it: a publisher retrying a
        // fetch that timed out, or a count repeated every second, then piles up
        // statements that take the CPU the next ones need. The server stops them a
        // little after the relay has given up.
        let server_bound = format!(
            "-c statement_timeout={}",
            super::error::SERVER_STATEMENT_TIMEOUT.as_millis()
        );
        let options = match config.get_options() {
            Some(own) => format!("{own} {server_bound}"),
            None => server_bound,
        };
        config.options(&options);
        // A link cut without a reset is noticed by the kernel, not only by our
        // timeouts.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        Ok(Self {
            config,
            tls,
            root_cert,
        })
    }

    /// `postgres://user@host:port/db?sslmode=…`: what may be shown of the URL.
    pub(super) fn describe(&self) -> String {
        // Every host of a multi-host URL with its port, in the order they are
        // tried.
        let ports = self.config.get_ports();
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let host = match host {
                    tokio_postgres::config::Host::Tcp(host) => host.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                // One port given serves every host, as the driver uses it.
                let port = match ports {
                    [one] => *one,
                    ports => ports.get(i).copied().unwrap_or(5432),
                };
                format!("{host}:{port}")
            })
            .collect();
        let hosts = hosts.join(",");
        let user = self.config.get_user().unwrap_or("");
        let db = self.config.get_dbname().unwrap_or(user);
        let mode = match self.tls {
            Tls::Disable => "disable",
            Tls::Prefer => "prefer",
            Tls::Require => "require",
            Tls::VerifyFull => "verify-full",
        };
        let session = match self.config.get_target_session_attrs() {
            tokio_postgres::config::TargetSessionAttrs::ReadWrite => {
                "&target_session_attrs=read-write"
            }
            _ => "",
        };
        format!("postgres://{user}@{hosts}/{db}?sslmode={mode}{session}")
    }

    /// The rustls connector for [`Self::tls`].
    pub(super) fn connector(&self) -> Result<MakeRustlsConnect, OutboxError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(format_args!("{e}")))?;
        let config = if self.tls == Tls::VerifyFull {
            let mut roots = rustls::RootCertStore::empty();
            // Roots that fail to load are skipped: `sslrootcert` may be all there is.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if let Some(path) = &self.root_cert {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| tls_error(format_args!("cannot read sslrootcert {path}: {e}")))?;
                for cert in certs {
                    let cert = cert
                        .map_err(|e| tls_error(format_args!("bad certificate in {path}: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| tls_error(format_args!("bad certificate in {path}: {e}")))?;
                }
            }
            if roots.is_empty() {
                return Err(tls_error(
                    "sslmode=verify-full found no root certificate: set sslrootcert=PATH",
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth()
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

fn tls_error(detail: impl std::fmt::Display) -> OutboxError {
    OutboxError::Storage(crate::outbox::Fault::new(
        crate::outbox::FaultKind::Other,
        format!("cannot set up TLS for the outbox: {detail}"),
    ))
}

/// `sslmode=prefer|require`: the handshake's signatures are checked (the session is
/// really encrypted with the key of the certificate shown) but not who signed the
/// certificate, as libpq does in those modes.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_the_url_and_the_password_never_shown() {
        let target = Target::parse(
            "postgres://app:s3cret@db.internal:6432/outbox?sslmode=verify-full&sslrootcert=/ca.pem&application_name=relay-a",
        )
        .map_err(|e| e.to_string())
        .expect("parses");
        assert_eq!(target.tls, Tls::VerifyFull);
        assert_eq!(target.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(target.config.get_application_name(), Some("relay-a"));
        let shown = target.describe();
        assert_eq!(
            shown,
            "postgres://app@db.internal:6432/outbox?sslmode=verify-full"
        );
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn a_multi_host_url_shows_every_host_and_the_session_it_wants_never_a_password() {
        let target = Target::parse(
            "postgres://app:s3cret@pg-a:5432,pg-b:5433/outbox?target_session_attrs=read-write",
        )
        .expect("parses");
        let shown = target.describe();
        assert_eq!(
            shown,
            "postgres://app@pg-a:5432,pg-b:5433/outbox?sslmode=prefer&target_session_attrs=read-write"
        );
        assert!(!shown.contains("s3cret"));
        // A host without a port has the default one.
        let default_port = Target::parse("postgres://app@pg-a,pg-b:6432/outbox").expect("parses");
        assert_eq!(
            default_port.describe(),
            "postgres://app@pg-a:5432,pg-b:6432/outbox?sslmode=prefer"
        );
    }

    #[test]
    fn the_server_stops_statements_the_relay_gave_up_on_and_keeps_the_urls_options() {
        let bound = format!(
            "-c statement_timeout={}",
            super::super::error::SERVER_STATEMENT_TIMEOUT.as_millis()
        );
        let plain = Target::parse("postgres://app@h/db").expect("url");
        assert_eq!(plain.config.get_options(), Some(bound.as_str()));
        let own = Target::parse("postgres://app@h/db?options=-c%20search_path%3Dhr").expect("url");
        assert_eq!(
            own.config.get_options(),
            Some(format!("-c search_path=hr {bound}").as_str())
        );
        assert!(
            super::super::error::SERVER_STATEMENT_TIMEOUT > super::super::error::STATEMENT_TIMEOUT,
            "the server must not stop a statement the relay still waits for"
        );
    }

    #[test]
    fn unknown_ssl_modes_and_broken_urls_are_refused_without_echoing_them() {
        for url in [
            "postgres://app:s3cret@h/db?sslmode=verify-ca",
            "postgres://app:s3cret@h:notaport/db",
        ] {
            let err = Target::parse(url).err().expect("refused").to_string();
            assert!(!err.contains("s3cret"), "{err}");
        }
        assert_eq!(
            Target::parse("postgresql://h/db").map(|t| t.tls).ok(),
            Some(Tls::Prefer),
            "libpq's default"
        );
    }
}
