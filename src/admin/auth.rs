//! Who may use the admin API and the console (`/api/`, `/ui/`); the probes and
//! `/metrics` stay open.
//!
//! - With `HOOKRELAY_ADMIN_TOKEN` set: `Authorization: Bearer <token>`, or the
//!   session cookie the login form gives. The cookie is signed with a key derived
//!   from the token, so replicas that share the token accept each other's
//!   sessions and changing the token ends every session.
//! - Without it: served only when the admin listener is bound to a loopback
//!   address; on any other address, 403 naming the variable to set.
//!
//! A browser attaches cookies to requests other sites make, and on a loopback
//! listener anyone's browser on the machine is "authorized": so every POST proves
//! it comes from the console. A form carries a CSRF token (an HMAC of the
//! session, unreadable to other sites); an API call must be JSON, which a page
//! of another site cannot send without a preflight this listener never answers.
//! Both also refuse an `Origin` other than the listener's own.

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
use crate::config::Secret;

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
    /// token.
    pub(crate) fn new(token: Option<Secret>, loopback: bool) -> Self {
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
            key,
        }
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

    /// Who the request is from, or the answer to give it instead.
    fn admit(&self, headers: &HeaderMap, now: i64) -> Result<Caller, Refusal> {
        if self.token.is_none() {
            return if self.loopback {
                Ok(Caller::Local)
            } else {
                Err(Refusal::NoToken)
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

/// Whether the request names an `Origin` other than the host it was sent to.
fn foreign_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    origin_host != host
}

fn refuse(refusal: Refusal, api: bool, path_and_query: &str) -> Response {
    let (status, message) = match refusal {
        Refusal::NoToken => (
            StatusCode::FORBIDDEN,
            "the admin API and console are served without a token only on a loopback admin address: set HOOKRELAY_ADMIN_TOKEN, or bind HOOKRELAY_ADMIN_LISTEN to 127.0.0.1",
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
    let caller = match admin.access.admit(request.headers(), now) {
        Ok(caller) => caller,
        Err(refusal) => return refuse(refusal, api, &path_and_query),
    };
    let mut request = request;
    if request.method() == Method::POST && caller != Caller::Bearer {
        if foreign_origin(request.headers()) {
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
        Access::new(Some(Secret::from("0123456789abcdef".to_owned())), false)
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
        );
        assert!(
            !other.session_valid(&session, 1001),
            "a new token ends sessions"
        );
    }

    #[test]
    fn without_a_token_only_a_loopback_listener_lets_anyone_in() {
        let headers = HeaderMap::new();
        assert_eq!(
            Access::new(None, true).admit(&headers, 0),
            Ok(Caller::Local)
        );
        assert_eq!(
            Access::new(None, false).admit(&headers, 0),
            Err(Refusal::NoToken)
        );
        assert_eq!(with_token().admit(&headers, 0), Err(Refusal::NotLoggedIn));
    }

    #[test]
    fn a_wrong_bearer_token_is_refused_and_the_right_one_admitted() {
        let access = with_token();
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer nope".parse().expect("value"));
        assert_eq!(access.admit(&headers, 0), Err(Refusal::WrongToken));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef".parse().expect("value"),
        );
        assert_eq!(access.admit(&headers, 0), Ok(Caller::Bearer));
    }

    #[test]
    fn an_origin_other_than_the_host_is_foreign() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:9090".parse().expect("value"));
        assert!(!foreign_origin(&headers));
        headers.insert(
            header::ORIGIN,
            "http://127.0.0.1:9090".parse().expect("value"),
        );
        assert!(!foreign_origin(&headers));
        headers.insert(
            header::ORIGIN,
            "https://evil.example".parse().expect("value"),
        );
        assert!(foreign_origin(&headers));
    }
}
