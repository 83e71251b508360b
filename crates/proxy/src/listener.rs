//! Listeners: bind, accept under a connection limit, serve each connection (HTTP/1.x by
//! `server_h1`, HTTP/2 by `server_h2`, TCP by `tcp`), and drain gracefully when stopped.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use sluice_codec::proxy_protocol::{MAX_V2_LENGTH, ProxyHeader, parse as proxy_header};
use sluice_config::ListenerProtocol;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::conn::{ConnWatch, Signal};
use crate::listener_state::{ConnCtx, ListenerRuntime, ListenerShared};
use tokio_util::task::TaskTracker;

/// What a listener tells its HTTP connections when it stops: finish and close (`drain`), and
/// when the grace period is over, close now (`cut`).
#[derive(Debug, Default)]
struct ConnSignals {
    drain: Signal,
    cut: Signal,
}

/// A listener whose accept loop is running.
#[derive(Debug)]
pub(crate) struct RunningListener {
    pub(crate) shared: Arc<ListenerShared>,
    pub(crate) bind: SocketAddr,
    pub(crate) protocol: ListenerProtocol,
    pub(crate) local_addr: SocketAddr,
    stop: CancellationToken,
    socket_closed: Option<oneshot::Receiver<()>>,
    drained: tokio::task::JoinHandle<()>,
}

impl RunningListener {
    /// Stops accepting at once; returns when the socket is closed. Open connections drain in
    /// the background for up to `grace` (see [`RunningListener::drained`]).
    pub(crate) async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(rx) = self.socket_closed.take() {
            let _ = rx.await;
        }
    }

    /// Waits until every connection has finished (or the grace period cut them off).
    pub(crate) async fn drained(self) {
        let _ = self.drained.await;
    }
}

/// Binds `addr` with address reuse and a deep backlog, ready for tokio.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Starts the accept loop on an already bound socket.
pub(crate) fn start(
    socket: std::net::TcpListener,
    shared: Arc<ListenerShared>,
    grace: Duration,
) -> io::Result<RunningListener> {
    let listener = TcpListener::from_std(socket)?;
    let local_addr = listener.local_addr()?;
    let (bind, protocol) = {
        let rt = shared.runtime.load();
        (rt.config.bind, rt.config.protocol)
    };
    let stop = CancellationToken::new();
    let (closed_tx, closed_rx) = oneshot::channel();
    let drained = tokio::spawn(accept_loop(
        listener,
        Arc::clone(&shared),
        stop.clone(),
        closed_tx,
        grace,
    ));
    tracing::info!(listener = %shared.name, addr = %local_addr, "listening");
    Ok(RunningListener {
        shared,
        bind,
        protocol,
        local_addr,
        stop,
        socket_closed: Some(closed_rx),
        drained,
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    stop: CancellationToken,
    closed: oneshot::Sender<()>,
    grace: Duration,
) {
    // Every connection, HTTP or TCP: counted and waited for when draining.
    let connections = TaskTracker::new();
    let signals = Arc::new(ConnSignals::default());
    // TCP sessions' form of `signals.cut`.
    let cut = CancellationToken::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = Arc::clone(&shared.limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((mut stream, peer)) => {
                backoff = Duration::from_millis(5);
                let counted = shared.overload.open();
                let runtime = shared.runtime.load_full();
                let shared = Arc::clone(&shared);
                if runtime.tcp.is_some() {
                    if shared.overload.refuses_connection() {
                        tracing::debug!(listener = %shared.name, %peer, "overloaded: TCP connection closed at once");
                        continue;
                    }
                    let cut = cut.clone();
                    connections.spawn(async move {
                        let _counted = counted;
                        shared.accepted.increment(1);
                        shared.active.increment(1.0);
                        if let Some(peer) = client_of(&mut stream, peer, &shared, &runtime).await {
                            serve_tcp(stream, peer, &shared, &runtime, cut).await;
                        }
                        shared.active.decrement(1.0);
                        drop(permit);
                    });
                } else {
                    let signals = Arc::clone(&signals);
                    connections.spawn(async move {
                        let _counted = counted;
                        shared.accepted.increment(1);
                        shared.active.increment(1.0);
                        let Some(peer) = client_of(&mut stream, peer, &shared, &runtime).await
                        else {
                            shared.active.decrement(1.0);
                            return;
                        };
                        let mut cut = signals.cut.watch();
                        let mut serving = pin!(serve_connection(
                            stream,
                            peer,
                            &shared,
                            runtime,
                            &signals.drain
                        ));
                        poll_fn(|cx| {
                            if cut.poll_fired(cx).is_ready() {
                                return Poll::Ready(());
                            }
                            serving.as_mut().poll(cx)
                        })
                        .await;
                        shared.active.decrement(1.0);
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %shared.name, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listener);
    let _ = closed.send(());
    signals.drain.fire();
    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::info!(listener = %shared.name, connections = open, grace_ms = grace.as_millis() as u64, "draining connections");
    }
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(listener = %shared.name, "grace period over; closing the remaining connections");
        signals.cut.fire();
        cut.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
    }
}

/// The client a connection stands for: the peer, or with `accept_proxy_protocol` the client the
/// PROXY protocol header names (read and consumed here, within `header_read_timeout`). `None`:
/// the header is missing, malformed or late; the connection is closed and counted
/// (`sluice_client_closes_total{reason="proxy_protocol"}`).
async fn client_of(
    stream: &mut TcpStream,
    peer: SocketAddr,
    shared: &ListenerShared,
    runtime: &ListenerRuntime,
) -> Option<SocketAddr> {
    if !runtime.config.accept_proxy_protocol {
        return Some(peer);
    }
    let timeout = runtime.config.header_read_timeout;
    let read = Box::pin(read_proxy_header(stream));
    let error = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(header)) => return Some(header.addresses.map_or(peer, |(client, _)| client)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no complete header within {}ms", timeout.as_millis()),
    };
    tracing::info!(listener = %shared.name, %peer, %error, "PROXY protocol header refused");
    shared.timer_metrics.closed("proxy_protocol");
    None
}

/// Reads the PROXY protocol header off the start of `stream`, taking exactly its bytes (what
/// follows is the client's). The header usually arrives whole in the first segment; when it
/// does not, the peeked bytes are looked at again after a short pause.
async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<ProxyHeader> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; 16 + MAX_V2_LENGTH];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match proxy_header(&buf[..n]) {
            Ok(Some((header, len))) => {
                stream.read_exact(&mut buf[..len]).await?;
                return Ok(header);
            }
            Ok(None) if n == seen => tokio::time::sleep(Duration::from_millis(2)).await,
            Ok(None) => seen = n,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// One TCP listener session (`protocol = "tcp"`); `cut` ends it when draining is over.
async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &ListenerShared,
    runtime: &ListenerRuntime,
    cut: CancellationToken,
) {
    let local = stream.local_addr().unwrap_or(peer);
    let (Some(tcp), Some(metrics)) = (&runtime.tcp, &shared.tcp_metrics) else {
        return;
    };
    if tcp.config.sni.is_some() {
        // Passthrough: no TLS termination or authz (refused by the config loader), the
        // ClientHello picks the service.
        let _ = stream.set_nodelay(true);
        crate::tcp::serve_passthrough(
            stream,
            local,
            peer,
            &shared.name,
            tcp,
            metrics,
            &runtime.access_log,
            cut,
        )
        .await;
    } else if let (Some(service), Some((stream, tls))) = (
        &tcp.service,
        crate::tls::admit(stream, peer, &shared.name, &runtime.gate).await,
    ) {
        crate::tcp::serve(
            stream,
            local,
            tls.as_deref(),
            peer,
            &shared.name,
            (tcp, service),
            None,
            metrics,
            &runtime.access_log,
            cut,
        )
        .await;
    }
}

/// One HTTP connection: TLS and authorization, then HTTP/1.x — or HTTP/2 when ALPN chose it
/// or the client opens with its preface. `drain` asks it to finish what it is doing and close.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<ListenerShared>,
    runtime: Arc<ListenerRuntime>,
    drain: &Signal,
) {
    // Boxed, as HTTP/2 below: the TLS handshake's and hyper's HTTP/2 state would otherwise be
    // part of every connection's size, idle HTTP/1.x ones included.
    let admitted = Box::pin(crate::tls::admit(stream, peer, &shared.name, &runtime.gate)).await;
    let Some((stream, tls)) = admitted else {
        return;
    };
    let config = &runtime.config;
    let alpn_h2 = tls
        .as_ref()
        .is_some_and(|t| t.info.alpn.as_deref() == Some(b"h2".as_slice()));
    let mut cx = ConnCtx {
        listener: Arc::clone(shared),
        peer,
        client_ip: crate::headers::client_ip_value(peer.ip()),
        watch: None,
        tls,
    };
    let (stream, replay) = if alpn_h2 && config.http2 {
        (stream, bytes::BytesMut::new())
    } else {
        let limits = crate::server_h1::Limits {
            header_timeout: config.header_read_timeout,
            keepalive_timeout: config.keepalive_timeout,
            max_header_bytes: config.max_header_bytes,
            send_timeout: config.send_timeout,
            http2: config.http2,
        };
        match crate::server_h1::serve(stream, &cx, limits, &shared.timer_metrics, drain).await {
            crate::server_h1::Ended::Closed => return,
            crate::server_h1::Ended::Http2(stream, replay) => (stream, replay),
        }
    };
    let watch = Arc::new(ConnWatch::default());
    cx.watch = Some(Arc::clone(&watch));
    let limits = crate::server_h2::stream_limits(config, Arc::clone(&watch));
    let socket = crate::h2_io::h2_socket(
        stream,
        replay,
        watch,
        crate::h2_io::H2Timeouts {
            header: config.header_read_timeout,
            keepalive: config.keepalive_timeout,
            send: config.send_timeout,
        },
        shared.timer_metrics.clone(),
    );
    Box::pin(crate::server_h2::serve(
        socket,
        Arc::new(cx),
        &runtime.h2,
        limits,
        drain,
    ))
    .await;
}
