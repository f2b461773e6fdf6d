//! Synthetic identifiers for tests and `kfr demo`: numbers that pass the rules of kfr-notes §7
//! but belong to nobody.
//!
//! Tests, the in-process mock fixtures and the demo all need valid numbers, and each used to carry
//! its own copy of the mod-11 arithmetic. They complete numbers here instead, with the weights of
//! [`super::rules`], so a number the generator makes is one the validator accepts by
//! construction. The generators are deterministic: tests that compare against specific values
//! rely on getting the same sequence on every run.
//!
//! Not test-gated because `kfr demo` (a shipped command) builds its population from it; nothing
//! on the production path calls it.

use super::rules::{K1_WEIGHTS, K2_WEIGHTS, ORG_WEIGHTS, weighted};

/// Digit values of `s`, which must be `N` ASCII digits (callers pass literals or `format!`s).
fn digits<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    assert!(
        b.len() == N && b.iter().all(u8::is_ascii_digit),
        "expected {N} digits, got {s:?}"
    );
    std::array::from_fn(|i| b[i] - b'0')
}

/// The check digit that brings `sum + digit` to remainder `target` mod 11, or `None` when that
/// digit would have to be 10 (such numbers are never issued).
fn check_digit(sum: u32, target: u32) -> Option<u32> {
    let c = (target + 11 - sum % 11) % 11;
    (c != 10).then_some(c)
}

/// Nine digits (date part and individual number) completed with both check digits, under the
/// rule in force before 2032 (K1 remainder 0); `None` when a check digit would be 10.
pub fn complete_person(first9: &str) -> Option<String> {
    complete_person_k1(first9, 0)
}

/// Like [`complete_person`], but K1 chosen so that the weighted sum plus K1 leaves
/// `k1_remainder` (0..=3 pass the 2032 rule, higher values make a number it refuses).
pub fn complete_person_k1(first9: &str, k1_remainder: u32) -> Option<String> {
    let mut d: [u8; 10] = [0; 10];
    d[..9].copy_from_slice(&digits::<9>(first9));
    let k1 = check_digit(weighted(&d, &K1_WEIGHTS), k1_remainder)?;
    d[9] = k1 as u8;
    let k2 = check_digit(weighted(&d, &K2_WEIGHTS), 0)?;
    Some(format!("{first9}{k1}{k2}"))
}

/// Eight digits completed with the organisation number's check digit; `None` when it would be 10.
pub fn complete_org(first8: &str) -> Option<String> {
    let c = check_digit(weighted(&digits::<8>(first8), &ORG_WEIGHTS), 0)?;
    Some(format!("{first8}{c}"))
}

/// The first `n` numbers of one fixed Tenor series (born 15.09.86, month + 80, individual numbers
/// 100 upwards): synthetic fødselsnumre, valid under the test policy and refused in prod. Holds
/// about 740 numbers; asking for more panics.
pub fn tenor_series(n: usize) -> Vec<String> {
    let out: Vec<String> = (100..999)
        .filter_map(|i| complete_person(&format!("158986{i}")))
        .take(n)
        .collect();
    assert_eq!(out.len(), n, "the Tenor series holds fewer than {n} numbers");
    out
}

/// The `n`th number (from 0) of [`tenor_series`].
pub fn tenor_person(n: usize) -> String {
    tenor_series(n + 1).pop().expect("tenor_series returns n + 1 numbers")
}

/// `n` distinct synthetic (Tenor, month + 80) fødselsnumre born in year `seed % 100`, so series
/// of distinct seeds (0..100) never overlap: days 1..=28 and months walk with a serial number,
/// individual numbers 000..=999.
pub fn tenor_born(seed: u32, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut serial = 0u32;
    while out.len() < n {
        serial += 1;
        let (day, month, ind) = (1 + serial / 1000 % 28, 81 + serial / 28_000 % 12, serial % 1000);
        if let Some(id) = complete_person(&format!("{day:02}{month:02}{:02}{ind:03}", seed % 100)) {
            out.push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CustomerId, IdKind, IdPolicy};

    #[test]
    fn completed_numbers_are_what_the_validator_accepts() {
        // Published examples: the generator must reproduce their check digits.
        assert_eq!(complete_person("020132999").as_deref(), Some("02013299997"));
        assert_eq!(complete_person("151086950").as_deref(), Some("15108695088"));
        assert_eq!(complete_org("91696019").as_deref(), Some("916960190"));
        for id in tenor_series(50).iter().chain(&tenor_born(7, 50)) {
            let kind = CustomerId::parse(id, &IdPolicy::test()).unwrap().kind();
            assert_eq!(kind, IdKind::SyntheticFodselsnummer, "{id}");
            assert!(CustomerId::parse(id, &IdPolicy::prod()).is_err(), "{id}");
        }
    }

    #[test]
    fn series_are_stable_and_distinct() {
        let s = tenor_series(30);
        assert_eq!(tenor_person(29), s[29]);
        assert_eq!(tenor_born(1, 100), tenor_born(1, 100));
        let mut all: Vec<String> = [s, tenor_born(1, 100), tenor_born(2, 100)].concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 230);
    }
}
