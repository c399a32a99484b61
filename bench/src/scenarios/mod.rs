//! Every scenario of the bench, one row each in [`TABLE`], in the order they run;
//! one file per family:
//!
//! - [`ceilings`]: `fsync-probe`, `http-ceiling`, `broker-ceiling`,
//!   `broker-ceiling-max`;
//! - [`peer`]: `peer`, Svix Bridge under `steady`'s load;
//! - [`relay_load`]: `steady`, `half-rate`, `overload` and their PostgreSQL
//!   counterparts, `pg-steady-3` (rows of data: a backend, relays, a pace);
//! - [`backlog`]: `backlog`, `pg-backlog`;
//! - [`console`]: `console`, `pg-console`;
//! - [`callgrind`]: instructions per webhook.
//!
//! [`setup`] is what the relay scenarios share to start and stop their relays.
//!
//! **Adding a scenario.** One more relay load (another pace, backend or number of
//! relays) is one row with a [`relay_load::Load`]. A new family is a file here
//! with an `async fn` that returns its rows, a [`Family`] variant for it, and its
//! arm in [`run`]. Its name is then accepted by `--scenarios` (and is in the
//! default list with `by_default`); bench/README.md says what each one measures.

pub mod backlog;
pub mod callgrind;
pub mod ceilings;
pub mod console;
pub mod peer;
pub mod relay_load;
pub mod setup;

use std::sync::LazyLock;

use crate::context::Ctx;
use crate::relay::Backend;
use crate::report::{InstructionCount, Scenario};
use ceilings::Publishers;
use relay_load::{Load, Pace};

/// One row of the scenario table.
pub struct Entry {
    /// The name in `--scenarios` and in the report.
    pub name: &'static str,
    /// In the default list of `--scenarios` (those that take minutes are not).
    pub by_default: bool,
    pub family: Family,
}

/// What a scenario is, and what its family's code needs to run it.
pub enum Family {
    FsyncProbe,
    HttpCeiling,
    BrokerCeiling(Publishers),
    Load(Load),
    /// `peer`: Svix Bridge under `steady`'s load (skipped without `--svix-bridge`).
    Peer,
    /// `tag`: the order-id prefix of its webhooks.
    Backlog {
        tag: &'static str,
        backend: Backend,
    },
    Console(Backend),
    Callgrind,
}

/// What a scenario adds to the report.
pub enum Output {
    /// Rows of the first tables (a console scenario has two).
    Rows(Vec<Scenario>),
    /// The callgrind table.
    Instructions(Vec<InstructionCount>),
}

/// Every scenario, in the order they run: the SQLite ones first, so one run has
/// them as the reference of the PostgreSQL ones.
pub const TABLE: &[Entry] = &[
    Entry {
        name: "fsync-probe",
        by_default: true,
        family: Family::FsyncProbe,
    },
    Entry {
        name: "http-ceiling",
        by_default: true,
        family: Family::HttpCeiling,
    },
    Entry {
        name: "broker-ceiling",
        by_default: true,
        family: Family::BrokerCeiling(Publishers::One),
    },
    Entry {
        name: "broker-ceiling-max",
        by_default: true,
        family: Family::BrokerCeiling(Publishers::Max),
    },
    Entry {
        name: "steady",
        by_default: true,
        family: Family::Load(Load {
            tag: "steady",
            description: "closed loop: sustained fsync'd acks",
            backend: Backend::Sqlite,
            relays: 1,
            pace: Pace::Closed,
        }),
    },
    Entry {
        name: "half-rate",
        by_default: true,
        family: Family::Load(Load {
            tag: "half",
            description: "open loop at half the steady acked rate; latency from the due time",
            backend: Backend::Sqlite,
            relays: 1,
            pace: Pace::HalfOf("steady"),
        }),
    },
    Entry {
        name: "overload",
        by_default: true,
        family: Family::Load(Load {
            tag: "over",
            description: "open loop at overload-factor × the steady acked rate: expect 503s, bounded RSS",
            backend: Backend::Sqlite,
            relays: 1,
            pace: Pace::OverloadOf("steady"),
        }),
    },
    Entry {
        name: "backlog",
        by_default: true,
        family: Family::Backlog {
            tag: "backlog",
            backend: Backend::Sqlite,
        },
    },
    Entry {
        name: "pg-steady",
        by_default: true,
        family: Family::Load(Load {
            tag: "pgsteady",
            description: "closed loop, one relay on a PostgreSQL outbox",
            backend: Backend::Postgres,
            relays: 1,
            pace: Pace::Closed,
        }),
    },
    Entry {
        name: "pg-overload",
        by_default: true,
        family: Family::Load(Load {
            tag: "pgover",
            description: "open loop at overload-factor × the pg-steady acked rate, one relay on PostgreSQL",
            backend: Backend::Postgres,
            relays: 1,
            pace: Pace::OverloadOf("pg-steady"),
        }),
    },
    Entry {
        name: "pg-backlog",
        by_default: true,
        family: Family::Backlog {
            tag: "pgbacklog",
            backend: Backend::Postgres,
        },
    },
    Entry {
        name: "pg-steady-3",
        by_default: true,
        family: Family::Load(Load {
            tag: "pgsteady3",
            description: "closed loop spread round robin over three relays sharing one PostgreSQL outbox",
            backend: Backend::Postgres,
            relays: 3,
            pace: Pace::Closed,
        }),
    },
    // Last of the default list: the broker is still busy with the peer's
    // unconfirmed backlog (and its queue's clean-up) for a while after it, which
    // would show in the next scenario's latencies.
    Entry {
        name: "peer",
        by_default: true,
        family: Family::Peer,
    },
    Entry {
        name: "console",
        by_default: false,
        family: Family::Console(Backend::Sqlite),
    },
    Entry {
        name: "pg-console",
        by_default: false,
        family: Family::Console(Backend::Postgres),
    },
    Entry {
        name: "callgrind",
        by_default: false,
        family: Family::Callgrind,
    },
];

/// Every scenario's name, in the table's order.
pub fn names() -> Vec<&'static str> {
    TABLE.iter().map(|e| e.name).collect()
}

/// The default of `--scenarios`: the names `by_default`, comma-separated.
pub fn default_list() -> &'static str {
    static LIST: LazyLock<String> = LazyLock::new(|| {
        let names: Vec<&str> = TABLE
            .iter()
            .filter(|e| e.by_default)
            .map(|e| e.name)
            .collect();
        names.join(",")
    });
    &LIST
}

impl Family {
    /// Whether it starts the relay binary (which must then be built and fresh).
    pub fn needs_relay(&self) -> bool {
        !matches!(
            self,
            Self::FsyncProbe | Self::HttpCeiling | Self::BrokerCeiling(_) | Self::Peer
        )
    }

    /// Whether it needs the `--postgres` server.
    pub fn needs_postgres(&self) -> bool {
        let backend = match self {
            Self::Load(load) => load.backend,
            Self::Backlog { backend, .. } | Self::Console(backend) => *backend,
            _ => return false,
        };
        backend == Backend::Postgres
    }
}

/// Runs one scenario; `done` holds the rows of those that ran before it.
pub async fn run(ctx: &Ctx, entry: &Entry, done: &[Scenario]) -> anyhow::Result<Output> {
    let rows = match &entry.family {
        Family::FsyncProbe => vec![ceilings::fsync_probe(ctx).await?],
        Family::HttpCeiling => vec![ceilings::http_ceiling(ctx).await?],
        Family::BrokerCeiling(shape) => {
            vec![ceilings::broker_ceiling(ctx, entry.name, *shape).await?]
        }
        Family::Peer => peer::run(ctx).await?,
        Family::Load(load) => vec![relay_load::run(ctx, entry.name, load, done).await?],
        Family::Backlog { tag, backend } => {
            vec![backlog::run(ctx, entry.name, tag, *backend).await?]
        }
        Family::Console(backend) => console::scenario(ctx, entry.name, *backend).await?,
        Family::Callgrind => return Ok(Output::Instructions(callgrind::run(ctx).await?)),
    };
    Ok(Output::Rows(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_references_run_before_their_scenario() {
        for (i, entry) in TABLE.iter().enumerate() {
            assert!(
                TABLE[..i].iter().all(|e| e.name != entry.name),
                "{} twice",
                entry.name
            );
            if let Family::Load(Load {
                pace: Pace::HalfOf(reference) | Pace::OverloadOf(reference),
                ..
            }) = &entry.family
            {
                assert!(
                    TABLE[..i].iter().any(|e| e.name == *reference),
                    "{} refers to {reference}, which does not run before it",
                    entry.name
                );
            }
        }
    }

    #[test]
    fn the_default_list_is_the_one_the_readme_documents() {
        assert_eq!(
            default_list(),
            "fsync-probe,http-ceiling,broker-ceiling,broker-ceiling-max,steady,half-rate,overload,backlog,pg-steady,pg-overload,pg-backlog,pg-steady-3,peer"
        );
    }
}
