//! The event contract: docs/asyncapi.yaml and docs/cloudevent.schema.json say what
//! the external contract (docs/contract.md §4) says, the schema rejects what breaks
//! it, and real messages match it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::rabbitmq::definitions_exchange;
use super::{json_file, read, root, text, yaml_file};
use crate::support::schema;
use crate::support::*;

/// A `- kinds: `a`, `b`` style list from docs/contract.md §4.
fn contract_list(label: &str) -> BTreeSet<String> {
    let contract = std::fs::read_to_string(root().join("docs/contract.md"))
        .unwrap_or_else(|e| panic!("docs/contract.md (the external contract): {e}"));
    let line = contract
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("- {label}:")))
        .unwrap_or_else(|| panic!("docs/contract.md lists {label}"));
    let list = line.split_once(':').map_or("", |(_, rest)| rest);
    let list = list.split(" (").next().unwrap_or(list);
    list.split(',')
        .map(|s| s.trim().trim_matches('`').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| text(v).to_owned())
        .collect()
}

#[test]
fn asyncapi_and_the_schema_describe_the_contract() {
    let api = yaml_file("docs/asyncapi.yaml");
    assert_eq!(api["asyncapi"], "3.0.0");
    let schema: Value = serde_json::from_str(schema::SCHEMA).expect("schema JSON");
    let kinds = contract_list("kinds");
    let statuses = contract_list("statuses");
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    assert_eq!(statuses.len(), 10, "{statuses:?}");
    assert_eq!(strings(&schema["definitions"]["kind"]["enum"]), kinds);
    assert_eq!(strings(&schema["definitions"]["status"]["enum"]), statuses);
    let params = &api["channels"]["events"]["parameters"];
    assert_eq!(strings(&params["kind"]["enum"]), kinds);
    assert_eq!(strings(&params["status"]["enum"]), statuses);
    // Every kind and status is one the relay itself knows.
    for kind in &kinds {
        serde_json::from_value::<hookrelay::event::Kind>(json!(kind))
            .unwrap_or_else(|e| panic!("kind {kind}: {e}"));
    }
    for status in &statuses {
        serde_json::from_value::<hookrelay::event::Status>(json!(status))
            .unwrap_or_else(|e| panic!("status {status}: {e}"));
    }

    // The exchange and its unrouted queue are the relay's defaults and the
    // definitions' names.
    let exchange = definitions_exchange(&json_file("deploy/rabbitmq/definitions.json"));
    let channels = &api["channels"];
    assert_eq!(
        channels["events"]["bindings"]["amqp"]["exchange"]["name"],
        exchange.as_str()
    );
    assert_eq!(
        channels["unrouted"]["address"],
        hookrelay::amqp::unrouted_name(&exchange).as_str()
    );

    // Every message's payload is the schema file, and every example in the
    // document is a valid envelope.
    let mut examples = 0;
    for (name, message) in api["components"]["messages"].as_object().expect("messages") {
        assert_eq!(message["contentType"], "application/cloudevents+json");
        let payload = text(&message["payload"]["$ref"]);
        assert_eq!(payload, "./cloudevent.schema.json", "{name}");
        for example in message["examples"].as_array().expect("examples") {
            let body = serde_json::to_vec(&example["payload"]).expect("example JSON");
            let errors = schema::envelope_errors(&body);
            assert!(errors.is_empty(), "example {}: {errors:?}", example["name"]);
            examples += 1;
        }
    }
    assert!(examples >= 2, "a recognized and an unrecognized example");
}

#[test]
fn the_schema_rejects_envelopes_that_break_the_contract() {
    let api = yaml_file("docs/asyncapi.yaml");
    let messages = &api["components"]["messages"];
    let good = messages["event"]["examples"][0]["payload"].clone();
    let unrecognized = messages["unrecognized"]["examples"][0]["payload"].clone();
    for valid in [&good, &unrecognized] {
        let body = serde_json::to_vec(valid).expect("JSON");
        schema::assert_valid_envelope(&body);
    }
    /// What is wrong, a valid envelope, and the change that breaks it.
    type Mutation = (&'static str, Value, fn(&mut Value));
    let broken: Vec<Mutation> = vec![
        ("amount as a JSON number", good.clone(), |v| {
            v["data"]["amount"] = json!(200)
        }),
        ("recognized without subject", good.clone(), |v| {
            v.as_object_mut().map(|o| o.remove("subject"));
        }),
        ("kind not in the contract", good.clone(), |v| {
            v["type"] = json!("order.shipped")
        }),
        ("time not in UTC", good.clone(), |v| {
            v["time"] = json!("2022-03-22T16:01:34+02:00")
        }),
        ("payload and raw_base64 together", good.clone(), |v| {
            v["data"]["raw_base64"] = json!("e30=")
        }),
        ("unknown attribute", good.clone(), |v| v["extra"] = json!(1)),
        ("sequence as a JSON number", good.clone(), |v| {
            v["sequence"] = json!(2)
        }),
        ("sequence not zero-padded", good.clone(), |v| {
            v["sequence"] = json!("2")
        }),
        ("stale as false", good.clone(), |v| {
            v["stale"] = json!(false)
        }),
        ("without partitionkey", good.clone(), |v| {
            v.as_object_mut().map(|o| o.remove("partitionkey"));
        }),
        ("id that is not a UUID", good.clone(), |v| {
            v["id"] = json!("42")
        }),
        ("unrecognized with a subject", unrecognized.clone(), |v| {
            v["subject"] = json!("x")
        }),
        ("unrecognized with a payload", unrecognized.clone(), |v| {
            v["data"]["payload"] = json!({});
            v["data"].as_object_mut().map(|o| o.remove("raw_base64"));
        }),
        ("unrecognized with an amount", unrecognized, |v| {
            v["data"]["amount"] = json!("1")
        }),
    ];
    for (what, mut value, mutate) in broken {
        mutate(&mut value);
        let body = serde_json::to_vec(&value).expect("JSON");
        assert!(
            !schema::envelope_errors(&body).is_empty(),
            "the schema accepts an envelope with {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_whitepay_fixture_publishes_a_message_that_matches_the_schema() {
    let mut app = TestApp::spawn(Backend::Sqlite, "ops-schema").await;
    let fixtures: Vec<String> = std::fs::read_dir(root().join("tests/fixtures/whitepay"))
        .expect("fixtures")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".json") && f != "expected.json")
        .collect();
    let mut accepted = BTreeSet::new();
    for name in &fixtures {
        let body = fixture("whitepay", name);
        assert_eq!(app.relay.post_whitepay(&body).await.0, 200, "{name}");
        accepted.insert(body);
    }
    // Fixtures may share an idempotency key; each distinct event arrives once.
    let deliveries = app
        .consumer
        .collect(fixtures.len(), Duration::from_secs(5))
        .await;
    assert!(
        deliveries.len() >= 10,
        "the fixtures were published: {}",
        deliveries.len()
    );
    let mut types = BTreeSet::new();
    for delivery in &deliveries {
        schema::assert_valid_message(delivery);
        let envelope: Value = serde_json::from_slice(&delivery.data).expect("JSON");
        types.insert(text(&envelope["type"]).to_owned());
    }
    assert!(
        types.contains("unrecognized") && types.len() >= 4,
        "recognized and unrecognized events were checked: {types:?}"
    );
}

#[test]
fn events_md_lists_every_routing_key_the_provider_fixtures_produce() {
    // The table rows: | `provider` | `kind` | `status`, `status` |
    let doc = read("docs/events.md");
    let mut table: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() != 5 {
            continue;
        }
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        if let ([provider], [kind]) = (&ticked(cells[1])[..], &ticked(cells[2])[..]) {
            table
                .entry((provider.clone(), kind.clone()))
                .or_default()
                .extend(ticked(cells[3]));
        }
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("tests/fixtures")).expect("fixtures") {
        let dir = entry.expect("entry").path();
        let provider = dir.file_name().and_then(|n| n.to_str()).expect("name");
        if provider == "standard" {
            continue; // routes under each source's own name: one generic row
        }
        let expected = json_file(&format!("tests/fixtures/{provider}/expected.json"));
        for (fixture, facts) in expected.as_object().expect("expected.json") {
            let key = text(&facts["routing_key"]);
            let parts: Vec<&str> = key.split('.').collect();
            if parts == [provider, "unrecognized"] {
                continue;
            }
            let [p, kind, status] = parts[..] else {
                panic!("{provider}/{fixture}: routing key {key}");
            };
            let statuses = table
                .get(&(p.to_owned(), kind.to_owned()))
                .unwrap_or_else(|| panic!("docs/events.md has a row for {p} {kind} ({fixture})"));
            assert!(
                statuses.contains(status),
                "docs/events.md lists {key} ({provider}/{fixture})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "fixtures checked: {checked}");
}
