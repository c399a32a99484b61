//! A TCP proxy between the relay and the broker, to cut or freeze the link.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy in front of the broker that a test can cut and restore, like Svix
/// Bridge's test proxy: cutting closes every proxied connection and refuses new
/// ones until restored. Freezing keeps connections open but stops moving bytes, so
/// publishes and confirms hang (a broker that stopped answering).
pub struct TcpProxy {
    /// Where the relay should connect.
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    frozen: tokio::sync::watch::Sender<bool>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    open: bool,
    links: Vec<JoinHandle<()>>,
}

/// Copies one direction, holding each chunk while the proxy is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
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
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(ProxyState {
            open: true,
            links: Vec::new(),
        }));
        let (frozen, frozen_rx) = tokio::sync::watch::channel(false);
        let upstream = upstream.to_owned();
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut state = shared.lock().expect("proxy state");
                if !state.open {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let frozen = frozen_rx.clone();
                state.links.push(tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, frozen.clone()),
                        pump(out_read, in_write, frozen)
                    );
                }));
            }
        });
        Self {
            addr,
            state,
            frozen,
            accept,
        }
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
