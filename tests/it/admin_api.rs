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

/// The orders [`a_relay_with_orders`] posts.
const ORDERS: usize = 7;

/// A relay whose broker is cut, so every row stays pending until a test lets it
/// in, with Whitepay's `order.external_order_id` redacted; it has taken an order
/// that succeeded and then got a late "pending" (`ord-a`), and five other orders
/// (`other-0` to `other-4`).
async fn a_relay_with_orders(backend: Backend) -> TestApp {
    let app = TestApp::build(backend, "adminapi")
        .broker_cut()
        .redact_whitepay("order.external_order_id")
        .start()
        .await;
    let relay = &app.relay;
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
    app
}

/// The ids of `ord-a`'s events: (the late "pending", the success).
async fn ord_a(admin: &Admin) -> (i64, i64) {
    let rows = listed(&admin.get("/api/v1/events?subject=ord-a").await.json());
    let id = |status: &str| {
        rows.iter()
            .find(|(_, _, s)| s == status)
            .unwrap_or_else(|| panic!("ord-a {status}: {rows:?}"))
            .0
    };
    (id("pending"), id("succeeded"))
}

/// Lets the broker in and waits until every row is published once; returns the
/// deliveries.
async fn publish_everything(app: &mut TestApp) -> Vec<lapin::message::Delivery> {
    app.proxy.restore();
    let first = app.consumer.collect(ORDERS, Duration::from_secs(30)).await;
    assert_eq!(first.len(), ORDERS, "all published once");
    wait_for("every row published", || {
        app.relay.outbox_count(Some("pending")) == 0
    })
    .await;
    first
}

/// The message ids of the deliveries about `subject`, in received order.
fn message_ids(deliveries: &[lapin::message::Delivery], subject: &str) -> Vec<String> {
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
}

async fn the_event_list_filters_by_subject_status_text_state_and_kind(backend: Backend) {
    let app = a_relay_with_orders(backend).await;
    let admin = Admin::of(&app.relay);
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
    assert_eq!(all_pending.len(), ORDERS);
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
}

/// Paging, newest first, while webhooks keep arriving: no row twice, none
/// skipped of those that were there when paging began.
async fn paging_while_webhooks_arrive_repeats_and_skips_no_row(backend: Backend) {
    let app = a_relay_with_orders(backend).await;
    let admin = Admin::of(&app.relay);
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
        assert_eq!(app.relay.post_whitepay(&body).await.0, 200);
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
}

/// The detail view: the body redacted as published, verification, headers,
/// the CloudEvent.
async fn the_event_detail_shows_the_body_redacted_as_published_and_its_cloudevent(
    backend: Backend,
) {
    let app = a_relay_with_orders(backend).await;
    let admin = Admin::of(&app.relay);
    let (_, ord_a_succeeded) = ord_a(&admin).await;
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
}

async fn a_subjects_timeline_flags_the_late_status_that_went_backwards(backend: Backend) {
    let app = a_relay_with_orders(backend).await;
    let admin = Admin::of(&app.relay);
    let (ord_a_pending, ord_a_succeeded) = ord_a(&admin).await;
    let timeline = admin.get("/api/v1/subjects/whitepay/ord-a").await.json();
    let steps: Vec<(i64, bool)> = timeline["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| (e["id"].as_i64().expect("id"), e["backwards"] == true))
        .collect();
    assert_eq!(steps, [(ord_a_succeeded, false), (ord_a_pending, true)]);
}

async fn the_sources_view_counts_what_this_relay_accepted(backend: Backend) {
    let app = a_relay_with_orders(backend).await;
    let sources = Admin::of(&app.relay).get("/api/v1/sources").await.json();
    let whitepay = sources["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| s["name"] == "whitepay")
        .expect("whitepay source")
        .clone();
    assert_eq!(whitepay["provider"], "whitepay");
    assert!(whitepay["last_hour"]["accepted"].as_u64().expect("count") >= ORDERS as u64);
    assert!(whitepay["last_accepted"].is_i64());
}

async fn a_replay_dry_run_counts_the_matches_and_changes_nothing(backend: Backend) {
    let mut app = a_relay_with_orders(backend).await;
    publish_everything(&mut app).await;
    let dry = Admin::of(&app.relay)
        .post_json(
            "/api/v1/replay",
            &serde_json::json!({ "subject": "ord-a", "dry_run": true }),
        )
        .await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(dry.json(), serde_json::json!({ "matched": 2 }));
    assert_eq!(
        app.relay.outbox_count(Some("pending")),
        0,
        "a dry run changes nothing"
    );
    assert!(
        app.consumer
            .next(Duration::from_millis(500))
            .await
            .is_none()
    );
}

async fn a_replay_without_ids_or_a_filter_is_refused(backend: Backend) {
    let app = a_relay_with_orders(backend).await;
    let nothing = Admin::of(&app.relay)
        .post_json("/api/v1/replay", &serde_json::json!({}))
        .await;
    assert_eq!(
        nothing.status, 400,
        "no ids and no filter: {}",
        nothing.body
    );
}

async fn a_replay_by_filter_republishes_the_same_message_ids_in_order_counted_and_audited(
    backend: Backend,
) {
    let mut app = a_relay_with_orders(backend).await;
    let first = publish_everything(&mut app).await;
    let ord_a_ids = message_ids(&first, "ord-a");
    assert_eq!(ord_a_ids.len(), 2);
    let replayed = Admin::of(&app.relay)
        .post_json("/api/v1/replay", &serde_json::json!({ "subject": "ord-a" }))
        .await;
    assert_eq!(replayed.json(), serde_json::json!({ "replayed": 2 }));
    let again = app.consumer.collect(2, Duration::from_secs(10)).await;
    assert_eq!(
        message_ids(&again, "ord-a"),
        ord_a_ids,
        "same message ids, in received order"
    );
    assert!(
        app.relay
            .metrics()
            .await
            .contains(r#"hookrelay_admin_actions_total{action="replay",via="api"} 1"#),
        "the replay is counted"
    );
    assert!(
        app.relay
            .logs()
            .iter()
            .any(|line| line.contains("hookrelay::audit")
                && line.contains("operator replayed events")
                && line.contains("ord-a")),
        "the replay is logged with its filter"
    );
}

on_both_backends!(
    the_event_list_filters_by_subject_status_text_state_and_kind,
    paging_while_webhooks_arrive_repeats_and_skips_no_row,
    the_event_detail_shows_the_body_redacted_as_published_and_its_cloudevent,
    a_subjects_timeline_flags_the_late_status_that_went_backwards,
    the_sources_view_counts_what_this_relay_accepted,
    a_replay_dry_run_counts_the_matches_and_changes_nothing,
    a_replay_without_ids_or_a_filter_is_refused,
    a_replay_by_filter_republishes_the_same_message_ids_in_order_counted_and_audited,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_api_and_console_need_it_and_posts_need_csrf_proof() {
    const TOKEN: &str = "test-admin-token-0123456789";
    let app = TestApp::build(Backend::Sqlite, "adminauth")
        .no_consumer()
        .env("HOOKRELAY_ADMIN_TOKEN", TOKEN)
        .start()
        .await;
    let mut admin = Admin::of(&app.relay);

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_api_is_served_only_on_a_loopback_admin_address() {
    let local = TestApp::build(Backend::Sqlite, "adminloop")
        .no_consumer()
        .start()
        .await;
    assert_eq!(
        Admin::of(&local.relay).get("/api/v1/events").await.status,
        200
    );
    drop(local);

    let exposed = TestApp::build(Backend::Sqlite, "adminloop")
        .no_consumer()
        // Every interface; the test still talks to it on 127.0.0.1 only.
        .env("HOOKRELAY_ADMIN_LISTEN", "0.0.0.0:0")
        .start()
        .await;
    let admin = Admin::of(&exposed.relay);
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
}

/// The DNS rebinding of issue 21: a page on `attacker.example`, whose name the
/// attacker has pointed at 127.0.0.1, is same-origin with the listener in the
/// browser's eyes, so it could read every stored body and replay events from the
/// operator's own browser. Its requests carry its own name as `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_foreign_host_name_is_refused_for_reads_and_replays() {
    // Published rows, so that a replay that got through would show.
    let mut app = a_relay_with_orders(Backend::Sqlite).await;
    publish_everything(&mut app).await;
    let port = app.relay.admin.port();
    let mut page = Admin::of(&app.relay);
    page.host = Some(format!("attacker.example:{port}"));

    let read = page.get("/api/v1/events").await;
    assert_eq!(
        read.status, 421,
        "a foreign Host reads nothing: {}",
        read.body
    );
    let message = read.json()["error"].as_str().expect("error").to_owned();
    assert!(
        message.contains("HOOKRELAY_ADMIN_HOSTS") && message.contains("HOOKRELAY_ADMIN_TOKEN"),
        "the refusal says what to do: {message}"
    );
    assert!(!read.body.contains("ord-a"), "{}", read.body);
    assert_eq!(page.get("/ui/").await.status, 421, "nor the console");
    assert_eq!(page.get("/ui/events/1").await.status, 421);

    // The page's own origin matches the Host it sent: still refused.
    page.origin = Some(format!("http://attacker.example:{port}"));
    let replay = page
        .post_json("/api/v1/replay", &serde_json::json!({ "subject": "ord-a" }))
        .await;
    assert_eq!(replay.status, 421, "{}", replay.body);
    let form = page
        .post_form("/ui/replay", &[("subject", "ord-a"), ("confirm", "1")])
        .await;
    assert_eq!(form.status, 421, "{}", form.body);

    // Probes and scrapes answer any Host: Kubernetes and Prometheus use the pod IP.
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(page.get(open).await.status, 200, "{open} answers any Host");
    }
    assert_eq!(
        app.relay.outbox_count(Some("pending")),
        0,
        "nothing was replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_loopback_and_configured_host_names_are_served() {
    let app = TestApp::build(Backend::Sqlite, "adminhost")
        .no_consumer()
        .env("HOOKRELAY_ADMIN_HOSTS", "relay.internal, console.example.")
        .start()
        .await;
    let port = app.relay.admin.port();
    let mut admin = Admin::of(&app.relay);
    for host in [
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("127.1.2.3:{port}"),
        format!("[::1]:{port}"),
        // Any port: a `kubectl port-forward` or an SSH tunnel changes it.
        "localhost:18080".to_owned(),
        "localhost".to_owned(),
        format!("relay.internal:{port}"),
        "CONSOLE.example".to_owned(),
    ] {
        admin.host = Some(host.clone());
        let answer = admin.get("/api/v1/events").await;
        assert_eq!(answer.status, 200, "Host {host}: {}", answer.body);
    }
    for foreign in [
        "relay.internal.attacker.example".to_owned(),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("10.0.0.1:{port}"),
        "localhost.:not-a-port".to_owned(),
    ] {
        admin.host = Some(foreign.clone());
        assert_eq!(
            admin.get("/api/v1/events").await.status,
            421,
            "Host {foreign}"
        );
    }

    // A POST's Origin is compared with the names the console answers to, not
    // with whatever Host the request names.
    let dry_run = serde_json::json!({ "state": "dead", "dry_run": true });
    admin.host = Some(format!("127.0.0.1:{port}"));
    for (origin, status) in [
        (format!("http://127.0.0.1:{port}"), 200),
        ("https://relay.internal".to_owned(), 200),
        ("http://attacker.example".to_owned(), 403),
        // Another program's page on this machine is another origin.
        ("http://127.0.0.1:3000".to_owned(), 403),
        ("null".to_owned(), 403),
    ] {
        admin.origin = Some(origin.clone());
        let answer = admin.post_json("/api/v1/replay", &dry_run).await;
        assert_eq!(answer.status, status, "Origin {origin}: {}", answer.body);
    }
}
