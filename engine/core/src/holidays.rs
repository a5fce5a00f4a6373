//! Holiday tables: the days a tenant does not work, as plugins receive them.
//!
//! Owns: reading a table (`date,name` lines, `#` comments, an optional header) into
//! sorted dates, refusing anything else with the line it found, and the Japanese
//! public holidays a tenant in Japan starts with (`fixtures/holidays/japan.csv`).

use chrono::NaiveDate;

/// Japanese public holidays for 2026 and 2027, as shipped.
pub const JAPAN_CSV: &str = include_str!("../../../fixtures/holidays/japan.csv");

/// Most dates a table may hold (about 30 years of any country's holidays).
pub const MAX_HOLIDAYS: usize = 1_000;

/// A holiday table that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HolidayError {
    /// A line that is not `YYYY-MM-DD[,name]`.
    #[error("line {line}: `{text}` is not `YYYY-MM-DD,name`")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The line (cut to 80 characters).
        text: String,
    },
    /// More dates than [`MAX_HOLIDAYS`].
    #[error("more than {MAX_HOLIDAYS} holidays")]
    TooMany,
}

impl HolidayError {
    /// The message in Japanese.
    pub fn message_ja(&self) -> String {
        match self {
            Self::BadLine { line, text } => {
                format!("{line} 行目「{text}」は YYYY-MM-DD,名前 の形ではありません")
            }
            Self::TooMany => format!("休日が {MAX_HOLIDAYS} 件を超えています"),
        }
    }
}

/// The dates of a holiday table, sorted and without repeats.
pub fn parse(table: &str) -> Result<Vec<NaiveDate>, HolidayError> {
    let mut dates = Vec::new();
    for (index, line) in table.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || (index == 0 || dates.is_empty()) && line.starts_with("date")
        {
            continue;
        }
        let date_text = line.split(',').next().unwrap_or_default().trim();
        let date = NaiveDate::parse_from_str(date_text, "%Y-%m-%d").map_err(|_| {
            HolidayError::BadLine {
                line: index + 1,
                text: line.chars().take(80).collect(),
            }
        })?;
        dates.push(date);
        if dates.len() > MAX_HOLIDAYS {
            return Err(HolidayError::TooMany);
        }
    }
    dates.sort();
    dates.dedup();
    Ok(dates)
}

/// The shipped Japanese table.
pub fn japan() -> Vec<NaiveDate> {
    // The shipped table is checked by this module's tests; it always parses.
    parse(JAPAN_CSV).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_japanese_table_parses_and_includes_golden_week() {
        let dates = parse(JAPAN_CSV).unwrap();
        assert_eq!(dates.len(), 35);
        assert!(dates.contains(&NaiveDate::from_ymd_opt(2026, 5, 6).unwrap()));
        assert!(dates.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = parse("date,name\n2026-01-01,元日\n2026-13-01,nope\n").unwrap_err();
        assert_eq!(
            err,
            HolidayError::BadLine {
                line: 3,
                text: "2026-13-01,nope".to_owned()
            }
        );
    }
}
