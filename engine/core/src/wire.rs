//! The sync protocol's messages and their framing.
//!
//! Owns: every message a device and the server exchange, its CBOR encoding, the
//! frame around it (a 4-byte big-endian length, then the body) and the limits a
//! reader enforces before it allocates. Decoding never panics: bytes that are not a
//! message are a [`WireError`].
//! Does not own: sockets (the net adapter reads and writes frames), or what a
//! message does (the server hub and the client replica).
//!
//! # Vocabulary
//!
//! Messages are CBOR maps with a `type` key and camelCase fields, after the
//! automerge-repo protocol: `join`, `peer`, `error`, `leave`, `request`, `sync` and
//! `doc-unavailable` mean what they mean there, and a `sync` carries one raw
//! Automerge sync message for one document. Where automerge-repo has nothing to say,
//! callsync adds its own types:
//!
//! - `login` / `logged-in`: email and password for a session token, bound to one
//!   device and its Automerge actor.
//! - `join` carries the session token and the device's catch-up [`Cursor`], and
//!   `peer` answers with the server's cursor and the documents that changed since:
//!   only those run the Automerge sync, so reconnecting costs what changed, not what
//!   exists (automerge-repo syncs every shared document).
//! - `rejected`: the server refused the changes a `sync` carried (not stored, not
//!   forwarded), with a typed reason. The connection stays up.
//! - `presence`: a device of the same user came online or went away.
//! - `rpc` / `reply`: account administration, customer creation, subscriptions.
//!
//! The connection is authenticated once, by `login` or `join`; every later message
//! is authorized against that session (tenant, role, device) by the server.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::account::Role;
use crate::customer::NewCustomer;
use crate::event::{DeviceKind, RecordingRef};
use crate::id::{CallId, CustomerId, DeviceId, TenantId, UserId};
use crate::plugin::{ContentHash, PluginRef, Setting};
use crate::recording::{MAX_UPLOAD_STATUSES, UploadStatus};
use crate::time::Timestamp;
use chrono::NaiveDate;

pub(crate) mod decode;
mod refusal;
pub mod stream;
pub use refusal::{CONTRACT_REQUIRED_EN, CONTRACT_REQUIRED_JA, Refusal, RefusalCode};

/// The QUIC ALPN token of this protocol.
pub const ALPN: &[u8] = b"callsync/1";
/// The protocol version this build speaks, as offered in `join`.
///
/// Version 2 came with schema 2 of the customer document (each call's events in
/// a map of their own): a device still on version 1 would write events where
/// schema 2 no longer takes them, so it is refused at `join` and told to update.
pub const PROTOCOL_VERSION: &str = "2";
/// The largest frame body accepted, in bytes. A larger length prefix is refused
/// before anything is allocated.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// Bytes in the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Longest password accepted (Argon2 hashes any length; this bounds the work).
pub const MAX_PASSWORD_BYTES: usize = 256;
/// Most documents (or any other list's items) named in one message.
pub const MAX_DOCUMENTS_PER_MESSAGE: usize = 100_000;
/// Most protocol versions a `login` or `join` may offer.
pub const MAX_PROTOCOL_VERSIONS: usize = 16;
/// Most heads a message may announce (as the sync screen allows).
pub const MAX_HEADS: usize = 1_024;
/// The most frame a connection may send before it has logged in or joined: a
/// `login` or `join` is well under 1 KiB, and nothing more is read or decoded for
/// a peer nobody has authenticated.
pub const MAX_FIRST_FRAME_BYTES: usize = 4 * 1024;
/// Most documents a `subscribe` may name while decoding; past [`MAX_SUBSCRIBE`]
/// (up to this) the hub answers with a typed refusal, past this the message is
/// malformed.
pub const MAX_SUBSCRIBE_DECODED: usize = 4 * MAX_SUBSCRIBE;
/// Most settings a `plugin-install` may carry while decoding (the install
/// check refuses past 64 in words).
pub const MAX_SETTINGS_DECODED: usize = 1_024;
/// Most holidays a `plugin-install` may carry while decoding (the install
/// check refuses past 1,000 in words).
pub const MAX_HOLIDAYS_DECODED: usize = 16_384;
/// Most result types an install summary may list while decoding.
pub const MAX_RESULT_TYPES_DECODED: usize = 1_024;

/// Why bytes are not a valid frame or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix announced more than [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a message of this protocol.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message could not be encoded (a bug, or a value CBOR cannot hold).
    #[error("message could not be encoded: {0}")]
    Encode(String),
}

impl WireError {
    /// A stable code for logs and error replies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::FrameTooLarge { .. } => RefusalCode::FrameTooLarge.as_str(),
            Self::Malformed(_) => RefusalCode::MalformedMessage.as_str(),
            Self::Encode(_) => RefusalCode::EncodeFailed.as_str(),
        }
    }
}

/// Where a device stands in the server's change log: the server's log `epoch` (a
/// fresh one if its database was replaced) and the last sequence number whose
/// changes the device holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    /// Identifies one server database; a cursor from another epoch means nothing.
    pub epoch: String,
    /// The device holds every change of its documents up to this sequence number.
    pub seq: u64,
}

/// The device a session is for, declared at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    /// The device's id, chosen once by the device.
    pub id: DeviceId,
    /// Desk or phone (a server never logs in).
    pub kind: DeviceKind,
    /// The Automerge actor id (hex) this device writes under. The server binds it
    /// to the device and refuses changes made under it by anyone else.
    pub actor: String,
}

/// What a refusal says, in a form every client can show.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// A stable kebab-case code.
    pub code: String,
    /// English text.
    pub message: String,
    /// Japanese text.
    pub message_ja: String,
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

decode::tag_first_enum! {
tag = "type", remote = "Message", mirror = MessageFields;
/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum Message {
    /// Client → server, first message of a login connection.
    #[serde(rename_all = "camelCase")]
    Login {
        /// Protocol versions the client speaks (at most [`MAX_PROTOCOL_VERSIONS`]).
        #[serde(deserialize_with = "decode::at_most::<MAX_PROTOCOL_VERSIONS, _, _>")]
        supported_protocol_versions: Vec<String>,
        /// The user's email.
        email: String,
        /// The user's password (sent inside TLS; never stored or logged).
        password: String,
        /// The device the session is for.
        device: DeviceRegistration,
    },
    /// Server → client: the login succeeded.
    #[serde(rename_all = "camelCase")]
    LoggedIn {
        /// The session token; the server keeps only its hash.
        token: String,
        /// When the token stops working.
        expires_at: Timestamp,
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserId,
        /// The user's role.
        role: Role,
        /// The server's clock when it answered, for the device's first estimate
        /// of its offset (see `callsync_session::device::ServerClock`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_time: Option<Timestamp>,
    },
    /// Client → server, first message of a connection of its own: end this
    /// session on the server (a logout). Answered `logged-out`, also for a token
    /// that no longer works.
    #[serde(rename_all = "camelCase")]
    Logout {
        /// The session token to end.
        token: String,
    },
    /// Server → client: the session is ended.
    LoggedOut,
    /// Client → server, first message of a sync connection.
    #[serde(rename_all = "camelCase")]
    Join {
        /// The device's id (automerge-repo's peer id).
        sender_id: DeviceId,
        /// Protocol versions the client speaks (at most [`MAX_PROTOCOL_VERSIONS`]).
        #[serde(deserialize_with = "decode::at_most::<MAX_PROTOCOL_VERSIONS, _, _>")]
        supported_protocol_versions: Vec<String>,
        /// The session token from `logged-in`.
        token: String,
        /// Where the device stood when it last caught up; none on a first sync.
        cursor: Option<Cursor>,
    },
    /// Server → client: the session is open.
    #[serde(rename_all = "camelCase")]
    Peer {
        /// The server's id.
        sender_id: String,
        /// The version chosen.
        selected_protocol_version: String,
        /// The tenant of the session.
        tenant: TenantId,
        /// The user of the session.
        user: UserId,
        /// The user's role.
        role: Role,
        /// The cursor the device reaches once every listed document has synced.
        cursor: Cursor,
        /// The documents that changed since the device's cursor. The server starts
        /// a sync for each; no other document needs one.
        #[serde(deserialize_with = "decode::at_most::<MAX_DOCUMENTS_PER_MESSAGE, _, _>")]
        changed: Vec<CustomerId>,
        /// The heads (hex) of the tenant's configuration document on the server. A
        /// device holding other heads starts a `config-sync`; one holding these
        /// skips it.
        #[serde(default, deserialize_with = "decode::at_most::<MAX_HEADS, _, _>")]
        config_heads: Vec<String>,
        /// The server's clock when it answered: with the device's own times of
        /// sending `join` and receiving this, the device's offset from the server
        /// (see `callsync_session::device::ServerClock`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_time: Option<Timestamp>,
    },
    /// Either side: a fatal error; the connection closes after it.
    Error(ErrorBody),
    /// Either side: closing on purpose.
    #[serde(rename_all = "camelCase")]
    Leave {
        /// Who is leaving.
        sender_id: String,
    },
    /// Client → server: the first sync message for a document the device lacks.
    #[serde(rename_all = "camelCase")]
    Request {
        /// The document.
        document_id: CustomerId,
        /// A raw Automerge sync message.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Either side: one Automerge sync message for one document.
    #[serde(rename_all = "camelCase")]
    Sync {
        /// The document.
        document_id: CustomerId,
        /// A raw Automerge sync message.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Either side: one raw Automerge sync message for the tenant's configuration
    /// document (rule sets, plugins), which only the server writes.
    ConfigSync {
        /// A raw Automerge sync message.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Server → client: no such document, or not one this session may see (the two
    /// are not told apart).
    #[serde(rename_all = "camelCase")]
    DocUnavailable {
        /// The document.
        document_id: CustomerId,
    },
    /// Server → client: the changes of the last `sync` for this document were
    /// refused and dropped; the device should drop its sync state for it.
    #[serde(rename_all = "camelCase")]
    Rejected {
        /// The document.
        document_id: CustomerId,
        /// Why.
        error: ErrorBody,
    },
    /// Server → client: a device of the same user connected or went away.
    #[serde(rename_all = "camelCase")]
    Presence {
        /// The device.
        device: DeviceId,
        /// Its kind.
        kind: DeviceKind,
        /// Whether it is connected now.
        online: bool,
    },
    /// Server → client: what a phone of the same user said last of the
    /// recordings it still holds (empty when it holds none, or went away).
    #[serde(rename_all = "camelCase")]
    PhoneUploads {
        /// The phone.
        device: DeviceId,
        /// Its recordings, oldest first.
        #[serde(deserialize_with = "decode::at_most::<MAX_UPLOAD_STATUSES, _, _>")]
        uploads: Vec<UploadStatus>,
    },
    /// Client → server: a request outside document sync.
    Rpc {
        /// Chosen by the client; the reply carries it back.
        id: u64,
        /// What is asked.
        call: RpcCall,
    },
    /// Server → client: the answer to an `rpc`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        result: RpcResult,
    },
}
}

impl Message {
    /// The message's `type`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Login { .. } => "login",
            Self::LoggedIn { .. } => "logged-in",
            Self::Logout { .. } => "logout",
            Self::LoggedOut => "logged-out",
            Self::Join { .. } => "join",
            Self::Peer { .. } => "peer",
            Self::Error(_) => "error",
            Self::Leave { .. } => "leave",
            Self::Request { .. } => "request",
            Self::Sync { .. } => "sync",
            Self::ConfigSync { .. } => "config-sync",
            Self::DocUnavailable { .. } => "doc-unavailable",
            Self::Rejected { .. } => "rejected",
            Self::Presence { .. } => "presence",
            Self::PhoneUploads { .. } => "phone-uploads",
            Self::Rpc { .. } => "rpc",
            Self::Reply { .. } => "reply",
        }
    }
}

decode::tag_first_enum! {
tag = "method", remote = "RpcCall", mirror = RpcCallFields;
/// A request outside document sync. Each names the least role it needs in its
/// docs; the server checks it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum RpcCall {
    /// Admin or above: add a member.
    #[serde(rename_all = "camelCase")]
    UserAdd {
        /// The new member's email.
        email: UserId,
        /// Their role (only an owner may add an owner).
        role: Role,
        /// Their first password.
        password: String,
        /// Whether they hold the calling contract from the start.
        contract: bool,
    },
    /// Admin or above: grant or revoke the calling contract. Revoking ends the
    /// member's sessions.
    #[serde(rename_all = "camelCase")]
    UserSetContract {
        /// The member.
        email: UserId,
        /// Whether they hold the contract now.
        contract: bool,
    },
    /// Admin or above: set a new password. Ends the member's sessions.
    #[serde(rename_all = "camelCase")]
    UserResetPassword {
        /// The member.
        email: UserId,
        /// The new password.
        password: String,
    },
    /// Admin or above: give a member another role (only an owner gives or takes
    /// the owner role; a tenant keeps at least one owner). The member's devices
    /// reconnect and see the screens of the new role.
    #[serde(rename_all = "camelCase")]
    UserSetRole {
        /// The member.
        email: UserId,
        /// Their new role.
        role: Role,
    },
    /// Admin or above: list the tenant's members.
    UserList,
    /// Admin or above: turn the assignee visibility restriction (担当者閲覧制限) on
    /// or off.
    #[serde(rename_all = "camelCase")]
    SetAssigneeVisibility {
        /// Whether user-role members see only customers assigned to them.
        restricted: bool,
    },
    /// Any member: create a customer. The server creates the document, so a
    /// customer never exists twice under one id.
    #[serde(rename_all = "camelCase")]
    CustomerCreate {
        /// The profile; its tenant must be the session's.
        customer: NewCustomer,
    },
    /// Any member: the customers this session may see, in id order. With `limit`,
    /// one page of at most that many (at most [`MAX_CUSTOMER_PAGE`]) after the id
    /// `after`; a page shorter than the limit is the last. Without (an older
    /// client), every customer, refused with `reply-too-large` if they do not fit
    /// one frame.
    #[serde(rename_all = "camelCase")]
    CustomerList {
        /// The last id of the previous page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<CustomerId>,
        /// Most customers in the page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Only customers whose company, contact or id contains this text
        /// (ASCII letters in any case; at most [`MAX_CUSTOMER_QUERY_CHARS`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<String>,
    },
    /// Any member: replicate these documents to this device from now on (at most
    /// [`MAX_SUBSCRIBE`] in one call). Each is answered, then synced like a changed
    /// document.
    #[serde(rename_all = "camelCase")]
    Subscribe {
        /// The documents (more than [`MAX_SUBSCRIBE`] is refused by the hub, more
        /// than [`MAX_SUBSCRIBE_DECODED`] already while decoding).
        #[serde(deserialize_with = "decode::at_most::<MAX_SUBSCRIBE_DECODED, _, _>")]
        documents: Vec<CustomerId>,
    },
    /// Any member: the user's own devices and whether each is connected now.
    Devices,
    /// Admin or above: install a result-rule plugin (or upgrade, or roll back: the
    /// same call with another file) and make it the tenant's active rule set.
    #[serde(rename_all = "camelCase")]
    PluginInstall {
        /// The plugin: a component, or a module built with `wit-bindgen`.
        #[serde(with = "serde_bytes")]
        #[cfg_attr(feature = "typescript", ts(type = "Array<number>"))]
        file: Vec<u8>,
        /// The plugin's settings.
        #[serde(deserialize_with = "decode::at_most::<MAX_SETTINGS_DECODED, _, _>")]
        settings: Vec<Setting>,
        /// Days off (e.g. Japanese public holidays).
        #[serde(deserialize_with = "decode::at_most::<MAX_HOLIDAYS_DECODED, _, _>")]
        holidays: Vec<NaiveDate>,
        /// The tenant's IANA time zone.
        time_zone: String,
    },
    /// Any member: customers due for a recall (those the session may see), soonest
    /// first.
    RecallList,
    /// Manager or above: the call-performance dashboard's figures — calls that
    /// took place and the 本人通話率 of their results, per user, for calls
    /// requested in `[from, to)` (at most [`MAX_STATS_PERIOD_MS`]).
    #[serde(rename_all = "camelCase")]
    CallStats {
        /// The period's start (inclusive).
        from: Timestamp,
        /// The period's end (exclusive).
        to: Timestamp,
    },
    /// Any member: the tenant's active rule set decides a result form's pick on
    /// the server, for a device that cannot run plugins itself (the browser). The
    /// device saves the answer's fields as they are, stamped `saved_at`; the hub
    /// re-runs the decision when the result arrives, as for any device's.
    #[serde(rename_all = "camelCase")]
    DecideResult {
        /// What the user picked.
        pick: crate::plugin::Pick,
        /// When the call ended (the later of the phone's and the browser's end).
        ended_at: Timestamp,
        /// Which attempt the call was (1 for the customer's first).
        attempt: u32,
        /// When the result is saved (the event's time); at most
        /// [`MAX_DECIDE_SKEW_MS`] from the server's clock.
        saved_at: Timestamp,
    },
    /// A phone: the recordings it still holds and where each upload stands
    /// (all of them, oldest first, at most [`MAX_UPLOAD_STATUSES`]; an empty
    /// list when none). The server relays it to the user's other devices.
    #[serde(rename_all = "camelCase")]
    UploadStatus {
        /// The recordings.
        #[serde(deserialize_with = "decode::at_most::<MAX_UPLOAD_STATUSES, _, _>")]
        uploads: Vec<UploadStatus>,
    },
    /// Any member who may see the call's customer: a short-lived link to play
    /// the call's stored recording over HTTP (range requests, so a player can
    /// seek), for a page that cannot open a recording stream of its own.
    #[serde(rename_all = "camelCase")]
    RecordingLink {
        /// The call.
        call: CallId,
    },
}
}

impl RpcCall {
    /// The method name, for logs.
    pub fn method(&self) -> &'static str {
        match self {
            Self::UserAdd { .. } => "user-add",
            Self::UserSetContract { .. } => "user-set-contract",
            Self::UserResetPassword { .. } => "user-reset-password",
            Self::UserSetRole { .. } => "user-set-role",
            Self::UserList => "user-list",
            Self::SetAssigneeVisibility { .. } => "set-assignee-visibility",
            Self::CustomerCreate { .. } => "customer-create",
            Self::CustomerList { .. } => "customer-list",
            Self::Subscribe { .. } => "subscribe",
            Self::Devices => "devices",
            Self::PluginInstall { .. } => "plugin-install",
            Self::RecallList => "recall-list",
            Self::CallStats { .. } => "call-stats",
            Self::DecideResult { .. } => "decide-result",
            Self::RecordingLink { .. } => "recording-link",
            Self::UploadStatus { .. } => "upload-status",
        }
    }
}

/// Most customers in one page of `customer-list` (about 1.5 MiB at the longest
/// names a customer may have).
pub const MAX_CUSTOMER_PAGE: u32 = 1_000;
/// The longest search text of a `customer-list`, in characters.
pub const MAX_CUSTOMER_QUERY_CHARS: usize = 100;
/// Most documents one `subscribe` may name.
pub const MAX_SUBSCRIBE: usize = 256;

/// The answer to an [`RpcCall`].
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RpcResult {
    /// Done; nothing to return.
    Done,
    /// The tenant's members.
    Users(
        #[serde(deserialize_with = "decode::at_most::<MAX_DOCUMENTS_PER_MESSAGE, _, _>")]
        Vec<MemberSummary>,
    ),
    /// Customers the session may see.
    Customers(
        #[serde(deserialize_with = "decode::at_most::<MAX_DOCUMENTS_PER_MESSAGE, _, _>")]
        Vec<CustomerSummary>,
    ),
    /// The documents now subscribed (those the session may see).
    Subscribed(
        #[serde(deserialize_with = "decode::at_most::<MAX_DOCUMENTS_PER_MESSAGE, _, _>")]
        Vec<CustomerId>,
    ),
    /// The user's devices.
    Devices(
        #[serde(deserialize_with = "decode::at_most::<MAX_DOCUMENTS_PER_MESSAGE, _, _>")]
        Vec<DeviceSummary>,
    ),
    /// The rule set now active.
    PluginInstalled(InstalledSummary),
    /// Customers due for a recall.
    Recalls(
        #[serde(deserialize_with = "decode::at_most::<MAX_DOCUMENTS_PER_MESSAGE, _, _>")]
        Vec<RecallSummary>,
    ),
    /// The call-performance figures, per user.
    CallStats(
        #[serde(deserialize_with = "decode::at_most::<MAX_DOCUMENTS_PER_MESSAGE, _, _>")]
        Vec<UserCallStats>,
    ),
    /// A result form's pick, decided by the tenant's rules.
    Decided(DecidedResult),
    /// Where to play a recording from.
    RecordingLink(RecordingLink),
    /// Refused; nothing changed.
    Refused(ErrorBody),
}

/// A link to play one recording: a path on the server's page origin, signed
/// for the recording and valid until `expires_at` (the server's clock).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingLink {
    /// The path to `GET` (absolute, on the page's origin).
    pub path: String,
    /// When the link stops working.
    pub expires_at: Timestamp,
    /// The recording it plays.
    pub recording: RecordingRef,
}

/// One member, as an admin sees them.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberSummary {
    /// Email.
    pub email: UserId,
    /// Role.
    pub role: Role,
    /// Whether they hold the calling contract.
    pub contract: bool,
}

/// A rule set an install made active.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledSummary {
    /// The rule set's id.
    pub ruleset: ContentHash,
    /// Its plugin build.
    pub plugin: PluginRef,
    /// The result types it declares, in form order.
    #[serde(deserialize_with = "decode::at_most::<MAX_RESULT_TYPES_DECODED, _, _>")]
    pub result_types: Vec<String>,
}

/// How far a `decide-result`'s `saved_at` may lie from the server's clock: 5
/// minutes (device clocks drift; the event keeps the device's time).
pub const MAX_DECIDE_SKEW_MS: i64 = 5 * 60 * 1000;

/// A result form's fields as the tenant's rules decided them, to be saved as they
/// are (the decision record lets the hub check them).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecidedResult {
    /// The follow-up, with its time.
    pub option: crate::result_type::ResultOption,
    /// The customer status to set, if any.
    pub customer_status: Option<crate::customer::CustomerStatus>,
    /// The record for the `result-saved` event.
    pub decision: crate::plugin::DecisionRecord,
}

/// The longest period one `call-stats` may ask for: 400 days.
pub const MAX_STATS_PERIOD_MS: i64 = 400 * 24 * 3600 * 1000;

/// One user's calls in a period, for the call-performance dashboard.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCallStats {
    /// The user who requested (or logged) the calls.
    pub user: String,
    /// Calls that took place (started on the phone, or logged by hand).
    pub calls: u64,
    /// Of those, calls with a saved result.
    pub results: u64,
    /// Of those, results of a type that counts as 本人通話 (reached the person).
    pub reached: u64,
}

/// A customer due for a call again.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecallSummary {
    /// The customer.
    pub id: CustomerId,
    /// Company name.
    pub company: String,
    /// Assigned rep.
    pub owner: String,
    /// When to call.
    pub recall_at: Timestamp,
}

/// One customer in a list.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerSummary {
    /// The customer.
    pub id: CustomerId,
    /// Company name.
    pub company: String,
    /// Contact person.
    pub contact: String,
    /// Assigned rep.
    pub owner: String,
    /// Status at the server's last save.
    pub status: String,
}

/// One of the user's devices.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSummary {
    /// The device.
    pub id: DeviceId,
    /// Its kind.
    pub kind: DeviceKind,
    /// Whether it is connected now.
    pub online: bool,
}

/// Encodes `message` as one frame: length prefix and CBOR body.
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0; FRAME_HEADER_BYTES];
    ciborium::into_writer(message, &mut frame).map_err(|e| WireError::Encode(e.to_string()))?;
    let body = frame.len() - FRAME_HEADER_BYTES;
    if body > MAX_FRAME_BYTES {
        return Err(WireError::FrameTooLarge {
            len: body,
            max: MAX_FRAME_BYTES,
        });
    }
    let len = u32::try_from(body).map_err(|_| WireError::FrameTooLarge {
        len: body,
        max: MAX_FRAME_BYTES,
    })?;
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// The size of `message`'s frame (length prefix included), counted without
/// building it: what a driver's outgoing queue will hold for it.
pub fn encoded_len(message: &Message) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(FRAME_HEADER_BYTES);
    // Writing into a counter cannot fail; a value CBOR cannot hold would fail
    // `encode_frame` later, where it is reported.
    let _ = ciborium::into_writer(message, &mut counter);
    counter.0
}

/// Reads a frame's length prefix, refusing lengths over [`MAX_FRAME_BYTES`] (and
/// empty frames) before the reader allocates the body.
pub fn frame_body_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, WireError> {
    frame_body_len_within(header, MAX_FRAME_BYTES)
}

/// [`frame_body_len`] with a lower limit, e.g. [`MAX_FIRST_FRAME_BYTES`] for a
/// peer that has not authenticated yet.
pub fn frame_body_len_within(
    header: [u8; FRAME_HEADER_BYTES],
    max: usize,
) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    let max = max.min(MAX_FRAME_BYTES);
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    if len == 0 {
        return Err(WireError::Malformed("empty frame".to_owned()));
    }
    Ok(len)
}

/// Decodes one frame body (without its length prefix). Nothing is buffered
/// into an untyped tree: the message's tag is read first and every list is
/// bounded as it is read (see `decode`), so what decoding allocates stays within
/// a small multiple of the body's size.
pub fn decode_body(body: &[u8]) -> Result<Message, WireError> {
    let message: Message =
        ciborium::from_reader(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    check_limits(&message)?;
    Ok(message)
}

/// What decoding cannot check field by field: a password's length (Argon2 takes
/// any length; this bounds its work). Every list is bounded while decoding.
fn check_limits(message: &Message) -> Result<(), WireError> {
    match message {
        Message::Login { password, .. }
        | Message::Rpc {
            call: RpcCall::UserAdd { password, .. } | RpcCall::UserResetPassword { password, .. },
            ..
        } if password.len() > MAX_PASSWORD_BYTES => Err(WireError::Malformed(format!(
            "password longer than {MAX_PASSWORD_BYTES} bytes"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(message: Message) {
        let frame = encode_frame(&message).unwrap();
        let mut header = [0; FRAME_HEADER_BYTES];
        header.copy_from_slice(&frame[..FRAME_HEADER_BYTES]);
        let len = frame_body_len(header).unwrap();
        assert_eq!(len, frame.len() - FRAME_HEADER_BYTES);
        assert_eq!(decode_body(&frame[FRAME_HEADER_BYTES..]).unwrap(), message);
    }

    #[test]
    fn every_message_shape_survives_a_roundtrip() {
        let doc = CustomerId::new("c-1").unwrap();
        roundtrip(Message::Sync {
            document_id: doc.clone(),
            data: vec![0x42, 0, 255],
        });
        roundtrip(Message::Join {
            sender_id: DeviceId::new("phone-1").unwrap(),
            supported_protocol_versions: vec![PROTOCOL_VERSION.to_owned()],
            token: "t".to_owned(),
            cursor: Some(Cursor {
                epoch: "e".to_owned(),
                seq: 7,
            }),
        });
        roundtrip(Message::Rpc {
            id: 3,
            call: RpcCall::Subscribe {
                documents: vec![doc.clone()],
            },
        });
        roundtrip(Message::Reply {
            id: 3,
            result: RpcResult::Refused(ErrorBody {
                code: "x".to_owned(),
                message: "no".to_owned(),
                message_ja: "いいえ".to_owned(),
            }),
        });
        roundtrip(Message::DocUnavailable { document_id: doc });
    }

    #[test]
    fn encoded_len_is_the_frames_length() {
        for message in [
            Message::Sync {
                document_id: CustomerId::new("c-1").unwrap(),
                data: vec![7; 70_000],
            },
            Message::Leave {
                sender_id: "d".to_owned(),
            },
        ] {
            assert_eq!(encoded_len(&message), encode_frame(&message).unwrap().len());
        }
    }

    #[test]
    fn sync_messages_use_the_automerge_repo_field_names() {
        let frame = encode_frame(&Message::Sync {
            document_id: CustomerId::new("c-1").unwrap(),
            data: vec![1],
        })
        .unwrap();
        let value: ciborium::Value = ciborium::from_reader(&frame[FRAME_HEADER_BYTES..]).unwrap();
        let map = value.as_map().unwrap();
        let keys: Vec<&str> = map.iter().filter_map(|(k, _)| k.as_text()).collect();
        assert_eq!(keys, ["type", "documentId", "data"]);
        assert!(map.iter().any(|(_, v)| v.as_bytes() == Some(&vec![1])));
    }

    #[test]
    fn an_oversized_length_prefix_is_refused_before_allocating() {
        let header = u32::try_from(MAX_FRAME_BYTES + 1).unwrap().to_be_bytes();
        assert!(matches!(
            frame_body_len(header),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            frame_body_len([0; 4]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_and_unknown_types_are_malformed_not_a_panic() {
        for body in [
            &b"\xff\xff\xff"[..],
            &b"hello"[..],
            &[0xa1, 0x64, b't', b'y', b'p', b'e', 0x63, b'z', b'z', b'z'][..],
            &[][..],
        ] {
            assert!(matches!(decode_body(body), Err(WireError::Malformed(_))));
        }
    }

    #[test]
    fn a_bad_id_inside_a_message_is_malformed() {
        let mut frame = encode_frame(&Message::DocUnavailable {
            document_id: CustomerId::new("c-1").unwrap(),
        })
        .unwrap();
        // Replace the id's text with one holding '/', which ids may not contain.
        let pos = frame.windows(3).position(|w| w == b"c-1").unwrap();
        frame[pos + 1] = b'/';
        assert!(matches!(
            decode_body(&frame[FRAME_HEADER_BYTES..]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn unit_and_newtype_variants_and_every_rpc_shape_survive_a_roundtrip() {
        roundtrip(Message::Error(ErrorBody {
            code: "x".to_owned(),
            message: "no".to_owned(),
            message_ja: "いいえ".to_owned(),
        }));
        for call in [
            RpcCall::UserList,
            RpcCall::Devices,
            RpcCall::RecallList,
            RpcCall::CustomerList {
                after: None,
                limit: Some(3),
                query: None,
            },
            RpcCall::PluginInstall {
                file: vec![0, 97, 115, 109],
                settings: vec![Setting {
                    key: "hours".to_owned(),
                    value: "10:00-12:00".to_owned(),
                }],
                holidays: vec![NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()],
                time_zone: "Asia/Tokyo".to_owned(),
            },
        ] {
            roundtrip(Message::Rpc { id: 9, call });
        }
    }

    fn body_of(value: &ciborium::Value) -> Vec<u8> {
        let mut body = Vec::new();
        ciborium::into_writer(value, &mut body).unwrap();
        body
    }

    fn text(s: &str) -> ciborium::Value {
        ciborium::Value::Text(s.to_owned())
    }

    #[test]
    fn the_tag_must_come_first_and_unknown_fields_are_skipped() {
        use ciborium::Value;
        let leave = |entries: Vec<(Value, Value)>| decode_body(&body_of(&Value::Map(entries)));
        assert_eq!(
            leave(vec![
                (text("type"), text("leave")),
                (text("senderId"), text("d")),
                (text("extra"), Value::Array(vec![Value::Array(vec![]); 3])),
            ])
            .unwrap(),
            Message::Leave {
                sender_id: "d".to_owned()
            }
        );
        let late = leave(vec![
            (text("senderId"), text("d")),
            (text("type"), text("leave")),
        ]);
        assert!(
            matches!(&late, Err(WireError::Malformed(e)) if e.contains("first key must be `type`")),
            "{late:?}"
        );
        assert!(matches!(leave(vec![]), Err(WireError::Malformed(_))));
        // The same in JSON, as the page hands calls to its engine.
        let call: RpcCall =
            serde_json::from_str(r#"{"method":"customer-list","limit":5}"#).unwrap();
        assert_eq!(
            call,
            RpcCall::CustomerList {
                after: None,
                limit: Some(5),
                query: None,
            }
        );
        assert!(
            serde_json::from_str::<RpcCall>(r#"{"limit":5,"method":"customer-list"}"#).is_err()
        );
        assert!(serde_json::from_str::<RpcCall>(r#"{"method":"user-list","x":[[],[]]}"#).is_ok());
    }

    #[test]
    fn upload_statuses_survive_a_roundtrip_and_are_bounded_while_decoding() {
        use crate::recording::{UploadState, UploadStatus};
        let statuses = |n: usize| {
            (0..n)
                .map(|i| UploadStatus {
                    call: CallId::new(format!("call-{i}")).unwrap(),
                    state: match i % 4 {
                        0 => UploadState::WaitingForWifi,
                        1 => UploadState::Queued,
                        2 => UploadState::WaitingToRetry {
                            at: Timestamp::from_millis(7),
                        },
                        _ => UploadState::Uploading { percent: 42 },
                    },
                })
                .collect::<Vec<_>>()
        };
        roundtrip(Message::Rpc {
            id: 3,
            call: RpcCall::UploadStatus {
                uploads: statuses(4),
            },
        });
        roundtrip(Message::PhoneUploads {
            device: DeviceId::new("phone-1").unwrap(),
            uploads: statuses(MAX_UPLOAD_STATUSES),
        });
        let frame = encode_frame(&Message::PhoneUploads {
            device: DeviceId::new("phone-1").unwrap(),
            uploads: statuses(MAX_UPLOAD_STATUSES + 1),
        })
        .unwrap();
        assert!(matches!(
            decode_body(&frame[FRAME_HEADER_BYTES..]),
            Err(WireError::Malformed(_))
        ));
        let frame = encode_frame(&Message::Rpc {
            id: 1,
            call: RpcCall::UploadStatus {
                uploads: statuses(MAX_UPLOAD_STATUSES + 1),
            },
        })
        .unwrap();
        assert!(matches!(
            decode_body(&frame[FRAME_HEADER_BYTES..]),
            Err(WireError::Malformed(_))
        ));
        // A percentage past a byte, or a stage nobody knows, is malformed.
        let body = encode_frame(&Message::Rpc {
            id: 1,
            call: RpcCall::UploadStatus {
                uploads: statuses(4),
            },
        })
        .unwrap()[FRAME_HEADER_BYTES..]
            .to_vec();
        let replace = |from: &[u8], to: &[u8]| {
            let at = body.windows(from.len()).position(|w| w == from).unwrap();
            [&body[..at], to, &body[at + from.len()..]].concat()
        };
        // CBOR: 42 is 0x18 0x2a; 420 is 0x19 0x01 0xa4.
        for bad in [
            replace(b"percent\x18\x2a", b"percent\x19\x01\xa4"),
            replace(b"queued", b"lost!!"),
        ] {
            assert!(decode_body(&bad).is_err());
        }
    }

    #[test]
    fn every_list_is_bounded_while_decoding() {
        let ids = |n: usize| {
            (0..n)
                .map(|i| CustomerId::new(format!("c-{i}")).unwrap())
                .collect::<Vec<_>>()
        };
        let subscribe = |n: usize| {
            let frame = encode_frame(&Message::Rpc {
                id: 1,
                call: RpcCall::Subscribe { documents: ids(n) },
            })
            .unwrap();
            decode_body(&frame[FRAME_HEADER_BYTES..])
        };
        // Past the hub's cap but within the decoder's: decoded, for a typed refusal.
        assert!(subscribe(MAX_SUBSCRIBE + 1).is_ok());
        assert!(subscribe(MAX_SUBSCRIBE_DECODED).is_ok());
        assert!(matches!(
            subscribe(MAX_SUBSCRIBE_DECODED + 1),
            Err(WireError::Malformed(_))
        ));
        let join = |n: usize| {
            let frame = encode_frame(&Message::Join {
                sender_id: DeviceId::new("d").unwrap(),
                supported_protocol_versions: vec![PROTOCOL_VERSION.to_owned(); n],
                token: "t".to_owned(),
                cursor: None,
            })
            .unwrap();
            decode_body(&frame[FRAME_HEADER_BYTES..])
        };
        assert!(join(MAX_PROTOCOL_VERSIONS).is_ok());
        assert!(matches!(
            join(MAX_PROTOCOL_VERSIONS + 1),
            Err(WireError::Malformed(_))
        ));
        let install = |settings: usize, holidays: usize| {
            let frame = encode_frame(&Message::Rpc {
                id: 1,
                call: RpcCall::PluginInstall {
                    file: vec![],
                    settings: vec![
                        Setting {
                            key: "k".to_owned(),
                            value: "v".to_owned(),
                        };
                        settings
                    ],
                    holidays: vec![NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(); holidays],
                    time_zone: "Asia/Tokyo".to_owned(),
                },
            })
            .unwrap();
            decode_body(&frame[FRAME_HEADER_BYTES..])
        };
        assert!(install(MAX_SETTINGS_DECODED, MAX_HOLIDAYS_DECODED).is_ok());
        assert!(install(MAX_SETTINGS_DECODED + 1, 0).is_err());
        assert!(install(0, MAX_HOLIDAYS_DECODED + 1).is_err());
        let peer = |n: usize| {
            let frame = encode_frame(&Message::Peer {
                sender_id: "server".to_owned(),
                selected_protocol_version: PROTOCOL_VERSION.to_owned(),
                tenant: TenantId::new("acme").unwrap(),
                user: UserId::new("a@b.example").unwrap(),
                role: Role::User,
                cursor: Cursor {
                    epoch: "e".to_owned(),
                    seq: 1,
                },
                changed: vec![],
                config_heads: vec![String::new(); n],
                server_time: None,
            })
            .unwrap();
            decode_body(&frame[FRAME_HEADER_BYTES..])
        };
        assert!(peer(MAX_HEADS).is_ok());
        assert!(peer(MAX_HEADS + 1).is_err());
        let phones = |n: usize| {
            let customer = crate::customer::NewCustomer {
                tenant: TenantId::new("acme").unwrap(),
                id: CustomerId::new("c-1").unwrap(),
                company: "A".to_owned(),
                contact: "B".to_owned(),
                owner: UserId::new("a@b.example").unwrap(),
                phones: vec![
                    crate::customer::PhoneEntry {
                        label: "代表".to_owned(),
                        number: crate::PhoneNumber::parse("03-1234-5678").unwrap(),
                    };
                    n
                ],
            };
            let frame = encode_frame(&Message::Rpc {
                id: 1,
                call: RpcCall::CustomerCreate { customer },
            })
            .unwrap();
            decode_body(&frame[FRAME_HEADER_BYTES..])
        };
        assert!(phones(256).is_ok());
        assert!(phones(257).is_err());
        let users = |n: usize| {
            let frame = encode_frame(&Message::Reply {
                id: 1,
                result: RpcResult::Subscribed(ids(n)),
            })
            .unwrap();
            decode_body(&frame[FRAME_HEADER_BYTES..])
        };
        assert!(users(10).is_ok());
    }

    #[test]
    fn an_overlong_password_is_refused() {
        let frame = encode_frame(&Message::Login {
            supported_protocol_versions: vec![],
            email: "a@b".to_owned(),
            password: "x".repeat(MAX_PASSWORD_BYTES + 1),
            device: DeviceRegistration {
                id: DeviceId::new("d").unwrap(),
                kind: DeviceKind::Phone,
                actor: "00".to_owned(),
            },
        })
        .unwrap();
        assert!(matches!(
            decode_body(&frame[FRAME_HEADER_BYTES..]),
            Err(WireError::Malformed(_))
        ));
    }
}
