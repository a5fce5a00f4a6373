//! The callsync server: the main job.
//!
//! Owns: starting and stopping the server (data directory, certificate, QUIC
//! endpoint, the hub thread, connection tasks), bootstrapping the first owner,
//! and the server's identity as a writer (its Automerge actor and device id).
//! Does not own: the protocol (the core's `wire`), the transport (`callsync-net`)
//! or storage (`callsync-store`).
//!
//! Call order: [`init_owner`] once on an empty data directory; then
//! [`Server::start`], and [`Server::shutdown`] to stop after flushing (the hub
//! finishes its batch and commits; every acknowledged change is on disk).
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod accounts;
mod clock;
mod compactor;
mod connection;

mod hub;
pub mod limits;
pub mod playback;
pub mod recordings;
mod rules;
pub mod throttle;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use automerge::ActorId;
use callsync_core::time::DEFAULT_START_LIMIT_MS;
use callsync_core::{DeviceId, Role, TenantId, UserId};
use callsync_net::tls::{self, Identity};
use callsync_net::web::CertificateResolver;
use callsync_net::{NetError, endpoint};
use callsync_store::{MemberRecord, Store, StoreError};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{Mutex, Semaphore};

pub use callsync_core::wire::{CONTRACT_REQUIRED_EN, CONTRACT_REQUIRED_JA};
pub use connection::{HANDSHAKE_TIMEOUT, RATE_BURST, RATE_PER_SEC, WEB_PATH};

/// Compiled plugins, cached in the data directory (safe to delete).
pub const PLUGIN_CACHE_DIR: &str = "plugin-cache";

/// The database file in a data directory (the same file the local CLI uses).
pub const DB_FILE: &str = "callsync.sqlite";
/// The recordings' directory in the data directory: the local blob store
/// (`blobs/`) and uploads in progress (`staging/`).
pub const RECORDINGS_DIR: &str = "recordings";
/// How long a session token lasts by default: 30 days.
pub const DEFAULT_SESSION_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// Most customers one tenant may hold by default. The customer list is paged, so
/// this bounds the database and a new device's catch-up, not a reply.
pub const DEFAULT_MAX_CUSTOMERS_PER_TENANT: u64 = 200_000;
/// Result decisions one member may ask of the server in a burst …
pub const DECIDES_BURST: f64 = 20.0;
/// … and per second after it (a rep saves a result once per call).
pub const DECIDES_PER_SEC: f64 = 1.0;
/// Documents the hub keeps in memory.
pub const DEFAULT_CACHE_DOCS: usize = 4_096;

/// Why the server could not start or a bootstrap step failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory or database could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The endpoint or certificate failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A file could not be read or written.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// `--init-owner` on a data directory that already has a tenant.
    #[error("the data directory already has a tenant; --init-owner only bootstraps an empty one")]
    AlreadyInitialized,
    /// A bootstrap input was refused.
    #[error("{0}")]
    Invalid(String),
}

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data directory (database and generated certificate).
    pub data_dir: PathBuf,
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// A certificate chain and key (PEM) to use instead of the generated one.
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// The start limit: how long a phone has to press *Start call*.
    pub start_limit_ms: i64,
    /// How long session tokens last.
    pub session_ttl_ms: i64,
    /// Documents kept in memory.
    pub cache_docs: usize,
    /// How long a new connection has to open its stream and say who it is.
    pub handshake_timeout: Duration,
    /// Most customers one tenant may hold (`customer-limit` past it).
    pub max_customers_per_tenant: u64,
    /// The page and its HTTP listener.
    pub web: web::WebConfig,
    /// What a recording may be, per recording and per tenant.
    pub recording_limits: callsync_blobs::BlobLimits,
}

impl ServerConfig {
    /// Defaults for `data_dir`, listening on `listen`.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            data_dir,
            listen,
            certificate: None,
            start_limit_ms: DEFAULT_START_LIMIT_MS,
            session_ttl_ms: DEFAULT_SESSION_TTL_MS,
            cache_docs: DEFAULT_CACHE_DOCS,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_customers_per_tenant: DEFAULT_MAX_CUSTOMERS_PER_TENANT,
            web: web::WebConfig {
                page_dir: None,
                listen: None,
                allowed_origins: Vec::new(),
            },
            recording_limits: callsync_blobs::BlobLimits::default(),
        }
    }
}

fn open_store(data_dir: &Path) -> Result<Store, ServerError> {
    callsync_store::create_private_dir(data_dir)?;
    Ok(Store::open(&data_dir.join(DB_FILE))?)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ServerError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ServerError::Invalid("the system has no randomness".to_owned()))?;
    Ok(bytes)
}

/// A setting, created once from random bytes.
fn persistent_random<const N: usize>(store: &mut Store, key: &str) -> Result<Vec<u8>, ServerError> {
    if let Some(bytes) = store.setting(key)? {
        return Ok(bytes);
    }
    let bytes = random_bytes::<N>()?.to_vec();
    store.set_setting(key, &bytes)?;
    Ok(bytes)
}

/// Creates the first tenant and its owner (holding the calling contract) on a
/// data directory with no tenant yet.
pub fn init_owner(
    data_dir: &Path,
    tenant: &str,
    email: &str,
    password: &str,
) -> Result<(), ServerError> {
    if open_store(data_dir)?.has_tenants()? {
        return Err(ServerError::AlreadyInitialized);
    }
    add_tenant(data_dir, tenant, email, password)
}

/// Adds a tenant and its owner (holding the calling contract): an operator's
/// command, run on the server's data directory. Refuses an existing tenant or an
/// email that is already a member anywhere.
pub fn add_tenant(
    data_dir: &Path,
    tenant: &str,
    email: &str,
    password: &str,
) -> Result<(), ServerError> {
    let mut store = open_store(data_dir)?;
    let tenant = TenantId::new(tenant).map_err(|e| ServerError::Invalid(e.to_string()))?;
    let email = UserId::new(email.trim().to_lowercase())
        .map_err(|e| ServerError::Invalid(e.to_string()))?;
    if password.chars().count() < accounts::MIN_PASSWORD_CHARS {
        return Err(ServerError::Invalid(format!(
            "the password needs at least {} characters",
            accounts::MIN_PASSWORD_CHARS
        )));
    }
    let owner = MemberRecord {
        tenant,
        email,
        password_hash: accounts::hash_password(password)
            .map_err(|e| ServerError::Invalid(e.to_string()))?,
        role: Role::Owner,
        contract: true,
    };
    store.create_tenant(&owner, clock::now())?;
    Ok(())
}

/// The names the browsers' development certificate is made for.
fn dev_certificate_names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    names
}

/// How often the browsers' development certificate is checked for rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(3600);

/// Replaces the browsers' development certificate well before it expires.
async fn rotate_dev_certificate(certificates: Arc<CertificateResolver>) {
    let mut ticks = tokio::time::interval(ROTATION_CHECK);
    loop {
        ticks.tick().await;
        let certificates = certificates.clone();
        // Making a key pair is quick but not free: off the runtime's workers.
        let rotated =
            tokio::task::spawn_blocking(move || certificates.rotate_if_due(SystemTime::now()))
                .await;
        if let Ok(Err(e)) = rotated {
            tracing::error!(error = %e, "could not rotate the browsers' certificate");
        }
    }
}

/// Raises the process's soft limit on open files to its hard limit, where the
/// system allows: a service manager's usual soft limit (1,024) is below what the
/// connection caps admit, and past it the page, `/api/transport` and new SQLite
/// files fail alike.
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current < limit.maximum.or(Some(u64::MAX)) {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(limit = ?limit.maximum, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
}

/// A running server.
pub struct Server {
    endpoint: quinn::Endpoint,
    hubs: Arc<hub::Hubs>,
    accept: tokio::task::JoinHandle<()>,
    /// Every connection's task.
    connections: tokio_util::task::TaskTracker,
    /// Resolves once the endpoint's socket is closed.
    socket_closed: endpoint::SocketClosed,
    fingerprint: String,
    local_addr: SocketAddr,
    page: web::WebServer,
    rotation: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    compactor: tokio::task::JoinHandle<()>,
    checkpointer: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Opens the data directory and starts listening. Must run inside a
    /// multi-threaded tokio runtime.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        raise_open_file_limit();
        let mut store = open_store(&config.data_dir)?;
        let accounts_store = Store::open(&config.data_dir.join(DB_FILE))?;
        let actor = ActorId::from(persistent_random::<16>(&mut store, "actor")?);
        // Documents stored by a build before schema 2 move to it now, before any
        // device connects (the core's migration rule: only the server upgrades).
        let started = std::time::Instant::now();
        let report = store.upgrade_documents(&actor, clock::now())?;
        if report.upgraded > 0 {
            tracing::info!(
                documents = report.upgraded,
                ms = started.elapsed().as_millis() as u64,
                "upgraded stored documents to schema {}",
                callsync_core::SCHEMA_VERSION
            );
        }
        for (tenant, customer, error) in &report.unreadable {
            tracing::warn!(tenant = %tenant, customer = %customer, error = %error, "a stored document does not load; left as it is");
        }
        let epoch: String = persistent_random::<16>(&mut store, "epoch")?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let identity = match &config.certificate {
            Some((cert, key)) => Identity::from_pem_files(cert, key)?,
            None => {
                let (identity, created) = Identity::load_or_create(&config.data_dir)?;
                if created {
                    tracing::info!("generated a self-signed certificate");
                }
                identity
            }
        };
        let fingerprint = identity.fingerprint();
        let provider = tls::crypto_provider();
        let certificates = Arc::new(match &config.certificate {
            Some(_) => CertificateResolver::shared(&identity, provider)?,
            None => CertificateResolver::with_dev_certificate(
                &identity,
                dev_certificate_names(config.listen),
                SystemTime::now(),
                provider,
            )?,
        });
        let (endpoint, socket_closed) = endpoint::bind_server_watched(
            config.listen,
            tls::server_config(certificates.clone())?,
        )?;
        let local_addr = endpoint.local_addr()?;
        let blobs = Arc::new(
            callsync_blobs::BlobStore::local(
                &config.data_dir.join(RECORDINGS_DIR),
                config.recording_limits,
            )
            .map_err(|e| ServerError::Invalid(e.to_string()))?,
        );
        let playback = Arc::new(playback::Playback::new(
            &persistent_random::<32>(&mut store, playback::KEY_SETTING)?,
            blobs.clone(),
        ));
        let page = web::WebServer::start(
            &config.web,
            local_addr,
            certificates.clone(),
            playback.clone(),
            config.start_limit_ms,
            match &config.certificate {
                Some(_) => Some(tls::https_config(&identity)?),
                None => None,
            },
        )
        .await?;
        let rotation = tokio::spawn(rotate_dev_certificate(certificates));
        let plugins = Arc::new(
            callsync_plugin_host::PluginHost::new(
                callsync_plugin_host::Limits::default(),
                Some(&config.data_dir.join(PLUGIN_CACHE_DIR)),
            )
            .map_err(|e| ServerError::Invalid(e.to_string()))?,
        );
        let actor_hex = actor.to_hex_string();
        let plugin_shares = Arc::new(rules::PluginShares::default());
        let tenants = store.tenant_ids()?;
        drop(store);
        let hubs = hub::Hubs::start(
            hub::HubsConfig {
                db_path: config.data_dir.join(DB_FILE),
                settings: callsync_session::hub::HubSettings {
                    start_limit_ms: config.start_limit_ms,
                    max_customers: config.max_customers_per_tenant,
                    cache_docs: config.cache_docs.max(1),
                    server_device: DeviceId::new(accounts::SERVER_DEVICE)
                        .map_err(|e| ServerError::Invalid(e.to_string()))?,
                    server_user: UserId::new("system")
                        .map_err(|e| ServerError::Invalid(e.to_string()))?,
                    server_actor: actor,
                    epoch,
                    max_held: callsync_session::hub::MAX_HELD_MESSAGES,
                },
                rules: Arc::new(rules::HostRules {
                    plugins: plugins.clone(),
                    shares: plugin_shares.clone(),
                }),
            },
            tenants,
        )?;
        let compactor = tokio::spawn(compactor::compact_documents(
            Store::open(&config.data_dir.join(DB_FILE))?,
            hubs.turns(),
        ));
        let checkpointer = tokio::spawn(compactor::checkpoint_log(Store::open(
            &config.data_dir.join(DB_FILE),
        )?));
        let attach_gate = Arc::new(recordings::AttachGate::default());
        let sweeper = tokio::spawn(recordings::sweep_deletions(
            Store::open(&config.data_dir.join(DB_FILE))?,
            blobs.clone(),
            attach_gate.clone(),
        ));
        let shared = Arc::new(connection::Shared {
            recordings: recordings::Recordings::new(blobs, attach_gate),
            playback,
            hubs: hubs.clone(),
            accounts: Mutex::new(accounts_store),
            next_conn: AtomicU64::new(1),
            session_ttl_ms: config.session_ttl_ms,
            hashing: Semaphore::new(2),
            compiling: Semaphore::new(1),
            deciding: Semaphore::new(2),
            decoding: Semaphore::new(
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get().saturating_sub(1))
                    .max(1),
            ),
            server_actor: actor_hex,
            throttle: std::sync::Mutex::new(throttle::LoginThrottle::default()),
            handshake_timeout: config.handshake_timeout,
            plugins,
            limits: Arc::new(limits::ConnectionLimits::default()),
            plugin_shares,
            decides: limits::RatePerKey::new(DECIDES_BURST, DECIDES_PER_SEC),
            tenant_compiles: std::sync::Mutex::default(),
            origins: web::PageOrigins {
                port: page.addr.port(),
                https: page.https,
                listed: config.web.allowed_origins.clone(),
            },
        });
        let accept_endpoint = endpoint.clone();
        // Every connection's task, so shutdown can wait until none holds the
        // endpoint (its socket is let go only then).
        let connections = tokio_util::task::TaskTracker::new();
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Some(incoming) = accept_endpoint.accept().await {
                let address = incoming.remote_address().ip();
                match shared
                    .limits
                    .admit(address, incoming.remote_address_validated())
                {
                    limits::Admit::Accept => {}
                    limits::Admit::Retry => {
                        // The peer must echo a token from its address before the
                        // server keeps any state for it.
                        if let Err(e) = incoming.retry() {
                            e.into_incoming().ignore();
                        }
                        continue;
                    }
                    limits::Admit::Refuse => {
                        tracing::debug!(%address, "refusing a connection: too many from its address or in all");
                        incoming.refuse();
                        continue;
                    }
                }
                let slot = shared.limits.open(address);
                tracked.spawn(connection::serve(incoming, shared.clone(), slot));
            }
        });
        tracing::info!(addr = %local_addr, page = %page.addr, fingerprint = %fingerprint, "listening");
        Ok(Self {
            endpoint,
            hubs,
            accept,
            connections,
            socket_closed,
            fingerprint,
            local_addr,
            page,
            rotation,
            sweeper,
            compactor,
            checkpointer,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The page's HTTP address.
    pub fn page_addr(&self) -> SocketAddr {
        self.page.addr
    }

    /// The page's address to open: `https://` when the server was given a
    /// certificate, else `http://`.
    pub fn page_url(&self) -> String {
        let scheme = if self.page.https { "https" } else { "http" };
        format!("{scheme}://{}/", self.page.addr)
    }

    /// The SHA-256 fingerprint of the server's certificate, for clients to pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Stops accepting, closes connections, lets the hub commit its last batch,
    /// and waits for it.
    pub async fn shutdown(mut self) {
        self.endpoint.close(0u32.into(), b"server shutting down");
        self.accept.abort();
        // Cancelled at its next poll: awaited, so its handle on the endpoint is gone.
        let _ = (&mut self.accept).await;
        self.page.stop();
        self.rotation.abort();
        self.sweeper.abort();
        self.compactor.abort();
        self.checkpointer.abort();
        let hubs = self.hubs.clone();
        let _ = tokio::task::spawn_blocking(move || hubs.shutdown()).await;
        // Each connection's task ends once its connection is closed and its
        // writer has let go (bounded by the writer's own wait); then nothing
        // holds the endpoint, and its socket closes, so a server started
        // right after on the same address can bind it.
        self.connections.close();
        if tokio::time::timeout(Duration::from_secs(5), self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.connections.len(),
                "connection tasks still running at shutdown"
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        // The socket closes on quinn's own task once the last handle is gone.
        let Self {
            endpoint,
            socket_closed,
            ..
        } = self;
        drop(endpoint);
        if !socket_closed.wait(Duration::from_secs(2)).await {
            tracing::warn!("the server's socket was still open 2 s after shutdown");
        }
        tracing::info!("server stopped");
    }
}
