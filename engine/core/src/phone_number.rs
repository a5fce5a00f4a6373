//! [`PhoneNumber`]: a Japanese telephone number, kept as written and compared normalized.
//!
//! Owns: parsing the formats people type (`03-1234-5678`, `090 1234 5678`,
//! `(06)1234-5678`, `+81-3-1234-5678`, `0120-123-456`) and the normal form used to
//! compare them (domestic digits only: `0312345678`).
//! Does not own: dialing or carrier rules.

use serde::{Deserialize, Serialize};

/// A phone number as written, with its normal form (domestic digits, leading `0`).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS), ts(type = "string"))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber {
    written: String,
    digits: String,
}

/// Why a string is not a Japanese phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{written:?} is not a Japanese phone number (10 or 11 digits starting with 0, or +81 and 9 or 10 digits)"
)]
pub struct PhoneNumberError {
    /// What was given.
    pub written: String,
}

impl PhoneNumber {
    /// Parses a number in any of the usual Japanese ways of writing it.
    pub fn parse(written: &str) -> Result<Self, PhoneNumberError> {
        let trimmed = written.trim();
        let bad = || PhoneNumberError {
            written: written.to_owned(),
        };
        let mut digits = String::with_capacity(12);
        let mut rest = trimmed;
        if let Some(after) = trimmed.strip_prefix("+81") {
            digits.push('0');
            rest = after;
        }
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                // Full-width digits are common in Japanese input.
                '０'..='９' => digits.push(char::from(b'0' + (c as u32 - '０' as u32) as u8)),
                '-' | ' ' | '(' | ')' | '‐' | '－' | 'ー' | '　' => {}
                _ => return Err(bad()),
            }
        }
        // "+81-03-..." (a redundant trunk zero) is common; fold it.
        if trimmed.starts_with("+81") && digits.starts_with("00") {
            digits.remove(0);
        }
        let len_ok = matches!(digits.len(), 10 | 11);
        if !digits.starts_with('0') || digits.starts_with("00") || !len_ok {
            return Err(bad());
        }
        Ok(Self {
            written: trimmed.to_owned(),
            digits,
        })
    }

    /// The number as it was written.
    pub fn as_written(&self) -> &str {
        &self.written
    }

    /// The normal form: domestic digits only, e.g. `0312345678`.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// Whether two numbers reach the same line, however they were written.
    pub fn same_line(&self, other: &PhoneNumber) -> bool {
        self.digits == other.digits
    }
}

impl std::fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.written)
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = PhoneNumberError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PhoneNumber> for String {
    fn from(value: PhoneNumber) -> Self {
        value.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_ways_of_writing_a_number_normalize_to_the_same_digits() {
        for written in [
            "03-1234-5678",
            "(03)1234-5678",
            "+81-3-1234-5678",
            "+81 3 1234 5678",
            "０３－１２３４－５６７８",
        ] {
            assert_eq!(
                PhoneNumber::parse(written).map(|n| n.digits().to_owned()),
                Ok("0312345678".to_owned()),
                "{written}"
            );
        }
        assert_eq!(
            PhoneNumber::parse("090-1234-5678").map(|n| n.digits().len()),
            Ok(11)
        );
        assert_eq!(
            PhoneNumber::parse("0120-123-456").map(|n| n.digits().len()),
            Ok(10)
        );
    }

    #[test]
    fn things_that_are_not_japanese_numbers_are_refused() {
        for written in [
            "12-34",
            "",
            "03-1234-567",
            "03-1234-56789-0",
            "tel:0312345678",
            "0012-345-6789",
            "+1-212-555-0100",
        ] {
            assert!(PhoneNumber::parse(written).is_err(), "{written}");
        }
    }
}
