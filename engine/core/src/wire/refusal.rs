//! The server's own refusals: one list of codes, each with its English and
//! Japanese text, and one conversion to the wire's [`ErrorBody`].
//!
//! Owns: the codes the server answers with that are not a core, admission or
//! screen error (those carry their own codes and texts; [`Refusal::Core`],
//! [`Refusal::Admission`] and [`Refusal::Screen`] wrap them), so that no code is
//! spelled twice and every Japanese text is Japanese (tested below). Does not own:
//! when a refusal is sent, or whether the connection closes after it.

use super::{ErrorBody, MAX_SUBSCRIBE, PROTOCOL_VERSION, WireError};
use crate::account::Role;
use crate::admission::AdmissionError;
use crate::error::CoreError;
use crate::screen::ScreenError;

/// The words the manual gives for a member without the calling contract.
pub const CONTRACT_REQUIRED_JA: &str = "このデータへのアクセスには認証が必要です";
/// … and in English.
pub const CONTRACT_REQUIRED_EN: &str = "Authentication is required to access this data.";

/// Why the server refuses a message, a request or a connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// A frame that does not decode.
    #[error("{0}")]
    Wire(String, &'static str),
    /// The transport failed (details for the log).
    #[error("transport error: {detail}")]
    Transport {
        /// What failed.
        detail: String,
    },
    /// No `login` or `join` within the handshake time.
    #[error("no message within the handshake time")]
    HandshakeTimeout,
    /// The first message was something else than `login` or `join`.
    #[error("the first message must be 'login' or 'join', not '{got}'")]
    JoinRequired {
        /// The message's kind.
        got: String,
    },
    /// None of the device's protocol versions is this server's.
    #[error("this server speaks protocol version {PROTOCOL_VERSION}")]
    UnsupportedProtocol,
    /// Too many login attempts (see the server's throttle).
    #[error("too many login attempts; try again in {retry_after_secs} s")]
    LoginThrottled {
        /// When an attempt may go ahead, in whole seconds (at least 1).
        retry_after_secs: u64,
    },
    /// More messages per second than a connection may send.
    #[error("more than {per_sec} messages per second")]
    RateLimited {
        /// The rate.
        per_sec: u32,
    },
    /// A message of a kind not expected at this point.
    #[error("'{kind}' is not expected here")]
    UnexpectedMessage {
        /// The message's kind.
        kind: String,
    },
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// An unpaged answer would be too large.
    #[error("too many customers for one reply (at most {max}); ask for pages")]
    ReplyTooLarge {
        /// Most rows an unpaged answer holds.
        max: u32,
    },
    /// The server could not commit its batch; the device connects again.
    #[error("the server could not save; connect again")]
    SaveFailed,
    /// The tenant's configuration cannot be read (details in the server's log).
    #[error("the server cannot read this tenant's configuration")]
    ConfigUnreadable,
    /// A `sync` whose bytes are not an Automerge sync message.
    #[error("not an Automerge sync message: {detail}")]
    MalformedSync {
        /// The decoder's error.
        detail: String,
    },
    /// A sync message Automerge could not apply.
    #[error("the sync message could not be applied: {detail}")]
    SyncNotApplied {
        /// Why.
        detail: String,
    },
    /// A customer created in another tenant.
    #[error("a customer can only be created in your own tenant")]
    WrongTenant,
    /// The tenant holds as many customers as it may.
    #[error("a tenant holds at most {max} customers")]
    CustomerLimit {
        /// The limit.
        max: u64,
    },
    /// One `subscribe` for too many documents.
    #[error("at most {MAX_SUBSCRIBE} documents per subscribe")]
    TooManyDocuments,
    /// A malformed request (a short password, a bad actor id, a request sent
    /// where it is not answered, …).
    #[error("{detail}")]
    BadRequest {
        /// What was wrong.
        detail: String,
    },
    /// The connection fell behind and was dropped.
    #[error("the connection fell behind")]
    TooSlow,
    /// Too many connections open at once for this device, member or address.
    #[error("too many connections open at once for this {per} (at most {max})")]
    TooManyConnections {
        /// `device`, `member` or `address`.
        per: &'static str,
        /// The cap.
        max: usize,
    },
    /// The member's role changed: the device connects again and sees its new
    /// role's screens.
    #[error("your role has changed; connecting again")]
    RoleChanged,
    /// A tenant keeps at least one owner.
    #[error("a tenant keeps at least one owner")]
    LastOwner,
    /// The tenant's plugin time is used up: send again later.
    #[error("the server is busy checking this tenant's results; try again shortly")]
    Busy,
    /// A device tried to change the tenant configuration.
    #[error("the tenant configuration is changed only by installing plugins")]
    ConfigReadOnly,
    /// The request needs a higher role.
    #[error("this needs the {needed} role or above")]
    RoleRequired {
        /// The least role allowed.
        needed: Role,
    },
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
    /// The email belongs to a member already.
    #[error("{email} is a member already")]
    MemberExists {
        /// The email.
        email: String,
    },
    /// No such member in this tenant.
    #[error("{email} is not a member of this tenant")]
    UnknownMember {
        /// The email.
        email: String,
    },
    /// The device id is bound to another member.
    #[error("device {device} belongs to another member")]
    DeviceTaken {
        /// The device id.
        device: String,
    },
    /// The device's actor is bound to another device.
    #[error("this device's actor belongs to another device")]
    ActorTaken,
    /// The email cannot be used for a new member (it belongs to someone outside
    /// this tenant; which tenant is not said).
    #[error("this email address cannot be used")]
    EmailUnavailable,
    /// The server failed (details in its log).
    #[error("the server could not complete the request")]
    ServerTrouble,
    /// The configuration would pass its size limit with this plugin.
    #[error("the tenant configuration would exceed {max} bytes with this plugin")]
    ConfigTooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// A result whose decision the server's re-run of the rules does not confirm.
    #[error("result of call {call}: {detail}")]
    ResultNotVerified {
        /// The call.
        call: String,
        /// The verification's own code.
        code: &'static str,
        /// What did not match.
        detail: String,
    },
    /// The tenant's rules could not decide a result form's pick (the plugin
    /// refused it, or no rule set knows its type); the rules' own words.
    #[error("{en} ({reason})")]
    ResultNotDecided {
        /// The rules' own code (e.g. a plugin's `time-required`).
        reason: String,
        /// English.
        en: String,
        /// Japanese.
        ja: String,
    },
    /// A plugin install the plugin host refused.
    #[error("{detail}")]
    InstallRefused {
        /// The host's own code.
        code: &'static str,
        /// Why.
        detail: String,
        /// Why, in Japanese (the host's verdict in the admin's words).
        ja: String,
    },
    /// A recording's upload or download was refused.
    #[error("{detail}")]
    RecordingRefused {
        /// Why, as the code every device matches on.
        code: crate::recording::RecordingCode,
        /// Why, in detail (for the log and the screens' English).
        detail: String,
    },
    /// The customer exists already.
    #[error("customer {customer} already exists")]
    CustomerExists {
        /// The customer id.
        customer: String,
    },
    /// A call id already filed under another customer.
    #[error("call {call} already belongs to another customer")]
    CallOnAnotherCustomer {
        /// The call id.
        call: String,
    },
    /// Saving would take the document past its size limit.
    #[error("the document would grow past {limit} bytes")]
    DocumentTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The store refused for another reason (details in the server's log).
    #[error("the server could not store this")]
    StoreRefused,
    /// A core rule refused (e.g. a phone number that is not Japanese).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Admission refused a device's changes.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// The pre-apply screen refused a device's sync message.
    #[error(transparent)]
    Screen(#[from] ScreenError),
}

impl From<&WireError> for Refusal {
    fn from(e: &WireError) -> Self {
        Self::Wire(e.to_string(), e.code())
    }
}

/// The server's own refusal codes, one variant each: what a device matches on to
/// decide what a refusal means for it (`callsync_session::device` classifies
/// every one), and the only place each code is spelled. Codes of the core's,
/// admission's, the screen's and the plugin host's errors are theirs and are not
/// listed here: a device reads those as "tell the user".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// `malformed-message`: a frame that does not decode.
    MalformedMessage,
    /// `frame-too-large`.
    FrameTooLarge,
    /// `encode-failed`.
    EncodeFailed,
    /// `transport`.
    Transport,
    /// `timeout`: no `login` or `join` within the handshake time.
    Timeout,
    /// `join-required`.
    JoinRequired,
    /// `unsupported-protocol`.
    UnsupportedProtocol,
    /// `login-throttled`.
    LoginThrottled,
    /// `rate-limited`.
    RateLimited,
    /// `unexpected-message`.
    UnexpectedMessage,
    /// `shutting-down`.
    ShuttingDown,
    /// `reply-too-large`.
    ReplyTooLarge,
    /// `internal`: the server failed (save, configuration, anything else).
    Internal,
    /// `malformed-sync`.
    MalformedSync,
    /// `wrong-tenant`.
    WrongTenant,
    /// `customer-limit`.
    CustomerLimit,
    /// `too-many-documents`.
    TooManyDocuments,
    /// `bad-request`.
    BadRequest,
    /// `too-slow`.
    TooSlow,
    /// `too-many-connections`.
    TooManyConnections,
    /// `busy`.
    Busy,
    /// `role-changed`.
    RoleChanged,
    /// `last-owner`.
    LastOwner,
    /// `config-read-only`.
    ConfigReadOnly,
    /// `role-required`.
    RoleRequired,
    /// `invalid-credentials`.
    InvalidCredentials,
    /// `contract-required`.
    ContractRequired,
    /// `invalid-session`.
    InvalidSession,
    /// `session-expired`.
    SessionExpired,
    /// `member-exists`.
    MemberExists,
    /// `unknown-member`.
    UnknownMember,
    /// `device-taken`.
    DeviceTaken,
    /// `actor-taken`.
    ActorTaken,
    /// `email-unavailable`.
    EmailUnavailable,
    /// `config-too-large`.
    ConfigTooLarge,
    /// `result-not-decided`.
    ResultNotDecided,
    /// `customer-exists`.
    CustomerExists,
    /// `call-on-another-customer`.
    CallOnAnotherCustomer,
    /// `document-too-large`.
    DocumentTooLarge,
    /// `store-refused`.
    StoreRefused,
}

impl RefusalCode {
    /// Every code, for tests and tables.
    pub const ALL: [Self; 40] = [
        Self::MalformedMessage,
        Self::FrameTooLarge,
        Self::EncodeFailed,
        Self::Transport,
        Self::Timeout,
        Self::JoinRequired,
        Self::UnsupportedProtocol,
        Self::LoginThrottled,
        Self::RateLimited,
        Self::UnexpectedMessage,
        Self::ShuttingDown,
        Self::ReplyTooLarge,
        Self::Internal,
        Self::MalformedSync,
        Self::WrongTenant,
        Self::CustomerLimit,
        Self::TooManyDocuments,
        Self::BadRequest,
        Self::TooSlow,
        Self::TooManyConnections,
        Self::Busy,
        Self::RoleChanged,
        Self::LastOwner,
        Self::ConfigReadOnly,
        Self::RoleRequired,
        Self::InvalidCredentials,
        Self::ContractRequired,
        Self::InvalidSession,
        Self::SessionExpired,
        Self::MemberExists,
        Self::UnknownMember,
        Self::DeviceTaken,
        Self::ActorTaken,
        Self::EmailUnavailable,
        Self::ConfigTooLarge,
        Self::ResultNotDecided,
        Self::CustomerExists,
        Self::CallOnAnotherCustomer,
        Self::DocumentTooLarge,
        Self::StoreRefused,
    ];

    /// The kebab-case code on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MalformedMessage => "malformed-message",
            Self::FrameTooLarge => "frame-too-large",
            Self::EncodeFailed => "encode-failed",
            Self::Transport => "transport",
            Self::Timeout => "timeout",
            Self::JoinRequired => "join-required",
            Self::UnsupportedProtocol => "unsupported-protocol",
            Self::LoginThrottled => "login-throttled",
            Self::RateLimited => "rate-limited",
            Self::UnexpectedMessage => "unexpected-message",
            Self::ShuttingDown => "shutting-down",
            Self::ReplyTooLarge => "reply-too-large",
            Self::Internal => "internal",
            Self::MalformedSync => "malformed-sync",
            Self::WrongTenant => "wrong-tenant",
            Self::CustomerLimit => "customer-limit",
            Self::TooManyDocuments => "too-many-documents",
            Self::BadRequest => "bad-request",
            Self::TooSlow => "too-slow",
            Self::TooManyConnections => "too-many-connections",
            Self::Busy => "busy",
            Self::RoleChanged => "role-changed",
            Self::LastOwner => "last-owner",
            Self::ConfigReadOnly => "config-read-only",
            Self::RoleRequired => "role-required",
            Self::InvalidCredentials => "invalid-credentials",
            Self::ContractRequired => "contract-required",
            Self::InvalidSession => "invalid-session",
            Self::SessionExpired => "session-expired",
            Self::MemberExists => "member-exists",
            Self::UnknownMember => "unknown-member",
            Self::DeviceTaken => "device-taken",
            Self::ActorTaken => "actor-taken",
            Self::EmailUnavailable => "email-unavailable",
            Self::ConfigTooLarge => "config-too-large",
            Self::ResultNotDecided => "result-not-decided",
            Self::CustomerExists => "customer-exists",
            Self::CallOnAnotherCustomer => "call-on-another-customer",
            Self::DocumentTooLarge => "document-too-large",
            Self::StoreRefused => "store-refused",
        }
    }

    /// The code a refusal body carries, if it is one of the server's own.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl Refusal {
    /// The server's own code, when the refusal is not the core's, admission's,
    /// the screen's or the plugin host's (those carry codes of their own).
    pub fn own_code(&self) -> Option<RefusalCode> {
        use RefusalCode as C;
        Some(match self {
            Self::Wire(_, code) => return RefusalCode::parse(code),
            Self::Transport { .. } => C::Transport,
            Self::HandshakeTimeout => C::Timeout,
            Self::JoinRequired { .. } => C::JoinRequired,
            Self::UnsupportedProtocol => C::UnsupportedProtocol,
            Self::LoginThrottled { .. } => C::LoginThrottled,
            Self::RateLimited { .. } => C::RateLimited,
            Self::UnexpectedMessage { .. } => C::UnexpectedMessage,
            Self::ShuttingDown => C::ShuttingDown,
            Self::ReplyTooLarge { .. } => C::ReplyTooLarge,
            Self::SaveFailed | Self::ConfigUnreadable | Self::ServerTrouble => C::Internal,
            Self::MalformedSync { .. } | Self::SyncNotApplied { .. } => C::MalformedSync,
            Self::WrongTenant => C::WrongTenant,
            Self::CustomerLimit { .. } => C::CustomerLimit,
            Self::TooManyDocuments => C::TooManyDocuments,
            Self::BadRequest { .. } => C::BadRequest,
            Self::TooSlow => C::TooSlow,
            Self::TooManyConnections { .. } => C::TooManyConnections,
            Self::Busy => C::Busy,
            Self::RoleChanged => C::RoleChanged,
            Self::LastOwner => C::LastOwner,
            Self::ConfigReadOnly => C::ConfigReadOnly,
            Self::RoleRequired { .. } => C::RoleRequired,
            Self::InvalidCredentials => C::InvalidCredentials,
            Self::ContractRequired => C::ContractRequired,
            Self::InvalidSession => C::InvalidSession,
            Self::SessionExpired => C::SessionExpired,
            Self::MemberExists { .. } => C::MemberExists,
            Self::UnknownMember { .. } => C::UnknownMember,
            Self::DeviceTaken { .. } => C::DeviceTaken,
            Self::ActorTaken => C::ActorTaken,
            Self::EmailUnavailable => C::EmailUnavailable,
            Self::ConfigTooLarge { .. } => C::ConfigTooLarge,
            Self::ResultNotDecided { .. } => C::ResultNotDecided,
            Self::CustomerExists { .. } => C::CustomerExists,
            Self::CallOnAnotherCustomer { .. } => C::CallOnAnotherCustomer,
            Self::DocumentTooLarge { .. } => C::DocumentTooLarge,
            Self::StoreRefused => C::StoreRefused,
            Self::ResultNotVerified { .. }
            | Self::InstallRefused { .. }
            | Self::RecordingRefused { .. }
            | Self::Core(_)
            | Self::Admission(_)
            | Self::Screen(_) => return None,
        })
    }

    /// The stable kebab-case code.
    pub fn code(&self) -> &'static str {
        if let Some(code) = self.own_code() {
            return code.as_str();
        }
        match self {
            Self::Wire(_, code) => code,
            Self::ResultNotVerified { code, .. } | Self::InstallRefused { code, .. } => code,
            Self::RecordingRefused { code, .. } => code.as_str(),
            Self::Core(e) => e.code(),
            Self::Admission(e) => e.code(),
            Self::Screen(e) => e.code(),
            // Every other variant has a code of the server's own.
            _ => RefusalCode::Internal.as_str(),
        }
    }

    /// The message in Japanese, for the UI.
    pub fn message_ja(&self) -> String {
        match self {
            Self::Wire(..) => "メッセージの形式が正しくありません".to_owned(),
            Self::Transport { .. } => "通信エラーが発生しました".to_owned(),
            Self::HandshakeTimeout => "接続がタイムアウトしました".to_owned(),
            Self::JoinRequired { .. } => {
                "最初のメッセージは login か join でなければなりません".to_owned()
            }
            Self::UnsupportedProtocol => {
                "このアプリのバージョンはサーバーと合いません。アプリを更新してください".to_owned()
            }
            Self::LoginThrottled { retry_after_secs } => format!(
                "ログインの試行が多すぎます。{retry_after_secs} 秒後にもう一度お試しください"
            ),
            Self::RateLimited { .. } => "メッセージが多すぎます".to_owned(),
            Self::UnexpectedMessage { .. } => "想定外のメッセージです".to_owned(),
            Self::ShuttingDown => "サーバーを停止しています".to_owned(),
            Self::ReplyTooLarge { max } => format!(
                "顧客が多すぎて一度に返せません（最大 {max} 件）。ページ単位で取得してください"
            ),
            Self::SaveFailed => "サーバーで保存に失敗しました。再接続してください".to_owned(),
            Self::ConfigUnreadable => "サーバーでテナント設定を読み込めません".to_owned(),
            Self::MalformedSync { .. } => "同期メッセージの形式が正しくありません".to_owned(),
            Self::SyncNotApplied { .. } => "同期メッセージを適用できませんでした".to_owned(),
            Self::WrongTenant => "自分のテナント以外に顧客は作成できません".to_owned(),
            Self::CustomerLimit { max } => {
                format!("1 テナントに登録できる顧客は {max} 件までです")
            }
            Self::TooManyDocuments => {
                format!("一度に購読できる顧客は {MAX_SUBSCRIBE} 件までです")
            }
            Self::BadRequest { .. } => "リクエストが不正です".to_owned(),
            Self::TooSlow => "接続が遅れています".to_owned(),
            Self::TooManyConnections { per, max } => {
                let per = match *per {
                    "device" => "この端末",
                    "member" => "このユーザー",
                    _ => "この接続元",
                };
                format!(
                    "{per}からの同時接続が多すぎます（最大 {max} 件）。しばらくしてから再度お試しください"
                )
            }
            Self::Busy => {
                "サーバーが混み合っています。しばらくしてから再度お試しください".to_owned()
            }
            Self::RoleChanged => "権限が変更されました。再接続します".to_owned(),
            Self::LastOwner => "オーナーは少なくとも1人必要です".to_owned(),
            Self::ConfigReadOnly => {
                "テナント設定はプラグインのインストールでのみ変更できます".to_owned()
            }
            Self::RoleRequired { needed } => {
                format!("この操作には{}以上の権限が必要です", needed.label_ja())
            }
            Self::InvalidCredentials => "メールアドレスまたはパスワードが違います".to_owned(),
            Self::ContractRequired => CONTRACT_REQUIRED_JA.to_owned(),
            Self::InvalidSession => "セッションが無効です。ログインし直してください".to_owned(),
            Self::SessionExpired => {
                "セッションの有効期限が切れました。ログインし直してください".to_owned()
            }
            Self::MemberExists { email } => format!("{email} はすでに登録されています"),
            Self::UnknownMember { email } => format!("{email} はこのテナントにいません"),
            Self::DeviceTaken { device } => {
                format!("端末 {device} は別のユーザーに登録されています")
            }
            Self::ActorTaken => "この端末の識別子は別の端末に登録されています".to_owned(),
            Self::EmailUnavailable => "このメールアドレスは使用できません".to_owned(),
            Self::ServerTrouble => {
                "サーバーで問題が発生しました。しばらくしてから再度お試しください".to_owned()
            }
            Self::ConfigTooLarge { .. } => {
                "テナント設定の容量の上限を超えるため、このプラグインはインストールできません"
                    .to_owned()
            }
            Self::ResultNotVerified { call, .. } => {
                format!("コール {call} の結果の判定がルールと一致しません")
            }
            Self::InstallRefused { ja, .. } => format!("プラグインをインストールできません: {ja}"),
            Self::ResultNotDecided { ja, .. } => ja.clone(),
            Self::RecordingRefused { code, .. } => code.words().1.to_owned(),
            Self::CustomerExists { customer } => format!("顧客 {customer} はすでに存在します"),
            Self::CallOnAnotherCustomer { call } => {
                format!("コール {call} は別の顧客のコールです")
            }
            Self::DocumentTooLarge { limit } => {
                format!("顧客データが上限（{limit} バイト）を超えるため保存できません")
            }
            Self::StoreRefused => "サーバーで保存できませんでした".to_owned(),
            Self::Core(e) => e.message_ja(),
            Self::Admission(e) => e.message_ja(),
            Self::Screen(e) => e.message_ja(),
        }
    }

    /// What the wire carries.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
            message_ja: self.message_ja(),
        }
    }
}

impl From<Refusal> for ErrorBody {
    fn from(refusal: Refusal) -> Self {
        refusal.body()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every variant the server sends of its own.
    fn every_own_refusal() -> Vec<Refusal> {
        vec![
            Refusal::Wire("bad frame".to_owned(), "malformed-message"),
            Refusal::Transport {
                detail: "reset".to_owned(),
            },
            Refusal::HandshakeTimeout,
            Refusal::JoinRequired {
                got: "sync".to_owned(),
            },
            Refusal::UnsupportedProtocol,
            Refusal::LoginThrottled {
                retry_after_secs: 4,
            },
            Refusal::RateLimited { per_sec: 1_000 },
            Refusal::RoleChanged,
            Refusal::LastOwner,
            Refusal::UnexpectedMessage {
                kind: "login".to_owned(),
            },
            Refusal::ShuttingDown,
            Refusal::ReplyTooLarge { max: 10_000 },
            Refusal::SaveFailed,
            Refusal::ConfigUnreadable,
            Refusal::MalformedSync {
                detail: "eof".to_owned(),
            },
            Refusal::SyncNotApplied {
                detail: "duplicate seq".to_owned(),
            },
            Refusal::WrongTenant,
            Refusal::CustomerLimit { max: 3 },
            Refusal::TooManyDocuments,
            Refusal::BadRequest {
                detail: "user-add is answered before the hub".to_owned(),
            },
            Refusal::TooSlow,
            Refusal::TooManyConnections {
                per: "device",
                max: 4,
            },
            Refusal::Busy,
            Refusal::ConfigReadOnly,
            Refusal::RoleRequired {
                needed: Role::Admin,
            },
            Refusal::InvalidCredentials,
            Refusal::ContractRequired,
            Refusal::InvalidSession,
            Refusal::SessionExpired,
            Refusal::MemberExists {
                email: "rep@acme.example".to_owned(),
            },
            Refusal::UnknownMember {
                email: "rep@acme.example".to_owned(),
            },
            Refusal::DeviceTaken {
                device: "phone-1".to_owned(),
            },
            Refusal::ActorTaken,
            Refusal::EmailUnavailable,
            Refusal::ServerTrouble,
            Refusal::ConfigTooLarge { max: 6 << 20 },
            Refusal::ResultNotVerified {
                call: "call-1".to_owned(),
                code: "decision-mismatch",
                detail: "recall differs".to_owned(),
            },
            Refusal::ResultNotDecided {
                reason: "time-required".to_owned(),
                en: "pick a time".to_owned(),
                ja: "日時を選択してください".to_owned(),
            },
            Refusal::InstallRefused {
                code: "plugin-invalid",
                detail: "not a component".to_owned(),
                ja: "WebAssembly として正しくありません".to_owned(),
            },
            Refusal::CustomerExists {
                customer: "cus-1".to_owned(),
            },
            Refusal::CallOnAnotherCustomer {
                call: "call-1".to_owned(),
            },
            Refusal::DocumentTooLarge { limit: 4 << 20 },
            Refusal::StoreRefused,
            Refusal::RecordingRefused {
                code: crate::recording::RecordingCode::QuotaFull,
                detail: "the tenant's recordings would use 2 of its 1 bytes".to_owned(),
            },
        ]
    }

    fn is_japanese(text: &str) -> bool {
        text.chars()
            .any(|c| matches!(c, '\u{3040}'..='\u{30ff}' | '\u{4e00}'..='\u{9fff}'))
    }

    #[test]
    fn every_refusal_has_a_kebab_case_code_english_text_and_japanese_text() {
        for refusal in every_own_refusal() {
            let body = ErrorBody::from(refusal.clone());
            assert!(
                !body.code.is_empty()
                    && body
                        .code
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '-'),
                "{body:?}"
            );
            assert!(
                !body.message.is_empty() && !is_japanese(&body.message),
                "{body:?}"
            );
            assert!(is_japanese(&body.message_ja), "{body:?}");
        }
    }

    #[test]
    fn every_own_code_is_listed_once_and_reads_back() {
        let mut seen = std::collections::BTreeSet::new();
        for code in RefusalCode::ALL {
            assert!(seen.insert(code.as_str()), "{code:?} spelled twice");
            assert_eq!(RefusalCode::parse(code.as_str()), Some(code));
        }
        for refusal in every_own_refusal() {
            let own = refusal.own_code();
            if matches!(
                refusal,
                Refusal::ResultNotVerified { .. }
                    | Refusal::InstallRefused { .. }
                    | Refusal::RecordingRefused { .. }
            ) {
                // The plugin host's codes, and the recordings' own.
                assert_eq!(own, None);
                continue;
            }
            assert!(own.is_some(), "{refusal:?} has no code of the server's own");
            assert_eq!(RefusalCode::parse(refusal.code()), own, "{refusal:?}");
        }
        assert_eq!(RefusalCode::parse("no-phone-numbers"), None);
    }

    #[test]
    fn wrapped_errors_keep_their_own_code_and_text() {
        let core = CoreError::NoPhoneNumbers;
        let body = Refusal::from(core.clone()).body();
        assert_eq!(body.code, core.code());
        assert_eq!(body.message_ja, core.message_ja());
        assert_eq!(body.message, core.to_string());
    }

    /// Strips the data a message may quote (ids, numbers, keys), leaving its prose.
    /// "ID" is how Japanese UIs write it (顧客ID).
    fn prose(text: &str, quoted: &[&str]) -> String {
        quoted
            .iter()
            .chain(&["ID"])
            .fold(text.to_owned(), |t, q| t.replace(q, ""))
    }

    #[test]
    fn japanese_text_never_carries_english_prose() {
        use crate::admission::AdmissionError;
        use crate::id::IdError;
        use crate::screen::ScreenError;
        // Each wraps an English detail (an error's display text, a field's or an
        // id kind's English name, a parser's reason): the Japanese text says what
        // went wrong in Japanese and leaves the English to `message` and the logs.
        let cases: Vec<(Refusal, &[&str])> = vec![
            (
                CoreError::Id(IdError::Empty {
                    kind: "customer id",
                })
                .into(),
                &[],
            ),
            (
                CoreError::Id(IdError::TooLong { kind: "call id" }).into(),
                &[],
            ),
            (
                CoreError::Id(IdError::BadCharacter {
                    kind: "user id",
                    value: "12 34".to_owned(),
                })
                .into(),
                &[],
            ),
            (CoreError::EmptyField { field: "company" }.into(), &[]),
            (CoreError::EmptyField { field: "contact" }.into(), &[]),
            (CoreError::EmptyField { field: "events" }.into(), &[]),
            (
                CoreError::FieldTooLong {
                    field: "memo",
                    max: 2_000,
                }
                .into(),
                &[],
            ),
            (
                CoreError::FieldTooLong {
                    field: "phone label",
                    max: 100,
                }
                .into(),
                &[],
            ),
            (
                CoreError::MalformedDocument {
                    path: "events".to_owned(),
                    reason: "not a map".to_owned(),
                }
                .into(),
                &["events"],
            ),
            (CoreError::Automerge("invalid op id".to_owned()).into(), &[]),
            (
                ScreenError::Malformed {
                    reason: "truncated column".to_owned(),
                }
                .into(),
                &[],
            ),
            (
                ScreenError::Summary {
                    reason: "too many heads".to_owned(),
                }
                .into(),
                &[],
            ),
            (
                AdmissionError::ForbiddenEdit {
                    what: "the document root".to_owned(),
                }
                .into(),
                &[],
            ),
            (
                AdmissionError::RoleRequired {
                    event: "recording-deleted",
                    needed: "manager",
                }
                .into(),
                &[],
            ),
        ];
        for (refusal, quoted) in cases {
            let body = refusal.body();
            assert!(is_japanese(&body.message_ja), "{body:?}");
            let left = prose(&body.message_ja, quoted);
            assert!(
                !left.chars().any(|c| c.is_ascii_alphabetic()),
                "English in the Japanese text of {}: {:?}",
                body.code,
                body.message_ja
            );
        }
    }
}
