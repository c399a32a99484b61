//! The RabbitMQ link: connection, topology, and a confirm-mode channel that is
//! re-established whenever it breaks.
//!
//! Two layers of recovery. lapin's own automatic recovery reconnects after a network
//! failure and replays topology and confirm mode on the same [`Channel`]; the
//! publisher waits for it with [`BrokerLink::recover`]. When that does not succeed
//! within a bound (a long outage, or an error lapin cannot recover), the link drops
//! the connection and builds a new one, retrying with `backon` for as long as it
//! takes. Either way nothing is lost: unconfirmed rows simply stay pending.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;

use crate::config::QueueType;
use crate::metrics::Metrics;

pub(crate) mod topology;

/// How long the publisher waits for lapin's automatic recovery before it replaces
/// the connection itself. Kept short: with lapin 4.12, a recovery whose first
/// reconnect attempt is refused was seen to stall in `Connecting` until the broker
/// dropped the half-open socket (10 s), so the fallback is the path that bounds an
/// outage's tail.
const RECOVERY_WAIT: Duration = Duration::from_secs(5);
/// How often the connection state is mirrored into the gauge.
const MONITOR_INTERVAL: Duration = Duration::from_millis(250);

/// The alternate exchange (and its queue) of an exchange: where messages that no
/// binding matches are kept.
pub fn unrouted_name(exchange: &str) -> String {
    format!("{exchange}.unrouted")
}

/// Declares the topic exchange with its alternate exchange `{exchange}.unrouted`
/// (fanout) and the durable quorum queue of the same name bound to it (the
/// relay's default, `HOOKRELAY_UNROUTED_QUEUE_TYPE=quorum`). Idempotent; tests
/// and consumers call it too, so everyone declares with identical arguments
/// (`hookrelay topology declare` declares the same list, [`topology::relay`]).
pub async fn declare_topology(channel: &Channel, exchange: &str) -> Result<(), lapin::Error> {
    topology::declare_all(channel, &topology::relay(exchange, QueueType::Quorum)).await
}

/// The broker URL without its password, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// How long `check-config --connect` waits for the broker to accept a
/// connection and a channel.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`check_reachable`] could not reach the broker: what failed, at which
/// URL (password masked), the broker's or the system's words (kept as text, so a
/// printed chain names them once), and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{} at {url} ({error}): {}", .failed.what(), .failed.what_to_do())]
pub(crate) struct BrokerCheckError {
    failed: BrokerCheck,
    url: String,
    error: String,
}

/// The step of [`check_reachable`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerCheck {
    /// Nothing took the connection: refused, unknown host, unreachable, TLS.
    Connect,
    /// The broker refused the user or its password (reply code 403).
    Login,
    /// The virtual host does not exist, or the user may not use it (530).
    VirtualHost,
    /// No connection and channel within [`CHECK_TIMEOUT`].
    Answer,
    /// Connected, but the broker gave no channel.
    Channel,
}

impl BrokerCheck {
    fn what(self) -> &'static str {
        match self {
            Self::Connect => "cannot connect to the broker",
            Self::Login => "the broker refused the login",
            Self::VirtualHost => "the broker refused the virtual host",
            Self::Answer => "no connection and channel within 10 s from the broker",
            Self::Channel => "connected, but no channel from the broker",
        }
    }

    fn what_to_do(self) -> &'static str {
        match self {
            Self::Connect => {
                "check the host and port of HOOKRELAY_AMQP_URL, and that RabbitMQ runs and is reachable from here"
            }
            Self::Login => "check the user and password in HOOKRELAY_AMQP_URL",
            Self::VirtualHost => {
                "check the path of HOOKRELAY_AMQP_URL (`%2f` is the default vhost `/`) and the user's permissions on it"
            }
            Self::Answer => {
                "check that the port of HOOKRELAY_AMQP_URL is RabbitMQ's AMQP port (5672, 5671 for amqps://) and that nothing on the way holds the connection"
            }
            Self::Channel => "check the broker's logs and its channel_max",
        }
    }
}

/// Opens a connection and a channel to the broker at `url` and closes them:
/// declares nothing, publishes nothing (`check-config --connect`). The
/// connection is named after the check, so the broker's logs tell it apart.
pub(crate) async fn check_reachable(url: &str) -> Result<(), BrokerCheckError> {
    let connection = open_connection(url, "hookrelay check-config --connect").await?;
    let channel = tokio::time::timeout(CHECK_TIMEOUT, connection.create_channel()).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(200, "hookrelay check-config done".into()),
    )
    .await;
    let failed = |failed, error: String| BrokerCheckError {
        failed,
        url: redact_url(url),
        error,
    };
    channel
        .map_err(|_| failed(BrokerCheck::Answer, "timed out".to_owned()))?
        .map(|_| ())
        .map_err(|e| failed(BrokerCheck::Channel, e.to_string()))
}

/// A connection to the broker at `url` named `name` (the broker's logs and
/// console show it), within [`CHECK_TIMEOUT`], without automatic recovery: for
/// the commands, which do one thing and exit. What failed says what to do.
async fn open_connection(url: &str, name: &str) -> Result<Connection, BrokerCheckError> {
    let failed = |failed, error: String| BrokerCheckError {
        failed,
        url: redact_url(url),
        error,
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CHECK_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| failed(BrokerCheck::Answer, "timed out".to_owned()))?
        .map_err(|e| {
            // AMQP 0-9-1 reply codes: 403 the login, 530 the virtual host.
            let step = match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 403 => BrokerCheck::Login,
                lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 530 => {
                    BrokerCheck::VirtualHost
                }
                _ => BrokerCheck::Connect,
            };
            failed(step, e.to_string())
        })
}

/// One broker node the relay may publish through.
struct Node {
    url: String,
    /// `host:port`: the `node` label, and what logs name.
    label: String,
}

/// Why the link replaced its connection: the `reason` of
/// `hookrelay_broker_reconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replaced {
    /// The connection or its channel failed.
    Lost,
    /// Publishes got no confirm in time on a connection that looked up.
    Timeout,
    /// The broker blocked the connection (a memory or disk alarm) for longer
    /// than [`BLOCKED_LIMIT`].
    Blocked,
    /// The broker nacked a publish on it.
    Nacked,
}

impl Replaced {
    fn as_str(self) -> &'static str {
        match self {
            Self::Lost => "lost",
            Self::Timeout => "timeout",
            Self::Blocked => "blocked",
            Self::Nacked => "nacked",
        }
    }
}

/// How long a blocked connection is kept before the link moves to another node:
/// a publish on it waits as long, no more than a confirm would.
const BLOCKED_LIMIT: Duration = Duration::from_secs(10);

/// A self-healing connection with one confirm-mode channel, on one of the
/// configured nodes at a time.
///
/// With several nodes (a cluster), a failed connection is not recovered in place:
/// the link goes to the next node at once, and rows unconfirmed on the old one
/// stay pending and are published again there (the publisher's per-subject rule
/// keeps their order). With one node, lapin's recovery is tried first.
pub(crate) struct BrokerLink {
    nodes: Vec<Node>,
    /// The node connected to, or to be tried next.
    at: usize,
    exchange: String,
    unrouted: QueueType,
    metrics: Arc<Metrics>,
    connection: Option<Link>,
}

/// A live connection, its channel, and the task that mirrors its state into
/// `hookrelay_broker_connected` and `hookrelay_broker_blocked`.
struct Link {
    connection: Connection,
    channel: Channel,
    watcher: tokio::task::JoinHandle<()>,
}

impl BrokerLink {
    /// A link that connects on first use, to a node picked at random so that
    /// replicas spread over a cluster.
    pub(crate) fn new(
        urls: &[String],
        exchange: String,
        unrouted: QueueType,
        metrics: Arc<Metrics>,
    ) -> Self {
        let nodes: Vec<Node> = urls
            .iter()
            .map(|url| Node {
                url: url.clone(),
                label: node_label(url),
            })
            .collect();
        metrics.broker.nodes(nodes.iter().map(|n| n.label.as_str()));
        Self {
            at: rand::random_range(0..nodes.len().max(1)),
            nodes,
            exchange,
            unrouted,
            metrics,
            connection: None,
        }
    }

    /// A ready confirm-mode channel, connecting (and retrying with backoff) as long
    /// as needed. `None` once shutdown is signalled.
    pub(crate) async fn channel(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Channel> {
        if let Some(link) = &self.connection {
            let up = link.connection.status().connected() && link.channel.status().connected();
            let blocked_long = self
                .metrics
                .broker
                .now()
                .blocked_since
                .is_some_and(|since| since.elapsed() >= BLOCKED_LIMIT);
            match (up, blocked_long && self.nodes.len() > 1) {
                (true, false) => return Some(link.channel.clone()),
                (true, true) => self.replace(Replaced::Blocked).await,
                (false, _) => self.replace(Replaced::Lost).await,
            }
        }
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        let mut tried = 0;
        loop {
            if *shutdown.borrow() {
                return None;
            }
            let node = &self.nodes[self.at];
            match self.connect(node).await {
                Ok((connection, channel)) => {
                    tracing::info!(broker = %redact_url(&node.url), node = %node.label,
                        exchange = %self.exchange, "broker connected");
                    self.metrics.broker.on(Some(&node.label));
                    let watcher = tokio::spawn(monitor(
                        connection.status().clone(),
                        Arc::clone(&self.metrics),
                        node.label.clone(),
                    ));
                    self.connection = Some(Link {
                        connection,
                        channel: channel.clone(),
                        watcher,
                    });
                    return Some(channel);
                }
                Err(e) => {
                    tracing::warn!(broker = %redact_url(&node.url), node = %node.label, error = %e,
                        "cannot reach the broker; webhooks are still accepted into the outbox");
                    self.at = (self.at + 1) % self.nodes.len();
                    tried += 1;
                    // The next node is tried at once; a pause only after all failed.
                    if tried % self.nodes.len() != 0 {
                        continue;
                    }
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(nodes = self.nodes.len(), retry_in = ?delay,
                        "no broker node reachable");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    async fn connect(&self, node: &Node) -> Result<(Connection, Channel), lapin::Error> {
        let mut properties = ConnectionProperties::default()
            // Operators (and the fault tests) tell relays apart by this name.
            .with_connection_name(
                format!("hookrelay {} pid {}", self.exchange, std::process::id()).into(),
            );
        // In place recovery only retries the same node: with others to go to, the
        // link moves on instead.
        if self.nodes.len() == 1 {
            properties = properties.enable_auto_recover().with_backoff(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(8),
            );
        }
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&node.url, properties),
        )
        .await
        .map_err(|_| lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        let channel = conn.create_channel().await?;
        let declared =
            topology::declare_all(&channel, &topology::relay(&self.exchange, self.unrouted)).await;
        let channel = match declared {
            Err(e) if self.unrouted == QueueType::Quorum && is_precondition_failed(&e) => {
                // An outbox of an older release declared the queue as classic; a
                // queue's type cannot change, so it is kept until an operator
                // moves it (docs/high-availability.md).
                tracing::warn!(queue = %unrouted_name(&self.exchange), error = %e,
                    "the unrouted queue exists as a classic queue, which stops taking messages while its node is down: delete it when it is empty to have it declared as a quorum queue, or set HOOKRELAY_UNROUTED_QUEUE_TYPE=classic");
                let channel = conn.create_channel().await?;
                topology::declare_all(
                    &channel,
                    &topology::relay(&self.exchange, QueueType::Classic),
                )
                .await?;
                channel
            }
            declared => declared.map(|()| channel)?,
        };
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((conn, channel))
    }

    /// Called after a publish failed with `error` (or, `None`, got no confirm in
    /// time): with one node, waits (bounded) for lapin to recover the channel;
    /// otherwise, or if that fails, drops the connection so the next
    /// [`channel`](Self::channel) call builds a fresh one, on the next node.
    pub(crate) async fn recover(
        &mut self,
        error: Option<lapin::Error>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let blocked = self.metrics.broker.now().blocked_since.is_some();
        self.metrics.broker.on(None);
        let Some(link) = &self.connection else {
            return;
        };
        let reason = match (&error, blocked) {
            (_, true) => Replaced::Blocked,
            (Some(_), false) => Replaced::Lost,
            (None, false) => Replaced::Timeout,
        };
        if let (Some(error), true) = (error, self.nodes.len() == 1) {
            let channel = link.channel.clone();
            let recovered = tokio::select! {
                r = tokio::time::timeout(RECOVERY_WAIT, channel.wait_for_recovery(error)) => matches!(r, Ok(Ok(()))),
                _ = shutdown.wait_for(|stop| *stop) => false,
            };
            if recovered && channel.status().connected() {
                tracing::info!("broker connection recovered");
                self.metrics.broker.on(Some(&self.nodes[self.at].label));
                return;
            }
        }
        self.replace(reason).await;
    }

    /// Called after the broker nacked a publish: the channel is not used again
    /// (see the publisher's `ChannelTrouble::Nacked`); the next
    /// [`channel`](Self::channel) call builds a fresh one, on the next node if
    /// there are several.
    pub(crate) async fn renew_after_nack(&mut self) {
        if self.connection.is_some() {
            self.replace(Replaced::Nacked).await;
        }
    }

    /// Drops the connection for `reason` and, with several nodes, moves on to the
    /// next one.
    async fn replace(&mut self, reason: Replaced) {
        let from = &self.nodes[self.at];
        tracing::warn!(node = %from.label, reason = reason.as_str(), "replacing the broker connection");
        self.metrics
            .broker_reconnects
            .with_label_values(&[reason.as_str()])
            .inc();
        // A connection given up on may not answer its close either (a silent
        // node): the next one is not kept waiting for it.
        self.close_within(Duration::from_millis(250)).await;
        self.at = (self.at + 1) % self.nodes.len();
    }

    /// Whether the connection and its channel are up now (without reconnecting).
    pub(crate) fn is_up(&self) -> bool {
        self.connection.as_ref().is_some_and(|link| {
            link.connection.status().connected() && link.channel.status().connected()
        })
    }

    /// Closes the connection (waiting at most 2 s for the broker), e.g. at
    /// shutdown.
    pub(crate) async fn disconnect(&mut self) {
        self.close_within(Duration::from_secs(2)).await;
    }

    async fn close_within(&mut self, bound: Duration) {
        self.metrics.broker.on(None);
        if let Some(link) = self.connection.take() {
            link.watcher.abort();
            let _ = tokio::time::timeout(
                bound,
                link.connection.close(200, "hookrelay closing".into()),
            )
            .await;
        }
    }
}

/// Whether the broker refused a declare because the entity exists with other
/// arguments (406 `PRECONDITION_FAILED`).
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// `host:port` of a broker URL: no user, password or virtual host.
pub(crate) fn node_label(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => redact_url(url),
    }
}

/// Mirrors the connection's state into the broker gauges and the logs. lapin's
/// recovery reconnects silently (publishes wait for it), and the broker blocks
/// and unblocks a connection without a publish failing, so the state is read
/// from the connection itself rather than inferred from publish failures.
async fn monitor(status: lapin::ConnectionStatus, metrics: Arc<Metrics>, node: String) {
    let (mut was_connected, mut was_blocked) = (true, false);
    loop {
        tokio::time::sleep(MONITOR_INTERVAL).await;
        let connected = status.connected();
        if connected != was_connected {
            if connected {
                tracing::info!(%node, "broker connection recovered");
            } else {
                tracing::warn!(%node,
                    "broker connection lost; webhooks are still accepted into the outbox"
                );
            }
            metrics.broker.on(connected.then_some(node.as_str()));
            was_connected = connected;
        }
        let blocked = connected && status.blocked();
        if blocked != was_blocked {
            if blocked {
                tracing::warn!(%node, limit = ?BLOCKED_LIMIT,
                    "the broker blocked the connection (a memory or disk alarm on the node): publishing waits, and moves to another node after the limit if there is one; webhooks are still accepted into the outbox");
            } else {
                tracing::info!(%node, "the broker unblocked the connection");
            }
            metrics.broker.set_blocked(blocked);
            was_blocked = blocked;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_passwords_are_not_logged() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
