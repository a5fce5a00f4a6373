//! Identifier newtypes, one per file.
//!
//! Owns: the shape every id takes (non-empty, at most [`MAX_ID_LEN`] bytes, no control
//! characters, no `/` because ids are joined with `/` into document keys).
//! Does not own: generating ids — ids come from the host (randomness is not the
//! core's business), see the crate docs.

mod call_id;
mod customer_id;
mod device_id;
mod event_id;
mod result_type_id;
mod tenant_id;
mod user_id;

pub use call_id::CallId;
pub use customer_id::CustomerId;
pub use device_id::DeviceId;
pub use event_id::EventId;
pub use result_type_id::ResultTypeId;
pub use tenant_id::TenantId;
pub use user_id::UserId;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not an acceptable id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which id it was meant to be.
        kind: &'static str,
    },
    /// The string was longer than [`MAX_ID_LEN`] bytes.
    #[error("{kind} is longer than {MAX_ID_LEN} bytes")]
    TooLong {
        /// Which id it was meant to be.
        kind: &'static str,
    },
    /// The string held a control character, white space or `/`.
    #[error("{kind} {value:?} holds a character ids may not contain (white space, control or '/')")]
    BadCharacter {
        /// Which id it was meant to be.
        kind: &'static str,
        /// The refused string.
        value: String,
    },
}

impl IdError {
    /// The error in Japanese, for the `messageJa` of a refusal (the English
    /// [`Display`](std::fmt::Display) text goes to `message` and the logs).
    pub fn message_ja(&self) -> String {
        match self {
            Self::Empty { kind } => format!("{}を入力してください", kind_ja(kind)),
            Self::TooLong { kind } => {
                format!("{}は{MAX_ID_LEN}バイト以内にしてください", kind_ja(kind))
            }
            Self::BadCharacter { kind, value } => format!(
                "{}「{value}」に使えない文字（空白、制御文字、/）が含まれています",
                kind_ja(kind)
            ),
        }
    }
}

/// What each kind of id is called in the Japanese UI.
fn kind_ja(kind: &str) -> &'static str {
    match kind {
        "call id" => "コールID",
        "customer id" => "顧客ID",
        "device id" => "端末ID",
        "event id" => "イベントID",
        "result type id" => "コール結果ID",
        "tenant id" => "テナントID",
        "user id" => "ユーザーID",
        _ => "ID",
    }
}

pub(crate) fn check_id(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
    }
    if value
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '/')
    {
        return Err(IdError::BadCharacter {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Declares a validated string id newtype. Used by the one-file-per-id modules.
macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, $crate::id::IdError> {
                let value = value.into();
                $crate::id::check_id($kind, &value)?;
                Ok(Self(value))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::id::IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::new(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use string_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_empty_long_and_separator_strings() {
        assert_eq!(CallId::new(""), Err(IdError::Empty { kind: "call id" }));
        assert!(matches!(
            CustomerId::new("x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong { .. })
        ));
        assert!(matches!(
            EventId::new("a/b"),
            Err(IdError::BadCharacter { .. })
        ));
        assert!(matches!(
            UserId::new("a b"),
            Err(IdError::BadCharacter { .. })
        ));
        assert_eq!(
            DeviceId::new("phone-1").map(|d| d.to_string()),
            Ok("phone-1".into())
        );
    }

    #[test]
    fn ids_refuse_bad_strings_when_deserialized() {
        let parsed: Result<TenantId, _> = serde_json::from_str("\"\"");
        assert!(parsed.is_err());
    }
}
