//! The admin API (contract §5) against a real relay, RabbitMQ and both outbox
//! backends: filters, paging while webhooks arrive, the detail view's redaction,
//! subject timelines, dry runs that change nothing, replays that republish the
//! same message ids in order; and the access rules (token, session, CSRF,
//! loopback).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::on_both_backends;
use crate::support::admin::Admin;
use crate::support::*;

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `events` of a list answer: (id, subject, status) each.
fn listed(answer: &serde_json::Value) -> Vec<(i64, String, String)> {
    answer["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["id"].as_i64().expect("id"),
                e["subject"].as_str().expect("subject").to_owned(),
                e["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

async fn the_admin_api_finds_shows_and_replays_events(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("adminapi");
    let mut consumer = Consumer::bind(&exchange, "#").await;
    let proxy = TcpProxy::start(BROKER).await;
    proxy.cut();
    let mut config = RelayConfig::on(backend, &exchange, dir.path());
    config.broker = proxy.addr.to_string();
    config.env.push((
        "HOOKRELAY_SOURCES__WHITEPAY__REDACT".to_owned(),
        "order.external_order_id".to_owned(),
    ));
    let relay = Relay::start(&config);
    let admin = Admin::of(&relay);

    // An order that succeeds, then a late "pending" for it; and other orders.
    assert_eq!(
        relay
            .post_whitepay(&whitepay_order_at("ord-a", "COMPLETE"))
            .await
            .0,
        200
    );
    assert_eq!(
        relay
            .post_whitepay(&whitepay_order_at("ord-a", "OPEN"))
            .await
            .0,
        200
    );
    for i in 0..5 {
        let body = whitepay_order(&format!("other-{i}"));
        assert_eq!(relay.post_whitepay(&body).await.0, 200);
    }

    // Filters.
    let by_subject = admin.get("/api/v1/events?subject=ord-a").await;
    assert_eq!(by_subject.status, 200, "{}", by_subject.body);
    let rows = listed(&by_subject.json());
    assert_eq!(
        rows.iter()
            .map(|(_, s, st)| (s.as_str(), st.as_str()))
            .collect::<Vec<_>>(),
        [("ord-a", "pending"), ("ord-a", "succeeded")],
        "newest first"
    );
    let pending_status = listed(&admin.get("/api/v1/events?status=pending").await.json());
    assert_eq!(pending_status.len(), 1);
    let searched = listed(&admin.get("/api/v1/events?q=other-3").await.json());
    assert_eq!(
        searched
            .iter()
            .map(|(_, s, _)| s.as_str())
            .collect::<Vec<_>>(),
        ["other-3"],
        "text in the body"
    );
    let all_pending = listed(
        &admin
            .get("/api/v1/events?state=pending&kind=order")
            .await
            .json(),
    );
    assert_eq!(all_pending.len(), 7);
    assert_eq!(
        listed(&admin.get("/api/v1/events?state=dead").await.json()).len(),
        0
    );
    let bad = admin.get("/api/v1/events?state=lost").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .expect("error")
            .contains("lost")
    );

    // Paging, newest first, while webhooks keep arriving: no row twice, none
    // skipped of those that were there when paging began.
    let before: HashSet<i64> = listed(&admin.get("/api/v1/events?limit=500").await.json())
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    let mut seen = Vec::new();
    let mut cursor: Option<i64> = None;
    let mut page_no = 0;
    loop {
        let path = match cursor {
            Some(c) => format!("/api/v1/events?limit=2&cursor={c}"),
            None => "/api/v1/events?limit=2".to_owned(),
        };
        let page = admin.get(&path).await.json();
        seen.extend(listed(&page).into_iter().map(|(id, _, _)| id));
        // Another webhook lands between every two pages.
        let body = whitepay_order(&format!("during-{page_no}"));
        assert_eq!(relay.post_whitepay(&body).await.0, 200);
        page_no += 1;
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first: {seen:?}"
    );
    let seen_set: HashSet<i64> = seen.iter().copied().collect();
    assert!(before.is_subset(&seen_set), "{before:?} ⊄ {seen:?}");

    // The detail view: redacted body, verification, headers, CloudEvent.
    let (ord_a_pending, ord_a_succeeded) = (rows[0].0, rows[1].0);
    let detail = admin
        .get(&format!("/api/v1/events/{ord_a_succeeded}"))
        .await;
    assert_eq!(detail.status, 200);
    let detail = detail.json();
    let body = detail["body"].as_str().expect("body");
    assert!(
        body.contains(r#""external_order_id":"[redacted]""#),
        "{body}"
    );
    assert!(!body.contains("m-ord-a"), "redacted as published");
    assert_eq!(detail["verification"], "verified");
    assert!(detail["headers"]["signature"].is_string());
    assert!(
        detail["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-"))
    );
    assert_eq!(detail["cloudevent"]["subject"], "ord-a");
    assert_eq!(
        detail["cloudevent"]["data"]["payload"]["order"]["external_order_id"],
        "[redacted]"
    );
    assert_eq!(detail["failures"], serde_json::json!([]));
    assert_eq!(admin.get("/api/v1/events/999999").await.status, 404);

    // The subject's timeline flags the late "pending".
    let timeline = admin.get("/api/v1/subjects/whitepay/ord-a").await.json();
    let steps: Vec<(i64, bool)> = timeline["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| (e["id"].as_i64().expect("id"), e["backwards"] == true))
        .collect();
    assert_eq!(steps, [(ord_a_succeeded, false), (ord_a_pending, true)]);

    // Sources: this relay's counts.
    let sources = admin.get("/api/v1/sources").await.json();
    let whitepay = sources["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| s["name"] == "whitepay")
        .expect("whitepay source")
        .clone();
    assert_eq!(whitepay["provider"], "whitepay");
    assert!(whitepay["last_hour"]["accepted"].as_u64().expect("count") >= 7);
    assert!(whitepay["last_accepted"].is_i64());

    // Publish everything, then replay the order: a dry run changes nothing.
    proxy.restore();
    let first: Vec<_> = consumer.collect(7 + page_no, Duration::from_secs(30)).await;
    assert_eq!(first.len(), 7 + page_no, "all published once");
    wait_for("every row published", || {
        relay.outbox_count(Some("pending")) == 0
    })
    .await;
    let message_ids = |deliveries: &[lapin::message::Delivery], subject: &str| -> Vec<String> {
        deliveries
            .iter()
            .filter(|d| {
                serde_json::from_slice::<serde_json::Value>(&d.data).expect("JSON")["subject"]
                    == subject
            })
            .map(|d| {
                d.properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .expect("message id")
            })
            .collect()
    };
    let ord_a_ids = message_ids(&first, "ord-a");
    assert_eq!(ord_a_ids.len(), 2);

    let dry = admin
        .post_json(
            "/api/v1/replay",
            &serde_json::json!({ "subject": "ord-a", "dry_run": true }),
        )
        .await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(dry.json(), serde_json::json!({ "matched": 2 }));
    assert_eq!(
        relay.outbox_count(Some("pending")),
        0,
        "a dry run changes nothing"
    );
    assert!(consumer.next(Duration::from_millis(500)).await.is_none());

    let nothing = admin
        .post_json("/api/v1/replay", &serde_json::json!({}))
        .await;
    assert_eq!(
        nothing.status, 400,
        "no ids and no filter: {}",
        nothing.body
    );

    let replayed = admin
        .post_json("/api/v1/replay", &serde_json::json!({ "subject": "ord-a" }))
        .await;
    assert_eq!(replayed.json(), serde_json::json!({ "replayed": 2 }));
    let again = consumer.collect(2, Duration::from_secs(10)).await;
    assert_eq!(
        message_ids(&again, "ord-a"),
        ord_a_ids,
        "same message ids, in received order"
    );
    assert!(
        relay
            .metrics()
            .await
            .contains(r#"hookrelay_admin_actions_total{action="replay",via="api"} 1"#),
        "the replay is counted"
    );
    assert!(
        relay
            .logs()
            .iter()
            .any(|line| line.contains("hookrelay::audit")
                && line.contains("operator replayed events")
                && line.contains("ord-a")),
        "the replay is logged with its filter"
    );
    drop(relay);
}

on_both_backends!(the_admin_api_finds_shows_and_replays_events);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_api_and_console_need_it_and_posts_need_csrf_proof() {
    const TOKEN: &str = "test-admin-token-0123456789";
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("adminauth");
    let mut config = RelayConfig::new(&exchange, dir.path());
    config
        .env
        .push(("HOOKRELAY_ADMIN_TOKEN".to_owned(), TOKEN.to_owned()));
    let relay = Relay::start(&config);
    let mut admin = Admin::of(&relay);

    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(admin.get(open).await.status, 200, "{open} stays open");
    }
    let anonymous = admin.get("/api/v1/events").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate").as_deref(),
        Some("Bearer")
    );
    let page = admin.get("/ui/sources").await;
    assert_eq!(page.status, 303, "the console sends a stranger to log in");
    assert_eq!(
        page.header("location").as_deref(),
        Some("/ui/login?next=%2Fui%2Fsources")
    );

    admin.bearer = Some("not-the-token".to_owned());
    assert_eq!(admin.get("/api/v1/events").await.status, 401);
    admin.bearer = Some(TOKEN.to_owned());
    assert_eq!(admin.get("/api/v1/events").await.status, 200);
    assert_eq!(
        admin
            .post_json(
                "/api/v1/replay",
                &serde_json::json!({"state": "dead", "dry_run": true})
            )
            .await
            .json(),
        serde_json::json!({ "matched": 0 }),
        "a bearer token needs no CSRF proof"
    );

    // The login form gives a strict, HttpOnly session cookie.
    admin.bearer = None;
    let wrong = admin
        .post_form("/ui/login", &[("token", "guess"), ("next", "/ui/")])
        .await;
    assert_eq!(wrong.status, 303);
    assert!(wrong.header("set-cookie").is_none());
    let login = admin
        .post_form("/ui/login", &[("token", TOKEN), ("next", "/ui/sources")])
        .await;
    assert_eq!(login.header("location").as_deref(), Some("/ui/sources"));
    let cookie = login.header("set-cookie").expect("session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    admin.cookie = Some(cookie.split(';').next().expect("pair").to_owned());
    let page = admin.get("/ui/").await;
    assert_eq!(page.status, 200);

    // A console POST without its CSRF field, or from another origin, is refused;
    // an API POST on the cookie must be JSON.
    let no_csrf = admin.post_form("/ui/replay", &[("state", "dead")]).await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's csrf field")
        .to_owned();
    let with_csrf = admin
        .post_form("/ui/replay", &[("state", "dead"), ("csrf", &csrf)])
        .await;
    assert_eq!(with_csrf.status, 200, "{}", with_csrf.body);
    assert!(with_csrf.body.contains("events match"));
    let form_to_api = admin
        .post_form("/api/v1/replay", &[("state", "dead"), ("dry_run", "true")])
        .await;
    assert_eq!(form_to_api.status, 403);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_api_is_served_only_on_a_loopback_admin_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("adminloop");
    let local = Relay::start(&RelayConfig::new(&exchange, dir.path()));
    assert_eq!(Admin::of(&local).get("/api/v1/events").await.status, 200);
    drop(local);

    let mut config = RelayConfig::new(&exchange, dir.path());
    // Every interface; the test still talks to it on 127.0.0.1 only.
    config
        .env
        .push(("HOOKRELAY_ADMIN_LISTEN".to_owned(), "0.0.0.0:0".to_owned()));
    let exposed = Relay::start(&config);
    let admin = Admin::of(&exposed);
    let refused = admin.get("/api/v1/events").await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.json()["error"]
            .as_str()
            .expect("error")
            .contains("HOOKRELAY_ADMIN_TOKEN")
    );
    assert_eq!(admin.get("/ui/").await.status, 403);
    assert_eq!(admin.get("/metrics").await.status, 200, "probes stay open");
    drop(exposed);
}
