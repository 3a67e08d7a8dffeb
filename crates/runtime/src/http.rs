//! The HTTP server every process listens with (the api, `dev`, and the metrics of worker and
//! beat), in place of `axum::serve`, which sets no timer: hyper's header read timeout never
//! ran, so a client that opened connections and sent half a request head, or nothing, held
//! them for ever, and enough of them used up the process's file descriptors, health probes
//! included. Here a request head, and the wait for the next one on a kept-alive connection,
//! must come within [`HEADER_READ_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are served at
//! once (the rest wait in the listen backlog). A request's own time limit (its body and its
//! handling) is the router's business (`ESCALATOR_API_TIMEOUT` in the api). Fairness between
//! clients (one client holding every slot) is a reverse proxy's job: put one in front of an
//! api reachable from untrusted networks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a client has to send a whole request head, and how long a kept-alive connection
/// may wait idle for its next one (hyper has one timer for both): longer than the upstream
/// keep-alive of the proxies put in front (ingress-nginx and cloud load balancers keep idle
/// connections 60 s), or one would send a request on a connection just closed here and answer
/// its client 502; as nginx's own keep-alive, 75 s.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// Connections served at once by one process.
pub const MAX_CONNECTIONS: usize = 2_048;

/// How long [`serve`] waits, once told to stop, for its connections to finish: the requests in
/// flight, and heads still arriving (which [`HEADER_READ_TIMEOUT`] alone would let hold the
/// process 75 s, past the grace a pod is given). Connections still open then are closed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The limits of [`serve_with`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }
}

/// Serves `app` on `listener` with the default [`Limits`] until `shutdown` completes, then
/// lets the requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, Limits::default()).await
}

/// [`serve`] with other limits (tests use short ones).
pub async fn serve_with(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
    limits: Limits,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // the connections' tasks, aborted when the drain's time runs out
    let mut connections = tokio::task::JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        // a free slot before accepting: beyond the limit, clients wait in the backlog
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // out of file descriptors, or a connection reset before it was taken:
                    // wait a moment rather than spin, and go on serving the others
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        // the finished ones' results, so that the set holds only live connections
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            if let Err(e) = connection.await {
                // a client gone mid-request or too slow with its head: theirs, not ours
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_seconds = limits.drain_timeout.as_secs_f64(),
            open = connections.len(),
            "connections still open when the drain time ran out: closed"
        );
        connections.abort_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn started(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", get(|| async { "hello" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_with(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
            limits,
        ));
        (addr, stop)
    }

    async fn get_root(addr: std::net::SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Reads until the server closes the connection, or 20 s pass (a hang fails the test).
    async fn closed_by_server(mut c: TcpStream) -> String {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut answer))
            .await
            .expect("the server kept a half-sent request head open")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_request_head_sent_too_slowly_or_not_at_all_is_cut_off() {
        let (addr, _stop) = started(Limits {
            header_read_timeout: Duration::from_millis(500),
            max_connections: 8,
            ..Limits::default()
        })
        .await;
        assert!(get_root(addr).await.ends_with("hello"));
        // half a head, then silence
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // nothing at all
        let silent = TcpStream::connect(addr).await.unwrap();
        closed_by_server(half).await;
        closed_by_server(silent).await;
        // an idle kept-alive connection goes the same way after its answer
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(closed_by_server(kept).await.contains("hello"));
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_one() {
        let (addr, _stop) = started(Limits {
            header_read_timeout: Duration::from_secs(2),
            max_connections: 1,
            ..Limits::default()
        })
        .await;
        // the one slot, held by a client sending nothing until the timeout frees it
        let holder = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::spawn(get_root(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served beside the held slot");
        closed_by_server(holder).await;
        let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("never served once the slot was free")
            .unwrap();
        assert!(answer.ends_with("hello"), "{answer}");
    }

    #[tokio::test]
    async fn a_request_in_flight_at_shutdown_is_answered_before_serve_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "done"
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, async move {
            let _ = stopped.await;
        }));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let answer = closed_by_server(c).await;
        assert!(answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("serve did not return after the drain")
            .unwrap()
            .unwrap();
    }

    /// A head still arriving at shutdown held the drain until its read timed out (75 s, past
    /// a pod's grace); the drain now ends at its own deadline.
    #[tokio::test]
    async fn a_head_still_arriving_at_shutdown_holds_the_drain_no_longer_than_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", get(|| async { "hello" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = Limits {
            header_read_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let server = tokio::spawn(serve_with(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
            limits,
        ));
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("serve waited on a half-sent head past its drain deadline")
            .unwrap()
            .unwrap();
        // and the connection is closed, not left served beside a process shutting down
        closed_by_server(half).await;
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", get(|| async { "hello" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, async move {
            let _ = stopped.await;
        }));
        assert!(get_root(addr).await.ends_with("hello"));
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
