//! A fake CCPayment written from its documented v2 formats (`docs/recovery.md`):
//! it sends signed webhooks to a relay and remembers which ones did not get a
//! 2xx, and it serves the API recovery uses on loopback: `webhook/resend`
//! (signature and two-minute timestamp checked, one call a minute, windows of at
//! most an hour, a signed answer) and `getAppDepositRecord`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The app id the fake and the relays of these tests share.
pub const CC_APP_ID: &str = "202302010636261620672405236006912";

/// How the fake answers API calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// As CCPayment documents.
    Good,
    /// With a `Sign` that does not match the body (and nothing resent).
    BadSignature,
    /// HTTP 500 (and nothing resent).
    ServerError,
}

/// One webhook the fake sent, and whether it got a 2xx.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The body.
    pub body: String,
    /// When the transaction was created, Unix seconds.
    pub created: i64,
    /// Whether any delivery of it got a 2xx.
    pub delivered: bool,
}

/// One resend call the fake took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendCall {
    /// `startTimestamp`, `endTimestamp`.
    pub window: (i64, i64),
    /// The code it answered.
    pub code: i64,
    /// When it came.
    pub at: Instant,
}

struct FakeState {
    secret: String,
    relay: String,
    sent: Vec<Sent>,
    resends: Vec<ResendCall>,
    last_resend: Option<Instant>,
    records: HashMap<String, String>,
    lookups: HashMap<String, u32>,
    lookup_delay: Duration,
    answers: Answers,
    last_resent_ack: Option<Instant>,
}

/// The fake, serving on loopback until dropped.
pub struct FakeCcpayment {
    /// Its base URL (the source's `api_url`).
    pub url: String,
    state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCcpayment {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(CC_APP_ID.as_bytes());
    mac.update(timestamp.as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A v2 `ApiDeposit` webhook body.
pub fn cc_deposit(record_id: &str, status: &str) -> String {
    format!(
        r#"{{"type":"ApiDeposit","msg":{{"recordId":"{record_id}","orderId":"o-{record_id}","coinId":1280,"coinSymbol":"USDT","amount":"10.000000000000000001","status":"{status}","isFlaggedAsRisky":false}}}}"#
    )
}

impl FakeCcpayment {
    /// Starts the fake, its webhooks signed with `secret`.
    pub async fn start(secret: &str) -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            secret: secret.to_owned(),
            relay: String::new(),
            sent: Vec::new(),
            resends: Vec::new(),
            last_resend: None,
            records: HashMap::new(),
            lookups: HashMap::new(),
            lookup_delay: Duration::ZERO,
            answers: Answers::Good,
            last_resent_ack: None,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route("/ccpayment/v2/webhook/resend", post(resend))
            .route("/ccpayment/v2/getAppDepositRecord", post(record))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake state")
    }

    /// Where webhooks go from now on.
    pub fn deliver_to(&self, url: &str) {
        self.state().relay = url.to_owned();
    }

    /// Signs webhooks and checks calls with `secret` from now on.
    pub fn rotate_secret(&self, secret: &str) {
        self.state().secret = secret.to_owned();
    }

    /// How the API answers from now on.
    pub fn answer(&self, answers: Answers) {
        self.state().answers = answers;
    }

    /// The record `getAppDepositRecord` answers for its id, as JSON.
    pub fn set_record(&self, record_id: &str, record: &str) {
        self.state()
            .records
            .insert(record_id.to_owned(), record.to_owned());
    }

    /// How long `getAppDepositRecord` takes to answer.
    pub fn delay_lookups(&self, delay: Duration) {
        self.state().lookup_delay = delay;
    }

    /// Sends a webhook of a transaction created now; the relay's status, or
    /// `None` when it could not be reached.
    pub async fn send(&self, body: String) -> Option<u16> {
        let (relay, secret) = {
            let mut state = self.state();
            state.sent.push(Sent {
                body: body.clone(),
                created: now(),
                delivered: false,
            });
            (state.relay.clone(), state.secret.clone())
        };
        let status = deliver(&relay, &secret, &body).await;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            mark_delivered(&self.state, &body);
        }
        status
    }

    /// The resend calls taken so far.
    pub fn resends(&self) -> Vec<ResendCall> {
        self.state().resends.clone()
    }

    /// The webhooks sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.state().sent.clone()
    }

    /// When the relay last acked a resent webhook.
    pub fn last_resent_ack(&self) -> Option<Instant> {
        self.state().last_resent_ack
    }

    /// How often `record_id` was looked up.
    pub fn lookups(&self, record_id: &str) -> u32 {
        self.state().lookups.get(record_id).copied().unwrap_or(0)
    }
}

fn mark_delivered(state: &Mutex<FakeState>, body: &str) {
    let mut state = state.lock().expect("fake state");
    for sent in state.sent.iter_mut().filter(|s| s.body == body) {
        sent.delivered = true;
    }
}

async fn deliver(relay: &str, secret: &str, body: &str) -> Option<u16> {
    let timestamp = now().to_string();
    let response = reqwest::Client::new()
        .post(relay)
        .header("Content-Type", "application/json")
        .header("Appid", CC_APP_ID)
        .header("Timestamp", &timestamp)
        .header("Sign", sign(secret, &timestamp, body.as_bytes()))
        .body(body.to_owned())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// Checks a call's signature and timestamp as CCPayment does; the error code
/// and name when they fail.
fn check(state: &FakeState, headers: &HeaderMap, body: &[u8]) -> Result<(), (i64, &'static str)> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if header("appid") != CC_APP_ID
        || header("sign") != sign(&state.secret, header("timestamp"), body)
    {
        return Err((11005, "VerifySignFailed"));
    }
    match header("timestamp").parse::<i64>() {
        Ok(at) if (now() - at).abs() <= 120 => Ok(()),
        _ => Err((11006, "ReqExpired")),
    }
}

/// CCPayment's envelope, signed as the fake's answers mode says.
fn envelope(state: &FakeState, code: i64, msg: &str, data: &str) -> Response {
    if state.answers == Answers::ServerError {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream trouble").into_response();
    }
    let body = format!(r#"{{"code":{code},"msg":"{msg}","data":{data}}}"#);
    let timestamp = now().to_string();
    let signature = match state.answers {
        Answers::BadSignature => "00".repeat(32),
        _ => sign(&state.secret, &timestamp, body.as_bytes()),
    };
    (
        [
            ("content-type", "application/json".to_owned()),
            ("appid", CC_APP_ID.to_owned()),
            ("timestamp", timestamp),
            ("sign", signature),
        ],
        body,
    )
        .into_response()
}

async fn resend(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (response, resent, relay, secret) = {
        let mut fake = state.lock().expect("fake state");
        if let Err((code, name)) = check(&fake, &headers, &body) {
            return envelope(&fake, code, name, "null");
        }
        let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let window = (
            asked["startTimestamp"].as_i64().unwrap_or(0),
            asked["endTimestamp"].as_i64().unwrap_or(0),
        );
        let limited = fake
            .last_resend
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60));
        let code = if limited {
            11004
        } else if window.1 - window.0 > 3600 || window.1 < window.0 {
            11008
        } else {
            10000
        };
        fake.resends.push(ResendCall {
            window,
            code,
            at: Instant::now(),
        });
        if code != 10000 {
            return envelope(&fake, code, "refused", "null");
        }
        fake.last_resend = Some(Instant::now());
        let resent: Vec<String> = if fake.answers == Answers::Good {
            fake.sent
                .iter()
                .filter(|s| !s.delivered && (window.0..=window.1).contains(&s.created))
                .map(|s| s.body.clone())
                .collect()
        } else {
            Vec::new()
        };
        let data = format!(r#"{{"resendCount":{}}}"#, resent.len());
        (
            envelope(&fake, 10000, "success", &data),
            resent,
            fake.relay.clone(),
            fake.secret.clone(),
        )
    };
    // CCPayment resends after it answered.
    let state = Arc::clone(&state);
    tokio::spawn(async move {
        for body in resent {
            let status = deliver(&relay, &secret, &body).await;
            if status.is_some_and(|s| (200..300).contains(&s)) {
                mark_delivered(&state, &body);
                state.lock().expect("fake state").last_resent_ack = Some(Instant::now());
            }
        }
    });
    response
}

async fn record(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = {
        let mut fake = state.lock().expect("fake state");
        if let Err((code, name)) = check(&fake, &headers, &body) {
            return envelope(&fake, code, name, "null");
        }
        let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let id = asked["recordId"].as_str().unwrap_or("").to_owned();
        *fake.lookups.entry(id).or_default() += 1;
        fake.lookup_delay
    };
    tokio::time::sleep(delay).await;
    let fake = state.lock().expect("fake state");
    let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match fake.records.get(asked["recordId"].as_str().unwrap_or("")) {
        Some(record) => envelope(
            &fake,
            10000,
            "success",
            &format!(r#"{{"record":{record}}}"#),
        ),
        None => envelope(&fake, 11003, "NotFound", "null"),
    }
}
