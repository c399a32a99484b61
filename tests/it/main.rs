//! Every integration test, in one test binary (`it`), as zero2prod's `tests/api/`.
//!
//! Each `tests/*.rs` file is a crate of its own: it compiles its own copy of the
//! harness and is linked, once per file, against the library and every dependency.
//! Seven such binaries made a rebuild after any change to `src/` about twice as long
//! on a two-core machine as this one binary does. As modules of one crate, the
//! harness is compiled once (so an unused helper is a warning again, instead of
//! something every binary that does not use it has to allow), and one module still
//! runs alone: `cargo test --test it -- pipe::`.
//!
//! The tests of one binary run on parallel threads of one process, so a test that
//! changes something for the whole broker now overlaps with every other test, not
//! only with those of its own file: see [`support::broker::BrokerMaxMessageSize`].

mod support;

mod admin_api;
mod architecture;
mod bad_input;
mod check_config;
mod clocks;
mod cluster;
mod compat;
mod console;
mod consumer_example;
mod failover;
mod faults;
mod ops;
mod otel;
mod outbox_cli;
mod pipe;
mod provider_fuzz;
mod providers;
mod recovery;
mod replicas;
mod sequence;
mod topology;
