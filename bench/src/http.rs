//! The bare HTTP ceiling server. (The load's client connections are the
//! testkit's.)

use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;

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
