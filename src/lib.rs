//! hookrelay: a durable webhook relay for payment providers.
//!
//! A webhook travels `ingress` (verify with the provider's scheme) → `outbox`
//! (committed and synced before the ack) → `publisher` (CloudEvents to a RabbitMQ
//! topic exchange, with confirms). See `docs/ARCHITECTURE.md` for the map.

pub mod admin;
pub mod amqp;
pub mod cli;
pub mod config;
pub mod event;
pub mod ingress;
pub mod metrics;
pub mod outbox;
pub mod providers;
pub mod publisher;
pub mod relay;
pub mod telemetry;
