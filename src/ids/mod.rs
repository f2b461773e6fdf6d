//! Customer identifiers (kfr-notes §7): validated types, environment policy and log pseudonyms.
//!
//! A [`CustomerId`] only exists once its text has passed every local rule: 9 or 11 ASCII digits,
//! the check digit(s), the date part, and the [`IdPolicy`] of the configured environment. Code
//! that sends to KFR takes a `CustomerId`, so nothing malformed reaches the register (KFR's own
//! KFR-005 check stays the final word).
//!
//! Personal data: a person identifier is shown in full only by [`CustomerId::as_str`], which is
//! meant for the request body. `Display`, `Debug` and [`CustomerId::log`] print a keyed
//! pseudonym (see [`Pseudonymizer`]); [`IdError`] never carries the input; [`mask`] shows
//! rejected input with the identifying digits hidden.
//!
//! Layout: `rules` holds the arithmetic, `error` one error variant per rule, `mask` the display
//! rule for unvalidated input, `pseudonym` the keyed log names, [`synthetic`] valid numbers that
//! belong to nobody (tests and `kfr demo`). Design notes: docs/ids.md.

mod error;
mod mask;
mod pseudonym;
mod rules;
pub mod synthetic;

pub use error::IdError;
pub use mask::{mask, scrub};
pub use pseudonym::{PseudonymKeyError, Pseudonymizer, install_pseudonymizer};

use std::cmp::Ordering;
use std::fmt;

/// What kind of number a valid identifier is. The policy decides which kinds are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdKind {
    /// Organisasjonsnummer of a real organisation (first digit 8 or 9).
    OrgNumber,
    /// Synthetic test organisation (first digit 2 or 3), test environments only.
    TestOrgNumber,
    Fodselsnummer,
    /// D-nummer: 4 added to the first digit of the day.
    DNumber,
    /// Test-Norge/Tenor person: 80 added to the month.
    SyntheticFodselsnummer,
    /// Tenor D-number: day +40 and month +80.
    SyntheticDNumber,
    /// 40 added to the month: the health sector's H-number, also used by NAV's test population.
    HNumber,
    /// The health sector's FH-number: first digit 8 or 9, no date.
    FhNumber,
}

impl IdKind {
    /// Every kind, in declaration order (summaries list kinds in this order).
    pub const ALL: [IdKind; 8] = [
        IdKind::OrgNumber,
        IdKind::TestOrgNumber,
        IdKind::Fodselsnummer,
        IdKind::DNumber,
        IdKind::SyntheticFodselsnummer,
        IdKind::SyntheticDNumber,
        IdKind::HNumber,
        IdKind::FhNumber,
    ];

    /// A name for people.
    pub fn label(self) -> &'static str {
        match self {
            IdKind::OrgNumber => "organisation number",
            IdKind::TestOrgNumber => "test organisation number",
            IdKind::Fodselsnummer => "fødselsnummer",
            IdKind::DNumber => "D-number",
            IdKind::SyntheticFodselsnummer => "synthetic fødselsnummer",
            IdKind::SyntheticDNumber => "synthetic D-number",
            IdKind::HNumber => "H-number",
            IdKind::FhNumber => "FH-number",
        }
    }

    /// Everything except organisation numbers identifies a natural person.
    pub fn is_person(self) -> bool {
        !matches!(self, IdKind::OrgNumber | IdKind::TestOrgNumber)
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Which kinds of identifier are accepted (kfr-notes §7, "Policy").
///
/// Fødselsnummer, D-number and 8/9-prefixed organisation numbers are always accepted.
/// `allow_synthetic` adds Tenor (+80) persons and 2/3-prefixed test organisations;
/// `allow_h_numbers` adds H-numbers (+40) and FH-numbers, which KFR does not take as customers
/// but a test run may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPolicy {
    pub allow_synthetic: bool,
    pub allow_h_numbers: bool,
}

impl IdPolicy {
    /// Production: real identities only.
    pub fn prod() -> Self {
        Self {
            allow_synthetic: false,
            allow_h_numbers: false,
        }
    }

    /// Test and local environments: real and synthetic identities, still no H/FH numbers.
    pub fn test() -> Self {
        Self {
            allow_synthetic: true,
            allow_h_numbers: false,
        }
    }

    /// Ok when this policy accepts `kind`, otherwise the error naming the rule.
    pub fn check(&self, kind: IdKind) -> Result<(), IdError> {
        match kind {
            IdKind::OrgNumber | IdKind::Fodselsnummer | IdKind::DNumber => Ok(()),
            IdKind::TestOrgNumber | IdKind::SyntheticFodselsnummer | IdKind::SyntheticDNumber => {
                if self.allow_synthetic {
                    Ok(())
                } else {
                    Err(IdError::SyntheticNotAllowed { kind })
                }
            }
            IdKind::HNumber if !self.allow_h_numbers => Err(IdError::HNumberNotAllowed),
            IdKind::FhNumber if !self.allow_h_numbers => Err(IdError::FhNumberNotAllowed),
            IdKind::HNumber | IdKind::FhNumber => Ok(()),
        }
    }
}

/// A customer identifier that passed every local rule and the policy it was parsed under.
///
/// Stored inline (11 ASCII bytes + length + kind): parsing never allocates. Ordering and
/// equality are those of the digit string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CustomerId {
    /// ASCII digits; bytes past `len` are zero.
    digits: [u8; 11],
    len: u8,
    kind: IdKind,
}

impl CustomerId {
    /// Validates `input` (surrounding whitespace ignored) under `policy`.
    pub fn parse(input: &str, policy: &IdPolicy) -> Result<CustomerId, IdError> {
        let text = input.trim();
        let bytes = text.as_bytes();
        if let Some(at) = bytes.iter().position(|b| !b.is_ascii_digit()) {
            // Everything before `at` is ASCII, so `at` is a char boundary and a count of chars.
            return Err(IdError::NotDigit { position: at + 1 });
        }
        let mut values = [0u8; 11];
        let kind = match bytes.len() {
            9 => {
                let d: &mut [u8; 9] = (&mut values[..9]).try_into().expect("9 bytes");
                for (v, b) in d.iter_mut().zip(bytes) {
                    *v = b - b'0';
                }
                rules::classify_org(d)?
            }
            11 => {
                for (v, b) in values.iter_mut().zip(bytes) {
                    *v = b - b'0';
                }
                rules::classify_person(&values)?
            }
            _ => {
                return Err(IdError::Length {
                    got: text.chars().count(),
                });
            }
        };
        policy.check(kind)?;
        let mut digits = [0u8; 11];
        digits[..bytes.len()].copy_from_slice(bytes);
        Ok(CustomerId {
            digits,
            len: bytes.len() as u8,
            kind,
        })
    }

    /// All digits. For the KFR request only: never log this for a person (use [`Self::log`]).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.digits[..usize::from(self.len)]).expect("validated ASCII digits")
    }

    pub fn kind(&self) -> IdKind {
        self.kind
    }

    pub fn is_person(&self) -> bool {
        self.kind.is_person()
    }

    /// How this identifier appears in logs: organisation numbers in clear, persons as the
    /// pseudonym of the installed [`Pseudonymizer`] (the same text `kfr pseudonym` prints).
    pub fn log(&self) -> Logged<'_> {
        Logged(self)
    }
}

/// The log form of a [`CustomerId`]; see [`CustomerId::log`].
pub struct Logged<'a>(&'a CustomerId);

impl fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        pseudonym::global().write(self.0, f)
    }
}

/// Same as [`CustomerId::log`]: a person never appears in full.
impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.log().fmt(f)
    }
}

impl fmt::Debug for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerId({:?}, {})", self.kind, self.log())
    }
}

impl PartialOrd for CustomerId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CustomerId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

#[cfg(test)]
mod tests;
