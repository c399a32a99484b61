//! HTTP/1.1 to loopback addresses: one keep-alive client connection, and a
//! one-shot `GET` (how `/metrics` is read).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Refuses an address outside `127.0.0.0/8` and `::1`: nothing here sends traffic
/// anywhere else.
pub fn ensure_loopback(addr: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "{addr} is not a loopback address; only 127.0.0.0/8 or ::1 are reached"
    );
    Ok(())
}

/// Opens one keep-alive HTTP/1.1 connection to `addr` (loopback only) with
/// TCP_NODELAY, as the relay's side has it. The connection is driven by a task of
/// its own on the current tokio runtime.
pub async fn connect<B>(addr: SocketAddr) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ensure_loopback(addr)?;
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// `GET path` on a fresh connection to `addr`; the body as text. A status other
/// than 2xx is an error. Bounded by 10 s.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let work = async {
        let mut sender = connect::<Empty<Bytes>>(addr).await?;
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::new())?;
        let response = sender.send_request(request).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
}
