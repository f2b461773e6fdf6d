//! The arithmetic of kfr-notes §7: check digits, the date part, and the offsets that mark D-, H-,
//! FH- and synthetic numbers.
//!
//! Everything here works on digit values (`0..=9`) in fixed-size arrays: no allocation, no
//! parsing of text, no policy. [`classify_org`] and [`classify_person`] answer "which kind of
//! number is this, or which rule does it break"; whether that kind is welcome in the configured
//! environment is decided by [`super::IdPolicy`].
//!
//! Order of the checks for an 11-digit number: FH prefix, day, month, calendar date, then the two
//! check digits. Structure first, because "30.02 is not a date" tells the operator more than
//! "check digit does not match" when both are true.

use super::{IdError, IdKind};

/// Organisation number weights over digits 1-8 (kfr-notes §7).
pub(super) const ORG_WEIGHTS: [u32; 8] = [3, 2, 7, 6, 5, 4, 3, 2];
/// First check digit (K1) weights over digits 1-9.
pub(super) const K1_WEIGHTS: [u32; 9] = [3, 7, 6, 1, 8, 9, 4, 5, 2];
/// Second check digit (K2) weights over digits 1-10, i.e. including the number's actual K1.
pub(super) const K2_WEIGHTS: [u32; 10] = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// Σ weight × digit. Written as a plain loop over fixed-size arrays so the compiler unrolls it.
#[inline]
pub(super) fn weighted<const N: usize>(digits: &[u8], weights: &[u32; N]) -> u32 {
    let mut sum = 0;
    for i in 0..N {
        sum += u32::from(digits[i]) * weights[i];
    }
    sum
}

/// A 9-digit organisation number: prefix, then the mod-11 check digit.
pub(super) fn classify_org(d: &[u8; 9]) -> Result<IdKind, IdError> {
    // Real organisations are numbered from 8 and 9; the 2/3 series is what Norwegian test
    // environments (Tenor) hand out for synthetic organisations.
    let kind = match d[0] {
        8 | 9 => IdKind::OrgNumber,
        2 | 3 => IdKind::TestOrgNumber,
        first => return Err(IdError::OrgPrefix { first }),
    };
    let remainder = weighted(d, &ORG_WEIGHTS) % 11;
    // Remainder 1 would need check digit 10: such numbers are never issued.
    if remainder == 1 {
        return Err(IdError::OrgNoCheckDigit);
    }
    let check = if remainder == 0 { 0 } else { 11 - remainder };
    if u32::from(d[8]) != check {
        return Err(IdError::OrgCheckDigit);
    }
    Ok(kind)
}

/// An 11-digit person number (fødselsnummer, D-, H-, FH- or synthetic number).
pub(super) fn classify_person(d: &[u8; 11]) -> Result<IdKind, IdError> {
    // FH-numbers (the health sector's auxiliary numbers) start with 8 or 9 and carry no date;
    // a real day never starts with a digit above 7 (D-numbers reach 71).
    if d[0] >= 8 {
        check_digits(d)?;
        return Ok(IdKind::FhNumber);
    }

    let dd = d[0] * 10 + d[1];
    let (day, d_number) = if d[0] >= 4 { (dd - 40, true) } else { (dd, false) };
    if !(1..=31).contains(&day) {
        return Err(IdError::Day { day: dd });
    }

    // Month offsets: +40 is NAV's synthetic population and the health sector's H-number (the two
    // cannot be told apart, so both are "H-number"); +80 is Skatteetaten's Test-Norge/Tenor.
    let mm = d[2] * 10 + d[3];
    let (month, offset) = match mm {
        1..=12 => (mm, MonthOffset::None),
        41..=52 => (mm - 40, MonthOffset::H),
        81..=92 => (mm - 80, MonthOffset::Synthetic),
        _ => return Err(IdError::Month { month: mm }),
    };

    let yy = d[4] * 10 + d[5];
    check_date(day, month, yy)?;
    check_digits(d)?;

    Ok(match (offset, d_number) {
        (MonthOffset::H, _) => IdKind::HNumber,
        (MonthOffset::Synthetic, false) => IdKind::SyntheticFodselsnummer,
        (MonthOffset::Synthetic, true) => IdKind::SyntheticDNumber,
        (MonthOffset::None, false) => IdKind::Fodselsnummer,
        (MonthOffset::None, true) => IdKind::DNumber,
    })
}

#[derive(Clone, Copy)]
enum MonthOffset {
    None,
    H,
    Synthetic,
}

/// DDMM must be a real day in *some* century. The century is deliberately not inferred (the
/// individual number no longer encodes it from 2032), so the only year-dependent question is
/// 29 February, which needs a year divisible by 4; `00` counts as one (2000 was a leap year).
fn check_date(day: u8, month: u8, yy: u8) -> Result<(), IdError> {
    let last = match month {
        4 | 6 | 9 | 11 => 30,
        2 if yy.is_multiple_of(4) => 29,
        2 => {
            if day == 29 {
                return Err(IdError::NotLeapYear);
            }
            28
        }
        _ => 31,
    };
    if day > last {
        return Err(IdError::NotADate { day, month });
    }
    Ok(())
}

/// K1 under the rule in force from 1 January 2032, which also accepts every number issued before:
/// (weighted sum + K1) mod 11 must be 0, 1, 2 or 3. K2 keeps the old rule: remainder 0 only.
fn check_digits(d: &[u8; 11]) -> Result<(), IdError> {
    if (weighted(d, &K1_WEIGHTS) + u32::from(d[9])) % 11 > 3 {
        return Err(IdError::FirstCheckDigit);
    }
    if (weighted(d, &K2_WEIGHTS) + u32::from(d[10])) % 11 != 0 {
        return Err(IdError::SecondCheckDigit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits<const N: usize>(s: &str) -> [u8; N] {
        let mut d = [0; N];
        for (i, b) in s.bytes().enumerate() {
            d[i] = b - b'0';
        }
        d
    }

    fn person(s: &str) -> Result<IdKind, IdError> {
        classify_person(&digits(s))
    }

    fn org(s: &str) -> Result<IdKind, IdError> {
        classify_org(&digits(s))
    }

    #[test]
    fn k1_remainder_is_what_the_2032_rule_tolerates() {
        // 02013299997 is published as valid under both rules: its K1 remainder is 0.
        let d: [u8; 11] = digits("02013299997");
        assert_eq!((weighted(&d, &K1_WEIGHTS) + 9) % 11, 0);
        assert_eq!((weighted(&d, &K2_WEIGHTS) + 7) % 11, 0);
    }

    #[test]
    fn org_weights_match_a_known_number() {
        // 916960190: a real-series number whose check digit the rule computes as 0.
        assert_eq!(org("916960190"), Ok(IdKind::OrgNumber));
    }

    #[test]
    fn day_and_month_ranges() {
        assert_eq!(person("00013299997"), Err(IdError::Day { day: 0 }));
        assert_eq!(person("32013299997"), Err(IdError::Day { day: 32 }));
        assert_eq!(person("40013299997"), Err(IdError::Day { day: 40 }));
        assert_eq!(person("72013299997"), Err(IdError::Day { day: 72 }));
        assert_eq!(person("02003299997"), Err(IdError::Month { month: 0 }));
        assert_eq!(person("02133299997"), Err(IdError::Month { month: 13 }));
        assert_eq!(person("02533299997"), Err(IdError::Month { month: 53 }));
        assert_eq!(person("02933299997"), Err(IdError::Month { month: 93 }));
    }
}
