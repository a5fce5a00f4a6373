//! The page's HTTP side: the built browser client and the one fact it needs to
//! reach the server over WebTransport.
//!
//! Owns: the HTTP/1.1 listener (TCP, by default on the same port number as the
//! QUIC endpoint's UDP one; HTTPS when the server was given a certificate, since
//! a browser opens WebTransport only from a secure origin and only localhost is
//! one over plain HTTP; each TLS handshake runs in its own task, with a deadline,
//! so a slow client holds up no other; a deadline for each request's headers,
//! which is also the idle limit of a kept-alive connection; caps on connections
//! in all and per address), serving the built page from a directory (any path
//! that is not a file gets `index.html`, so the page's own routes reload), the
//! security headers, and `GET /api/transport`: the UDP port, the WebTransport
//! path and the development certificate's hashes (the page passes them as
//! `serverCertificateHashes`), and the route that plays recordings by signed
//! link ([`crate::playback`]). Nothing here reads the database and nothing
//! but a link's signature is checked: logging in and all data go over
//! WebTransport.
//! Does not own: the certificates ([`callsync_net::web`]) or the sessions
//! (`connection`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use callsync_net::web::CertificateResolver;
use http::{HeaderName, HeaderValue, header};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::connection::WEB_PATH;
use crate::limits::AddressCounts;

/// Where the page is served from and how to reach it.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The built page (`clients/web/dist`); `None` serves a page saying how to
    /// build it.
    pub page_dir: Option<PathBuf>,
    /// The HTTP listener; `None` takes the QUIC endpoint's address (TCP and UDP
    /// ports are separate, so the same number serves both).
    pub listen: Option<SocketAddr>,
    /// Web origins besides the page's own whose pages may open WebTransport
    /// sessions (`https://crm.example.com`).
    pub allowed_origins: Vec<String>,
}

/// Which web pages may open a WebTransport session: the page's own origin (the
/// host the session's URL names, on the page's port and scheme) and any listed.
/// A browser always sends `Origin`; a session without one is not a browser's,
/// and gains nothing a native connection would not have.
#[derive(Debug, Clone)]
pub(crate) struct PageOrigins {
    /// The page's TCP port.
    pub(crate) port: u16,
    /// Whether the page is served over HTTPS.
    pub(crate) https: bool,
    /// Origins allowed besides.
    pub(crate) listed: Vec<String>,
}

impl PageOrigins {
    /// Whether a session to `url` may be opened by a page of `origin`.
    pub(crate) fn allow(&self, origin: Option<&str>, url: &url::Url) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self
            .listed
            .iter()
            .any(|o| o.trim_end_matches('/') == origin)
        {
            return true;
        }
        let Ok(origin) = url::Url::parse(origin) else {
            return false;
        };
        let scheme = origin.scheme() == "https" || (!self.https && origin.scheme() == "http");
        scheme
            && origin.host_str().is_some()
            && origin.host_str() == url.host_str()
            && origin.port_or_known_default() == Some(self.port)
    }
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

/// The page may run WebAssembly and reach this server over WebTransport (the
/// `connect-src` the policy names per request: see [`content_security_policy`]);
/// nothing else from elsewhere, and it may not be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src 'self'; \
frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page's policy for a request to `host` (its `Host` header): it may connect
/// to its own origin and to this server's WebTransport origin (the same host, the
/// UDP port, `https`), nowhere else. A `Host` that is not a plain name or address
/// gets its own origin only.
fn content_security_policy(host: Option<&str>, quic_port: u16) -> String {
    let name = host.map(|h| match h.rsplit_once(':') {
        // `[::1]:4433`, `example.com:4433`; a bare IPv6 literal has no brackets
        // only without a port, which a browser never sends.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    });
    let plain = |name: &str| {
        !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    };
    let transport = match name {
        Some(name) if plain(name) => format!(" https://{name}:{quic_port}"),
        _ => String::new(),
    };
    format!("{CONTENT_SECURITY_POLICY}; connect-src 'self'{transport}")
}

/// Sets the page's security headers on every answer: the content security policy
/// for the request's host, and with HTTPS, HSTS.
async fn security_headers(
    State(headers): State<Arc<SecurityHeaders>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let mut response = next.run(request).await;
    let set = response.headers_mut();
    if let Ok(policy) =
        HeaderValue::from_str(&content_security_policy(host.as_deref(), headers.quic_port))
    {
        set.entry(header::CONTENT_SECURITY_POLICY).or_insert(policy);
    }
    if headers.https {
        // A year; the page is only ever served over HTTPS once it has a certificate.
        set.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// What [`security_headers`] needs to know.
struct SecurityHeaders {
    quic_port: u16,
    https: bool,
}

fn router(
    config: &WebConfig,
    state: Arc<WebState>,
    playback: Arc<crate::playback::Playback>,
    https: bool,
) -> Router {
    let headers = Arc::new(SecurityHeaders {
        quic_port: state.quic_port,
        https,
    });
    let recordings = Router::new()
        .route(
            "/api/recordings/{tenant}/{sha256}/{expires}/{mac}",
            get(crate::playback::play),
        )
        .with_state(playback);
    let api = Router::new()
        .route("/api/transport", get(transport))
        .with_state(state)
        .merge(recordings);
    let router = match &config.page_dir {
        // The build's files are all under /assets/ (named by their content):
        // a miss there is 404, never the page under a script's name (which a
        // service worker would keep). Any other path is the page.
        Some(dir) => api
            .nest_service(
                "/assets",
                ServeDir::new(dir.join("assets"))
                    .precompressed_br()
                    .precompressed_gzip(),
            )
            .fallback_service(
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
        .layer(axum::middleware::from_fn_with_state(
            headers,
            security_headers,
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
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers; a kept-alive connection
/// waiting for its next request counts the same wait, so this is also how long
/// one may sit idle.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a page connection lives, however busy: a client that reads its
/// responses slowly holds a connection no longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Connections the page's listener holds at once, from everywhere …
pub const MAX_PAGE_CONNECTIONS: usize = 1_024;
/// … and from one address (IPv6 by /64). A browser opens six per host.
pub const MAX_PAGE_CONNECTIONS_PER_ADDRESS: usize = 64;

/// Accepts page connections for as long as the listener lives: each within the
/// caps (else closed at once), its TLS handshake (if any) in its own task under a
/// deadline, then HTTP/1.1 with hyper's header-read timeout.
async fn serve_page(listener: TcpListener, app: Router, tls: Option<TlsAcceptor>) {
    let counts = Arc::new(AddressCounts::new(
        MAX_PAGE_CONNECTIONS,
        MAX_PAGE_CONNECTIONS_PER_ADDRESS,
    ));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::debug!(error = %e, "accepting a page connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = counts.open(peer.ip()) else {
            tracing::debug!(%peer, "refusing a page connection: too many open");
            continue;
        };
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let served = tokio::time::timeout(CONNECTION_LIFETIME, async move {
                match tls {
                    None => serve_http(stream, app).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => serve_http(tls, app).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            })
            .await;
            if served.is_err() {
                tracing::debug!(%peer, "closed a page connection at the end of its lifetime");
            }
        });
    }
}

/// Serves one connection's requests with the page's router.
async fn serve_http<I>(io: I, app: Router)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "a page connection ended with an error");
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
        playback: Arc<crate::playback::Playback>,
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
        let https = tls.is_some();
        let app = router(
            config,
            Arc::new(WebState {
                quic_port: quic.port(),
                start_limit_ms,
                certificates,
            }),
            playback,
            https,
        );
        let task = tokio::spawn(serve_page(listener, app, tls.map(TlsAcceptor::from)));
        Ok(Self { addr, https, task })
    }

    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::content_security_policy;

    #[test]
    fn the_policy_names_this_servers_webtransport_origin_and_nothing_a_host_header_smuggles() {
        let policy = content_security_policy(Some("crm.example.com:8443"), 4433);
        assert!(
            policy.ends_with("connect-src 'self' https://crm.example.com:4433"),
            "{policy}"
        );
        let policy = content_security_policy(Some("[::1]:4433"), 4433);
        assert!(
            policy.ends_with("connect-src 'self' https://[::1]:4433"),
            "{policy}"
        );
        for hostile in ["evil.example; script-src *", "a b", "", "x\"y"] {
            let policy = content_security_policy(Some(hostile), 4433);
            assert!(
                policy.ends_with("connect-src 'self'"),
                "{hostile}: {policy}"
            );
        }
        assert!(content_security_policy(None, 4433).ends_with("connect-src 'self'"));
    }
}
