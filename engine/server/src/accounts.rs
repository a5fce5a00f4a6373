//! Logging in, sessions, and the admin's account requests.
//!
//! Owns: Argon2id password hashes (never a password in the database or a log),
//! session tokens (32 random bytes; only their SHA-256 is stored), the contract
//! check at login, and the rules on who may add members, grant or revoke the
//! calling contract and reset passwords. Runs on the connection's task (off the
//! hub, since Argon2 is deliberately slow), with its own database connection.
//! Does not own: documents (the hub).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use callsync_core::wire::{
    CONTRACT_REQUIRED_EN, DeviceRegistration, ErrorBody, MemberSummary, Refusal, RpcCall, RpcResult,
};
use callsync_core::{DeviceKind, Role, Timestamp, UserId};
use callsync_store::{MemberRecord, NewSession, Store, StoreError};
use ring::rand::{SecureRandom, SystemRandom};

/// The server's device id, under which it records expiries; no device may use it.
pub const SERVER_DEVICE: &str = "server";
/// Shortest password accepted for a new member or a reset.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// The session a connection runs under, as checked at `join`.
pub use callsync_session::Authenticated as Session;

/// Why a login, a join or an account request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown email or wrong password (the two are not told apart).
    #[error("wrong email or password")]
    InvalidCredentials,
    /// The user does not hold the calling contract.
    #[error("{}", CONTRACT_REQUIRED_EN)]
    ContractRequired,
    /// The token is unknown, was revoked, or names another device.
    #[error("the session is not valid; log in again")]
    InvalidSession,
    /// The token has expired.
    #[error("the session expired; log in again")]
    SessionExpired,
    /// The request needs a higher role.
    #[error("this needs the {needed} role or above")]
    RoleRequired {
        /// The least role allowed.
        needed: Role,
    },
    /// The request was malformed (a short password, a bad actor id, …).
    #[error("{0}")]
    BadRequest(String),
    /// The store refused (an existing email, an unknown member, a taken device).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The email cannot be used for a new member (it belongs to someone outside
    /// this tenant; which tenant is not said).
    #[error("this email address cannot be used")]
    EmailUnavailable,
    /// Hashing failed (out of memory).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

impl AuthError {
    /// The refusal a device is sent.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::InvalidCredentials => Refusal::InvalidCredentials,
            Self::ContractRequired => Refusal::ContractRequired,
            Self::InvalidSession => Refusal::InvalidSession,
            Self::SessionExpired => Refusal::SessionExpired,
            Self::RoleRequired { needed } => Refusal::RoleRequired { needed: *needed },
            Self::BadRequest(detail) => Refusal::BadRequest {
                detail: detail.clone(),
            },
            Self::Store(StoreError::MemberExists { email }) => Refusal::MemberExists {
                email: email.to_string(),
            },
            Self::Store(StoreError::UnknownMember { email }) => Refusal::UnknownMember {
                email: email.to_string(),
            },
            Self::Store(StoreError::DeviceTaken { device }) => Refusal::DeviceTaken {
                device: device.to_string(),
            },
            Self::Store(StoreError::ActorTaken { .. }) => Refusal::ActorTaken,
            Self::Store(StoreError::LastOwner) => Refusal::LastOwner,
            Self::EmailUnavailable => Refusal::EmailUnavailable,
            // Internal details stay in the server's log.
            Self::Store(_) | Self::Hash(_) => Refusal::ServerTrouble,
        }
    }

    /// The reply body.
    pub fn body(&self) -> ErrorBody {
        self.refusal().body()
    }
}

/// Hashes a password with Argon2id (the crate's defaults: 19 MiB, 2 passes, one
/// lane — OWASP's recommendation) and a random salt, in PHC string form.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| AuthError::Hash("no randomness".to_owned()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The hash stored for a token.
pub fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

fn new_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Hash("no randomness".to_owned()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn check_new_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::BadRequest(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

/// A hash of a password nobody has, so that a login for an unknown email costs
/// the same as one with a wrong password (no account probing by timing).
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never a member's").unwrap_or_default())
}

/// What a successful login returns.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// The token (shown to the device once; only its hash is kept).
    pub token: String,
    /// The member.
    pub member: MemberRecord,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// The member an email names, if any (read before hashing, under the accounts
/// lock but without hashing there).
pub fn find_member(store: &Store, email: &str) -> Result<Option<MemberRecord>, AuthError> {
    match UserId::new(email.trim().to_lowercase()) {
        Ok(email) => Ok(store.member(&email)?),
        Err(_) => Ok(None),
    }
}

/// Checks `password` against `member`'s hash, or against a decoy hash when there
/// is no such member, so both cost the same (no account probing by timing).
/// Slow by design: call it with no lock held.
pub fn check_password(
    member: Option<MemberRecord>,
    password: &str,
) -> Result<MemberRecord, AuthError> {
    let hash = member
        .as_ref()
        .map_or(decoy_hash(), |m| m.password_hash.as_str());
    let ok = verify_password(hash, password);
    match member {
        Some(m) if ok => Ok(m),
        _ => Err(AuthError::InvalidCredentials),
    }
}

/// After the password matched: the calling contract, the device, and a new
/// session token. Re-reads the member, so a password reset or a revoked contract
/// that landed while the password was being hashed wins.
pub fn open_session(
    store: &mut Store,
    checked: &MemberRecord,
    device: &DeviceRegistration,
    reserved_actor: &str,
    now: Timestamp,
    ttl_ms: i64,
) -> Result<LoggedIn, AuthError> {
    let member = match store.member(&checked.email)? {
        Some(m) if m.password_hash == checked.password_hash && m.tenant == checked.tenant => m,
        _ => return Err(AuthError::InvalidCredentials),
    };
    if !member.contract {
        return Err(AuthError::ContractRequired);
    }
    if device.kind == DeviceKind::Server {
        return Err(AuthError::BadRequest(
            "a device cannot log in as a server".to_owned(),
        ));
    }
    let actor = device.actor.to_ascii_lowercase();
    if actor.is_empty() || actor.len() > 64 || !actor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::BadRequest(
            "the actor id must be 1–32 bytes of hex".to_owned(),
        ));
    }
    // The server writes under its own actor and device id: no device may bind
    // either (a change under them would pass for the server's).
    if device.id.as_str() == SERVER_DEVICE || actor == reserved_actor.to_ascii_lowercase() {
        return Err(AuthError::BadRequest(
            "this device id or actor id is reserved".to_owned(),
        ));
    }
    let token = new_token()?;
    let expires_at = now.plus_millis(ttl_ms);
    let hash = token_hash(&token);
    let new = NewSession {
        device: &device.id,
        kind: device.kind,
        actor: &actor,
        token_hash: &hash,
        expires_at,
    };
    store.open_session(&member, &new, now)?;
    Ok(LoggedIn {
        token,
        member,
        expires_at,
    })
}

/// Checks email and password, the calling contract, and registers the device, in
/// one go (for callers that hold the store alone, such as tests and tools; the
/// server runs the three steps apart so that no lock is held while hashing).
pub fn login(
    store: &mut Store,
    email: &str,
    password: &str,
    device: &DeviceRegistration,
    reserved_actor: &str,
    now: Timestamp,
    ttl_ms: i64,
) -> Result<LoggedIn, AuthError> {
    let member = find_member(store, email)?;
    let member = check_password(member, password)?;
    open_session(store, &member, device, reserved_actor, now, ttl_ms)
}

/// Checks a `join`'s token for `device` at `now`.
pub fn authenticate(
    store: &Store,
    token: &str,
    device: &callsync_core::DeviceId,
    now: Timestamp,
) -> Result<Session, AuthError> {
    let Some(found) = store.session(&token_hash(token))? else {
        return Err(AuthError::InvalidSession);
    };
    if &found.device.id != device {
        return Err(AuthError::InvalidSession);
    }
    if found.expires_at <= now {
        return Err(AuthError::SessionExpired);
    }
    if !found.member.contract {
        return Err(AuthError::ContractRequired);
    }
    Ok(Session {
        tenant: found.member.tenant,
        user: found.member.email,
        role: found.member.role,
        device: found.device.id,
        kind: found.device.kind,
        expires_at: found.expires_at,
    })
}

pub use callsync_session::connection::is_account_call;

fn require_admin(session: &Session) -> Result<(), AuthError> {
    if session.role.is_admin() {
        Ok(())
    } else {
        Err(AuthError::RoleRequired {
            needed: Role::Admin,
        })
    }
}

/// The slow part of an account request, done before the accounts lock is taken:
/// the Argon2 hash of the new password a `user-add` or `user-reset-password`
/// carries (checked for length first). `None` for every other request.
pub fn hash_for(session: &Session, call: &RpcCall) -> Result<Option<String>, AuthError> {
    require_admin(session)?;
    match call {
        RpcCall::UserAdd { password, .. } | RpcCall::UserResetPassword { password, .. } => {
            check_new_password(password)?;
            hash_password(password).map(Some)
        }
        _ => Ok(None),
    }
}

/// Answers an account request for `session` (admin or above only). `hashed` is
/// what [`hash_for`] returned for the same request: no hashing happens here, so
/// the caller may hold the accounts lock.
pub fn account_call(
    store: &mut Store,
    session: &Session,
    call: &RpcCall,
    hashed: Option<String>,
    now: Timestamp,
) -> Result<RpcResult, AuthError> {
    require_admin(session)?;
    let hashed = || {
        hashed
            .clone()
            .ok_or_else(|| AuthError::Hash("the new password was not hashed".to_owned()))
    };
    match call {
        RpcCall::UserAdd {
            email,
            role,
            password,
            contract,
        } => {
            if !session.role.may_grant(*role) {
                return Err(AuthError::RoleRequired {
                    needed: Role::Owner,
                });
            }
            check_new_password(password)?;
            let email = UserId::new(email.as_str().to_lowercase())
                .map_err(|e| AuthError::BadRequest(e.to_string()))?;
            if let Some(existing) = store.member(&email)?
                && existing.tenant != session.tenant
            {
                // Emails are global (a login names no tenant), so this address
                // cannot be added; the answer does not say where it is used.
                return Err(AuthError::EmailUnavailable);
            }
            let record = MemberRecord {
                tenant: session.tenant.clone(),
                email,
                password_hash: hashed()?,
                role: *role,
                contract: *contract,
            };
            store.add_member(&record, now)?;
            Ok(RpcResult::Done)
        }
        RpcCall::UserSetContract { email, contract } => {
            guard_target(store, session, email)?;
            store.set_contract(&session.tenant, email, *contract)?;
            Ok(RpcResult::Done)
        }
        RpcCall::UserSetRole { email, role } => {
            guard_target(store, session, email)?;
            if !session.role.may_grant(*role) {
                return Err(AuthError::RoleRequired {
                    needed: Role::Owner,
                });
            }
            store.set_role(&session.tenant, email, *role)?;
            Ok(RpcResult::Done)
        }
        RpcCall::UserResetPassword { email, password } => {
            guard_target(store, session, email)?;
            check_new_password(password)?;
            store.set_password_hash(&session.tenant, email, &hashed()?)?;
            Ok(RpcResult::Done)
        }
        RpcCall::UserList => Ok(RpcResult::Users(
            store
                .members(&session.tenant)?
                .into_iter()
                .map(|m| MemberSummary {
                    email: m.email,
                    role: m.role,
                    contract: m.contract,
                })
                .collect(),
        )),
        RpcCall::SetAssigneeVisibility { restricted } => {
            store.set_assignee_visibility(&session.tenant, *restricted)?;
            Ok(RpcResult::Done)
        }
        _ => Err(AuthError::BadRequest(format!(
            "{} is not an account request",
            call.method()
        ))),
    }
}

/// An admin may not act on an owner (only another owner may).
fn guard_target(store: &Store, session: &Session, email: &UserId) -> Result<(), AuthError> {
    match store.member(email)? {
        Some(m) if m.tenant == session.tenant => {
            if m.role == Role::Owner && session.role != Role::Owner {
                Err(AuthError::RoleRequired {
                    needed: Role::Owner,
                })
            } else {
                Ok(())
            }
        }
        _ => Err(StoreError::UnknownMember {
            email: email.clone(),
        }
        .into()),
    }
}
