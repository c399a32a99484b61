//! Bad input against a running relay: every case gets the status of the contract
//! (docs/contract.md §3) and a JSON error (or, for authentic but odd bodies, the ack
//! and an `unrecognized` event), never a crash, and the relay keeps serving
//! afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

fn error_text(reply: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(reply).expect("a JSON error body");
    value["error"]
        .as_str()
        .expect("an `error` string")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_whatever_the_framing() {
    let app = TestApp::build(Backend::Sqlite, "oversize")
        .no_consumer()
        .env("HOOKRELAY_MAX_BODY", "4KiB")
        .start()
        .await;
    let relay = &app.relay;
    let big = vec![b'a'; 10_000];
    let path = "/webhooks/whitepay";

    // Honest Content-Length over the limit: refused before the body is read.
    let (status, reply) = post(&relay.url("whitepay"), big.clone(), &[]).await;
    assert_eq!(status, 413);
    assert!(error_text(&reply).contains("4096 bytes"));

    // Chunked, no Content-Length: refused once the limit is crossed.
    let mut chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..5 {
        chunked.extend_from_slice(format!("{:x}\r\n", 2048).as_bytes());
        chunked.extend_from_slice(&[b'a'; 2048]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(relay.send_raw(&chunked), Some(413));

    // A Content-Length that lies low: only the declared bytes are the body (the
    // rest is garbage on the connection), and that body is not authentic.
    let mut lying = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nSignature: 00\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    lying.extend_from_slice(&big);
    assert_eq!(relay.send_raw(&lying), Some(401));
    relay.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_authentic_bodies_are_acked_and_unrecognized_and_unsigned_ones_401() {
    // The deeply nested body is published as a 267 kB `raw_base64`.
    let _unlimited = BrokerMaxMessageSize::unchanged().await;
    let mut app = TestApp::spawn(Backend::Sqlite, "oddbodies").await;
    let (relay, consumer) = (&app.relay, &mut app.consumer);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let huge_number =
        br#"{"order":{"id":"huge-1","value":1e999999999,"currency":"UAH","status":"COMPLETE"},"event_type":"order::completed"}"#.to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "whitepay.unrecognized"),
        (
            "invalid utf-8",
            vec![0xff, 0xfe, b'{', 0x80],
            "whitepay.unrecognized",
        ),
        ("deeply nested", deep, "whitepay.unrecognized"),
        ("huge number", huge_number, "whitepay.order.succeeded"),
    ];
    for (name, body, _) in &cases {
        let (status, _) = post(&relay.url("whitepay"), body.clone(), &[]).await;
        assert_eq!(status, 401, "{name}: unsigned is refused");
        let (status, _) = relay.post_whitepay(body).await;
        assert_eq!(status, 200, "{name}: signed is acked");
    }
    for (name, body, key) in &cases {
        let d = consumer
            .next(Duration::from_secs(20))
            .await
            .expect("published");
        assert_eq!(d.routing_key.as_str(), *key, "{name}");
        if *key == "whitepay.order.succeeded" {
            let envelope: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
            assert_eq!(
                envelope["data"]["amount"],
                serde_json::Value::Null,
                "exponent notation cannot be kept as written, so no amount rather than a rewritten one"
            );
            assert_eq!(raw_payload(&d.data).expect("payload").as_bytes(), &body[..]);
        }
    }
    relay.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_unknown_paths_and_bad_signature_headers_get_json_errors() {
    let app = TestApp::build(Backend::Sqlite, "headers")
        .no_consumer()
        .start()
        .await;
    let relay = &app.relay;
    let client = reqwest::Client::new();
    let response = client.get(relay.url("whitepay")).send().await.expect("GET");
    assert_eq!(response.status().as_u16(), 405);
    assert!(error_text(&response.bytes().await.expect("body")).contains("POST"));
    let response = client
        .post(format!("http://{}/elsewhere", relay.ingress))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 404);
    assert!(error_text(&response.bytes().await.expect("body")).contains("/webhooks/"));

    let body = fixture("whitepay", "order_declined.json");
    let good = whitepay_signature(WHITEPAY_TOKEN, &body);
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("missing", vec![], "missing `Signature` header"),
        (
            "garbled",
            vec![("Signature", "not hex at all".to_owned())],
            "malformed",
        ),
        (
            "duplicated",
            vec![("Signature", good.clone()), ("Signature", good.clone())],
            "more than once",
        ),
        (
            "wrong",
            vec![("Signature", "ab".repeat(32))],
            "does not match",
        ),
    ];
    for (name, headers, expected) in cases {
        let (status, reply) = post(&relay.url("whitepay"), body.clone(), &headers).await;
        assert_eq!(status, 401, "{name}");
        let text = error_text(&reply);
        assert!(text.contains(expected), "{name}: {text}");
        assert!(
            !text.contains(WHITEPAY_TOKEN),
            "{name}: no secret in the error"
        );
    }
    relay.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_are_refused_and_slow_clients_are_cut_off() {
    let app = TestApp::build(Backend::Sqlite, "slow")
        .no_consumer()
        .env("HOOKRELAY_READ_TIMEOUT", "1s")
        .start()
        .await;
    let relay = &app.relay;
    // More headers than the relay accepts.
    let mut flood = b"POST /webhooks/whitepay HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..500 {
        flood.extend_from_slice(format!("X-Flood-{i}: {}\r\n", "v".repeat(50)).as_bytes());
    }
    flood.extend_from_slice(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
    let status = relay.send_raw(&flood);
    assert!(
        matches!(status, Some(431) | None),
        "flood answered {status:?}"
    );

    // Slowloris on headers: the connection is closed after the read timeout.
    let mut slow = TcpStream::connect(relay.ingress).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    slow.write_all(b"POST /webhooks/whitepay HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a client that never finishes its headers is cut off"
    );

    // Slowloris on the body: 408 once the read timeout passes.
    let mut slow_body = TcpStream::connect(relay.ingress).expect("connect");
    slow_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    slow_body
        .write_all(b"POST /webhooks/whitepay HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{")
        .expect("write");
    let mut answer = Vec::new();
    let _ = slow_body.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    relay.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_counted_not_logged_line_by_line() {
    let app = TestApp::build(Backend::Sqlite, "logflood")
        .no_consumer()
        .start()
        .await;
    let relay = &app.relay;
    let started = Instant::now();
    for i in 0..200 {
        let body = whitepay_order(&format!("flood-{i}"));
        let (status, _) = post(
            &relay.url("whitepay"),
            body,
            &[("Signature", "00".repeat(32))],
        )
        .await;
        assert_eq!(status, 401);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let lines = relay
        .logs()
        .iter()
        .filter(|line| line.contains("webhook refused"))
        .count();
    assert!(
        (1..=usize::try_from(seconds).expect("seconds") + 1).contains(&lines),
        "{lines} refusal lines for 200 refusals in {seconds} s"
    );
    assert_eq!(
        relay
            .metric(r#"hookrelay_webhooks_received_total{outcome="unauthorized",provider="whitepay",source="whitepay"}"#)
            .await,
        200.0,
        "every refusal is counted"
    );
}

/// An ordinary client writes its whole request before it reads the answer. The
/// relay reads and discards an oversized body (bounded in bytes and time), as
/// nginx's lingering close does, so such a client gets to read its 413 instead of
/// a broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_whole_oversized_body_reads_the_413() {
    let app = TestApp::build(Backend::Sqlite, "linger")
        .no_consumer()
        .start()
        .await;
    let relay = &app.relay;
    let body = vec![b'a'; 2 * 1024 * 1024];
    for framing in ["length", "chunked"] {
        let addr = relay.ingress;
        let body = body.clone();
        let (written, status) = tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut request = match framing {
                "length" => format!(
                    "POST /webhooks/whitepay HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes(),
                _ => b"POST /webhooks/whitepay HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec(),
            };
            if framing == "length" {
                request.extend_from_slice(&body);
            } else {
                for chunk in body.chunks(64 * 1024) {
                    request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    request.extend_from_slice(chunk);
                    request.extend_from_slice(b"\r\n");
                }
                request.extend_from_slice(b"0\r\n\r\n");
            }
            // Headers (and the first bytes) first, the rest a moment later, as
            // urllib does: by then the relay has answered.
            let (head, rest) = request.split_at(request.len() - body.len() / 2);
            let written = stream
                .write_all(head)
                .and_then(|()| {
                    std::thread::sleep(Duration::from_millis(300));
                    stream.write_all(rest)
                })
                .map_err(|e| e.kind());
            let mut answer = [0u8; 12];
            let status = stream
                .read_exact(&mut answer)
                .ok()
                .map(|()| String::from_utf8_lossy(&answer[9..12]).into_owned());
            (written, status)
        })
        .await
        .expect("client");
        assert_eq!(written, Ok(()), "{framing}: the whole request was written");
        assert_eq!(status.as_deref(), Some("413"), "{framing}");
    }
    relay.assert_still_serving().await;
}

crate::on_both_backends!(a_webhook_the_outbox_cannot_store_is_refused_alone_with_what_is_wrong);

/// A signed webhook whose order id holds a NUL character (which PostgreSQL's text
/// cannot keep), sent among 120 ordinary ones at once: it alone is refused, with
/// 422 and the field named (no 5xx a provider would retry for ever), the same on
/// both backends, and every ordinary one is stored.
async fn a_webhook_the_outbox_cannot_store_is_refused_alone_with_what_is_wrong(backend: Backend) {
    let app = TestApp::build(backend, "nul").no_consumer().start().await;
    let odd = whitepay_order("ord\\u00001");
    let ordinary: Vec<Vec<u8>> = (0..120)
        .map(|i| whitepay_order(&format!("ordinary-{i}")))
        .collect();
    let relay = &app.relay;
    let (odd_answer, answers) = tokio::join!(
        relay.post_whitepay(&odd),
        futures_lite::future::zip(
            async {
                let mut answers = Vec::new();
                for body in &ordinary[..60] {
                    answers.push(relay.post_whitepay(body).await.0);
                }
                answers
            },
            async {
                let mut answers = Vec::new();
                for body in &ordinary[60..] {
                    answers.push(relay.post_whitepay(body).await.0);
                }
                answers
            },
        )
    );
    let (status, reply) = odd_answer;
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&reply));
    let reply: serde_json::Value = serde_json::from_slice(&reply).expect("JSON error");
    let text = reply["error"].as_str().unwrap_or_default();
    assert!(
        text.contains("subject") && text.contains("NUL"),
        "the answer names the field and what is wrong: {text}"
    );
    let (first, second) = answers;
    assert!(
        first.iter().chain(&second).all(|s| *s == 200),
        "every ordinary webhook was stored: {first:?} {second:?}"
    );
    assert_eq!(app.relay.outbox_count(None), 120);
    assert_eq!(
        app.relay
            .metric("hookrelay_webhooks_received_total{outcome=\"invalid\",provider=\"whitepay\",source=\"whitepay\"}")
            .await,
        1.0
    );
}

/// Strangers that each send most of a large body and then wait cannot make the
/// relay hold their bodies without bound: the bodies being read hold one budget
/// and each client a share of it, past which it gets 429 at once. Signed
/// webhooks of another client go on meanwhile, and the memory is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_unsigned_bodies_is_bounded_and_signed_webhooks_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const STRANGERS: usize = 300;
    const SENT: usize = 900_000;
    let app = TestApp::build(Backend::Sqlite, "bodyflood")
        .no_consumer()
        .start()
        .await;
    let before = app.relay.rss_mib();
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let answers = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let strangers: Vec<_> = (0..STRANGERS)
        .map(|i| {
            let (addr, mut stop, answers) = (app.relay.ingress, stop.subscribe(), Arc::clone(&answers));
            tokio::spawn(async move {
                let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let head = format!(
                    "POST /webhooks/whitepay HTTP/1.1\r\nHost: relay\r\nSignature: x{i}\r\nContent-Length: 1000000\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&vec![b'{'; SENT]).await;
                // Held open until the test ends the flood, reading what the relay
                // answers meanwhile.
                let mut answer = [0u8; 12];
                tokio::select! {
                    read = stream.read(&mut answer) => if let Ok(n @ 1..) = read {
                        let text = String::from_utf8_lossy(&answer[..n]).to_string();
                        answers.lock().expect("answers").push(text);
                        let _ = stop.recv().await;
                    },
                    _ = stop.recv() => {}
                }
            })
        })
        .collect();
    let mut peak = before;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        peak = peak.max(app.relay.rss_mib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another client (another loopback address) still gets its webhooks in.
    let signed = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    let body = whitepay_order("during-the-flood");
    let started = std::time::Instant::now();
    let status = signed
        .post(app.relay.url("whitepay"))
        .header("Signature", whitepay_signature(WHITEPAY_TOKEN, &body))
        .body(body)
        .send()
        .await
        .expect("request")
        .status();
    let took = started.elapsed();
    peak = peak.max(app.relay.rss_mib());
    let _ = stop.send(());
    for stranger in strangers {
        let _ = stranger.await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = app.relay.rss_mib();
    let refused = answers
        .lock()
        .expect("answers")
        .iter()
        .filter(|a| a.contains(" 429"))
        .count();
    eprintln!(
        "body flood: {STRANGERS} strangers x {SENT} bytes: RSS {before:.1} -> peak {peak:.1} -> after {after:.1} MiB; {refused} answered 429; a signed webhook: {status} in {took:?}"
    );
    assert_eq!(status, 200, "a signed webhook of another client goes on");
    assert!(took < Duration::from_secs(2), "and quickly: {took:?}");
    assert!(
        peak < before + 64.0,
        "the bodies held at most a client's share: RSS {before:.1} -> {peak:.1} MiB"
    );
    assert!(
        refused >= STRANGERS / 2,
        "most strangers were refused at once: {refused} of {STRANGERS}"
    );
    assert!(
        after < before + 32.0,
        "the memory went back: {before:.1} -> {after:.1} MiB"
    );
}
