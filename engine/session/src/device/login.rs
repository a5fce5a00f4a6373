//! Logging a device in: the `login` exchange on a connection of its own.
//!
//! Owns: which device id and actor a login registers (the same ones when the same
//! user logs in again on this device, new ones otherwise, so the next user of a
//! shared browser is never refused as `device-taken`), the `login` message, and
//! reading the answer into an [`Identity`] and a first [`ServerClock`].
//! Does not own: the connection, or where the identity is kept (the host saves it
//! through [`super::DeviceSession::logged_in`]).

use callsync_core::wire::{self, DeviceRegistration, ErrorBody, Message};
use callsync_core::{DeviceId, DeviceKind, Timestamp};

use super::{Disposition, Entropy, Identity, ServerClock, classify};

/// A login in flight.
#[derive(Debug, Clone)]
pub struct LoginExchange {
    sent: Timestamp,
    device: DeviceId,
    kind: DeviceKind,
    actor: String,
    /// Tokens the previous logins of the same user here still have to end.
    revoke: Vec<String>,
}

/// Why a login did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// The server refused, with its words and what to do about it.
    #[error("{}", .body.message)]
    Refused {
        /// The refusal.
        body: ErrorBody,
        /// Retry later, or the user's to mend (a wrong password).
        disposition: Disposition,
    },
    /// The input cannot be sent (an empty email, say).
    #[error("{0}")]
    Input(String),
    /// The server answered something else than a login answer.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The longest email accepted, in bytes.
const MAX_EMAIL_BYTES: usize = 254;

impl LoginExchange {
    /// Starts a login of `email` at `now` (device clock): the message to send
    /// first on a fresh connection. `previous` is who last logged in on this
    /// device, if anyone; `wanted`, the device id to register when a new one is
    /// made (a random one otherwise).
    pub fn start(
        now: Timestamp,
        rng: &mut dyn Entropy,
        email: &str,
        password: &str,
        kind: DeviceKind,
        previous: Option<&Identity>,
        wanted: Option<&DeviceId>,
    ) -> Result<(Self, Message), LoginError> {
        let email = email.trim();
        if email.is_empty() || email.len() > MAX_EMAIL_BYTES {
            return Err(LoginError::Input(
                "an email address of at most 254 bytes is required".to_owned(),
            ));
        }
        if password.is_empty() || password.len() > wire::MAX_PASSWORD_BYTES {
            return Err(LoginError::Input(format!(
                "a password of 1 to {} bytes is required",
                wire::MAX_PASSWORD_BYTES
            )));
        }
        let same_user =
            previous.filter(|p| p.kind == kind && p.user.as_str().eq_ignore_ascii_case(email));
        let (device, actor, revoke) = match same_user {
            Some(p) => (p.device.clone(), p.actor.clone(), p.revoke.clone()),
            None => {
                let device = match wanted {
                    Some(id) => id.clone(),
                    None => DeviceId::new(format!("{}-{}", kind.as_str(), rng.hex(6)))
                        .map_err(|e| LoginError::Input(e.to_string()))?,
                };
                (device, rng.hex(16), Vec::new())
            }
        };
        let message = Message::Login {
            supported_protocol_versions: vec![wire::PROTOCOL_VERSION.to_owned()],
            email: email.to_owned(),
            password: password.to_owned(),
            device: DeviceRegistration {
                id: device.clone(),
                kind,
                actor: actor.clone(),
            },
        };
        Ok((
            Self {
                sent: now,
                device,
                kind,
                actor,
                revoke,
            },
            message,
        ))
    }

    /// The device id this login registers.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// Reads the server's answer, received at `now` (device clock).
    pub fn finish(
        self,
        now: Timestamp,
        reply: Message,
    ) -> Result<(Identity, Option<ServerClock>), LoginError> {
        match reply {
            Message::LoggedIn {
                token,
                expires_at,
                tenant,
                user,
                role,
                server_time,
            } => {
                let clock =
                    server_time.and_then(|server| ServerClock::learn(self.sent, server, now));
                Ok((
                    Identity {
                        tenant,
                        user,
                        role,
                        device: self.device,
                        kind: self.kind,
                        actor: self.actor,
                        token: Some(token),
                        expires_at,
                        revoke: self.revoke,
                        stopped: None,
                    },
                    clock,
                ))
            }
            Message::Error(body) => Err(LoginError::Refused {
                disposition: classify(&body),
                body,
            }),
            other => Err(LoginError::Protocol(format!(
                "expected 'logged-in', got '{}'",
                other.kind()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::SplitMix64;
    use callsync_core::wire::Refusal;
    use callsync_core::{Role, TenantId, UserId};

    fn logged_in(server_time: i64) -> Message {
        Message::LoggedIn {
            token: "t".to_owned(),
            expires_at: Timestamp::from_millis(9_000_000),
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new("rep@acme.example").unwrap(),
            role: Role::User,
            server_time: Some(Timestamp::from_millis(server_time)),
        }
    }

    #[test]
    fn the_same_user_keeps_the_device_and_another_user_gets_a_new_one() {
        let mut rng = SplitMix64::new(1);
        let now = Timestamp::from_millis(1_000);
        let (first, _) = LoginExchange::start(
            now,
            &mut rng,
            "rep@acme.example",
            "pw",
            DeviceKind::Desk,
            None,
            None,
        )
        .unwrap();
        let (mut me, clock) = first
            .finish(Timestamp::from_millis(1_200), logged_in(50_100))
            .unwrap();
        // The server's clock is 49 s ahead of this device's.
        assert_eq!(clock.unwrap().offset_ms, 49_000);
        me.revoke = vec!["old".to_owned()];
        let (again, message) = LoginExchange::start(
            now,
            &mut rng,
            " REP@acme.example ",
            "pw",
            DeviceKind::Desk,
            Some(&me),
            None,
        )
        .unwrap();
        assert_eq!(again.device(), &me.device);
        let Message::Login { device, email, .. } = message else {
            panic!("not a login");
        };
        assert_eq!(device.actor, me.actor);
        assert_eq!(email, "REP@acme.example");
        let (other, _) = LoginExchange::start(
            now,
            &mut rng,
            "boss@acme.example",
            "pw",
            DeviceKind::Desk,
            Some(&me),
            None,
        )
        .unwrap();
        assert_ne!(other.device(), &me.device);
        assert_ne!(other.actor, me.actor);
        assert!(other.revoke.is_empty());
        assert_eq!(again.revoke, ["old"]);
    }

    #[test]
    fn refusals_and_bad_input_are_typed() {
        let mut rng = SplitMix64::new(2);
        let now = Timestamp::from_millis(0);
        assert!(matches!(
            LoginExchange::start(now, &mut rng, "  ", "pw", DeviceKind::Phone, None, None),
            Err(LoginError::Input(_))
        ));
        assert!(matches!(
            LoginExchange::start(
                now,
                &mut rng,
                "a@b.example",
                "",
                DeviceKind::Phone,
                None,
                None
            ),
            Err(LoginError::Input(_))
        ));
        let (exchange, _) = LoginExchange::start(
            now,
            &mut rng,
            "a@b.example",
            "pw",
            DeviceKind::Phone,
            None,
            None,
        )
        .unwrap();
        let refused = exchange
            .clone()
            .finish(now, Message::Error(Refusal::InvalidCredentials.body()))
            .unwrap_err();
        assert!(matches!(
            refused,
            LoginError::Refused {
                disposition: Disposition::AskUser,
                ..
            }
        ));
        assert!(matches!(
            exchange.finish(now, Message::LoggedOut),
            Err(LoginError::Protocol(_))
        ));
    }
}
