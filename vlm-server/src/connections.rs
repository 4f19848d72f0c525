//! The accept loop: HTTP/1.1 connections (upgradable to WebSockets) with a cap on how many are
//! open and a deadline for each request's headers. A connection over the cap is answered 503
//! and closed without reading its request; one that takes longer than the deadline to send
//! its headers, or that idles between requests, is closed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::Limits;

/// A connection's place under the cap, in each of its requests' extensions: a WebSocket keeps
/// it after the HTTP connection has handed its socket over.
#[derive(Clone)]
pub(crate) struct ConnectionPermit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish their
/// requests.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            connections.spawn(refuse(stream, limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            app.clone(),
            ConnectionPermit(Arc::new(permit)),
            limits.header_timeout,
            stopped.clone(),
        ));
    }
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn connection(
    stream: TcpStream,
    app: Router,
    permit: ConnectionPermit,
    header_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(permit.clone());
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            Ok::<_, Infallible>(IntoOk::into_ok(response))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let stop = async {
        // The `Ref` the wait returns must not live across the awaits below.
        let _ = stopped.wait_for(|&s| s).await.map(|_| ());
    };
    tokio::select! {
        _ = conn.as_mut() => return,
        () = stop => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse(mut stream: TcpStream, cap: usize) {
    let body = serde_json::json!({"error": {
        "message": format!("the server has {cap} connections open; retry later"),
        "type": "service_unavailable",
        "param": null,
        "code": 503,
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent, a little, so closing does not reset the connection
        // before it has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// A failed `accept`: nothing to do for a connection the peer dropped; otherwise (out of file
/// descriptors, say) wait a moment rather than spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        eprintln!("fastvlm server: accept failed: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `Result<T, Infallible>` to `T`.
trait IntoOk<T> {
    fn into_ok(self) -> T;
}

impl<T> IntoOk<T> for Result<T, Infallible> {
    fn into_ok(self) -> T {
        match self {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }
}
