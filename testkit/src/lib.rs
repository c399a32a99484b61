//! What hookrelay's integration tests (`tests/it/`) and its bench (`bench/`) both
//! need, written once: the real `hookrelay` binary as a child process
//! ([`relay`]: start it, find its listeners in its JSON log, signal it, read its
//! log and `/metrics`), and a TCP proxy that can cut or freeze the link between the
//! relay and the broker or PostgreSQL ([`proxy`]). [`http`] is the loopback-only
//! HTTP/1.1 client both use.
//!
//! Dev-only (`publish = false`, not a default member of the workspace): the root
//! package has it as a dev-dependency, the bench as a dependency. It panics on
//! nothing the caller could handle: every operation that can fail returns a
//! `Result`, and the tests' own thin wrappers turn failures into panics.
//!
//! It talks to loopback addresses only: [`http::ensure_loopback`] refuses the rest.

#![warn(missing_docs, unreachable_pub)]

pub mod http;
pub mod log;
pub mod proxy;
pub mod relay;

pub use proxy::TcpProxy;
pub use relay::{Launch, RelayProcess};
