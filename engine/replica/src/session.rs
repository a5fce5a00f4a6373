//! Logging a device in, and the session it keeps in its data directory.
//!
//! Owns: the device's identity (an id and an Automerge actor made once per data
//! directory), the `login` exchange, and the saved session: server address, how
//! to trust it, tenant, user, role and token. The token is kept in the device's
//! own database like any app keeps its login (the server stores only a hash).

use std::net::SocketAddr;
use std::path::Path;

use callsync_core::wire::{self, DeviceRegistration, Message};
use callsync_core::{ActorId, DeviceId, DeviceKind, Role, TenantId, Timestamp, UserId};
use callsync_net::framing::{read_message, write_message};
use callsync_net::tls::{self, Trust};
use callsync_net::{NetError, endpoint};
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

/// A logged-in device's session, saved in its data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The session token.
    pub token: String,
    /// When the token expires.
    pub expires_at: Timestamp,
}

impl SavedSession {
    /// The session saved in `store`, if the device has logged in.
    pub fn load(store: &Store) -> Result<Option<Self>, ClientError> {
        match store.setting(SESSION_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ClientError::Protocol(format!("saved session unreadable: {e}"))),
            None => Ok(None),
        }
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
/// the server's exact text.
pub async fn login(data_dir: &Path, request: &LoginRequest) -> Result<SavedSession, ClientError> {
    callsync_store::create_private_dir(data_dir).map_err(NetError::Io)?;
    let mut store = Store::open(&data_dir.join(DB_FILE))?;
    let actor = device_actor(&mut store)?;
    let device = device_id(&mut store, request.kind, request.device.as_deref())?;
    if let Some(existing) = SavedSession::load(&store)?
        && existing.kind != request.kind
    {
        return Err(ClientError::Protocol(format!(
            "this data directory belongs to a {}; use another for a {}",
            existing.kind.as_str(),
            request.kind.as_str()
        )));
    }
    let config = tls::client_config(&request.trust.trust()?)?;
    let endpoint = endpoint::client_endpoint(request.server, config)?;
    let (connection, mut send, mut recv) =
        endpoint::connect(&endpoint, request.server, &request.server_name).await?;
    write_message(
        &mut send,
        &Message::Login {
            supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
            email: request.email.clone(),
            password: request.password.clone(),
            device: DeviceRegistration {
                id: device.clone(),
                kind: request.kind,
                actor: actor.to_hex_string(),
            },
        },
    )
    .await?;
    let reply = read_message(&mut recv).await?;
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    match reply {
        Some(Message::LoggedIn {
            token,
            expires_at,
            tenant,
            user,
            role,
            ..
        }) => {
            let session = SavedSession {
                server: request.server,
                server_name: request.server_name.clone(),
                trust: request.trust.clone(),
                tenant,
                user,
                role,
                device,
                kind: request.kind,
                token,
                expires_at,
            };
            let json =
                serde_json::to_vec(&session).map_err(|e| ClientError::Protocol(e.to_string()))?;
            store.set_setting(SESSION_KEY, &json)?;
            Ok(session)
        }
        Some(Message::Error(body)) => Err(ClientError::Refused(body)),
        Some(other) => Err(ClientError::Protocol(format!(
            "expected 'logged-in', got '{}'",
            other.kind()
        ))),
        None => Err(ClientError::Protocol(
            "the server closed without answering".to_owned(),
        )),
    }
}
