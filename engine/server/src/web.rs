//! The page's HTTP side: the built browser client and the one fact it needs to
//! reach the server over WebTransport.
//!
//! Owns: the HTTP/1.1 listener (TCP, by default on the same port number as the
//! QUIC endpoint's UDP one; HTTPS when the server was given a certificate, since
//! a browser opens WebTransport only from a secure origin and only localhost is
//! one over plain HTTP; each TLS handshake runs in its own task, with a deadline,
//! so a slow client holds up no other), serving the built page from a directory (any path
//! that is not a file gets `index.html`, so the page's own routes reload), the
//! security headers, and `GET /api/transport`: the UDP port, the WebTransport
//! path and the development certificate's hashes (the page passes them as
//! `serverCertificateHashes`). Nothing here is authenticated and nothing here
//! reads the database: logging in and all data go over WebTransport.
//! Does not own: the certificates ([`callsync_net::web`]) or the sessions
//! (`connection`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use callsync_net::web::CertificateResolver;
use http::{HeaderName, HeaderValue, header};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::connection::WEB_PATH;

/// Where the page is served from and how to reach it.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The built page (`clients/web/dist`); `None` serves a page saying how to
    /// build it.
    pub page_dir: Option<PathBuf>,
    /// The HTTP listener; `None` takes the QUIC endpoint's address (TCP and UDP
    /// ports are separate, so the same number serves both).
    pub listen: Option<SocketAddr>,
}

/// What `GET /api/transport` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportInfo {
    /// The server's UDP port (QUIC and WebTransport).
    pub port: u16,
    /// The WebTransport URL's path.
    pub path: &'static str,
    /// SHA-256 hashes (lowercase hex) for `serverCertificateHashes`, newest
    /// first; empty when the certificate is CA-issued.
    pub certificate_hashes: Vec<String>,
    /// How long a phone has to start a requested call (the page shows the
    /// waiting message that long).
    pub start_limit_ms: i64,
}

struct WebState {
    quic_port: u16,
    start_limit_ms: i64,
    certificates: Arc<CertificateResolver>,
}

async fn transport(State(state): State<Arc<WebState>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(TransportInfo {
            port: state.quic_port,
            path: WEB_PATH,
            certificate_hashes: state.certificates.certificate_hashes(),
            start_limit_ms: state.start_limit_ms,
        }),
    )
}

const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>callsync</title>\
<p>The page is not built. Run <code>bash clients/web/build.sh</code>, then start the server with \
<code>--page clients/web/dist</code>.</p></html>";

/// The page may run WebAssembly and reach the server over WebTransport (any
/// https: origin, since the UDP port's origin differs from the page's when the
/// HTTP port is moved); nothing else from elsewhere, and it may not be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' https:; \
worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn router(config: &WebConfig, state: Arc<WebState>) -> Router {
    let api = Router::new()
        .route("/api/transport", get(transport))
        .with_state(state);
    let router = match &config.page_dir {
        Some(dir) => api.fallback_service(
            // The build writes `.br` and `.gz` copies; a browser that accepts
            // one gets it (the engine: 2.6 MB as is, about a quarter in brotli).
            ServeDir::new(dir)
                .precompressed_br()
                .precompressed_gzip()
                .fallback(
                    ServeFile::new(dir.join("index.html"))
                        .precompressed_br()
                        .precompressed_gzip(),
                ),
        ),
        None => api.fallback(|| async { Html(NOT_BUILT) }),
    };
    router
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        ))
}

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Finished handshakes waiting for the HTTP server to take them.
const TLS_QUEUE: usize = 64;

/// TCP connections after their TLS handshake, for axum.
struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (done, accepted) = tokio::sync::mpsc::channel(TLS_QUEUE);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "accepting a page connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            accepted,
            addr,
            task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (the server is stopping): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The running HTTP listener.
pub(crate) struct WebServer {
    pub(crate) addr: SocketAddr,
    /// Whether it speaks HTTPS.
    pub(crate) https: bool,
    task: tokio::task::JoinHandle<()>,
}

impl WebServer {
    /// Binds and serves. With no address given, tries the QUIC endpoint's
    /// address; if that TCP port is taken (an ephemeral UDP port's number can be
    /// in use on TCP), any free port on the same interface.
    pub(crate) async fn start(
        config: &WebConfig,
        quic: SocketAddr,
        certificates: Arc<CertificateResolver>,
        start_limit_ms: i64,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let listener = match config.listen {
            Some(addr) => TcpListener::bind(addr).await?,
            None => match TcpListener::bind(quic).await {
                Ok(listener) => listener,
                Err(_) => TcpListener::bind(SocketAddr::new(quic.ip(), 0)).await?,
            },
        };
        let addr = listener.local_addr()?;
        let app = router(
            config,
            Arc::new(WebState {
                quic_port: quic.port(),
                start_limit_ms,
                certificates,
            }),
        );
        let https = tls.is_some();
        let task = match tls {
            Some(tls) => {
                let listener = TlsListener::new(listener, tls)?;
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "the page's HTTPS listener stopped");
                    }
                })
            }
            None => tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the page's HTTP listener stopped");
                }
            }),
        };
        Ok(Self { addr, https, task })
    }

    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}
