//! quinn endpoints: binding the server socket and connecting clients.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::NetError;

/// The server socket's UDP receive buffer. With the default (~200 KiB) a thousand
/// clients reconnecting at once lose handshake packets and stall for seconds.
pub const SERVER_RECV_BUFFER: usize = 4 * 1024 * 1024;

/// How long a client waits for the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds a server endpoint on `addr` with a large receive buffer. Must be called
/// inside a tokio runtime.
pub fn bind_server(
    addr: SocketAddr,
    config: quinn::ServerConfig,
) -> Result<quinn::Endpoint, NetError> {
    bind_server_watched(addr, config).map(|(endpoint, _)| endpoint)
}

/// [`bind_server`], with a way to know when the endpoint has let go of its
/// socket: quinn closes it on a task of its own after the last handle and
/// connection are gone, so a server stopped and started again in one process
/// could otherwise find its own address still taken.
pub fn bind_server_watched(
    addr: SocketAddr,
    config: quinn::ServerConfig,
) -> Result<(quinn::Endpoint, SocketClosed), NetError> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the system allows it, so `localhost` reaches us either way.
        let _ = socket.set_only_v6(false);
    }
    if let Err(e) = socket.set_recv_buffer_size(SERVER_RECV_BUFFER) {
        tracing::warn!(error = %e, "could not enlarge the UDP receive buffer");
    }
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_nonblocking(true)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| NetError::Io(std::io::Error::other("no async runtime")))?;
    let (signal, closed) = tokio::sync::oneshot::channel();
    let socket = Arc::new(WatchedSocket {
        inner: runtime.wrap_udp_socket(socket)?,
        _closed: CloseSignal(Some(signal)),
    });
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )?;
    Ok((endpoint, SocketClosed(closed)))
}

/// Resolves once a server endpoint's UDP socket is closed.
#[derive(Debug)]
pub struct SocketClosed(tokio::sync::oneshot::Receiver<()>);

impl SocketClosed {
    /// Waits, at most `limit`, for the socket to close; false if it did not.
    pub async fn wait(self, limit: Duration) -> bool {
        // The sender is only ever dropped (never sent on): either way it is closed.
        tokio::time::timeout(limit, self.0).await.is_ok()
    }
}

/// Signals when dropped.
#[derive(Debug)]
struct CloseSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for CloseSignal {
    fn drop(&mut self) {
        if let Some(signal) = self.0.take() {
            let _ = signal.send(());
        }
    }
}

/// The endpoint's socket, telling when it is gone. Fields drop in order: the
/// socket first, then the signal.
#[derive(Debug)]
struct WatchedSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    _closed: CloseSignal,
}

/// The socket's poller keeps the watched socket (and so the signal) alive, as
/// the wrapped poller keeps the socket.
#[derive(Debug)]
struct WatchedPoller {
    inner: Pin<Box<dyn quinn::UdpPoller>>,
    _socket: Arc<WatchedSocket>,
}

impl quinn::UdpPoller for WatchedPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().inner.as_mut().poll_writable(cx)
    }
}

impl quinn::AsyncUdpSocket for WatchedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(WatchedPoller {
            inner: self.inner.clone().create_io_poller(),
            _socket: self,
        })
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A client endpoint for reaching `server` (bound to an ephemeral port of the
/// same address family).
pub fn client_endpoint(
    server: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Endpoint, NetError> {
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0"
            .parse()
            .map_err(|_| NetError::Tls("address".to_owned()))?
    } else {
        "0.0.0.0:0"
            .parse()
            .map_err(|_| NetError::Tls("address".to_owned()))?
    };
    let mut endpoint = quinn::Endpoint::client(local)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Connects to `server` and opens the protocol's stream.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    server_name: &str,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), NetError> {
    let connecting = endpoint.connect(server, server_name)?;
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| NetError::Timeout(CONNECT_TIMEOUT))??;
    let (send, recv) = connection.open_bi().await?;
    Ok((connection, send, recv))
}
