//! The testkit's TCP proxy between the relay and the broker (or PostgreSQL), to cut
//! or freeze the link, started the way a test wants it: or the test fails.

use std::ops::Deref;

/// [`hookrelay_testkit::TcpProxy`] (`addr`, `cut`, `restore`, `freeze`, `thaw`),
/// whose start cannot fail a test's own code.
pub struct TcpProxy(hookrelay_testkit::TcpProxy);

impl TcpProxy {
    /// Starts a proxy to `upstream` (`127.0.0.1:port`) on a free loopback port.
    pub async fn start(upstream: &str) -> Self {
        Self(
            hookrelay_testkit::TcpProxy::start(upstream)
                .await
                .unwrap_or_else(|e| panic!("start a proxy to {upstream}: {e:#}")),
        )
    }
}

impl Deref for TcpProxy {
    type Target = hookrelay_testkit::TcpProxy;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
