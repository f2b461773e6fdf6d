//! [`IdError`]: why an identifier was refused, one variant per rule of kfr-notes §7.
//!
//! Invariant: no variant stores the input, so `Display` can never print a full person
//! identifier. The most an error says about the number is its day and month (needed to explain a
//! date rule) or a single digit; logs and `kfr validate` output add the masked input themselves.

use super::IdKind;

/// An identifier that is malformed, fails a check digit or date rule, or is a kind the policy
/// does not accept. Branch on the variant; show the `Display` text to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A character other than an ASCII digit (separators are not accepted: KFR wants bare digits).
    #[error("character {position} is not a digit 0-9")]
    NotDigit { position: usize },
    #[error("must be 9 or 11 digits, got {got}")]
    Length { got: usize },
    #[error("organisation number must start with 8 or 9 (2 or 3 for test organisations), got {first}")]
    OrgPrefix { first: u8 },
    #[error("organisation number has no valid check digit (weighted sum mod 11 is 1)")]
    OrgNoCheckDigit,
    #[error("organisation number check digit does not match")]
    OrgCheckDigit,
    /// `day` is the two first digits as written (D-numbers add 40 to the day).
    #[error("day {day:02} is not a day (01-31, or 41-71 for a D-number)")]
    Day { day: u8 },
    /// `month` is the third and fourth digits as written.
    #[error("month {month:02} is not a month (01-12, or 41-52 / 81-92 with a test offset)")]
    Month { month: u8 },
    /// Day and month after removing the D-number and test offsets.
    #[error("{day:02}.{month:02} is not a date")]
    NotADate { day: u8, month: u8 },
    #[error("29.02 is not a date in a year not divisible by 4")]
    NotLeapYear,
    #[error("first check digit does not match")]
    FirstCheckDigit,
    #[error("second check digit does not match")]
    SecondCheckDigit,
    #[error("H-number: not a KFR customer identifier (NAV/health +40 month)")]
    HNumberNotAllowed,
    #[error("FH-number: not a KFR customer identifier")]
    FhNumberNotAllowed,
    #[error("synthetic identity not allowed ({}): allow_synthetic_ids is off, as in prod", kind.label())]
    SyntheticNotAllowed { kind: IdKind },
}

impl IdError {
    /// A stable machine-readable name for the rule (used by `kfr validate --json`).
    pub fn code(&self) -> &'static str {
        match self {
            IdError::NotDigit { .. } => "not_digit",
            IdError::Length { .. } => "length",
            IdError::OrgPrefix { .. } => "org_prefix",
            IdError::OrgNoCheckDigit => "org_no_check_digit",
            IdError::OrgCheckDigit => "org_check_digit",
            IdError::Day { .. } => "day",
            IdError::Month { .. } => "month",
            IdError::NotADate { .. } => "not_a_date",
            IdError::NotLeapYear => "not_leap_year",
            IdError::FirstCheckDigit => "first_check_digit",
            IdError::SecondCheckDigit => "second_check_digit",
            IdError::HNumberNotAllowed => "h_number_not_allowed",
            IdError::FhNumberNotAllowed => "fh_number_not_allowed",
            IdError::SyntheticNotAllowed { .. } => "synthetic_not_allowed",
        }
    }

    /// True when the number itself is well-formed and only the policy refused it.
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            IdError::HNumberNotAllowed | IdError::FhNumberNotAllowed | IdError::SyntheticNotAllowed { .. }
        )
    }
}

impl crate::error::Hinted for IdError {
    fn hint(&self) -> Option<String> {
        match self {
            IdError::HNumberNotAllowed | IdError::FhNumberNotAllowed => {
                Some("for a test run that needs them, set allow_h_numbers = true (KFR_ALLOW_H_NUMBERS)".into())
            }
            IdError::SyntheticNotAllowed { .. } => Some(
                "synthetic identities belong in test environments: check --env, or set allow_synthetic_ids = true"
                    .into(),
            ),
            IdError::NotDigit { .. } => Some("write identifiers as bare digits, without spaces or dashes".into()),
            _ => None,
        }
    }
}
