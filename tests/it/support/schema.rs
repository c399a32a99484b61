//! The published-message contract as a check: every body against
//! `docs/cloudevent.schema.json` (the schema `docs/asyncapi.yaml` points to), and the
//! AMQP properties against the body (docs/contract.md §4). Called on every message a
//! test consumes, so the documented schema cannot drift from what the relay publishes.

use std::sync::OnceLock;

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use serde_json::Value;

/// The schema text, compiled into the tests so a change to it is a change they see.
pub const SCHEMA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/docs/cloudevent.schema.json"
));

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value =
            serde_json::from_str(SCHEMA).expect("docs/cloudevent.schema.json is JSON");
        jsonschema::draft7::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("docs/cloudevent.schema.json is a valid draft-07 schema")
    })
}

/// Every way `body` breaks the schema (empty when it conforms), each as
/// `instance path: message`.
pub fn envelope_errors(body: &[u8]) -> Vec<String> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    validator()
        .iter_errors(&value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Panics, showing the body and every violation, unless `body` conforms to the
/// CloudEvents schema; returns the parsed envelope.
pub fn assert_valid_envelope(body: &[u8]) -> Value {
    let errors = envelope_errors(body);
    assert!(
        errors.is_empty(),
        "published body does not match docs/cloudevent.schema.json:\n  {}\nbody: {}",
        errors.join("\n  "),
        String::from_utf8_lossy(body)
    );
    serde_json::from_slice(body).expect("checked above")
}

fn header(delivery: &Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// What the schema cannot say: the AMQP properties and headers agree with the body,
/// and the routing key is `{prefix}.{type}` (docs/contract.md §4). Empty when all
/// agree.
pub fn message_errors(delivery: &Delivery) -> Vec<String> {
    let errors = envelope_errors(&delivery.data);
    if !errors.is_empty() {
        return errors;
    }
    let Ok(envelope) = serde_json::from_slice::<Value>(&delivery.data) else {
        return vec!["not JSON".to_owned()];
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let data = &envelope["data"];
    let event_type = text(&envelope["type"]).unwrap_or_default();
    let provider = text(&envelope["provider"]).unwrap_or_default();
    let source = text(&data["source"]).unwrap_or_default();
    let kind = text(&data["kind"]).unwrap_or_default();
    let status = text(&data["status"]).unwrap_or_default();
    let props = &delivery.properties;
    let prop = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.to_string());
    let mut errors = Vec::new();
    let mut expect = |what: &str, got: Option<String>, want: &str| {
        if got.as_deref() != Some(want) {
            errors.push(format!("{what} is {got:?}, expected {want:?}"));
        }
    };
    expect(
        "message_id",
        prop(props.message_id()),
        &text(&envelope["id"]).unwrap_or_default(),
    );
    expect(
        "content_type",
        prop(props.content_type()),
        "application/cloudevents+json",
    );
    expect("type property", prop(props.kind()), &event_type);
    expect("app_id", prop(props.app_id()), "hookrelay");
    expect(
        "delivery_mode",
        props.delivery_mode().map(|m| m.to_string()),
        "2",
    );
    expect("data.provider", text(&data["provider"]), &provider);
    expect(
        "source",
        text(&envelope["source"]),
        &format!("/webhooks/{source}"),
    );
    expect("header provider", header(delivery, "provider"), &provider);
    expect("header source", header(delivery, "source"), &source);
    expect("header kind", header(delivery, "kind"), &kind);
    expect("header status", header(delivery, "status"), &status);
    let class = if event_type == "unrecognized" {
        "unrecognized".to_owned()
    } else {
        format!("{kind}.{status}")
    };
    expect("type", Some(event_type.clone()), &class);
    expect(
        "header partitionkey",
        header(delivery, "partitionkey"),
        &text(&envelope["partitionkey"]).unwrap_or_default(),
    );
    if props.timestamp().is_none() {
        errors.push("timestamp property is missing".to_owned());
    }
    // The sequence's headers repeat its attributes, typed for routing.
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let headers = headers.inner();
    let sequence = text(&envelope["sequence"]).and_then(|s| s.parse::<i64>().ok());
    match (headers.get("sequence"), sequence) {
        (Some(AMQPValue::LongLongInt(n)), Some(m)) if *n == m && m > 0 => {}
        (got, want) => errors.push(format!(
            "header sequence is {got:?}, expected a signed 64-bit {want:?} above 0"
        )),
    }
    let stale = envelope.get("stale") == Some(&Value::Bool(true));
    match (headers.get("stale"), stale) {
        (None, false) | (Some(AMQPValue::Boolean(true)), true) => {}
        (got, _) => errors.push(format!(
            "header stale is {got:?}, the attribute stale is {stale}"
        )),
    }
    let recovered = envelope.get("recovered") == Some(&Value::Bool(true));
    match (headers.get("recovered"), recovered) {
        (None, false) | (Some(AMQPValue::Boolean(true)), true) => {}
        (got, _) => errors.push(format!(
            "header recovered is {got:?}, the attribute recovered is {recovered}"
        )),
    }
    let traceparent = header(delivery, "traceparent").unwrap_or_default();
    if !is_traceparent(&traceparent) {
        errors.push(format!(
            "traceparent header {traceparent:?} is not W3C trace context"
        ));
    }
    // The first routing-key segment is the provider, or a Standard Webhooks
    // source's own name.
    let key = delivery.routing_key.as_str();
    let prefix_ok = [&provider, &source]
        .iter()
        .any(|prefix| key == format!("{prefix}.{event_type}"));
    if !prefix_ok {
        errors.push(format!(
            "routing key {key:?} is not {{provider or source}}.{event_type}"
        ));
    }
    errors
}

/// Panics unless the delivery's body matches the schema and its properties,
/// headers and routing key agree with the body.
pub fn assert_valid_message(delivery: &Delivery) {
    let errors = message_errors(delivery);
    assert!(
        errors.is_empty(),
        "published message breaks the event contract (docs/events.md):\n  {}\nrouting key: {}\nbody: {}",
        errors.join("\n  "),
        delivery.routing_key,
        String::from_utf8_lossy(&delivery.data)
    );
}

/// `00-{32 hex}-{16 hex}-{2 hex}`, lower case.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// What the CloudEvents Python SDK reads out of each body (`from_json`), as
/// JSON lines of id, partitionkey, sequence and stale.
const SDK_READS: &str = r#"
import json, pathlib, sys
from cloudevents.http import from_json
for path in sorted(pathlib.Path(sys.argv[1]).iterdir(), key=lambda p: int(p.stem)):
    event = from_json(path.read_bytes())
    print(json.dumps({"id": event["id"], "partitionkey": event["partitionkey"],
                      "sequence": event["sequence"], "stale": event.get("stale")}))
"#;

/// Asserts that the CloudEvents Python SDK parses every body, with the
/// sequence's attributes as the relay wrote them. The SDK comes from the tools
/// venv `.ci/run` makes (`HOOKRELAY_CI_TOOLS`, default `target/ci-tools`);
/// without it the check is skipped, except in CI.
pub fn assert_python_sdk_parses(bodies: &[Vec<u8>]) {
    use std::io::Write as _;
    let tools = std::env::var_os("HOOKRELAY_CI_TOOLS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-tools"),
        std::path::PathBuf::from,
    );
    let python = tools.join("bin/python");
    let has_sdk = std::process::Command::new(&python)
        .args(["-c", "import cloudevents"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk {
        assert!(
            !super::in_ci(),
            "CI=true but {} has no CloudEvents SDK: .ci/run installs it",
            python.display()
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no CloudEvents Python SDK in {} (bash .ci/run installs it); CI runs this check",
            tools.display()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (n, body) in bodies.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{n}.json")), body).expect("write body");
    }
    let output = std::process::Command::new(&python)
        .args(["-c", SDK_READS])
        .arg(dir.path())
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "the CloudEvents SDK refused a message: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(read.len(), bodies.len());
    for (body, sdk) in bodies.iter().zip(&read) {
        let envelope: Value = serde_json::from_slice(body).expect("JSON");
        for attribute in ["id", "partitionkey", "sequence"] {
            assert_eq!(sdk[attribute], envelope[attribute], "{attribute}");
        }
        let stale = envelope.get("stale").cloned().unwrap_or(Value::Null);
        assert_eq!(sdk["stale"], stale, "stale");
    }
}
