//! The rules one server connection follows, sans-IO: from its first message to
//! its last, what each message means and where it goes.
//!
//! Owns: the first-message rule (`login` or `join`, within the handshake time),
//! protocol version negotiation, the per-connection message rate, the periodic
//! re-check of the session (revoked contract, reset password, expiry), the role
//! check for installs, and the routing of every later message (to the hub, to the
//! accounts, to the plugin checks, or refused). Also which account changes end a
//! member's live sessions.
//! Does not own: reading frames, Argon2, the accounts database or compiling
//! plugins: the driver does those when a [`Step`] asks, and reports back.
//!
//! # Call order
//!
//! [`ServerConnection::new`] when the stream opens; [`ServerConnection::timed_out`]
//! if no first message arrived by [`ServerConnection::handshake_deadline`]; then
//! [`ServerConnection::receive`] for every message in order, doing what the
//! returned [`Step`] says before the next. A [`Step::Authenticate`] (the `join`)
//! is answered with [`ServerConnection::joined`]; a [`Step::Recheck`] with
//! [`ServerConnection::rechecked`], which returns the held message's step.

use callsync_core::wire::{
    self, Cursor, DeviceRegistration, ErrorBody, Message, PROTOCOL_VERSION, Refusal, RpcCall,
    RpcResult,
};
use callsync_core::{DeviceId, Timestamp, UserId};

use crate::Authenticated;

/// How long a new connection has, by default, to send its first message.
pub const HANDSHAKE_TIMEOUT_MS: i64 = 10_000;
/// Messages a connection may send in a burst …
pub const RATE_BURST: f64 = 2_000.0;
/// … and per second after it.
pub const RATE_PER_SEC: f64 = 1_000.0;
/// How often a long connection re-checks its session.
pub const RECHECK_EVERY_MS: i64 = 30_000;
/// Answers a device may owe at most: two per document sync the server started on
/// its own (a catch-up can start thousands), never counted against the rate.
pub const MAX_OWED: u64 = 16_384;

/// What the driver does with a message.
#[derive(Debug)]
pub enum Step {
    /// Log in (throttle, password check, open a session), answer with the
    /// outcome, then close: a login connection carries nothing else.
    Login {
        /// The email as sent.
        email: String,
        /// The password (never logged).
        password: String,
        /// The device to register.
        device: DeviceRegistration,
    },
    /// End the session with this token (knowing a token is the right to end it),
    /// answer `logged-out` whether or not it still worked, then close.
    Logout {
        /// The session token.
        token: String,
    },
    /// Check the `join`'s token for `device`, then call
    /// [`ServerConnection::joined`] (or refuse with the error).
    Authenticate {
        /// The session token.
        token: String,
        /// The device that joins.
        device: DeviceId,
        /// Where its catch-up stands.
        cursor: Option<Cursor>,
    },
    /// Check the session again (the same token), then call
    /// [`ServerConnection::rechecked`]; the message is held until then.
    Recheck {
        /// The session token.
        token: String,
        /// The device.
        device: DeviceId,
    },
    /// Hand the message to the tenant's hub.
    Hub(Message),
    /// An account request: answer it (hashing off any lock), then end the
    /// sessions [`sessions_ended_by`] names if it succeeded.
    Account {
        /// The request id.
        id: u64,
        /// The request.
        call: RpcCall,
    },
    /// Check and compile a plugin (off the hub), then hand the checked install to
    /// the hub to publish, or answer the refusal.
    Install {
        /// The request id.
        id: u64,
        /// The install, as sent.
        call: RpcCall,
    },
    /// Decide a result form's pick with the tenant's rules (off the hub), and
    /// answer it.
    Decide {
        /// The request id.
        id: u64,
        /// The request, as sent.
        call: RpcCall,
    },
    /// Ask the hub whether the member may read the call's recording (as a
    /// download stream would), then answer a signed link to play it over HTTP.
    RecordingLink {
        /// The request id.
        id: u64,
        /// The call.
        call: callsync_core::CallId,
    },
    /// Send this reply; the connection stays open.
    Reply(Message),
    /// Send this error and close.
    Refuse(ErrorBody),
    /// The device said goodbye: close.
    Leave,
    /// Nothing to do; read on.
    Continue,
}

/// A token bucket over the messages a connection sends.
#[derive(Debug, Clone, Copy)]
struct RateLimit {
    tokens: f64,
    at: Timestamp,
}

impl RateLimit {
    fn allow(&mut self, now: Timestamp) -> bool {
        let elapsed_ms = (now.as_millis() - self.at.as_millis()).max(0) as f64;
        self.tokens = (self.tokens + elapsed_ms / 1_000.0 * RATE_PER_SEC).min(RATE_BURST);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Waiting for `login` or `join`.
    First,
    /// `join` is being authenticated.
    Joining { token: String },
    /// Joined; the session was last checked at `checked`.
    Joined {
        member: Authenticated,
        token: String,
        checked: Timestamp,
        /// A message waiting for a re-check.
        held: Option<Box<Message>>,
    },
    /// Closed (refused, left, or a login answered).
    Done,
}

/// One server connection's protocol state.
#[derive(Debug)]
pub struct ServerConnection {
    phase: Phase,
    opened: Timestamp,
    handshake_ms: i64,
    rate: RateLimit,
    /// Answers the device owes for syncs the server started: they pass without
    /// counting against the rate, which is for what a device starts itself.
    owed: u64,
}

impl ServerConnection {
    /// A connection whose stream opened at `now`, that must say `login` or `join`
    /// within `handshake_ms`.
    pub fn new(now: Timestamp, handshake_ms: i64) -> Self {
        Self {
            phase: Phase::First,
            opened: now,
            handshake_ms,
            rate: RateLimit {
                tokens: RATE_BURST,
                at: now,
            },
            owed: 0,
        }
    }

    /// The server started `syncs` document syncs with this device on its own (a
    /// catch-up, pushes): the device may answer each (a sync takes up to two
    /// answers) without counting against its message rate, so a new device
    /// catching up on ten thousand documents is not cut off for answering. Only
    /// what the server starts is owed; a device's own requests earn nothing.
    pub fn server_started(&mut self, syncs: u64) {
        self.owed = self
            .owed
            .saturating_add(syncs.saturating_mul(2))
            .min(MAX_OWED);
    }

    /// When the first message must have arrived.
    pub fn handshake_deadline(&self) -> Timestamp {
        self.opened.plus_millis(self.handshake_ms)
    }

    /// No first message by the deadline: the error to close with.
    pub fn timed_out(&mut self) -> ErrorBody {
        self.phase = Phase::Done;
        Refusal::HandshakeTimeout.body()
    }

    /// The member, once joined.
    pub fn member(&self) -> Option<&Authenticated> {
        match &self.phase {
            Phase::Joined { member, .. } => Some(member),
            _ => None,
        }
    }

    /// A message arrived at `now`.
    pub fn receive(&mut self, now: Timestamp, message: Message) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::First => self.first(message),
            Phase::Joining { .. } => {
                // The driver authenticates before reading on; a message here is a
                // driver bug, refused rather than trusted.
                Step::Refuse(
                    Refusal::UnexpectedMessage {
                        kind: message.kind().to_owned(),
                    }
                    .body(),
                )
            }
            Phase::Joined {
                member,
                token,
                checked,
                held: _,
            } => {
                let answer = matches!(message, Message::Sync { .. }) && self.owed > 0;
                if answer {
                    self.owed -= 1;
                } else if !self.rate.allow(now) {
                    return Step::Refuse(
                        Refusal::RateLimited {
                            per_sec: RATE_PER_SEC as u32,
                        }
                        .body(),
                    );
                }
                let due = now.as_millis() - checked.as_millis() >= RECHECK_EVERY_MS
                    || member.expires_at <= now;
                if due {
                    let device = member.device.clone();
                    self.phase = Phase::Joined {
                        member,
                        token: token.clone(),
                        checked,
                        held: Some(Box::new(message)),
                    };
                    return Step::Recheck { token, device };
                }
                let step = route(&member, message);
                if !matches!(step, Step::Refuse(_) | Step::Leave) {
                    self.phase = Phase::Joined {
                        member,
                        token,
                        checked,
                        held: None,
                    };
                }
                step
            }
            Phase::Done => Step::Refuse(Refusal::ShuttingDown.body()),
        }
    }

    fn first(&mut self, message: Message) -> Step {
        let versions_ok = |v: &[String]| v.iter().any(|v| v == PROTOCOL_VERSION);
        match message {
            Message::Login {
                supported_protocol_versions,
                email,
                password,
                device,
            } => {
                if !versions_ok(&supported_protocol_versions) {
                    return Step::Refuse(Refusal::UnsupportedProtocol.body());
                }
                Step::Login {
                    email,
                    password,
                    device,
                }
            }
            Message::Logout { token } => Step::Logout { token },
            Message::Join {
                sender_id,
                supported_protocol_versions,
                token,
                cursor,
            } => {
                if !versions_ok(&supported_protocol_versions) {
                    return Step::Refuse(Refusal::UnsupportedProtocol.body());
                }
                self.phase = Phase::Joining {
                    token: token.clone(),
                };
                Step::Authenticate {
                    token,
                    device: sender_id,
                    cursor,
                }
            }
            other => Step::Refuse(
                Refusal::JoinRequired {
                    got: other.kind().to_owned(),
                }
                .body(),
            ),
        }
    }

    /// The `join` was authenticated at `now` as `member` (or refused: then the
    /// error to close with is returned back).
    pub fn joined(
        &mut self,
        now: Timestamp,
        outcome: Result<Authenticated, ErrorBody>,
    ) -> Result<(), ErrorBody> {
        let Phase::Joining { token } = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(Refusal::ShuttingDown.body());
        };
        let member = outcome?;
        self.phase = Phase::Joined {
            member,
            token,
            checked: now,
            held: None,
        };
        Ok(())
    }

    /// The session was checked again at `now`: the held message's step, or the
    /// refusal to close with.
    pub fn rechecked(&mut self, now: Timestamp, outcome: Result<Authenticated, ErrorBody>) -> Step {
        let Phase::Joined { token, held, .. } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Step::Refuse(Refusal::ShuttingDown.body());
        };
        let member = match outcome {
            Ok(member) => member,
            Err(error) => return Step::Refuse(error),
        };
        let step = match held {
            Some(message) => route(&member, *message),
            None => Step::Continue,
        };
        if !matches!(step, Step::Refuse(_) | Step::Leave) {
            self.phase = Phase::Joined {
                member,
                token,
                checked: now,
                held: None,
            };
        }
        step
    }
}

/// Where a joined member's message goes.
fn route(member: &Authenticated, message: Message) -> Step {
    match message {
        Message::Rpc { id, call } if is_account_call(&call) => Step::Account { id, call },
        Message::Rpc {
            id,
            call: call @ RpcCall::PluginInstall { .. },
        } => {
            if member.role.is_admin() {
                Step::Install { id, call }
            } else {
                Step::Reply(Message::Reply {
                    id,
                    result: RpcResult::Refused(crate::hub::install_needs_admin()),
                })
            }
        }
        Message::Rpc {
            id,
            call: call @ RpcCall::DecideResult { .. },
        } => Step::Decide { id, call },
        Message::Rpc {
            id,
            call: RpcCall::RecordingLink { call },
        } => Step::RecordingLink { id, call },
        Message::Leave { .. } => Step::Leave,
        message @ (Message::Sync { .. }
        | Message::Request { .. }
        | Message::ConfigSync { .. }
        | Message::Rpc { .. }) => Step::Hub(message),
        other => Step::Refuse(
            Refusal::UnexpectedMessage {
                kind: other.kind().to_owned(),
            }
            .body(),
        ),
    }
}

/// Whether an `rpc` is an account request (answered from the accounts, not the
/// hub).
pub fn is_account_call(call: &RpcCall) -> bool {
    matches!(
        call,
        RpcCall::UserAdd { .. }
            | RpcCall::UserSetContract { .. }
            | RpcCall::UserResetPassword { .. }
            | RpcCall::UserSetRole { .. }
            | RpcCall::UserList
            | RpcCall::SetAssigneeVisibility { .. }
    )
}

/// Whether a `decide-result` may be answered at `now` (server clock): its
/// `saved_at` within [`wire::MAX_DECIDE_SKEW_MS`] of now, a call that ended
/// before it, an attempt counted from 1. Devices stamp on the server's clock, so
/// an honest device passes whatever its own clock says.
pub fn check_decide_request(now: Timestamp, call: &RpcCall) -> Result<(), Refusal> {
    let RpcCall::DecideResult {
        ended_at,
        attempt,
        saved_at,
        ..
    } = call
    else {
        return Err(Refusal::UnexpectedMessage {
            kind: call.method().to_owned(),
        });
    };
    if saved_at.as_millis().abs_diff(now.as_millis()) > wire::MAX_DECIDE_SKEW_MS.unsigned_abs()
        || ended_at > saved_at
        || *attempt == 0
    {
        return Err(Refusal::BadRequest {
            detail: "a decision is asked for now, for a call that ended before it".to_owned(),
        });
    }
    Ok(())
}

/// The member whose live connections a successful account change ends, and what
/// they are told.
pub fn sessions_ended_by(call: &RpcCall) -> Option<(UserId, ErrorBody)> {
    match call {
        RpcCall::UserSetContract {
            email,
            contract: false,
        } => Some((email.clone(), Refusal::ContractRequired.body())),
        RpcCall::UserResetPassword { email, .. } => {
            Some((email.clone(), Refusal::InvalidSession.body()))
        }
        // The sessions stay; the devices connect again to learn the new role.
        RpcCall::UserSetRole { email, .. } => Some((email.clone(), Refusal::RoleChanged.body())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use callsync_core::wire::{Cursor, DeviceRegistration, RpcCall};
    use callsync_core::{CustomerId, DeviceKind, Role, TenantId};

    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + ms)
    }

    fn member(role: Role) -> Authenticated {
        Authenticated {
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new("rep@acme.example").unwrap(),
            role,
            device: DeviceId::new("desk-1").unwrap(),
            kind: DeviceKind::Desk,
            expires_at: at(86_400_000),
        }
    }

    fn join(versions: &[&str]) -> Message {
        Message::Join {
            sender_id: DeviceId::new("desk-1").unwrap(),
            supported_protocol_versions: versions.iter().map(|v| (*v).to_owned()).collect(),
            token: "token".to_owned(),
            cursor: Some(Cursor {
                epoch: "e".to_owned(),
                seq: 4,
            }),
        }
    }

    fn joined(role: Role) -> ServerConnection {
        let mut c = ServerConnection::new(at(0), HANDSHAKE_TIMEOUT_MS);
        assert!(matches!(
            c.receive(at(1), join(&[PROTOCOL_VERSION])),
            Step::Authenticate { .. }
        ));
        c.joined(at(2), Ok(member(role))).unwrap();
        c
    }

    fn sync() -> Message {
        Message::Sync {
            document_id: CustomerId::new("cus-1").unwrap(),
            data: vec![],
        }
    }

    fn refused(step: Step) -> String {
        match step {
            Step::Refuse(body) => body.code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// What the build before schema 2 offers: it is told in Japanese to update,
    /// and its device stops for an update (keeping its login and its unsent
    /// changes) instead of syncing documents it would misread.
    #[test]
    fn a_device_still_on_protocol_1_is_told_to_update() {
        let login = Message::Login {
            supported_protocol_versions: vec!["1".to_owned()],
            email: "rep@acme.example".to_owned(),
            password: "secret".to_owned(),
            device: DeviceRegistration {
                id: DeviceId::new("phone-1").unwrap(),
                kind: DeviceKind::Phone,
                actor: "aa".to_owned(),
            },
        };
        for first in [join(&["1"]), login] {
            let mut c = ServerConnection::new(at(0), HANDSHAKE_TIMEOUT_MS);
            let Step::Refuse(body) = c.receive(at(1), first) else {
                panic!("a protocol 1 device was not refused");
            };
            assert_eq!(body.code, "unsupported-protocol");
            assert!(
                body.message_ja.contains("更新してください"),
                "{}",
                body.message_ja
            );
            assert_eq!(
                crate::device::refusal::classify(&body),
                crate::device::refusal::Disposition::Stop(
                    crate::device::refusal::StopReason::UpdateRequired
                )
            );
        }
    }

    #[test]
    fn the_first_message_must_be_login_or_join_in_a_version_both_speak() {
        let mut c = ServerConnection::new(at(0), HANDSHAKE_TIMEOUT_MS);
        assert_eq!(refused(c.receive(at(1), sync())), "join-required");
        let mut c = ServerConnection::new(at(0), HANDSHAKE_TIMEOUT_MS);
        assert_eq!(
            refused(c.receive(at(1), join(&["0.9"]))),
            "unsupported-protocol"
        );
        let mut c = ServerConnection::new(at(0), HANDSHAKE_TIMEOUT_MS);
        let login = Message::Login {
            supported_protocol_versions: vec![PROTOCOL_VERSION.to_owned()],
            email: "rep@acme.example".to_owned(),
            password: "secret".to_owned(),
            device: DeviceRegistration {
                id: DeviceId::new("desk-1").unwrap(),
                kind: DeviceKind::Desk,
                actor: "aa".to_owned(),
            },
        };
        assert!(matches!(c.receive(at(1), login), Step::Login { .. }));
        // A login connection carries nothing else.
        assert_eq!(refused(c.receive(at(2), sync())), "shutting-down");
    }

    #[test]
    fn a_join_refused_by_the_accounts_is_closed_with_their_reason() {
        let mut c = ServerConnection::new(at(0), HANDSHAKE_TIMEOUT_MS);
        assert!(matches!(
            c.receive(at(1), join(&["0.9", PROTOCOL_VERSION])),
            Step::Authenticate {
                cursor: Some(_),
                ..
            }
        ));
        let error = c
            .joined(at(2), Err(Refusal::InvalidSession.body()))
            .unwrap_err();
        assert_eq!(error.code, "invalid-session");
        assert!(c.member().is_none());
    }

    #[test]
    fn no_first_message_in_time_is_a_handshake_timeout() {
        let mut c = ServerConnection::new(at(0), 5_000);
        assert_eq!(c.handshake_deadline(), at(5_000));
        assert_eq!(c.timed_out().code, "timeout");
    }

    #[test]
    fn joined_messages_go_to_the_hub_the_accounts_or_the_plugin_checks() {
        let mut c = joined(Role::Admin);
        assert!(matches!(c.receive(at(3), sync()), Step::Hub(_)));
        let account = Message::Rpc {
            id: 1,
            call: RpcCall::UserList,
        };
        assert!(matches!(
            c.receive(at(4), account),
            Step::Account { id: 1, .. }
        ));
        let install = Message::Rpc {
            id: 2,
            call: RpcCall::PluginInstall {
                file: vec![0],
                settings: vec![],
                holidays: vec![],
                time_zone: "Asia/Tokyo".to_owned(),
            },
        };
        assert!(matches!(
            c.receive(at(5), install),
            Step::Install { id: 2, .. }
        ));
        let list = Message::Rpc {
            id: 3,
            call: RpcCall::RecallList,
        };
        assert!(matches!(c.receive(at(6), list), Step::Hub(_)));
        assert_eq!(
            refused(c.receive(at(7), Message::Error(Refusal::Busy.body()))),
            "unexpected-message"
        );
    }

    #[test]
    fn an_install_below_admin_is_answered_without_checking_the_plugin() {
        let mut c = joined(Role::Manager);
        let install = Message::Rpc {
            id: 9,
            call: RpcCall::PluginInstall {
                file: vec![0],
                settings: vec![],
                holidays: vec![],
                time_zone: "Asia/Tokyo".to_owned(),
            },
        };
        match c.receive(at(3), install) {
            Step::Reply(Message::Reply {
                id: 9,
                result: RpcResult::Refused(body),
            }) => assert_eq!(body.code, "role-required"),
            other => panic!("{other:?}"),
        }
        // The connection stays open.
        assert!(matches!(c.receive(at(4), sync()), Step::Hub(_)));
    }

    #[test]
    fn the_message_rate_allows_a_burst_then_the_steady_rate_and_refuses_past_it() {
        let mut c = joined(Role::User);
        for i in 0..RATE_BURST as i64 {
            assert!(
                matches!(c.receive(at(3), sync()), Step::Hub(_)),
                "message {i}"
            );
        }
        // The bucket is empty; 10 ms later it holds 10 more.
        for _ in 0..10 {
            assert!(matches!(c.receive(at(13), sync()), Step::Hub(_)));
        }
        assert_eq!(refused(c.receive(at(13), sync())), "rate-limited");
        assert!(c.member().is_none(), "a refused connection is done");
    }

    #[test]
    fn answers_to_syncs_the_server_started_do_not_count_against_the_rate() {
        let mut c = joined(Role::User);
        c.server_started(3_000);
        // 6,000 owed answers, then the whole burst, all at one instant.
        for i in 0..6_000 + RATE_BURST as i64 {
            assert!(
                matches!(c.receive(at(3), sync()), Step::Hub(_)),
                "message {i}"
            );
        }
        assert_eq!(refused(c.receive(at(3), sync())), "rate-limited");
    }

    #[test]
    fn only_sync_answers_are_owed_and_what_is_owed_is_capped() {
        let mut c = joined(Role::User);
        c.server_started(u64::MAX);
        let list = || Message::Rpc {
            id: 1,
            call: RpcCall::RecallList,
        };
        // A request is the device's own: it counts against the rate at once.
        for _ in 0..RATE_BURST as i64 {
            assert!(matches!(c.receive(at(3), list()), Step::Hub(_)));
        }
        assert_eq!(refused(c.receive(at(3), list())), "rate-limited");
        let mut c = joined(Role::User);
        c.server_started(u64::MAX);
        for _ in 0..MAX_OWED as i64 + RATE_BURST as i64 {
            assert!(matches!(c.receive(at(3), sync()), Step::Hub(_)));
        }
        assert_eq!(refused(c.receive(at(3), sync())), "rate-limited");
    }

    #[test]
    fn the_session_is_checked_again_every_30_seconds_holding_the_message_until_then() {
        let mut c = joined(Role::User);
        assert!(matches!(
            c.receive(at(2 + RECHECK_EVERY_MS - 1), sync()),
            Step::Hub(_)
        ));
        match c.receive(at(2 + RECHECK_EVERY_MS), sync()) {
            Step::Recheck { token, .. } => assert_eq!(token, "token"),
            other => panic!("{other:?}"),
        }
        let step = c.rechecked(at(2 + RECHECK_EVERY_MS + 1), Ok(member(Role::User)));
        assert!(matches!(step, Step::Hub(Message::Sync { .. })));
        // Checked again only 30 s after this check.
        assert!(matches!(
            c.receive(at(2 + RECHECK_EVERY_MS + 2), sync()),
            Step::Hub(_)
        ));
        assert!(matches!(
            c.receive(at(2 + 2 * RECHECK_EVERY_MS + 1), sync()),
            Step::Recheck { .. }
        ));
        let step = c.rechecked(at(0), Err(Refusal::ContractRequired.body()));
        assert_eq!(refused(step), "contract-required");
    }

    #[test]
    fn an_expired_session_is_checked_before_its_next_message() {
        let mut c = joined(Role::User);
        assert!(matches!(
            c.receive(at(86_400_000), sync()),
            Step::Recheck { .. }
        ));
        assert_eq!(
            refused(c.rechecked(at(86_400_001), Err(Refusal::SessionExpired.body()))),
            "session-expired"
        );
    }

    #[test]
    fn leave_ends_the_connection() {
        let mut c = joined(Role::User);
        let leave = Message::Leave {
            sender_id: "desk-1".to_owned(),
        };
        assert!(matches!(c.receive(at(3), leave), Step::Leave));
    }

    #[test]
    fn revoking_a_contract_or_resetting_a_password_ends_that_members_sessions() {
        let email = UserId::new("rep@acme.example").unwrap();
        let (user, reason) = sessions_ended_by(&RpcCall::UserSetContract {
            email: email.clone(),
            contract: false,
        })
        .unwrap();
        assert_eq!(
            (user, reason.code.as_str()),
            (email.clone(), "contract-required")
        );
        assert!(
            sessions_ended_by(&RpcCall::UserSetContract {
                email: email.clone(),
                contract: true,
            })
            .is_none()
        );
        assert_eq!(
            sessions_ended_by(&RpcCall::UserResetPassword {
                email: email.clone(),
                password: "x".repeat(12),
            })
            .unwrap()
            .1
            .code,
            "invalid-session"
        );
        assert!(sessions_ended_by(&RpcCall::UserList).is_none());
    }
}
