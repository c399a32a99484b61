//! Who may use the admin API and the console (`/api/`, `/ui/`); the probes and
//! `/metrics` stay open.
//!
//! - With `HOOKRELAY_ADMIN_TOKEN` set: `Authorization: Bearer <token>`, or the
//!   session cookie the login form gives. The cookie is signed with a key derived
//!   from the token, so replicas that share the token accept each other's
//!   sessions and changing the token ends every session.
//! - Without it: served only when the admin listener is bound to a loopback
//!   address; on any other address, 403 naming the variable to set. And only to
//!   requests whose `Host` is a loopback name (`localhost`, `127.0.0.0/8`,
//!   `[::1]`, any port) or one of `HOOKRELAY_ADMIN_HOSTS`; others get 421. A page
//!   on a name its owner points at 127.0.0.1 (DNS rebinding) is same-origin with
//!   the listener in the browser's eyes, so without this rule it could read every
//!   stored body; its requests carry its own name as `Host`, which is how they
//!   are told apart. With a token the rule is not needed (the browser sends the
//!   session cookie only to the name that set it, and a page has no token), and
//!   not applied: Service names, pod addresses and proxies reach such a listener.
//!
//! A browser attaches cookies to requests other sites make, and on a loopback
//! listener anyone's browser on the machine is "authorized": so every POST proves
//! it comes from the console. A form carries a CSRF token (an HMAC of the
//! session, unreadable to other sites); an API call must be JSON, which a page
//! of another site cannot send without a preflight this listener never answers.
//! Both also refuse an `Origin` that is neither the listener's own (the `Host`
//! the request was admitted with) nor one of `HOOKRELAY_ADMIN_HOSTS`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use std::sync::Arc;

use super::Admin;
use crate::config::{Secret, normalize_host};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "hookrelay_session";
/// How long a console session lasts.
const SESSION_SECONDS: i64 = 12 * 3600;
/// The form field (and header) that carries the CSRF token.
pub(crate) const CSRF_FIELD: &str = "csrf";
/// Largest form body read to find its CSRF token.
const MAX_FORM: usize = 64 * 1024;

/// The access rules of one admin listener.
pub(crate) struct Access {
    token: Option<Secret>,
    loopback: bool,
    /// `HOOKRELAY_ADMIN_HOSTS`, normalized: the names besides the loopback ones
    /// that the console answers to without a token, and that a POST's `Origin`
    /// may name.
    hosts: Vec<String>,
    /// Signs session cookies and CSRF tokens.
    key: [u8; 32],
}

/// How a request was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// `Authorization: Bearer`: no ambient credential, no CSRF check needed.
    Bearer,
    /// The console's session cookie (its value).
    Session(String),
    /// No token configured, on a loopback listener.
    Local,
}

impl Access {
    /// The rules for a listener on a loopback address or not, with or without a
    /// token, and the host names configured besides the loopback ones.
    pub(crate) fn new(token: Option<Secret>, loopback: bool, hosts: Vec<String>) -> Self {
        use sha2::Digest;
        let key = match &token {
            Some(token) => {
                let mut hash = Sha256::new();
                hash.update(b"hookrelay admin session key\0");
                hash.update(token.expose().as_bytes());
                hash.finalize().into()
            }
            // Nothing to share with other replicas: a fresh key per process.
            None => rand::random(),
        };
        Self {
            token,
            loopback,
            hosts,
            key,
        }
    }

    /// Whether `authority` (a `Host` header: name and optional port) names a
    /// loopback host or a configured one.
    fn host_allowed(&self, authority: &str) -> bool {
        let Some(host) = host_of(authority) else {
            return false;
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || self.hosts.contains(&host)
    }

    /// Whether a POST's `Origin` names the console: the listener's own origin
    /// (the `host` the request was admitted with, port included, so another
    /// program's page on this machine does not pass) or a configured name (the
    /// console reached through a proxy under that name). Without an `Origin`
    /// (not a browser, or an old one) the other CSRF proofs decide.
    fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        // `null` (a sandboxed frame, a file) and anything else without a scheme
        // is no origin the console has.
        let Some((_, authority)) = origin.split_once("://") else {
            return false;
        };
        host.is_some_and(|host| authority.eq_ignore_ascii_case(host))
            || host_of(authority).is_some_and(|name| self.hosts.contains(&name))
    }

    fn sign(&self, what: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(what.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `token` is the admin token (constant time).
    pub(crate) fn token_matches(&self, token: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| bool::from(t.expose().as_bytes().ct_eq(token.as_bytes())))
    }

    /// A new session cookie's value.
    pub(crate) fn new_session(&self, now: i64) -> String {
        let expires = now + SESSION_SECONDS;
        format!("{expires}.{}", self.sign(&format!("session:{expires}")))
    }

    fn session_valid(&self, value: &str, now: i64) -> bool {
        let Some((expires, mac)) = value.split_once('.') else {
            return false;
        };
        let fresh = expires.parse::<i64>().is_ok_and(|at| at > now);
        let signed = self.sign(&format!("session:{expires}"));
        fresh && bool::from(signed.as_bytes().ct_eq(mac.as_bytes()))
    }

    /// The CSRF token the console's forms carry for this caller.
    pub(crate) fn csrf(&self, caller: &Caller) -> String {
        match caller {
            Caller::Session(session) => self.sign(&format!("csrf:{session}")),
            Caller::Local | Caller::Bearer => self.sign("csrf:local"),
        }
    }

    /// Who the request is from, or the answer to give it instead; `host` is the
    /// authority it was sent to (its `Host`).
    fn admit(&self, host: Option<&str>, headers: &HeaderMap, now: i64) -> Result<Caller, Refusal> {
        if self.token.is_none() {
            return if !self.loopback {
                Err(Refusal::NoToken)
            } else if host.is_some_and(|h| self.host_allowed(h)) {
                Ok(Caller::Local)
            } else {
                Err(Refusal::ForeignHost)
            };
        }
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            let given = auth
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            return if self.token_matches(given.trim()) {
                Ok(Caller::Bearer)
            } else {
                Err(Refusal::WrongToken)
            };
        }
        match cookie(headers, COOKIE) {
            Some(session) if self.session_valid(&session, now) => Ok(Caller::Session(session)),
            _ => Err(Refusal::NotLoggedIn),
        }
    }
}

/// Why a request is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No token is configured and the listener is not on loopback.
    NoToken,
    /// No token is configured and the request names a host that is neither a
    /// loopback name nor a configured one (DNS rebinding, or a missing setting).
    ForeignHost,
    /// A bearer token that is not the admin token.
    WrongToken,
    /// Neither a bearer token nor a valid session.
    NotLoggedIn,
    /// A POST without proof that it comes from the console.
    Csrf,
}

/// The value of cookie `name`.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The host of an authority (`name[:port]`, `[v6][:port]`), normalized; `None`
/// when it is not one (a port that is not a number, stray characters).
fn host_of(authority: &str) -> Option<String> {
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 address is the one host with colons, and only in brackets.
        Some(bracketed) => {
            let (v6, after) = bracketed.split_once(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            (
                v6,
                if after.is_empty() {
                    ""
                } else {
                    after.strip_prefix(':')?
                },
            )
        }
        None => {
            let (name, port) = authority.split_once(':').unwrap_or((authority, ""));
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !name_ok {
                return None;
            }
            (name, port)
        }
    };
    (port.is_empty() || port.parse::<u16>().is_ok()).then(|| normalize_host(host))
}

/// The authority a request was sent to: its `Host`, or for HTTP/2 the
/// `:authority` the URI carries.
fn request_host(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
}

fn refuse(refusal: Refusal, api: bool, path_and_query: &str) -> Response {
    let (status, message) = match refusal {
        Refusal::NoToken => (
            StatusCode::FORBIDDEN,
            "the admin API and console are served without a token only on a loopback admin address: set HOOKRELAY_ADMIN_TOKEN, or bind HOOKRELAY_ADMIN_LISTEN to 127.0.0.1",
        ),
        // 421 Misdirected Request: this listener does not answer for that name.
        Refusal::ForeignHost => (
            StatusCode::MISDIRECTED_REQUEST,
            "this request's Host is not a name the admin API and console answer to without a token (localhost, 127.0.0.1, [::1], or one of HOOKRELAY_ADMIN_HOSTS): open them under one of those names, add the name you use to HOOKRELAY_ADMIN_HOSTS, or set HOOKRELAY_ADMIN_TOKEN",
        ),
        Refusal::WrongToken => (
            StatusCode::UNAUTHORIZED,
            "the bearer token is not the admin token (HOOKRELAY_ADMIN_TOKEN)",
        ),
        Refusal::NotLoggedIn => (
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <HOOKRELAY_ADMIN_TOKEN>, or log in at /ui/login",
        ),
        Refusal::Csrf => (
            StatusCode::FORBIDDEN,
            "refused a POST that did not come from the console: API calls must send Content-Type: application/json, console forms their csrf field; reload the page and try again",
        ),
    };
    if !api && refusal == Refusal::NotLoggedIn {
        let next = encode(path_and_query);
        return Redirect::to(&format!("/ui/login?next={next}")).into_response();
    }
    let mut response =
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Percent-encodes `text` for a URL path segment or query value.
pub(crate) fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The middleware in front of `/api/` and `/ui/` (but not `/ui/login`): admits
/// the caller, checks a POST's CSRF proof, and hands the [`Caller`] to the
/// handler as a request extension.
pub(crate) async fn guard(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/ui/", |p| p.as_str())
        .to_owned();
    let api = path_and_query.starts_with("/api/");
    let now = crate::clock::now_micros() / 1_000_000;
    let host = request_host(&request);
    let caller = match admin.access.admit(host, request.headers(), now) {
        Ok(caller) => caller,
        Err(refusal) => return refuse(refusal, api, &path_and_query),
    };
    let mut request = request;
    if request.method() == Method::POST && caller != Caller::Bearer {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or(""));
        if !admin.access.origin_allowed(origin, request_host(&request)) {
            return refuse(Refusal::Csrf, api, &path_and_query);
        }
        if api {
            let json = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if !json {
                return refuse(Refusal::Csrf, api, &path_and_query);
            }
        } else {
            let (parts, body) = request.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
                return (StatusCode::PAYLOAD_TOO_LARGE, "form too large\n").into_response();
            };
            let expected = admin.access.csrf(&caller);
            let given = form_field(&bytes, CSRF_FIELD);
            if !given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes()))) {
                return refuse(Refusal::Csrf, api, &path_and_query);
            }
            request = Request::from_parts(parts, Body::from(bytes));
        }
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// A field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value of a new session.
pub(crate) fn session_cookie(value: &str) -> String {
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}")
}

/// The `Set-Cookie` value that ends a session.
pub(crate) fn expired_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token() -> Access {
        Access::new(
            Some(Secret::from("0123456789abcdef".to_owned())),
            false,
            Vec::new(),
        )
    }

    fn local(hosts: &[&str]) -> Access {
        Access::new(None, true, hosts.iter().map(|h| (*h).to_owned()).collect())
    }

    #[test]
    fn a_session_is_valid_until_it_expires_and_only_with_its_signature() {
        let access = with_token();
        let session = access.new_session(1000);
        assert!(access.session_valid(&session, 1001));
        assert!(!access.session_valid(&session, 1000 + SESSION_SECONDS));
        let forged = format!("{}.{}", 1000 + SESSION_SECONDS * 10, "00".repeat(32));
        assert!(!access.session_valid(&forged, 1001));
        let other = Access::new(
            Some(Secret::from("another-token-entirely".to_owned())),
            false,
            Vec::new(),
        );
        assert!(
            !other.session_valid(&session, 1001),
            "a new token ends sessions"
        );
    }

    #[test]
    fn without_a_token_only_a_loopback_listener_lets_anyone_in() {
        let headers = HeaderMap::new();
        let host = Some("127.0.0.1:9090");
        assert_eq!(local(&[]).admit(host, &headers, 0), Ok(Caller::Local));
        assert_eq!(
            Access::new(None, false, Vec::new()).admit(host, &headers, 0),
            Err(Refusal::NoToken)
        );
        assert_eq!(
            with_token().admit(host, &headers, 0),
            Err(Refusal::NotLoggedIn)
        );
    }

    #[test]
    fn without_a_token_only_loopback_and_configured_host_names_are_let_in() {
        let headers = HeaderMap::new();
        let access = local(&["relay.internal"]);
        let loopback_or_configured = [
            "localhost",
            "LOCALHOST:9090",
            "localhost.:9090",
            "127.0.0.1:9090",
            "127.255.0.9",
            "[::1]:9090",
            "[::1]",
            "relay.internal:443",
            "Relay.Internal",
        ];
        let foreign = [
            "attacker.example:9090",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:9090",
            "[::2]:9090",
            "[::1",
            "::1",
            "localhost:http",
            "localhost:99999",
            "user@localhost",
            "",
        ];
        let admitted = loopback_or_configured.map(|h| (h, Ok(Caller::Local)));
        let refused = foreign.map(|h| (h, Err(Refusal::ForeignHost)));
        for (host, expected) in admitted.into_iter().chain(refused) {
            assert_eq!(access.admit(Some(host), &headers, 0), expected, "{host}");
        }
        assert_eq!(
            access.admit(None, &headers, 0),
            Err(Refusal::ForeignHost),
            "no Host at all"
        );
        // With a token, the token decides: Service names and pod addresses reach it.
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef".parse().expect("value"),
        );
        assert_eq!(
            with_token().admit(Some("hookrelay.monitoring.svc:9090"), &bearer, 0),
            Ok(Caller::Bearer)
        );
    }

    #[test]
    fn a_wrong_bearer_token_is_refused_and_the_right_one_admitted() {
        let access = with_token();
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer nope".parse().expect("value"));
        assert_eq!(access.admit(None, &headers, 0), Err(Refusal::WrongToken));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef".parse().expect("value"),
        );
        assert_eq!(access.admit(None, &headers, 0), Ok(Caller::Bearer));
    }

    #[test]
    fn an_origin_must_be_the_listeners_own_or_a_configured_name() {
        let access = local(&["relay.internal"]);
        let host = Some("127.0.0.1:9090");
        for (origin, allowed) in [
            (None, true),
            (Some("http://127.0.0.1:9090"), true),
            (Some("https://relay.internal"), true),
            (Some("https://relay.internal:8443"), true),
            (Some("https://evil.example"), false),
            (Some("http://127.0.0.1:3000"), false),
            (Some("http://localhost:9090"), false),
            (Some("null"), false),
            (Some(""), false),
        ] {
            assert_eq!(
                access.origin_allowed(origin, host),
                allowed,
                "Origin {origin:?}"
            );
        }
        assert!(!access.origin_allowed(Some("http://127.0.0.1:9090"), None));
    }
}
