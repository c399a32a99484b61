//! A client of the relay's admin API and console: bearer token or session
//! cookie, redirects not followed (the tests check them).

use std::net::SocketAddr;

use reqwest::header::HeaderMap;

use super::relay::Relay;

/// One answer: status, headers, body.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body text.
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Talks to one relay's admin listener.
#[derive(Clone)]
pub struct Admin {
    base: String,
    client: reqwest::Client,
    /// Sent as `Authorization: Bearer …` when set.
    pub bearer: Option<String>,
    /// Sent as the `Cookie` header when set.
    pub cookie: Option<String>,
    /// Sent as the `Host` header when set (a browser sends the name in its address
    /// bar: another name that resolves to the listener, in a DNS rebinding).
    pub host: Option<String>,
    /// Sent as the `Origin` header when set (a browser sends the page's origin).
    pub origin: Option<String>,
}

impl Admin {
    /// A client of `relay`'s admin listener.
    pub fn of(relay: &Relay) -> Self {
        Self::at(relay.admin)
    }

    /// A client of the admin listener at `addr` (an unspecified address is
    /// reached on loopback).
    pub fn at(addr: SocketAddr) -> Self {
        let addr = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            bearer: None,
            cookie: None,
            host: None,
            origin: None,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", cookie);
        }
        if let Some(host) = &self.host {
            request = request.header("Host", host);
        }
        if let Some(origin) = &self.origin {
            request = request.header("Origin", origin);
        }
        request
    }

    async fn send(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("admin request");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("body"),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        Self::send(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Answer {
        Self::send(
            self.request(reqwest::Method::POST, path)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// `POST path` with form fields.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let body = serde_urlencoded::to_string(fields).expect("form");
        Self::send(
            self.request(reqwest::Method::POST, path)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }
}
