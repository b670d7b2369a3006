//! The sensitive-data guard.
//!
//! The privacy policy asks customers not to send sensitive personal
//! information, so services run free-text fields (notes, job titles, ticket
//! bodies, ...) through [`check`] or [`check_fields`] and refuse values that
//! contain any.
//!
//! A false positive refuses a legitimate business note, so every detector
//! needs structure *and* a checksum or registry rule before it reports
//! anything:
//!
//! - **Payment cards**: 13–19 digits, optionally grouped by single spaces or
//!   hyphens, with a known issuer prefix and length, passing the Luhn check.
//!   The number must not be part of a longer digit run (so long references and
//!   phone numbers starting with `+` are ignored), except that a short trailing
//!   group of at most three digits (an expiry or CVV pasted after a card) is
//!   split off.
//! - **US Social Security numbers**: only the grouped `AAA-GG-SSSS` form
//!   (hyphens or spaces), excluding ranges the SSA never issues. Nine bare
//!   digits are *not* flagged: SSNs carry no checksum, and nine-digit order
//!   numbers, tracking codes, routing numbers and subscriber numbers are far
//!   more common in business notes than SSNs, so the range exclusions alone
//!   would refuse many legitimate notes.
//! - **IBANs**: country code, check digits and BBAN, compact or in groups of
//!   four, any case, validated with `iban_validate` (mod-97 and the
//!   country's BBAN format). Digits inside a validated IBAN are attributed to
//!   the IBAN, never re-reported as a card or another number.
//! - **UK National Insurance numbers**: HMRC's prefix rules, six digits and an
//!   `A`–`D` suffix. Spacing is accepted in upper case only: lower-case
//!   spaced forms (`ab 12 34 56 c`) collide with ordinary prose.
//!
//! Nothing here ever copies a matched value into a [`Finding`], an error, a
//! log line or a panic message: a finding names the kind and nothing else.

use std::fmt;
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// The kind of sensitive data found. Display gives a human phrase ("payment
/// card number").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SensitiveKind {
    PaymentCard,
    UsSocialSecurityNumber,
    Iban,
    UkNationalInsuranceNumber,
}

impl SensitiveKind {
    /// Every kind, in the order [`scan`] reports them.
    pub const ALL: [SensitiveKind; 4] = [
        SensitiveKind::PaymentCard,
        SensitiveKind::UsSocialSecurityNumber,
        SensitiveKind::Iban,
        SensitiveKind::UkNationalInsuranceNumber,
    ];

    /// A stable snake_case code for machine use (error details, metrics).
    pub fn as_str(&self) -> &'static str {
        match self {
            SensitiveKind::PaymentCard => "payment_card",
            SensitiveKind::UsSocialSecurityNumber => "us_ssn",
            SensitiveKind::Iban => "iban",
            SensitiveKind::UkNationalInsuranceNumber => "uk_nino",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for SensitiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SensitiveKind::PaymentCard => "payment card number",
            SensitiveKind::UsSocialSecurityNumber => "US Social Security number",
            SensitiveKind::Iban => "IBAN",
            SensitiveKind::UkNationalInsuranceNumber => "UK National Insurance number",
        })
    }
}

/// A finding: which kind. It never carries the matched value or its
/// position, so it is safe to log and to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: SensitiveKind,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sensitive data detected: {}", self.kind)
    }
}

impl std::error::Error for Finding {}

/// Scans text; returns every distinct kind found (deduplicated, in the order
/// of [`SensitiveKind::ALL`]).
pub fn scan(text: &str) -> Vec<Finding> {
    let found = detect(text);
    SensitiveKind::ALL
        .into_iter()
        .filter(|kind| found.contains(*kind))
        .map(|kind| Finding { kind })
        .collect()
}

/// First finding, for callers that refuse on any.
pub fn check(text: &str) -> Result<(), Finding> {
    match scan(text).into_iter().next() {
        Some(finding) => Err(finding),
        None => Ok(()),
    }
}

/// Checks several named fields at once: returns `(field_name, kind)` for each
/// field with a finding, one entry per field (its first kind, as [`check`]
/// reports it), in input order.
pub fn check_fields<'a>(fields: &[(&'a str, &str)]) -> Vec<(&'a str, SensitiveKind)> {
    fields
        .iter()
        .filter_map(|&(name, value)| check(value).err().map(|finding| (name, finding.kind)))
        .collect()
}

// Fewest ASCII digits each detector needs; counting digits is far cheaper
// than running the regexes, and most free text has few.
const IBAN_MIN_DIGITS: usize = 2; // Only the check digits are always numeric.
const NINO_DIGITS: usize = 6;
const SSN_DIGITS: usize = 9;
const CARD_MIN_DIGITS: usize = 13;
const CARD_MAX_DIGITS: usize = 19;
const IBAN_MAX_LEN: usize = 34;

// The regexes spell ASCII classes out instead of using `\d`, `\b` or `(?i)`:
// Unicode digits and case folding (the Kelvin sign folds to `k`) would let
// non-ASCII text through to checks written for ASCII.
static IBAN_SHAPE: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r"[A-Za-z]{2}[0-9]{2}(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,3})?)",
    )
});
static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| compile(r"[0-9]+(?:[ -][0-9]+)*"));
// HMRC never issues D, F, I, Q, U, V as the first prefix letter, nor those
// and O as the second; the forbidden pairs are checked in code.
static NINO_SHAPE: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r"[A-CEGHJ-PR-TW-Za-ceghj-pr-tw-z][A-CEGHJ-NPR-TW-Za-ceghj-npr-tw-z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-Da-d]",
    )
});

fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).expect("guard regex pattern is valid")
}

/// The set of kinds found so far.
#[derive(Default, Clone, Copy)]
struct KindSet(u8);

impl KindSet {
    fn insert(&mut self, kind: SensitiveKind) {
        self.0 |= kind.bit();
    }

    fn contains(self, kind: SensitiveKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

fn detect(text: &str) -> KindSet {
    let mut found = KindSet::default();
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    if digits < IBAN_MIN_DIGITS {
        return found;
    }

    // IBANs go first so that their digits can be excluded from the other
    // detectors.
    let ibans = iban_spans(text);
    if !ibans.is_empty() {
        found.insert(SensitiveKind::Iban);
    }
    if digits >= SSN_DIGITS {
        scan_digit_runs(text, &ibans, digits >= CARD_MIN_DIGITS, &mut found);
    }
    if digits >= NINO_DIGITS && contains_nino(text, &ibans) {
        found.insert(SensitiveKind::UkNationalInsuranceNumber);
    }
    found
}

fn overlaps_any(spans: &[Range<usize>], range: &Range<usize>) -> bool {
    spans
        .iter()
        .any(|span| span.start < range.end && range.start < span.end)
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

// Token boundaries keep slices of longer identifiers, hashes and references
// from being read as a value of their own.
fn starts_token(bytes: &[u8], start: usize) -> bool {
    start == 0 || !is_word_byte(bytes[start - 1])
}

fn ends_token(bytes: &[u8], end: usize) -> bool {
    bytes.get(end).is_none_or(|&b| !is_word_byte(b))
}

fn is_whole_token(bytes: &[u8], start: usize, end: usize) -> bool {
    starts_token(bytes, start) && ends_token(bytes, end)
}

/// Whether a maximal digit run stands on its own as a number: not a token
/// fragment, not an international phone number (`+...`), and not one side of
/// a decimal or thousands separator.
fn digit_run_stands_alone(bytes: &[u8], start: usize, end: usize) -> bool {
    if !is_whole_token(bytes, start, end) {
        return false;
    }
    let at = |i: Option<usize>| i.and_then(|i| bytes.get(i).copied());
    let before = at(start.checked_sub(1));
    let before2 = at(start.checked_sub(2));
    let after = at(Some(end));
    let after2 = at(end.checked_add(1));
    let joins_number = |sep: Option<u8>, digit: Option<u8>| {
        matches!(sep, Some(b'.' | b',')) && digit.is_some_and(|d| d.is_ascii_digit())
    };
    before != Some(b'+') && !joins_number(before, before2) && !joins_number(after, after2)
}

/// Byte ranges of every valid IBAN in `text`.
fn iban_spans(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut at = 0;
    while let Some(m) = IBAN_SHAPE.find_at(text, at) {
        let end = starts_token(bytes, m.start())
            .then(|| longest_valid_iban(bytes, m.range()))
            .flatten();
        match end {
            Some(end) => {
                spans.push(m.start()..end);
                at = end;
            }
            // A rejected shape may hide a real IBAN starting inside it (say,
            // after a stray "AB12 "), so resume just after its first byte,
            // which is ASCII and hence a char boundary.
            None => at = m.start() + 1,
        }
    }
    spans
}

/// The end of the longest valid IBAN starting at `shape.start`. In the spaced
/// form the regex may have swallowed a following word or number as an extra
/// group, so shorter group-aligned prefixes are tried too.
fn longest_valid_iban(bytes: &[u8], shape: Range<usize>) -> Option<usize> {
    let start = shape.start;
    let group_ends = bytes[shape.clone()]
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b' ')
        .map(|(i, _)| start + i)
        .skip(1) // The first space only ends the check digits.
        .chain(std::iter::once(shape.end));
    let mut ends: Vec<usize> = group_ends.collect();
    ends.reverse();
    ends.into_iter()
        .find(|&end| ends_token(bytes, end) && is_valid_iban(&bytes[start..end]))
}

fn is_valid_iban(candidate: &[u8]) -> bool {
    let mut electronic = [0u8; IBAN_MAX_LEN];
    let mut len = 0;
    for &byte in candidate.iter().filter(|&&b| b != b' ') {
        let Some(slot) = electronic.get_mut(len) else {
            return false;
        };
        *slot = byte.to_ascii_uppercase();
        len += 1;
    }
    std::str::from_utf8(&electronic[..len]).is_ok_and(|iban| iban.parse::<iban::Iban>().is_ok())
}

fn scan_digit_runs(text: &str, ibans: &[Range<usize>], cards: bool, found: &mut KindSet) {
    let bytes = text.as_bytes();
    for m in DIGIT_RUN.find_iter(text) {
        // Byte length bounds the digit count, so short numbers (dates,
        // amounts, postal codes) are skipped before any work.
        if m.len() < SSN_DIGITS
            || overlaps_any(ibans, &m.range())
            || !digit_run_stands_alone(bytes, m.start(), m.end())
        {
            continue;
        }
        let run = DigitRun::parse(m.as_str());
        if run.is_ssn() {
            found.insert(SensitiveKind::UsSocialSecurityNumber);
        }
        if cards && run.has_card() {
            found.insert(SensitiveKind::PaymentCard);
        }
        if found.contains(SensitiveKind::PaymentCard)
            && found.contains(SensitiveKind::UsSocialSecurityNumber)
        {
            break;
        }
    }
}

/// Digits joined by single spaces or hyphens, split into its groups.
struct DigitRun<'t> {
    text: &'t str,
    /// Byte range of each digit group within `text`.
    groups: Vec<Range<usize>>,
}

impl<'t> DigitRun<'t> {
    fn parse(text: &'t str) -> Self {
        let mut groups = Vec::new();
        let mut start = 0;
        for (i, byte) in text.bytes().enumerate() {
            if !byte.is_ascii_digit() {
                groups.push(start..i);
                start = i + 1;
            }
        }
        groups.push(start..text.len());
        DigitRun { text, groups }
    }

    /// The separator after group `i`.
    fn separator(&self, i: usize) -> u8 {
        self.text.as_bytes()[self.groups[i].end]
    }

    /// Whether the first `count` groups are joined by one kind of separator;
    /// mixed separators read as separate numbers (a date and a time, say).
    fn uniform(&self, count: usize) -> bool {
        (1..count.saturating_sub(1)).all(|i| self.separator(i) == self.separator(0))
    }

    fn group_len(&self, i: usize) -> usize {
        self.groups[i].len()
    }

    fn group_value(&self, i: usize) -> u32 {
        digits_value(self.text[self.groups[i].clone()].bytes())
    }

    fn is_ssn(&self) -> bool {
        self.groups.len() == 3
            && [0, 1, 2].map(|i| self.group_len(i)) == [3, 2, 4]
            && self.uniform(3)
            && {
                let [area, group, serial] = [0, 1, 2].map(|i| self.group_value(i));
                // The SSA never issues area 000, 666 or 900-999, group 00 or
                // serial 0000.
                area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
            }
    }

    fn has_card(&self) -> bool {
        let count = self.groups.len();
        if self.uniform(count) && self.is_card(count) {
            return true;
        }
        // A card followed by an expiry or CVV ("4111 1111 1111 1111 12/27")
        // joins into one longer run; split off the tail only when the group
        // after the card is too short to continue a list of 4-digit numbers,
        // and the card part itself is laid out like a card. A card spans at
        // most 19 groups, which also keeps a huge run like "1 1 1 ..." linear.
        (1..count.min(CARD_MAX_DIGITS + 1)).any(|kept| {
            self.group_len(kept) <= 3
                && self.uniform(kept)
                && self.card_layout(kept)
                && self.is_card(kept)
        })
    }

    /// Whether the first `count` groups look like a printed card: one block,
    /// blocks of four, or the 4-6-5 / 4-6-4 layout of Amex and Diners.
    fn card_layout(&self, count: usize) -> bool {
        let lens: Vec<usize> = (0..count).map(|i| self.group_len(i)).collect();
        match lens.as_slice() {
            [_] | [4, 6, 5] | [4, 6, 4] => true,
            [fours @ .., last] => fours.iter().all(|&len| len == 4) && (1..=4).contains(last),
            [] => false,
        }
    }

    /// Whether the first `count` groups form a payment card number.
    fn is_card(&self, count: usize) -> bool {
        let candidate = &self.text[..self.groups[count - 1].end];
        let digits: usize = (0..count).map(|i| self.group_len(i)).sum();
        (CARD_MIN_DIGITS..=CARD_MAX_DIGITS).contains(&digits)
            && has_known_issuer(candidate, digits)
            && luhn::valid(candidate)
    }
}

fn digits_value(digits: impl Iterator<Item = u8>) -> u32 {
    digits.fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
}

/// Whether the leading digits of `candidate` (digits and separators) name a
/// card scheme that issues numbers of length `len`.
fn has_known_issuer(candidate: &str, len: usize) -> bool {
    let prefix = |n: usize| digits_value(candidate.bytes().filter(u8::is_ascii_digit).take(n));
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    if p1 == 4 {
        // Visa
        matches!(len, 13 | 16 | 19)
    } else if p2 == 34 || p2 == 37 {
        // American Express
        len == 15
    } else if (300..=305).contains(&p3) || p4 == 3095 || matches!(p2, 36 | 38 | 39) {
        // Diners Club
        len >= 14
    } else if (3528..=3589).contains(&p4) {
        // JCB
        len >= 16
    } else if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
        // Mastercard
        len == 16
    } else if (2200..=2204).contains(&p4) {
        // Mir
        len >= 16
    } else {
        // Maestro (50, 56-69), which also covers Discover (6011, 644-649,
        // 65), UnionPay (62) and RuPay (60, 65).
        p2 == 50 || (56..=69).contains(&p2)
    }
}

fn contains_nino(text: &str, ibans: &[Range<usize>]) -> bool {
    let bytes = text.as_bytes();
    NINO_SHAPE.find_iter(text).any(|m| {
        let candidate = m.as_str().as_bytes();
        let prefix = [candidate[0], candidate[1]].map(|b| b.to_ascii_uppercase());
        let upper = candidate.iter().all(|b| !b.is_ascii_lowercase());
        let compact = !candidate.contains(&b' ');
        is_whole_token(bytes, m.start(), m.end())
            && !matches!(
                &prefix,
                b"BG" | b"GB" | b"KN" | b"NK" | b"NT" | b"TN" | b"ZZ"
            )
            && (upper || compact)
            && !overlaps_any(ibans, &m.range())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<SensitiveKind> {
        scan(text).into_iter().map(|f| f.kind).collect()
    }

    fn assert_only(kind: SensitiveKind, samples: &[&str]) {
        for sample in samples {
            assert_eq!(kinds(sample), [kind], "expected only {kind} in {sample:?}");
        }
    }

    fn assert_clean(samples: &[&str]) {
        for sample in samples {
            assert_eq!(kinds(sample), [], "expected nothing in {sample:?}");
        }
    }

    #[test]
    fn flags_cards_of_several_brands_and_separators() {
        assert_only(
            SensitiveKind::PaymentCard,
            &[
                "4111 1111 1111 1111",
                "card: 4111-1111-1111-1111, thanks",
                "4111111111111111",
                "old visa 4222222222222",
                "mc 5555 5555 5555 4444",
                "5105105105105100",
                "2-series 2223 0031 2200 3222",
                "amex 3782 822463 10005",
                "371449635398431",
                "discover 6011 1111 1111 1117",
                "6011-0009-9013-9424",
                "jcb 3530111333300000",
                "diners 3056 9309 0259 04",
                "unionpay 6200000000000005",
                "maestro 6759 6498 2643 8453",
            ],
        );
    }

    #[test]
    fn flags_card_followed_by_expiry_or_cvv() {
        assert_only(
            SensitiveKind::PaymentCard,
            &[
                "4111 1111 1111 1111 12/27",
                "4111-1111-1111-1111 123",
                "pay with 4111111111111111 05 27 cvv 123",
            ],
        );
    }

    #[test]
    fn ignores_numbers_that_are_not_cards() {
        assert_clean(&[
            // Luhn fails.
            "4111 1111 1111 1112",
            "4111111111111112",
            // Luhn passes but no issuer uses the prefix.
            "ref 1234567890123452",
            // Luhn passes but Amex numbers have 15 digits.
            "3704004405320131",
            // Part of a longer run or token.
            "41111111111111110",
            "acct 9 4111 1111 1111 1111",
            "id A4111111111111111",
            "sha 4111111111111111ab",
            // A list of 4-digit numbers whose first four happen to pass Luhn.
            "POs 4111 4112 4113 4110 4115",
            // A Luhn-valid Visa-like E.164 phone number.
            "+49 30 1234 56786",
            "+4930123456786",
            // Decimal amount.
            "EUR 4111111111111111.50",
        ]);
    }

    #[test]
    fn flags_ssn_with_hyphens_or_spaces() {
        assert_only(
            SensitiveKind::UsSocialSecurityNumber,
            &[
                "SSN 123-45-6789",
                "123 45 6789",
                "ssn:078-05-1120.",
                "(899-99-9999)",
            ],
        );
    }

    #[test]
    fn ignores_invalid_or_ambiguous_ssns() {
        assert_clean(&[
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            // Bare nine digits are deliberately not flagged.
            "123456789",
            // Mixed separators and longer runs.
            "123-45 6789",
            "1123-45-6789",
            "123-45-67890",
            "12-123-45-6789",
            "+1 123-45-6789",
        ]);
    }

    #[test]
    fn flags_ibans_compact_spaced_and_lower_case() {
        assert_only(
            SensitiveKind::Iban,
            &[
                "DE89 3704 0044 0532 0130 00",
                "IBAN: DE89370400440532013000.",
                "de89 3704 0044 0532 0130 00",
                "gb29nwbk60161331926819",
                "GB29 NWBK 6016 1331 9268 19",
                "GB82 WEST 1234 5698 7654 32",
                "FR14 2004 1010 0505 0001 3M02 606",
                "FR7630006000011234567890189",
                "nl91abna0417164300",
                // The spaced form swallowing the next word must not hide it.
                "BE68 5390 0754 7034 this is our account",
                "AB12 DE89 3704 0044 0532 0130 00",
            ],
        );
    }

    #[test]
    fn ignores_invalid_ibans() {
        assert_clean(&[
            // Bad checksum.
            "DE88 3704 0044 0532 0130 00",
            "DE88370400440532013000",
            // Right checksum, wrong length for the country.
            "DE89 3704 0044 0532 0130 001",
            // Unknown country.
            "XX89 3704 0044 0532 0130 00",
            // Part of a longer token.
            "ref XDE89370400440532013000",
        ]);
    }

    #[test]
    fn digits_inside_an_iban_are_not_reported_as_a_card() {
        // "6016 1331 9268 13" alone is a Luhn-valid Maestro-range number.
        assert_eq!(kinds("6016 1331 9268 13"), [SensitiveKind::PaymentCard]);
        assert_eq!(kinds("GB94 NWBK 6016 1331 9268 13"), [SensitiveKind::Iban]);
    }

    #[test]
    fn flags_uk_national_insurance_numbers() {
        assert_only(
            SensitiveKind::UkNationalInsuranceNumber,
            &[
                "NI: AB 12 34 56 C",
                "AB123456C",
                "JG 103659 A",
                "ab123456c",
                "(CE 99 88 77 D)",
            ],
        );
    }

    #[test]
    fn ignores_invalid_national_insurance_numbers() {
        assert_clean(&[
            // HMRC's own example uses the never-issued Q prefix.
            "QQ 12 34 56 C",
            "DA123456A",
            "AO123456A",
            "GB123456A",
            "NT 12 34 56 B",
            "ZZ123456A",
            // Suffix outside A-D.
            "AB123456E",
            // Part of a longer token.
            "XAB123456C",
            "AB123456CD",
            // Lower-case with spaces reads as prose.
            "re 12 34 56 a",
        ]);
    }

    #[test]
    fn ignores_ordinary_business_notes() {
        assert_clean(&[
            "call on 2024-05-01",
            "meeting 01/05/2024 at 14:30",
            "order 12345678",
            "Order #123456789012",
            "invoice 2024-000123 paid",
            "+49 30 123456",
            "+14155552671",
            "+1 415 555 2671",
            "+1 (415) 555-2671",
            "415-555-2671",
            "+44 20 7946 0958",
            "020 7946 0958",
            "030 1234567",
            "06 12 34 56 78",
            "PO 4111",
            "10115 Berlin",
            "SW1A 1AA London",
            "Beverly Hills 90210",
            "ZIP 94105-1234",
            "ISBN 978-3-16-148410-0",
            "version 1.2.3, build 20240501",
            "Revenue grew 12% to EUR 4,500,000 in Q3 2024.",
            "Head of Engineering",
            "Wholesale trade of machinery and equipment",
            "",
        ]);
    }

    #[test]
    fn reports_every_kind_once_in_stable_order() {
        let text = "NI AB123456C, iban DE89 3704 0044 0532 0130 00, \
                    ssn 123-45-6789, cards 5555555555554444 and 4111 1111 1111 1111";
        assert_eq!(
            kinds(text),
            [
                SensitiveKind::PaymentCard,
                SensitiveKind::UsSocialSecurityNumber,
                SensitiveKind::Iban,
                SensitiveKind::UkNationalInsuranceNumber,
            ]
        );
        assert_eq!(
            check(text),
            Err(Finding {
                kind: SensitiveKind::PaymentCard
            })
        );
    }

    #[test]
    fn check_passes_clean_text() {
        assert_eq!(check("please call back on Monday"), Ok(()));
        assert_eq!(
            check("ssn 123-45-6789"),
            Err(Finding {
                kind: SensitiveKind::UsSocialSecurityNumber
            })
        );
    }

    #[test]
    fn check_fields_names_the_offending_fields() {
        let fields = [
            ("job_title", "Accountant"),
            ("notes", "IBAN GB29 NWBK 6016 1331 9268 19"),
            ("nature_of_business", "Retail, est. 2004"),
            ("ticket_body", "my card is 4111 1111 1111 1111"),
        ];
        assert_eq!(
            check_fields(&fields),
            [
                ("notes", SensitiveKind::Iban),
                ("ticket_body", SensitiveKind::PaymentCard)
            ]
        );
        assert_eq!(check_fields(&[("notes", "all good")]), []);
    }

    #[test]
    fn findings_never_reveal_the_value() {
        let samples = [
            "4111 1111 1111 1111",
            "123-45-6789",
            "DE89370400440532013000",
            "AB 12 34 56 C",
        ];
        for sample in samples {
            let finding = check(sample).expect_err("sample is sensitive");
            for rendered in [
                format!("{finding:?}"),
                format!("{finding}"),
                format!("{:?}", finding.kind),
                format!("{}", finding.kind),
                finding.kind.as_str().to_owned(),
            ] {
                assert!(
                    !rendered.chars().any(|c| c.is_ascii_digit()),
                    "{rendered:?} leaks digits"
                );
            }
        }
    }

    #[test]
    fn kind_codes_and_phrases_are_stable() {
        let codes = SensitiveKind::ALL.map(|kind| kind.as_str());
        assert_eq!(codes, ["payment_card", "us_ssn", "iban", "uk_nino"]);
        assert_eq!(
            SensitiveKind::PaymentCard.to_string(),
            "payment card number"
        );
        assert_eq!(
            Finding {
                kind: SensitiveKind::Iban
            }
            .to_string(),
            "sensitive data detected: IBAN"
        );
    }

    #[test]
    fn large_near_miss_text_finds_nothing() {
        // Speed is measured by the guard benchmark, not here; this checks that
        // 64 KiB of near misses of every detector stay near misses.
        // Shapes that almost match every detector, repeated to 64 KiB.
        let unit = "AB12 3456 7890 1234 5678 9012 3456 78 ab 12 34 56 z \
                    4111 1111 1111 1112 123-45-678 +49 30 123456 ";
        let mut text = unit.repeat(32 * 1024 / unit.len() + 1);
        // One enormous digit run, and many IBAN-shaped near misses.
        text.push_str(&"1 ".repeat(8 * 1024));
        text.push_str(&"AB12 CDEF GHIJ KLMN ".repeat(16 * 1024 / 20));
        assert_eq!(kinds(&text), []);
    }
}
