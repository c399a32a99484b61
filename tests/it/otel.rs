//! OpenTelemetry traces against an in-process OTLP/HTTP receiver that decodes the
//! protobuf: the spans of a webhook's life, in the sender's trace, with the AMQP
//! `traceparent` pointing at the publish span; flushed on SIGTERM; export resuming
//! after the receiver comes back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;

use lapin::types::AMQPValue;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use crate::support::*;

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

async fn export(State(received): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut spans = received.lock().expect("spans");
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| text(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                    attributes: text(&span.attributes),
                });
            }
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// An OTLP/HTTP receiver on loopback.
struct Receiver {
    addr: SocketAddr,
    spans: Received,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(addr: SocketAddr, spans: Received) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .with_state(Arc::clone(&spans));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            spans,
            server,
        }
    }

    fn stop(self) -> (SocketAddr, Received) {
        self.server.abort();
        (self.addr, self.spans)
    }

    /// Waits until `done` holds for the spans received so far.
    async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans.lock().expect("spans").clone();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "{what}: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A relay that exports its spans to `receiver`, a batch every `delay_ms`.
fn traced(test: &str, receiver: SocketAddr, delay_ms: u32) -> TestAppBuilder {
    TestApp::build(Backend::Sqlite, test)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", delay_ms.to_string())
}

/// Posts a signed Whitepay order in the trace `trace_id`, as the span `parent`.
async fn post_traced(relay: &Relay, id: &str, trace_id: &str, parent: &str) {
    let body = whitepay_order(id);
    let signature = whitepay_signature(WHITEPAY_TOKEN, &body);
    let traceparent = format!("00-{trace_id}-{parent}-01");
    let (status, _) = post(
        &relay.url("whitepay"),
        body,
        &[("Signature", signature), ("traceparent", traceparent)],
    )
    .await;
    assert_eq!(status, 200);
}

fn random_hex(bytes: usize) -> String {
    hex::encode((0..bytes).map(|_| rand::random::<u8>()).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhooks_spans_reach_the_collector_in_the_senders_trace() {
    let receiver = Receiver::start(([127, 0, 0, 1], 0).into(), Received::default()).await;
    let mut app = traced("otel", receiver.addr, 100).start().await;
    let (trace_id, parent) = (random_hex(16), random_hex(8));
    post_traced(&app.relay, "otel-1", &trace_id, &parent).await;

    let delivery = app
        .consumer
        .next(Duration::from_secs(20))
        .await
        .expect("published");
    let header = match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent").cloned())
    {
        Some(AMQPValue::LongString(value)) => value.to_string(),
        other => panic!("traceparent header: {other:?}"),
    };
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(
        parts[1], trace_id,
        "the message continues the sender's trace"
    );

    let spans = receiver
        .wait_for("the publish span", |spans| {
            spans.iter().any(|s| s.kind == SpanKind::Producer as i32)
        })
        .await;
    let ours: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let find = |name: &str| {
        ours.iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("span {name}: {ours:#?}"))
    };
    let server = find("POST /webhooks/{source}");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        server.parent_span_id, parent,
        "the sender's span is the parent"
    );
    assert_eq!(server.service, "hookrelay");
    assert_eq!(server.attribute("http.request.method"), Some("POST"));
    assert_eq!(server.attribute("http.response.status_code"), Some("200"));
    for child in ["verify signature", "outbox commit"] {
        assert_eq!(find(child).parent_span_id, server.span_id, "{child}");
    }
    let publish = find(&format!("publish {}", &*app.exchange));
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(publish.parent_span_id, server.span_id);
    assert_eq!(
        publish.span_id, parts[2],
        "consumers continue the publish span"
    );
    assert_eq!(publish.attribute("messaging.system"), Some("rabbitmq"));
    assert_eq!(
        publish.attribute("messaging.destination.name"),
        Some(&*app.exchange.to_string())
    );
    assert_eq!(publish.attribute("hookrelay.confirm"), Some("ack"));
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string());
    assert_eq!(
        publish.attribute("messaging.message.id").map(str::to_owned),
        message_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_spans_are_flushed_on_sigterm() {
    let receiver = Receiver::start(([127, 0, 0, 1], 0).into(), Received::default()).await;
    // A minute between exports: only the shutdown flush can deliver these spans.
    let mut app = traced("otelflush", receiver.addr, 60_000).start().await;
    let (trace_id, parent) = (random_hex(16), random_hex(8));
    post_traced(&app.relay, "otel-flush", &trace_id, &parent).await;
    app.consumer
        .next(Duration::from_secs(20))
        .await
        .expect("published");
    assert!(app.relay.terminate(Duration::from_secs(30)).success());
    let spans = receiver.spans.lock().expect("spans").clone();
    assert!(
        spans
            .iter()
            .any(|s| s.trace_id == trace_id && s.kind == SpanKind::Producer as i32),
        "{spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_resumes_when_the_receiver_comes_back() {
    let receiver = Receiver::start(([127, 0, 0, 1], 0).into(), Received::default()).await;
    let app = traced("otelresume", receiver.addr, 100)
        .no_consumer()
        .start()
        .await;
    let (addr, spans) = receiver.stop();
    let (lost_trace, parent) = (random_hex(16), random_hex(8));
    post_traced(&app.relay, "otel-while-down", &lost_trace, &parent).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let receiver = Receiver::start(addr, spans).await;
    let trace_id = random_hex(16);
    post_traced(&app.relay, "otel-after", &trace_id, &parent).await;
    receiver
        .wait_for("spans after the receiver came back", |spans| {
            spans.iter().any(|s| s.trace_id == trace_id)
        })
        .await;
    app.relay.assert_still_serving().await;
}

/// A request that fails authentication does not continue the trace it claims
/// (nor obey its sampled flag): its server span starts a trace of its own, so a
/// stranger cannot put spans into someone else's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_fails_authentication_starts_a_trace_of_its_own() {
    let receiver = Receiver::start(([127, 0, 0, 1], 0).into(), Received::default()).await;
    let app = traced("oteluntrusted", receiver.addr, 100)
        .no_consumer()
        .start()
        .await;
    let (trace_id, parent) = (random_hex(16), random_hex(8));
    let body = whitepay_order("forged");
    let (status, _) = post(
        &app.relay.url("whitepay"),
        body,
        &[
            ("Signature", "not-a-signature".to_owned()),
            ("traceparent", format!("00-{trace_id}-{parent}-01")),
        ],
    )
    .await;
    assert_eq!(status, 401);
    let spans = receiver
        .wait_for("the refused request's span", |spans| {
            spans
                .iter()
                .any(|s| s.attribute("http.response.status_code") == Some("401"))
        })
        .await;
    let refused = spans
        .iter()
        .find(|s| s.attribute("http.response.status_code") == Some("401"))
        .expect("the span");
    assert_ne!(refused.trace_id, trace_id, "a trace of its own");
    assert!(refused.parent_span_id.is_empty(), "a root span");
    assert!(
        spans.iter().all(|s| s.trace_id != trace_id),
        "nothing joined the claimed trace"
    );
}
