//! A TCP proxy between the relay and the broker (or PostgreSQL), to cut or freeze
//! the link.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP proxy on a free loopback port in front of an upstream server, like Svix
/// Bridge's test proxy. Cutting closes every proxied connection and refuses new
/// ones until restored. Freezing keeps connections open but stops moving bytes, so
/// publishes and confirms hang (a broker that stopped answering). Dropping it cuts
/// and stops listening.
///
/// Both sides of each link have TCP_NODELAY; when one side closes, the other is
/// shut down for writing once what it had sent is through.
pub struct TcpProxy {
    /// Where the client (the relay) should connect instead of the upstream.
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    frozen: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    open: bool,
    links: Vec<JoinHandle<()>>,
}

/// Copies one direction, holding each chunk while the proxy is frozen.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl TcpProxy {
    /// Starts a proxy to `upstream` (`ip:port`, loopback only) on a free loopback
    /// port. Must be called on a tokio runtime, which runs the proxy's tasks.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let upstream: SocketAddr = upstream
            .parse()
            .map_err(|e| anyhow::anyhow!("proxy upstream {upstream}: {e}"))?;
        crate::http::ensure_loopback(upstream)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ProxyState {
            open: true,
            links: Vec::new(),
        }));
        let (frozen, frozen_rx) = watch::channel(false);
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut state = shared.lock().expect("proxy state");
                state.links.retain(|link| !link.is_finished());
                if !state.open {
                    drop(inbound);
                    continue;
                }
                let frozen = frozen_rx.clone();
                state.links.push(tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, frozen.clone()),
                        pump(out_read, in_write, frozen)
                    );
                }));
            }
        });
        Ok(Self {
            addr,
            state,
            frozen,
            accept,
        })
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.open = false;
        for link in state.links.drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.lock().expect("proxy state").open = true;
    }

    /// Stops moving bytes (connections stay open) until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        let _ = self.frozen.send(true);
    }

    /// Moves bytes again.
    pub fn thaw(&self) {
        let _ = self.frozen.send(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An upstream that echoes every connection.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf.to_vec())
    }

    #[tokio::test]
    async fn cut_closes_and_refuses_restore_lets_through_freeze_holds_bytes() {
        let proxy = TcpProxy::start(&echo().await.to_string())
            .await
            .expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        assert_eq!(round_trip(&mut stream).await.as_deref(), Some(&b"ping"[..]));

        proxy.freeze();
        assert_eq!(round_trip(&mut stream).await, None, "frozen: nothing moves");
        proxy.thaw();
        let mut late = [0u8; 4];
        stream.read_exact(&mut late).await.expect("held bytes");
        assert_eq!(&late, b"ping");

        proxy.cut();
        assert_eq!(round_trip(&mut stream).await, None, "cut: closed");
        let mut refused = TcpStream::connect(proxy.addr).await.expect("accepted");
        assert_eq!(round_trip(&mut refused).await, None, "cut: refused");

        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr).await.expect("connect");
        assert_eq!(round_trip(&mut again).await.as_deref(), Some(&b"ping"[..]));
    }

    #[tokio::test]
    async fn an_upstream_off_loopback_is_refused() {
        assert!(TcpProxy::start("192.0.2.1:5672").await.is_err());
    }
}
