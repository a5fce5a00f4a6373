//! The page's views: every JSON shape the engine hands the screens that is not
//! already a core or session type, as Rust types.
//!
//! Owns: the link's state for the screens ([`PageState`]), the page engine's own
//! events ([`PageEvent`]), a login's answer, a saved result's outcome, a
//! customer with its timeline, an error, and the vocabulary. With the
//! `typescript` feature each derives its TypeScript declaration; the page's
//! `src/generated/` is written from them and from the core's and the session's
//! types (`tests/typescript.rs` keeps it current), so the page holds no
//! hand-copied type of the engine's.

use callsync_core::{Customer, CustomerId, DeviceId, Role, TenantId, Timestamp, UserId};
use callsync_session::client::ClientEvent;
use callsync_session::device::actions::KeptReason;
use callsync_session::device::{Disposition, Identity, Phase, ServerClock, StopReason};
use serde::Serialize;

/// Where the page's link stands: the session's phase, or no one logged in.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PagePhase {
    /// No user is logged in on this page.
    LoggedOut,
    /// Not connected, and not trying yet.
    Idle,
    /// Opening a connection and joining.
    Connecting,
    /// Joined.
    Online,
    /// Not connected; trying again at `retryAt`.
    Offline,
    /// Stopped: see `stopped`.
    Stopped,
}

impl From<Phase> for PagePhase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Idle => Self::Idle,
            Phase::Connecting => Self::Connecting,
            Phase::Online => Self::Online,
            Phase::Offline => Self::Offline,
            Phase::Stopped => Self::Stopped,
        }
    }
}

/// Why the session stopped, in both languages.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StopView {
    /// The reason.
    pub reason: StopReason,
    /// In English.
    pub message: String,
    /// In Japanese.
    pub message_ja: String,
    /// Whether only a new login moves it on.
    pub needs_login: bool,
}

impl From<StopReason> for StopView {
    fn from(reason: StopReason) -> Self {
        let (en, ja) = reason.words();
        Self {
            reason,
            message: en.to_owned(),
            message_ja: ja.to_owned(),
            needs_login: reason.needs_login(),
        }
    }
}

/// Who is logged in on this page, without the session token (which never
/// leaves the engine).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicIdentity {
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// Their role.
    pub role: Role,
    /// This page's device id.
    pub device: DeviceId,
    /// Whether a session token is held (false after a logout).
    pub logged_in: bool,
}

impl From<&Identity> for PublicIdentity {
    fn from(identity: &Identity) -> Self {
        Self {
            tenant: identity.tenant.clone(),
            user: identity.user.clone(),
            role: identity.role,
            device: identity.device.clone(),
            logged_in: identity.token.is_some(),
        }
    }
}

/// The link, the login and the clock, for the screens (`state()`).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PageState {
    /// Where the link stands.
    pub phase: PagePhase,
    /// Why it stopped, when it did.
    pub stopped: Option<StopView>,
    /// When it tries again, while offline.
    pub retry_at: Option<Timestamp>,
    /// The server's time now, as far as this page knows it.
    pub server_now: Option<Timestamp>,
    /// The offset to the server's clock, once learnt.
    pub clock: Option<ServerClock>,
    /// Who is (or was last) logged in here.
    pub identity: Option<PublicIdentity>,
    /// A logout's token is still to be ended on the server.
    pub revoking: bool,
}

/// An event of the page's engine itself, beside the session's
/// ([`ClientEvent`]).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum PageEvent {
    /// A customer's document changed here (written to IndexedDB): redraw it.
    Document {
        /// The customer.
        customer: CustomerId,
    },
    /// Something went wrong that the screens should say.
    Error {
        /// What.
        message: String,
    },
    /// IndexedDB refused a write: what it held was undone and nothing of it
    /// was sent.
    #[serde(rename_all = "camelCase")]
    StorageFailed {
        /// In English.
        message: String,
        /// In Japanese.
        message_ja: String,
    },
}

/// Every event the screens receive (`takeEvents()`): the session's and the
/// page engine's own.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // A declaration for the page: events travel as JSON.
pub enum EngineEvent {
    /// The device session's.
    Session(ClientEvent),
    /// The page engine's.
    Page(PageEvent),
}

/// A refusal: a stable code and the words in both languages.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorView {
    /// The code.
    pub code: String,
    /// In English.
    pub message: String,
    /// In Japanese.
    pub message_ja: String,
}

/// A refused login: the server's words and what the page does about it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginRefusal {
    /// The code.
    pub code: String,
    /// In English.
    pub message: String,
    /// In Japanese.
    pub message_ja: String,
    /// Retry later, the user's to mend, or stop.
    pub disposition: Disposition,
}

/// How a login exchange ended (`loginReceive`).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LoginAnswer {
    /// Logged in.
    LoggedIn(PublicIdentity),
    /// Refused.
    Refused(LoginRefusal),
}

/// What saving a result form came to (`saveResult`, `manualCall`): saved here
/// (the call; `kept` says why the pick was kept as made, if it was), or asked
/// of the server's rules (`deciding`: the ticket its answer comes with).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveOutcomeView {
    /// The call, as saved here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<callsync_core::CallView>,
    /// Why the pick was kept as made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<KeptReason>,
    /// The ticket of the server's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deciding: Option<u64>,
}

/// A customer as held here, with every event in order (`customer()`).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerDetail {
    /// The customer and their calls.
    pub customer: Customer,
    /// Every event, oldest first.
    pub timeline: Vec<callsync_core::customer::TimelineEntry>,
}

/// One word of the vocabulary, in both languages.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Words {
    /// The name on the wire.
    pub name: String,
    /// In English.
    pub en: String,
    /// In Japanese.
    pub ja: String,
}

/// A call phase in words, whether it is open, and what the desk should do in it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseWords {
    /// The name on the wire.
    pub name: String,
    /// In English.
    pub en: String,
    /// In Japanese.
    pub ja: String,
    /// Whether a call in it is still open.
    pub open: bool,
    /// What the desk should do, in English.
    pub advice_en: Option<String>,
    /// The same, in Japanese.
    pub advice_ja: Option<String>,
}

/// The engine's words for phases, event kinds and result options
/// (`vocabulary()`), so the page keeps no list of its own.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vocabulary {
    /// Every call phase.
    pub phases: Vec<PhaseWords>,
    /// Every event kind.
    pub events: Vec<Words>,
    /// Every result option.
    pub options: Vec<Words>,
}

impl Vocabulary {
    /// The core's words.
    pub fn of_the_core() -> Self {
        let words = |name: &str, (en, ja): (&str, &str)| Words {
            name: name.to_owned(),
            en: en.to_owned(),
            ja: ja.to_owned(),
        };
        Self {
            phases: callsync_core::Phase::ALL
                .into_iter()
                .map(|p| {
                    let (en, ja) = p.words();
                    let advice = p.advice();
                    PhaseWords {
                        name: p.as_str().to_owned(),
                        en: en.to_owned(),
                        ja: ja.to_owned(),
                        open: p.is_open(),
                        advice_en: advice.map(|a| a.0.to_owned()),
                        advice_ja: advice.map(|a| a.1.to_owned()),
                    }
                })
                .collect(),
            events: callsync_core::event::KIND_NAMES
                .into_iter()
                .filter_map(|name| {
                    callsync_core::event::kind_words(name).map(|pair| words(name, pair))
                })
                .collect(),
            options: callsync_core::OptionKind::ALL
                .into_iter()
                .map(|o| words(o.as_str(), o.words()))
                .collect(),
        }
    }
}
