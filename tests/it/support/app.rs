//! One relay of a test's own, as zero2prod's `spawn_app`: a temporary folder, an
//! exchange, a consumer bound to it (the broker tap) and the relay, started in one
//! call and held together for as long as the test holds the [`TestApp`].
//!
//! It is built on the lower layer ([`RelayConfig`], [`Relay`], [`TestExchange`],
//! [`Consumer`], [`TcpProxy`]), which stays for what one relay does not fit:
//! replicas on one database, restarts of the same outbox (`Relay::start(&app.config)`).

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;

use tempfile::TempDir;

use super::broker::{BROKER, Consumer, TestExchange};
use super::postgres::{Backend, Database};
use super::proxy::TcpProxy;
use super::relay::{Relay, RelayConfig};

/// A running relay with everything it was started with. Fields drop in order: the
/// relay is killed first, then the tap, the proxy, the database, the exchange and
/// the folder go.
pub struct TestApp {
    /// The relay and its verbs (`post_whitepay`, `metric`, `outbox_count`, …).
    pub relay: Relay,
    /// The consumer on the test's exchange (`next`, `collect`).
    pub consumer: Part<Consumer>,
    /// The proxy between the relay and the broker (`cut`, `restore`, `freeze`,
    /// `thaw`).
    pub proxy: Part<TcpProxy>,
    /// What the relay was started from: its outbox, also while no relay runs, and
    /// the config to start it again with.
    pub config: RelayConfig,
    /// The test's exchange.
    pub exchange: TestExchange,
    /// The test's temporary folder (where the SQLite outbox is, unless given).
    _dir: TempDir,
}

impl TestApp {
    /// A relay on `backend` with the defaults: its own folder, a new exchange named
    /// after `test`, a consumer bound with `#`, the broker reached directly.
    pub async fn spawn(backend: Backend, test: &str) -> Self {
        Self::build(backend, test).start().await
    }

    /// The same, with what the test changes set on the builder first.
    pub fn build(backend: Backend, test: &str) -> TestAppBuilder {
        TestAppBuilder {
            backend,
            test: test.to_owned(),
            env: Vec::new(),
            whitepay_token: true,
            proxy: None,
            binding: Some("#".to_owned()),
            outbox: None,
            database: None,
        }
    }
}

/// A part of a [`TestApp`] that its builder may leave out: the part itself through
/// `Deref`, or a panic that says how to build the app with it. (Fields, not
/// methods, so that a test can use them beside `app.relay`, also after
/// `app.relay.kill9()`.)
pub struct Part<T> {
    part: Option<T>,
    missing: &'static str,
}

impl<T> Deref for Part<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.part
            .as_ref()
            .unwrap_or_else(|| panic!("{}", self.missing))
    }
}

impl<T> DerefMut for Part<T> {
    fn deref_mut(&mut self) -> &mut T {
        let missing = self.missing;
        self.part.as_mut().unwrap_or_else(|| panic!("{missing}"))
    }
}

/// The link to the broker a relay starts with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Cut,
}

/// What a test changes about its [`TestApp`]; [`start`](Self::start) starts it.
#[must_use = "nothing starts until .start().await"]
pub struct TestAppBuilder {
    backend: Backend,
    test: String,
    env: Vec<(String, String)>,
    whitepay_token: bool,
    proxy: Option<Link>,
    binding: Option<String>,
    outbox: Option<std::path::PathBuf>,
    database: Option<Arc<Database>>,
}

impl TestAppBuilder {
    /// One more environment variable for the relay (after the defaults, so it
    /// overrides them).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// More environment variables.
    pub fn envs(mut self, pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(pairs);
        self
    }

    /// The relay redacts `path` of Whitepay's bodies in what it publishes and
    /// shows (`HOOKRELAY_SOURCES__WHITEPAY__REDACT`).
    pub fn redact_whitepay(self, path: &str) -> Self {
        self.env("HOOKRELAY_SOURCES__WHITEPAY__REDACT", path)
    }

    /// No Whitepay token in the environment: the relay's environment is only what
    /// [`env`](Self::env) adds.
    pub fn without_whitepay_token(mut self) -> Self {
        self.whitepay_token = false;
        self
    }

    /// The relay reaches the broker through a [`TcpProxy`] (`app.proxy()`).
    pub fn broker_behind_proxy(mut self) -> Self {
        self.proxy = Some(Link::Up);
        self
    }

    /// The same, with the proxy cut before the relay starts: every webhook stays
    /// pending until the test restores it.
    pub fn broker_cut(mut self) -> Self {
        self.proxy = Some(Link::Cut);
        self
    }

    /// No consumer on the exchange: what the relay publishes goes to the unrouted
    /// queue.
    pub fn no_consumer(mut self) -> Self {
        self.binding = None;
        self
    }

    /// The consumer binds with `pattern` instead of `#`.
    pub fn binding(mut self, pattern: &str) -> Self {
        self.binding = Some(pattern.to_owned());
        self
    }

    /// The SQLite outbox at `path` instead of in the app's folder.
    pub fn outbox_file(mut self, path: &Path) -> Self {
        assert_eq!(self.backend, Backend::Sqlite, "an outbox file is SQLite's");
        self.outbox = Some(path.to_owned());
        self
    }

    /// The PostgreSQL outbox in `database` instead of a new database.
    pub fn database(mut self, database: Arc<Database>) -> Self {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "a database is PostgreSQL's"
        );
        self.database = Some(database);
        self
    }

    /// Makes the folder, the exchange, the consumer and the proxy, and starts the
    /// relay (waiting until its listeners are up).
    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let exchange = TestExchange::new(&self.test);
        let consumer = match &self.binding {
            Some(pattern) => Some(Consumer::bind(&exchange, pattern).await),
            None => None,
        };
        let proxy = match self.proxy {
            Some(link) => {
                let proxy = TcpProxy::start(BROKER).await;
                if link == Link::Cut {
                    proxy.cut();
                }
                Some(proxy)
            }
            None => None,
        };
        let mut config = match self.database {
            Some(database) => {
                let mut config = RelayConfig::new(&exchange, dir.path());
                config.database = Some(database);
                config
            }
            None => RelayConfig::on(self.backend, &exchange, dir.path()),
        };
        if let Some(outbox) = self.outbox {
            config.outbox = outbox;
        }
        if let Some(proxy) = &proxy {
            config.broker = proxy.addr.to_string();
        }
        if !self.whitepay_token {
            config.env.clear();
        }
        config.env.extend(self.env);
        let relay = Relay::start(&config);
        TestApp {
            relay,
            consumer: Part {
                part: consumer,
                missing: "no consumer: the app was built with .no_consumer()",
            },
            proxy: Part {
                part: proxy,
                missing: "no proxy: build the app with .broker_behind_proxy() or .broker_cut()",
            },
            config,
            exchange,
            _dir: dir,
        }
    }
}
