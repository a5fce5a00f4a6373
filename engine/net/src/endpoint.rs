//! quinn endpoints: binding the server socket and connecting clients.

use std::net::{SocketAddr, UdpSocket};
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
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )?)
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
