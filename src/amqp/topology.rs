//! Topologies as data: the exchanges, queues and bindings the relay declares at
//! each connect ([`relay`]), and the partitioned consumer topology of `hookrelay
//! topology declare` ([`Partitioned`]), checked against the broker before anything
//! is declared ([`declare_partitioned`]).
//!
//! Both are lists of [`Entity`], so the command declares the relay's exchange with
//! exactly the relay's arguments: a difference would make one of the two fail with
//! `PRECONDITION_FAILED` at its next declare.

use std::fmt;
use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use super::{open_connection, redact_url, unrouted_name};
use crate::config::QueueType;

/// The AMQP header the relay puts the partition key (`{source}/{subject}`) in,
/// which the consistent-hash exchange hashes.
pub(crate) const PARTITION_KEY_HEADER: &str = "partitionkey";

/// The most partition queues one topology may have: each is a quorum queue (a
/// Raft group on every node), so thousands would cost the broker more than the
/// parallelism is worth.
pub(crate) const MAX_PARTITIONS: u16 = 1024;

/// The longest name AMQP carries (a short string).
const MAX_NAME: usize = 255;

/// How long the command waits for each answer of the broker.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The value of one declare argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A long string.
    Text(String),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text),
            Self::Bool(flag) => write!(f, "{flag}"),
        }
    }
}

/// Declare arguments, in the order they are shown.
type Args = Vec<(&'static str, Arg)>;

/// One thing a topology declares. Every exchange and queue here is durable and
/// neither auto-deleted nor exclusive.
#[derive(Debug, Clone)]
pub(crate) enum Entity {
    /// An exchange of `kind` with `args`.
    Exchange {
        /// Its name.
        name: String,
        /// Its type.
        kind: ExchangeKind,
        /// Its arguments.
        args: Args,
    },
    /// A queue with `args`.
    Queue {
        /// Its name.
        name: String,
        /// Its arguments.
        args: Args,
    },
    /// A binding from the exchange `source` to a queue or (with `to_exchange`) an
    /// exchange `destination`.
    Binding {
        /// The exchange messages come from.
        source: String,
        /// The queue or exchange they go to.
        destination: String,
        /// Whether `destination` is an exchange.
        to_exchange: bool,
        /// The binding key (a topic pattern, or a consistent-hash weight).
        key: String,
    },
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args = |args: &Args| {
            args.iter()
                .map(|(key, value)| format!(", {key}={value}"))
                .collect::<String>()
        };
        match self {
            Self::Exchange {
                name,
                kind,
                args: a,
            } => {
                write!(f, "exchange `{name}` ({}{})", kind_name(kind), args(a))
            }
            Self::Queue { name, args: a } => write!(f, "queue `{name}` (durable{})", args(a)),
            Self::Binding {
                source,
                destination,
                to_exchange,
                key,
            } => {
                let what = if *to_exchange { "exchange" } else { "queue" };
                write!(
                    f,
                    "binding `{source}` → {what} `{destination}`, key `{key}`"
                )
            }
        }
    }
}

/// The name of an exchange type, as the broker knows it.
fn kind_name(kind: &ExchangeKind) -> &str {
    match kind {
        ExchangeKind::Custom(name) => name,
        ExchangeKind::Direct => "direct",
        ExchangeKind::Fanout => "fanout",
        ExchangeKind::Headers => "headers",
        ExchangeKind::Topic => "topic",
    }
}

fn table(args: &Args) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args {
        let value = match value {
            Arg::Text(text) => AMQPValue::LongString(text.as_str().into()),
            Arg::Bool(flag) => AMQPValue::Boolean(*flag),
        };
        table.insert((*key).into(), value);
    }
    table
}

impl Entity {
    /// Declares it (a no-op when it exists with the same arguments). With
    /// `passive`, only asks whether an exchange or queue exists (a binding cannot
    /// be asked about, and is then not touched).
    async fn declare(&self, channel: &Channel, passive: bool) -> Result<(), lapin::Error> {
        match self {
            Self::Exchange { name, kind, args } => {
                let options = ExchangeDeclareOptions {
                    passive,
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                };
                channel
                    .exchange_declare(name.as_str().into(), kind.clone(), options, table(args))
                    .await
            }
            Self::Queue { name, args } => {
                let options = QueueDeclareOptions {
                    passive,
                    durable: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(name.as_str().into(), options, table(args))
                    .await
                    .map(|_| ())
            }
            Self::Binding { .. } if passive => Ok(()),
            Self::Binding {
                source,
                destination,
                to_exchange: true,
                key,
            } => {
                channel
                    .exchange_bind(
                        destination.as_str().into(),
                        source.as_str().into(),
                        key.as_str().into(),
                        ExchangeBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
            Self::Binding {
                source,
                destination,
                to_exchange: false,
                key,
            } => {
                channel
                    .queue_bind(
                        destination.as_str().into(),
                        source.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
        }
    }
}

/// Declares `entities` in order on `channel`.
pub(crate) async fn declare_all(
    channel: &Channel,
    entities: &[Entity],
) -> Result<(), lapin::Error> {
    for entity in entities {
        entity.declare(channel, false).await?;
    }
    Ok(())
}

/// What the relay declares at each connect: the durable topic exchange with
/// argument `alternate-exchange = {exchange}.unrouted`, the fanout exchange
/// `{exchange}.unrouted`, and the durable queue `{exchange}.unrouted` of type
/// `unrouted` bound to it.
pub(crate) fn relay(exchange: &str, unrouted_type: QueueType) -> Vec<Entity> {
    let unrouted = unrouted_name(exchange);
    let queue_args = match unrouted_type {
        QueueType::Quorum => vec![("x-queue-type", Arg::Text("quorum".to_owned()))],
        QueueType::Classic => Vec::new(),
    };
    vec![
        Entity::Exchange {
            name: unrouted.clone(),
            kind: ExchangeKind::Fanout,
            args: Vec::new(),
        },
        Entity::Exchange {
            name: exchange.to_owned(),
            kind: ExchangeKind::Topic,
            args: vec![("alternate-exchange", Arg::Text(unrouted.clone()))],
        },
        Entity::Queue {
            name: unrouted.clone(),
            args: queue_args,
        },
        Entity::Binding {
            source: unrouted.clone(),
            destination: unrouted,
            to_exchange: false,
            key: String::new(),
        },
    ]
}

/// A partitioned consumer topology: the relay's events matching `pattern` spread
/// over `partitions` queues `{name}.{i}` by their partition key, each key always
/// to the same queue (a consistent-hash exchange `{name}`), and each queue
/// consumed by one consumer at a time (single active consumer), so a key's events
/// are handled in order while N workers share the load.
#[derive(Debug, Clone)]
pub(crate) struct Partitioned {
    name: String,
    pattern: String,
    partitions: u16,
}

impl Partitioned {
    /// Checks the numbers and names before anything reaches the broker.
    pub(crate) fn new(
        name: &str,
        pattern: &str,
        partitions: u16,
        exchange: &str,
    ) -> Result<Self, TopologyError> {
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(TopologyError::Partitions(partitions));
        }
        let bad_name = |why: &'static str| TopologyError::Name {
            name: name.to_owned(),
            why,
        };
        if name.is_empty() {
            return Err(bad_name("it is empty"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(bad_name(
                "use ASCII letters, digits and `.`, `-`, `_`, `:` only",
            ));
        }
        if name.starts_with("amq.") {
            return Err(bad_name(
                "names starting with `amq.` are reserved by the broker",
            ));
        }
        if name == exchange || name == unrouted_name(exchange) {
            return Err(bad_name(
                "it is the relay's own exchange (HOOKRELAY_EXCHANGE) or its alternate exchange",
            ));
        }
        // The longest queue name, `{name}.{partitions - 1}`, must fit too.
        if name.len() + 1 + (partitions - 1).to_string().len() > MAX_NAME {
            return Err(bad_name("its queue names would pass AMQP's 255 bytes"));
        }
        let bad_pattern = |why: &'static str| TopologyError::Pattern {
            pattern: pattern.to_owned(),
            why,
        };
        if pattern.is_empty() || pattern.len() > MAX_NAME {
            return Err(bad_pattern("it must have 1 to 255 bytes"));
        }
        if pattern.split('.').any(|word| {
            word.is_empty() || (word.len() > 1 && (word.contains('*') || word.contains('#')))
        }) {
            return Err(bad_pattern(
                "its words are separated by single dots, and `*` and `#` stand alone as a word (e.g. `*.order.*`, `whitepay.#`)",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            pattern: pattern.to_owned(),
            partitions,
        })
    }

    /// The partition queues' names, `{name}.0` … `{name}.{N-1}`.
    fn queues(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.partitions).map(|i| format!("{}.{i}", self.name))
    }

    /// Everything declared, in the order it is declared: the consistent-hash
    /// exchange first (a broker without the plugin refuses it before anything else
    /// is made), and the binding from the relay's exchange last (until the queues
    /// are bound, the hash exchange would drop what it gets).
    fn entities(&self, exchange: &str, unrouted: QueueType) -> Vec<Entity> {
        let mut entities = vec![Entity::Exchange {
            name: self.name.clone(),
            kind: ExchangeKind::Custom("x-consistent-hash".to_owned()),
            args: vec![("hash-header", Arg::Text(PARTITION_KEY_HEADER.to_owned()))],
        }];
        entities.extend(relay(exchange, unrouted));
        entities.extend(self.queues().map(|name| Entity::Queue {
            name,
            args: vec![
                ("x-queue-type", Arg::Text("quorum".to_owned())),
                ("x-single-active-consumer", Arg::Bool(true)),
            ],
        }));
        // The binding key of a consistent-hash exchange is the queue's weight:
        // equal weights give each queue an equal share of the keys.
        entities.extend(self.queues().map(|queue| Entity::Binding {
            source: self.name.clone(),
            destination: queue,
            to_exchange: false,
            key: "1".to_owned(),
        }));
        entities.push(Entity::Binding {
            source: exchange.to_owned(),
            destination: self.name.clone(),
            to_exchange: true,
            key: self.pattern.clone(),
        });
        entities
    }
}

/// What became of one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It existed with the wanted arguments; left as it was.
    Exists,
    /// It did not exist and was declared.
    Created,
    /// It does not exist (`--dry-run`: nothing was declared).
    WouldCreate,
    /// A binding, declared again: AMQP cannot ask whether a binding exists, and
    /// declaring one that does is a no-op.
    Bound,
    /// A binding `--dry-run` would declare.
    WouldBind,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so the report can align the outcomes in a column.
        f.pad(match self {
            Self::Exists => "exists",
            Self::Created => "created",
            Self::WouldCreate => "would create",
            Self::Bound => "bound",
            Self::WouldBind => "would bind",
        })
    }
}

/// What [`declare_partitioned`] found and did.
#[derive(Debug)]
pub(crate) struct Report {
    /// Each entity with its outcome, in the order they were declared.
    pub(crate) entities: Vec<(Entity, Outcome)>,
    /// Whether nothing was declared on purpose.
    pub(crate) dry_run: bool,
}

impl Report {
    /// How many exchanges and queues were (or would be) created.
    pub(crate) fn created(&self) -> usize {
        self.entities
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Created | Outcome::WouldCreate))
            .count()
    }
}

/// Why `hookrelay topology declare` declared nothing, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// `--partitions` is out of range.
    #[error("--partitions {0} is out of range: use 1 to 1024 (each partition is a quorum queue)")]
    Partitions(u16),
    /// `--name` is unusable.
    #[error("--name `{name}` cannot be used: {why}")]
    Name {
        /// The name given.
        name: String,
        /// Why not.
        why: &'static str,
    },
    /// `--pattern` is not a topic pattern.
    #[error("--pattern `{pattern}` is not a topic pattern: {why}")]
    Pattern {
        /// The pattern given.
        pattern: String,
        /// Why not.
        why: &'static str,
    },
    /// The broker could not be reached: what failed and what to do.
    #[error("{0}")]
    Connect(String),
    /// An entity exists with other arguments (or of another type); nothing was
    /// declared.
    #[error(
        "{entity} exists with other arguments; the broker says: {broker}. Nothing was declared: \
         delete it or declare it as shown (arguments cannot be changed once it exists), or choose another --name"
    )]
    Conflict {
        /// The entity as wanted.
        entity: String,
        /// The broker's words, which name the argument that differs.
        broker: String,
    },
    /// The consistent-hash exchange type is unknown to the broker.
    #[error(
        "the broker does not know the exchange type x-consistent-hash ({broker}); nothing was declared: \
         enable its plugin with `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` and run this again"
    )]
    PluginMissing {
        /// The broker's words.
        broker: String,
    },
    /// The broker refused or did not answer something else.
    #[error(
        "{doing} failed at {url}: {error}. Check the broker's logs and the user's configure, write and read \
         permissions on these names{partial}"
    )]
    Broker {
        /// What was being done (names the entity).
        doing: String,
        /// The broker URL, password masked.
        url: String,
        /// The broker's or the client's words.
        error: String,
        /// What was already declared, if anything.
        partial: &'static str,
    },
}

/// The reply code and text of a broker's refusal, if that is what `error` is.
fn refusal(error: &lapin::Error) -> Option<(u16, String)> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            Some((amqp.get_id(), amqp.get_message().to_string()))
        }
        _ => None,
    }
}

/// Checks every entity of `topology` (on `exchange`, the relay's) against the
/// broker at `url`, and only when none conflicts, declares the missing ones (all
/// of them, unless `dry_run`).
///
/// An exchange or queue is first declared passively on a channel of its own (a
/// refusal closes the channel): not found, it is to be created. Found, it is
/// declared again with the wanted arguments, also on a channel of its own: that is
/// a no-op when they are equivalent and a `PRECONDITION_FAILED` naming the
/// argument when not. Only entities found are declared actively before the
/// decision, so a check never creates anything.
pub(crate) async fn declare_partitioned(
    url: &str,
    (exchange, unrouted): (&str, QueueType),
    topology: &Partitioned,
    dry_run: bool,
) -> Result<Report, TopologyError> {
    let connection = open_connection(url, "hookrelay topology declare")
        .await
        .map_err(|e| TopologyError::Connect(e.to_string()))?;
    let result =
        check_then_declare(&connection, url, (exchange, unrouted), topology, dry_run).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(200, "hookrelay topology declare done".into()),
    )
    .await;
    result
}

async fn check_then_declare(
    connection: &Connection,
    url: &str,
    (exchange, unrouted): (&str, QueueType),
    topology: &Partitioned,
    dry_run: bool,
) -> Result<Report, TopologyError> {
    let failed = |doing: String, error: String, partial| TopologyError::Broker {
        doing,
        url: redact_url(url),
        error,
        partial,
    };
    let mut checked = Vec::new();
    for entity in topology.entities(exchange, unrouted) {
        let exists = match entity {
            Entity::Binding { .. } => None,
            _ => match exists(connection, &entity).await {
                Ok(found) => Some(found),
                Err(CheckFailed::Conflict(broker)) => {
                    return Err(TopologyError::Conflict {
                        entity: entity.to_string(),
                        broker,
                    });
                }
                Err(CheckFailed::Other(error)) => {
                    return Err(failed(format!("checking {entity}"), error, ""));
                }
            },
        };
        checked.push((entity, exists));
    }
    let outcome = |exists: Option<bool>| match (exists, dry_run) {
        (Some(true), _) => Outcome::Exists,
        (Some(false), false) => Outcome::Created,
        (Some(false), true) => Outcome::WouldCreate,
        (None, false) => Outcome::Bound,
        (None, true) => Outcome::WouldBind,
    };
    let entities: Vec<(Entity, Outcome)> = checked
        .into_iter()
        .map(|(entity, exists)| (entity, outcome(exists)))
        .collect();
    if dry_run {
        return Ok(Report {
            entities,
            dry_run: true,
        });
    }
    let channel = answered(connection.create_channel())
        .await
        .map_err(|e| failed("opening a channel".to_owned(), e.to_string(), ""))?;
    for (at, (entity, _)) in entities.iter().enumerate() {
        if let Err(e) = answered(entity.declare(&channel, false)).await {
            if at == 0
                && let Some((503 | 504, text)) = refusal(&e)
            {
                return Err(TopologyError::PluginMissing { broker: text });
            }
            let partial = if at == 0 {
                ""
            } else {
                "; what was declared before it stays, and running the command again is safe"
            };
            return Err(failed(
                format!("declaring {entity}"),
                e.to_string(),
                partial,
            ));
        }
    }
    let _ = answered(channel.close(200, "declared".into())).await;
    Ok(Report {
        entities,
        dry_run: false,
    })
}

/// Why a check of one entity failed.
enum CheckFailed {
    /// It exists with other arguments: the broker's words (406).
    Conflict(String),
    /// Anything else: the broker's or the client's words.
    Other(String),
}

/// Whether an exchange or queue exists with the wanted arguments (see
/// [`declare_partitioned`]).
async fn exists(connection: &Connection, entity: &Entity) -> Result<bool, CheckFailed> {
    if !on_own_channel(connection, entity, true).await? {
        return Ok(false);
    }
    // `false` here: found a moment ago and deleted meanwhile.
    on_own_channel(connection, entity, false).await
}

/// Declares `entity` (passively or not) on a channel of its own, closed
/// afterwards (a broker allows 2047 per connection by default, fewer than the
/// checks of 1024 partitions). `Ok(false)` when the broker says it does not exist
/// (404).
async fn on_own_channel(
    connection: &Connection,
    entity: &Entity,
    passive: bool,
) -> Result<bool, CheckFailed> {
    let channel = answered(connection.create_channel())
        .await
        .map_err(|e| CheckFailed::Other(format!("no channel: {e}")))?;
    match answered(entity.declare(&channel, passive)).await {
        Ok(()) => {
            let _ = answered(channel.close(200, "checked".into())).await;
            Ok(true)
        }
        // The refusal closed the channel.
        Err(e) => match refusal(&e) {
            Some((404, _)) => Ok(false),
            Some((406, text)) => Err(CheckFailed::Conflict(text)),
            _ => Err(CheckFailed::Other(e.to_string())),
        },
    }
}

/// `future`, bounded by [`ANSWER_TIMEOUT`].
async fn answered<T>(
    future: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, lapin::Error> {
    tokio::time::timeout(ANSWER_TIMEOUT, future)
        .await
        .map_err(|_| lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
}
