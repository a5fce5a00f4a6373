//! What a refusal from the server means for a device: retry later, ask the user,
//! or stop and say why.
//!
//! Owns: [`classify`], one exhaustive match over [`RefusalCode`], so a new code
//! cannot reach a device without a decision; and [`StopReason`], the reasons a
//! device stops connecting, with the words it shows.
//! Does not own: the codes or their texts (`callsync_core::wire::refusal`).

use callsync_core::wire::{CONTRACT_REQUIRED_EN, CONTRACT_REQUIRED_JA, ErrorBody, RefusalCode};
use serde::{Deserialize, Serialize};

/// What a device does about a refusal.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// Nothing the user did: the device tries again by itself after a wait.
    RetryLater,
    /// The user's input or rights: show the words, keep the session.
    AskUser,
    /// The session cannot go on: stop connecting and say why.
    Stop(StopReason),
}

/// Why a device stopped connecting. Only the user can move it on (by logging in
/// again, or an admin by granting the contract).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The user logged out.
    LoggedOut,
    /// The member no longer holds the calling contract: no customer data is shown
    /// (unsent work is kept).
    ContractRevoked,
    /// The session was ended on the server (a password reset, a revoked contract
    /// before it was granted again, an eviction, a logout elsewhere).
    SessionEnded,
    /// The session's time ran out.
    SessionExpired,
    /// This device id or actor is bound to another member or device.
    DeviceTaken,
    /// The server speaks another protocol version: this build must be updated.
    UpdateRequired,
}

impl StopReason {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoggedOut => "logged-out",
            Self::ContractRevoked => "contract-revoked",
            Self::SessionEnded => "session-ended",
            Self::SessionExpired => "session-expired",
            Self::DeviceTaken => "device-taken",
            Self::UpdateRequired => "update-required",
        }
    }

    /// Whether the way on is a new login, so the token is dropped (every reason
    /// but an out-of-date build: a revoked contract ends the member's sessions on
    /// the server too, and the login screen then says why).
    pub fn needs_login(self) -> bool {
        !matches!(self, Self::UpdateRequired)
    }

    /// What the user is told, in English and in Japanese (the manual's words).
    pub fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::LoggedOut => ("You have logged out.", "ログアウトしました。"),
            Self::ContractRevoked => (CONTRACT_REQUIRED_EN, CONTRACT_REQUIRED_JA),
            Self::SessionEnded => (
                "Your session was ended. Please log in again.",
                "セッションが終了しました。ログインし直してください。",
            ),
            Self::SessionExpired => (
                "Your session has expired. Please log in again.",
                "セッションの有効期限が切れました。ログインし直してください。",
            ),
            Self::DeviceTaken => (
                "This device is registered to another user. Please log in again.",
                "この端末は別のユーザーに登録されています。ログインし直してください。",
            ),
            Self::UpdateRequired => (
                "This app is out of date for the server. Please update it.",
                "アプリのバージョンがサーバーと合いません。アプリを更新してください。",
            ),
        }
    }
}

/// What a device does about the refusal `body` (a code of the core's, admission's
/// or a plugin's own, which this list does not hold, is the user's to read).
pub fn classify(body: &ErrorBody) -> Disposition {
    match RefusalCode::parse(&body.code) {
        Some(code) => classify_code(code),
        None => Disposition::AskUser,
    }
}

/// What a device does about a refusal with one of the server's own codes.
pub fn classify_code(code: RefusalCode) -> Disposition {
    use Disposition::{AskUser, RetryLater, Stop};
    use RefusalCode as C;
    match code {
        C::ContractRequired => Stop(StopReason::ContractRevoked),
        C::InvalidSession => Stop(StopReason::SessionEnded),
        C::SessionExpired => Stop(StopReason::SessionExpired),
        C::DeviceTaken | C::ActorTaken => Stop(StopReason::DeviceTaken),
        C::UnsupportedProtocol => Stop(StopReason::UpdateRequired),
        // The server's or the network's trouble, or this device going too fast:
        // waiting is the cure. A frame this build got wrong is retried too: the
        // user cannot mend it, and the wait grows with every failure.
        C::Transport
        | C::Timeout
        | C::ShuttingDown
        | C::Internal
        | C::TooSlow
        | C::TooManyConnections
        | C::Busy
        | C::RoleChanged
        | C::RateLimited
        | C::MalformedMessage
        | C::FrameTooLarge
        | C::EncodeFailed
        | C::JoinRequired
        | C::UnexpectedMessage
        | C::MalformedSync
        | C::ReplyTooLarge
        | C::StoreRefused => RetryLater,
        // The user's input, rights or data: theirs to read and act on.
        C::LoginThrottled
        | C::InvalidCredentials
        | C::BadRequest
        | C::RoleRequired
        | C::WrongTenant
        | C::CustomerLimit
        | C::TooManyDocuments
        | C::ConfigReadOnly
        | C::MemberExists
        | C::LastOwner
        | C::UnknownMember
        | C::EmailUnavailable
        | C::ConfigTooLarge
        | C::ResultNotDecided
        | C::CustomerExists
        | C::CallOnAnotherCustomer
        | C::DocumentTooLarge => AskUser,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsync_core::wire::Refusal;

    #[test]
    fn the_session_refusals_stop_and_the_server_s_trouble_is_retried() {
        let stop = |r: Refusal| match classify(&r.body()) {
            Disposition::Stop(reason) => reason,
            other => panic!("{r:?}: {other:?}"),
        };
        assert_eq!(stop(Refusal::ContractRequired), StopReason::ContractRevoked);
        assert_eq!(stop(Refusal::InvalidSession), StopReason::SessionEnded);
        assert_eq!(stop(Refusal::SessionExpired), StopReason::SessionExpired);
        assert_eq!(stop(Refusal::ActorTaken), StopReason::DeviceTaken);
        assert_eq!(
            stop(Refusal::UnsupportedProtocol),
            StopReason::UpdateRequired
        );
        for retried in [Refusal::Busy, Refusal::ShuttingDown, Refusal::ServerTrouble] {
            assert_eq!(classify(&retried.body()), Disposition::RetryLater);
        }
        assert_eq!(
            classify(&Refusal::InvalidCredentials.body()),
            Disposition::AskUser
        );
        // A code of the core's own is the user's to read.
        let core = Refusal::Core(callsync_core::CoreError::NoPhoneNumbers).body();
        assert_eq!(classify(&core), Disposition::AskUser);
    }

    #[test]
    fn every_stop_reason_has_words_in_both_languages() {
        for reason in [
            StopReason::LoggedOut,
            StopReason::ContractRevoked,
            StopReason::SessionEnded,
            StopReason::SessionExpired,
            StopReason::DeviceTaken,
            StopReason::UpdateRequired,
        ] {
            let (en, ja) = reason.words();
            assert!(en.is_ascii() && !en.is_empty(), "{reason:?}");
            assert!(!ja.is_ascii(), "{reason:?}");
        }
        assert_eq!(
            StopReason::ContractRevoked.words().1,
            "このデータへのアクセスには認証が必要です"
        );
    }
}
