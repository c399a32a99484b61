//! HTTP/1.1 plumbing: one client connection per load worker, a one-shot GET for
//! `/metrics`, and the bare HTTP ceiling server.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Loopback only: the bench never sends traffic anywhere else.
pub fn ensure_loopback(addr: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "{addr} is not a loopback address; the bench only talks to 127.0.0.0/8 or ::1"
    );
    Ok(())
}

/// Opens one keep-alive HTTP/1.1 connection (TCP_NODELAY, like the relay's side).
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

/// `GET path` on a fresh connection; the body as text. Bounded by 10 s.
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

/// A request body the load workers send.
pub type Body = Full<Bytes>;

/// The HTTP ceiling: a bare axum router that reads the body and answers 200 with an
/// empty body, served by hyper's HTTP/1 connection builder with TCP_NODELAY on a
/// default multi-threaded tokio runtime, the same serving stack as the relay's
/// ingress. Runs in its own process (`hookrelay-bench http-ceiling-server`) so the
/// OS schedules it as it schedules the relay. Prints `listening ADDR` on stdout,
/// then serves until its stdin closes (the bench dropping it) or 10 minutes pass.
pub fn ceiling_server() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        use tower::ServiceExt;
        let router = axum::Router::new().route(
            "/webhooks/{source}",
            axum::routing::post(|body: Bytes| async move {
                drop(body);
                hyper::StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        });
        let serve = async {
            let builder = hyper::server::conn::http1::Builder::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        router.clone().oneshot(request.map(axum::body::Body::new))
                    },
                );
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        };
        tokio::select! {
            () = serve => {}
            _ = stdin_closed => {}
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        Ok(())
    })
}
