//! A relay on a real three-node RabbitMQ cluster started by the test
//! ([`RabbitCluster`]): `HOOKRELAY_AMQP_URL` lists the nodes (each through a proxy
//! the test can cut), the consumer reads a quorum queue led by a node the test
//! never harms. Under load, the node the relay publishes through is killed with
//! SIGKILL and later started again; then the node it moved to is cut off; then
//! the next one goes silent (connections open, no bytes moving).
//!
//! The oracle is the replica tests' (`support/oracle.rs`): every acked webhook
//! delivered, nothing delivered that no one acked, each subject in order;
//! duplicates counted. Publishing must go on while a node is down.

use std::time::{Duration, Instant};

use crate::support::*;

/// The node index of the proxy the relay is connected through.
async fn relay_node(relay: &Relay, proxies: &[TcpProxy]) -> Option<usize> {
    let node = relay.broker_node().await?;
    proxies.iter().position(|p| p.addr.to_string() == node)
}

/// Waits until the relay publishes through a node other than `from`; how long
/// that took.
async fn moved_off(relay: &Relay, proxies: &[TcpProxy], from: usize) -> Duration {
    let started = Instant::now();
    wait_until(
        "the relay publishes through another node",
        Duration::from_secs(30),
        async || relay_node(relay, proxies).await.is_some_and(|k| k != from),
    )
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_a_cluster_loses_nothing_when_its_node_is_killed_cut_off_or_silent() {
    let Some(cluster) = tokio::task::block_in_place(RabbitCluster::start) else {
        return;
    };
    let mut proxies = Vec::new();
    for k in 0..3 {
        proxies.push(TcpProxy::start(&cluster.addr(k)).await);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = format!("hookrelay-test-cluster-{}", uuid::Uuid::new_v4().simple());
    let mut config = RelayConfig::new(&exchange, dir.path());
    let urls: Vec<String> = proxies
        .iter()
        .map(|p| format!("amqp://guest:guest@{}/%2f", p.addr))
        .collect();
    config
        .env
        .push(("HOOKRELAY_AMQP_URL".to_owned(), urls.join(",")));
    let relay = Relay::start(&config);
    relay.wait_broker_connected().await;
    let first = relay_node(&relay, &proxies).await.expect("a node");
    // The consumer's queue is led by a node the test never kills or cuts: the
    // node after the relay's first. The second fault cuts the relay's node of
    // then, which may be this one: only the relay's proxy is cut, not the
    // consumer's direct connection.
    let safe = (first + 1) % 3;
    let recorder = Recorder::start(Consumer::bind_quorum(&cluster.url(safe), &exchange, "#").await);
    let load = Load::start(
        vec![relay.url("whitepay")],
        8,
        Duration::from_millis(10),
        Walk::OrderLives,
    );
    let loaded = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. The node the relay publishes through dies.
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill9(first));
    let moved_after_kill = moved_off(&relay, &proxies, first).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarting = Instant::now();
    tokio::task::block_in_place(|| cluster.restart(first));
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. The node it moved to is cut off.
    let second = relay_node(&relay, &proxies).await.expect("a node");
    let cut = Instant::now();
    proxies[second].cut();
    let moved_after_cut = moved_off(&relay, &proxies, second).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxies[second].restore();
    let restored = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. The node it is on now goes silent: connections stay open, nothing
    // moves (a partition, a frozen machine). Only a confirm timeout tells.
    let third = relay_node(&relay, &proxies).await.expect("a node");
    let frozen = Instant::now();
    proxies[third].freeze();
    let moved_after_freeze = moved_off(&relay, &proxies, third).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What was held on the silent link reaches the broker now: duplicates.
    proxies[third].thaw();
    let thawed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (v, outcome, delivered_at) = judged_recorded(load, recorder, Duration::from_secs(30)).await;
    let reconnects = r#"hookrelay_broker_reconnects_total{reason="#;
    let lost_reconnects = relay.metric(&format!(r#"{reconnects}"lost"}}"#)).await;
    let timeout_reconnects = relay.metric(&format!(r#"{reconnects}"timeout"}}"#)).await;
    report(
        "cluster",
        "node killed, restarted; node cut off; node silent",
        &v,
        &format!(
            "published_per_s_before={:.0} moved_after_kill={:.1}s no_publish_after_kill={:.1}s published_per_s_while_killed={:.0} restart_took={:.1}s \
             moved_after_cut={:.1}s no_publish_after_cut={:.1}s published_per_s_while_cut={:.0} \
             moved_after_silence={:.1}s no_publish_after_silence={:.1}s published_per_s_while_silent={:.0} \
             reconnects_lost={lost_reconnects} reconnects_timeout={timeout_reconnects} no_2xx_for={:.1}s refused_then_retried={}",
            rate(&delivered_at, loaded, killed),
            moved_after_kill.as_secs_f64(),
            longest_pause(&delivered_at, killed, restarting).as_secs_f64(),
            rate(&delivered_at, killed, restarting),
            restarted.duration_since(restarting).as_secs_f64(),
            moved_after_cut.as_secs_f64(),
            longest_pause(&delivered_at, cut, restored).as_secs_f64(),
            rate(&delivered_at, cut, restored),
            moved_after_freeze.as_secs_f64(),
            longest_pause(&delivered_at, frozen, thawed).as_secs_f64(),
            rate(&delivered_at, frozen, thawed),
            longest_pause(&outcome.ack_times, killed, thawed).as_secs_f64(),
            outcome.refusals,
        ),
    );
    assert!(v.acked > 100, "the load ran: {v:?}");
    assert_eq!((v.lost, v.phantom, v.out_of_order), (0, 0, 0), "{v:?}");
    assert!(
        rate(&delivered_at, killed, restarting) > 0.0 && rate(&delivered_at, cut, restored) > 0.0,
        "publishing went on while a node was down"
    );
    assert_eq!(outcome.refusals, 0, "webhooks were acked throughout");
    assert!(
        lost_reconnects >= 2.0 && timeout_reconnects >= 1.0,
        "each fault replaced the connection: lost {lost_reconnects}, timeout {timeout_reconnects}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_blocked_by_a_node_says_so_and_moves_to_another() {
    // Separate brokers: a cluster raises a resource alarm on all its nodes at
    // once, so only another broker can take the publishes.
    let Some(brokers) = tokio::task::block_in_place(|| RabbitCluster::start_separate(2)) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = format!("hookrelay-test-blocked-{}", uuid::Uuid::new_v4().simple());
    let mut config = RelayConfig::new(&exchange, dir.path());
    config.env.push((
        "HOOKRELAY_AMQP_URL".to_owned(),
        format!("{},{}", brokers.url(0), brokers.url(1)),
    ));
    let relay = Relay::start(&config);
    relay.wait_broker_connected().await;
    let node = relay.broker_node().await.expect("a node");
    let (blocked, other) = if node == brokers.addr(0) {
        (0, 1)
    } else {
        (1, 0)
    };
    let mut consumer = Consumer::bind_quorum(&brokers.url(other), &exchange, "#").await;
    tokio::task::block_in_place(|| brokers.block(blocked));

    // The broker blocks a connection when it next publishes.
    let (code, _) = relay.post_whitepay(&whitepay_order("while-blocked")).await;
    assert_eq!(code, 200, "webhooks are still acked");
    wait_until(
        "the relay reports the block",
        Duration::from_secs(10),
        async || relay.readyz().await.1["broker"]["blocked"] == true,
    )
    .await;
    let (ready, body) = relay.readyz().await;
    assert_eq!(
        ready, 200,
        "a blocked broker does not make the relay unready"
    );
    assert_eq!(body["broker"]["node"], brokers.addr(blocked), "{body}");
    assert_eq!(relay.metric("hookrelay_broker_blocked").await, 1.0);

    // Within the limit (10 s), it publishes through the other broker.
    let moved = Instant::now();
    let delivered = consumer
        .next(Duration::from_secs(30))
        .await
        .expect("the webhook, through the other broker");
    let moved_after = moved.elapsed();
    let event: serde_json::Value = serde_json::from_slice(&delivered.data).expect("JSON");
    assert_eq!(
        event["subject"], "while-blocked",
        "the webhook acked while blocked"
    );
    assert_eq!(relay.broker_node().await, Some(brokers.addr(other)));
    assert_eq!(relay.metric("hookrelay_broker_blocked").await, 0.0);
    assert_eq!(
        relay
            .metric(r#"hookrelay_broker_reconnects_total{reason="blocked"}"#)
            .await,
        1.0
    );
    eprintln!(
        "cluster [blocked] published through the other broker {:.1}s after the block was reported",
        moved_after.as_secs_f64()
    );
}
