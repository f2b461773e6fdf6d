//! [`mask`]: how unvalidated input is shown in messages without disclosing a person.
//!
//! Rejected input is by definition not a [`super::CustomerId`], so it cannot be pseudonymised;
//! it still has to appear in `kfr validate` output and in logs so the operator can find and fix
//! the line. The rule (reasoning in docs/ids.md):
//!
//! - Every character that is numeric in any script (not only ASCII `0-9`: full-width digits
//!   would otherwise slip through) counts as a digit.
//! - At most 4 digits in total: shown as written; nothing that short identifies a person.
//! - Exactly 9 digits, the first being 8 or 9: shown as written. That is an organisation
//!   number candidate (public data) and cannot be the start of a fødselsnummer or D-number,
//!   whose first digit is 0-7. Showing org numbers is what makes the output useful for them.
//! - Otherwise every digit except the last two is replaced by `*`. The first nine digits of a
//!   person number determine it almost completely (the check digits follow from them), and the
//!   first six are a birth date, so those are exactly what must not be shown. Non-digit
//!   characters stay: a stray letter, space or dash is usually the reason for the rejection.
//! - Control characters become `?` (the text goes to terminals and log files); input longer than
//!   32 characters is cut with `…`; empty input is shown as `(empty)`.

/// Longest input shown; longer input is cut, so a line holding a whole record is not echoed.
const MAX_CHARS: usize = 32;

/// The input trimmed and masked for display; never contains a full 11-digit person identifier.
pub fn mask(raw: &str) -> String {
    let text = raw.trim();
    if text.is_empty() {
        return "(empty)".to_owned();
    }
    let digits = text.chars().filter(|c| c.is_numeric()).count();
    let first_digit = text.chars().find(|c| c.is_numeric());
    let reveal_all = digits <= 4 || (digits == 9 && matches!(first_digit, Some('8' | '9')));
    let shown_from = if reveal_all { 0 } else { digits.saturating_sub(2) };

    let mut out = String::with_capacity(text.len().min(MAX_CHARS * 4) + 3);
    let mut seen = 0;
    for (n, c) in text.chars().enumerate() {
        if n == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_numeric() {
            out.push(if seen >= shown_from { c } else { '*' });
            seen += 1;
        } else if c.is_control() {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Text from a server (or anyone else) with every run of nine or more digits passed through [`mask`]: a person's
/// number (11 digits) is never shown in full, an organisation number stays readable.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= 9 {
            out.push_str(&mask(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_numeric() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn person_numbers_show_only_the_last_two_digits() {
        assert_eq!(mask("15108695088"), "*********88");
        assert_eq!(mask("  15108695088\r\n"), "*********88");
        // A number with a stray separator still hides the date and individual number.
        assert_eq!(mask("151086-95088"), "******-***88");
        assert_eq!(mask("15108695088x"), "*********88x");
    }

    #[test]
    fn near_miss_lengths_are_masked_too() {
        // A leading zero lost in a spreadsheet: 10 digits, still nearly the whole person.
        assert_eq!(mask("2013299997"), "********97");
        assert_eq!(mask("020132999971"), "**********71");
        // Nine digits that could be the start of a person number (first digit 0-7).
        assert_eq!(mask("020132999"), "*******99");
        assert_eq!(mask("12345"), "***45");
    }

    #[test]
    fn org_number_candidates_and_short_input_are_shown() {
        assert_eq!(mask("916960191"), "916960191");
        assert_eq!(mask("916 960 191"), "916 960 191");
        assert_eq!(mask("n/a"), "n/a");
        assert_eq!(mask("12a4"), "12a4");
        assert_eq!(mask(""), "(empty)");
        assert_eq!(mask("   "), "(empty)");
    }

    #[test]
    fn non_ascii_digits_are_masked() {
        // Full-width digits of a person number.
        let wide = "１５１０８６９５０８８";
        assert_eq!(mask(wide), "*********８８");
    }

    #[test]
    fn control_characters_and_long_input() {
        assert_eq!(mask("ab\u{1b}[2Jc"), "ab?[2Jc");
        let long = "x".repeat(40);
        assert_eq!(mask(&long), format!("{}…", "x".repeat(32)));
    }
}
