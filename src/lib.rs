//! hookrelay: a durable webhook relay for payment providers.
//!
//! A webhook travels `ingress` (verify with the provider's scheme) → `outbox`
//! (committed and synced before the ack) → `publisher` (CloudEvents to a RabbitMQ
//! topic exchange, with confirms). See `docs/ARCHITECTURE.md` for the map.
//!
//! The public modules are what the binary, the integration tests and `bench/` use;
//! everything else is `pub(crate)`.

#![warn(unreachable_pub)]

mod activity;
mod admin;
pub mod amqp;
mod budget;
pub mod cli;
mod clock;
pub mod config;
pub mod event;
mod ingress;
mod metrics;
mod outbox;
mod pace;
pub mod providers;
pub mod publisher;
mod recovery;
mod relay;
mod telemetry;

/// Reaching an outbox from the integration tests and the bench (feature `testing`).
#[cfg(feature = "testing")]
pub use outbox::testing;
