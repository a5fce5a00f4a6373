//! Logging a device in, and the session it keeps in its data directory.
//!
//! Owns: carrying the `login` exchange (the device session's) over its own QUIC
//! connection, and the saved session: how to reach the server (address, name,
//! trust) beside the device session's identity (tenant, user, role, device id,
//! actor, token), read from a data directory of an older build too. The token
//! is kept in the device's own database like any app keeps its login (the
//! server stores only a hash).

use std::net::SocketAddr;
use std::path::Path;

use callsync_core::{ActorId, DeviceId, DeviceKind, Role, TenantId, Timestamp, UserId};
use callsync_net::framing::{read_message, write_message};
use callsync_net::tls::{self, Trust};
use callsync_net::{NetError, endpoint};
use callsync_session::device::login::{LoginError, LoginExchange};
use callsync_session::device::{DeviceSession, DeviceSettings, IDENTITY_KEY, Identity};
use callsync_store::Store;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::{ClientError, DB_FILE};

const SESSION_KEY: &str = "session";
const ACTOR_KEY: &str = "actor";
const DEVICE_KEY: &str = "device-id";

/// How the device trusts the server, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SavedTrust {
    /// The certificate with this SHA-256 fingerprint.
    Fingerprint(String),
    /// Certificates issued by the CA in this PEM file.
    CaFile(String),
}

impl SavedTrust {
    fn trust(&self) -> Result<Trust, NetError> {
        match self {
            Self::Fingerprint(fp) => Ok(Trust::Fingerprint(fp.clone())),
            Self::CaFile(path) => Trust::roots_from_pem(Path::new(path)),
        }
    }
}

/// How the device reaches the server, saved at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedTransport {
    server: SocketAddr,
    server_name: String,
    trust: SavedTrust,
}

/// What an older build saved under the same key: the identity beside the
/// transport. Read once, into the device session's identity.
#[derive(Debug, Clone, Deserialize)]
struct LegacyIdentity {
    tenant: TenantId,
    user: UserId,
    role: Role,
    device: DeviceId,
    kind: DeviceKind,
    token: String,
    expires_at: Timestamp,
}

/// A logged-in device's session as saved in its data directory: how to reach
/// the server and who the device is (the device session's identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSession {
    /// The server's address.
    pub server: SocketAddr,
    /// The name the server's certificate is checked for.
    pub server_name: String,
    /// How the server is trusted.
    pub trust: SavedTrust,
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// Their role.
    pub role: Role,
    /// This device.
    pub device: DeviceId,
    /// Desk or phone.
    pub kind: DeviceKind,
    /// The session token (empty once the session has ended).
    pub token: String,
    /// When the token expires.
    pub expires_at: Timestamp,
    /// Who the device is, as its device session keeps it.
    pub identity: Identity,
}

impl SavedSession {
    /// The session saved in `store`, if the device has logged in.
    pub fn load(store: &Store) -> Result<Option<Self>, ClientError> {
        let Some(bytes) = store.setting(SESSION_KEY)? else {
            return Ok(None);
        };
        let unreadable =
            |e: serde_json::Error| ClientError::Protocol(format!("saved session unreadable: {e}"));
        let transport: SavedTransport = serde_json::from_slice(&bytes).map_err(unreadable)?;
        let identity: Identity = match store.setting(IDENTITY_KEY)? {
            Some(saved) => serde_json::from_slice(&saved).map_err(unreadable)?,
            None => {
                // Saved by an older build: the identity was kept with the transport,
                // the actor under a key of its own.
                let legacy: LegacyIdentity = serde_json::from_slice(&bytes).map_err(unreadable)?;
                let actor = match store.setting(ACTOR_KEY)? {
                    Some(actor) => ActorId::from(actor).to_hex_string(),
                    None => {
                        return Err(ClientError::Protocol(
                            "saved session has no actor".to_owned(),
                        ));
                    }
                };
                Identity {
                    tenant: legacy.tenant,
                    user: legacy.user,
                    role: legacy.role,
                    device: legacy.device,
                    kind: legacy.kind,
                    actor,
                    token: Some(legacy.token),
                    expires_at: legacy.expires_at,
                    revoke: Vec::new(),
                    stopped: None,
                }
            }
        };
        Ok(Some(Self {
            server: transport.server,
            server_name: transport.server_name,
            trust: transport.trust,
            tenant: identity.tenant.clone(),
            user: identity.user.clone(),
            role: identity.role,
            device: identity.device.clone(),
            kind: identity.kind,
            token: identity.token.clone().unwrap_or_default(),
            expires_at: identity.expires_at,
            identity,
        }))
    }

    /// A QUIC endpoint configured to trust the server.
    pub fn endpoint(&self) -> Result<quinn::Endpoint, ClientError> {
        let config = tls::client_config(&self.trust.trust()?)?;
        Ok(endpoint::client_endpoint(self.server, config)?)
    }
}

fn random_hex(bytes: usize) -> Result<Vec<u8>, ClientError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| ClientError::Protocol("no randomness".to_owned()))?;
    Ok(buf)
}

/// The data directory's Automerge actor, made once (the CLI's local commands
/// write under the same one).
pub fn device_actor(store: &mut Store) -> Result<ActorId, ClientError> {
    if let Some(session) = SavedSession::load(store)? {
        return session
            .identity
            .actor_id()
            .map_err(|e| ClientError::Protocol(e.to_string()));
    }
    if let Some(bytes) = store.setting(ACTOR_KEY)? {
        return Ok(ActorId::from(bytes));
    }
    let bytes = random_hex(16)?;
    store.set_setting(ACTOR_KEY, &bytes)?;
    Ok(ActorId::from(bytes))
}

/// The data directory's device id: `wanted` the first time (or a random one),
/// the same ever after.
pub fn device_id(
    store: &mut Store,
    kind: DeviceKind,
    wanted: Option<&str>,
) -> Result<DeviceId, ClientError> {
    if let Some(bytes) = store.setting(DEVICE_KEY)? {
        let saved = String::from_utf8_lossy(&bytes).into_owned();
        return Ok(DeviceId::new(saved).map_err(callsync_core::CoreError::from)?);
    }
    let id = match wanted {
        Some(w) => w.to_owned(),
        None => {
            let suffix: String = random_hex(6)?.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}-{suffix}", kind.as_str())
        }
    };
    let id = DeviceId::new(id).map_err(callsync_core::CoreError::from)?;
    store.set_setting(DEVICE_KEY, id.as_str().as_bytes())?;
    Ok(id)
}

/// What to log in with.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// The server's address.
    pub server: SocketAddr,
    /// The name to check the server's certificate for.
    pub server_name: String,
    /// How to trust the server.
    pub trust: SavedTrust,
    /// Email.
    pub email: String,
    /// Password.
    pub password: String,
    /// Desk or phone.
    pub kind: DeviceKind,
    /// The device id to register the first time (random if none).
    pub device: Option<String>,
}

/// Logs the data directory's device in and saves the session. Refusals (wrong
/// password, no calling contract, …) come back as [`ClientError::Refused`] with
/// the server's exact text. The device session decides which device id and
/// actor to register: the ones this data directory has, when the same user logs
/// in again.
pub async fn login(data_dir: &Path, request: &LoginRequest) -> Result<SavedSession, ClientError> {
    callsync_store::create_private_dir(data_dir).map_err(NetError::Io)?;
    let mut store = Store::open(&data_dir.join(DB_FILE))?;
    let existing = SavedSession::load(&store)?;
    if let Some(existing) = &existing {
        if existing.kind != request.kind {
            return Err(ClientError::Protocol(format!(
                "this data directory belongs to a {}; use another for a {}",
                existing.kind.as_str(),
                request.kind.as_str()
            )));
        }
        if !existing
            .user
            .as_str()
            .eq_ignore_ascii_case(request.email.trim())
        {
            return Err(ClientError::Protocol(format!(
                "this data directory belongs to {}; use another for {}",
                existing.user,
                request.email.trim()
            )));
        }
    }
    // A data directory from before device sessions: its device id and actor.
    let previous = match &existing {
        Some(s) => Some(s.identity.clone()),
        None => legacy_device(&mut store, request)?,
    };
    let wanted = match &request.device {
        Some(w) => Some(DeviceId::new(w.as_str()).map_err(callsync_core::CoreError::from)?),
        None => None,
    };
    let mut rng = SystemEntropy;
    let (exchange, message) = LoginExchange::start(
        crate::clock::now(),
        &mut rng,
        &request.email,
        &request.password,
        request.kind,
        previous.as_ref(),
        wanted.as_ref(),
    )
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let config = tls::client_config(&request.trust.trust()?)?;
    let endpoint = endpoint::client_endpoint(request.server, config)?;
    let (connection, mut send, mut recv) =
        endpoint::connect(&endpoint, request.server, &request.server_name).await?;
    write_message(&mut send, &message).await?;
    let reply = read_message(&mut recv).await?;
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    let reply = reply
        .ok_or_else(|| ClientError::Protocol("the server closed without answering".to_owned()))?;
    let (identity, clock) = match exchange.finish(crate::clock::now(), reply) {
        Ok(done) => done,
        Err(LoginError::Refused { body, .. }) => return Err(ClientError::Refused(body)),
        Err(e) => return Err(ClientError::Protocol(e.to_string())),
    };
    let transport = SavedTransport {
        server: request.server,
        server_name: request.server_name.clone(),
        trust: request.trust.clone(),
    };
    let json = serde_json::to_vec(&transport).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut tx = store.write()?;
    tx.set_setting(SESSION_KEY, &json)?;
    DeviceSession::<callsync_store::StoredDoc>::logged_in(
        DeviceSettings::default(),
        &mut tx,
        identity,
        clock,
    )
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    tx.commit()?;
    SavedSession::load(&store)?.ok_or_else(|| ClientError::Protocol("session not saved".to_owned()))
}

/// The device id and actor an older build made for this data directory, as an
/// identity of the user logging in (so they are registered again, not anew).
fn legacy_device(
    store: &mut Store,
    request: &LoginRequest,
) -> Result<Option<Identity>, ClientError> {
    let (Some(actor), Some(device)) = (store.setting(ACTOR_KEY)?, store.setting(DEVICE_KEY)?)
    else {
        return Ok(None);
    };
    let device = String::from_utf8_lossy(&device).into_owned();
    Ok(Some(Identity {
        tenant: TenantId::new("unknown").map_err(callsync_core::CoreError::from)?,
        user: UserId::new(request.email.trim()).map_err(callsync_core::CoreError::from)?,
        role: Role::User,
        device: DeviceId::new(device).map_err(callsync_core::CoreError::from)?,
        kind: request.kind,
        actor: ActorId::from(actor).to_hex_string(),
        token: None,
        expires_at: Timestamp::from_millis(0),
        revoke: Vec::new(),
        stopped: None,
    }))
}

/// The system's randomness, for ids and jitter (the device session's [`Entropy`](callsync_session::device::Entropy)).
pub struct SystemEntropy;

impl callsync_session::device::Entropy for SystemEntropy {
    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        // Without the system's randomness, the clock's nanoseconds still spread
        // reconnects and ids apart.
        if SystemRandom::new().fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            bytes = nanos.to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    }
}
