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
//!   split off. Dots and slashes (`4111.1111.1111.1111`, `4111/1111/...`)
//!   count as group separators only when the whole number is laid out like a
//!   printed card (blocks of four, or Amex's 4-6-5 and Diners' 4-6-4) with one
//!   separator throughout, so dates, versions, IP addresses and amounts stay
//!   clean. A `+` marks a phone number only where it starts a token: in
//!   `ann+4111...@example.com` it is an email sub-address, and `@` ends the
//!   local part like any other token boundary.
//! - **US Social Security numbers**: the grouped `AAA-GG-SSSS` form (hyphens
//!   or spaces), excluding ranges the SSA never issues. Nine bare digits
//!   (`123456789`) are flagged only when a context word stands shortly
//!   before them (ending at most 40 bytes before): `ssn`, `social security`, `soc. sec`,
//!   `ss#` or `tin`, case-insensitively, as whole words. SSNs carry no
//!   checksum, and nine-digit order numbers, tracking codes, routing numbers
//!   and subscriber numbers are far more common in business notes than SSNs,
//!   so the range exclusions alone would refuse many legitimate notes
//!   (`Order 123456789`); a context word after the number does not count.
//! - **IBANs**: country code, check digits and BBAN, compact or in groups of
//!   four separated by spaces or hyphens, any case, validated with
//!   `iban_validate` (mod-97 and the country's BBAN format). Digits inside a
//!   validated IBAN are attributed to the IBAN, never re-reported as a card
//!   or another number.
//! - **UK National Insurance numbers**: HMRC's prefix rules, six digits and an
//!   `A`–`D` suffix. Spacing is accepted in upper case only: lower-case
//!   spaced forms (`ab 12 34 56 c`) collide with ordinary prose.
//!
//! # Folding before scanning
//!
//! The detectors read ASCII. So that a value cannot slip past them by its
//! spelling, text containing anything but plain ASCII is first folded
//! (ASCII text is folded only when it has a control character, or white
//! space other than one plain space between two digits; otherwise it is
//! scanned as is, which keeps the common case fast):
//!
//! - NFKC: full-width and other compatibility forms become ASCII
//!   (`４１１１` is `4111`), no-break and other fixed-width spaces become
//!   spaces;
//! - invisible characters are removed: format characters (Cf: zero-width
//!   space and joiners, soft hyphen, BOM, bidirectional controls, ...),
//!   other default-ignorable code points and control characters, as listed
//!   at [`crate::normalize`]'s `is_invisible`;
//! - every Unicode dash and hyphen (`‐ ‑ ‒ – — ―`, minus sign, ...) becomes
//!   `-`, and every space separator (Zs) a space;
//! - dot-like (`·`, `。`, dot operators) and slash-like (division and
//!   fraction slashes) characters become `.` and `/`;
//! - decimal digits of other scripts (Arabic-Indic, Devanagari, ...) become
//!   ASCII digits;
//! - combining marks on a digit are removed;
//! - a run of white space (spaces, tabs, line breaks) between two digits
//!   becomes one space, so a number broken over lines is one number.
//!
//! Nothing here ever copies a matched value into a [`Finding`], an error, a
//! log line or a panic message: a finding names the kind and nothing else.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::char::is_combining_mark;

use crate::normalize::is_invisible;

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

/// The longest line whose sensitive values are cut out one by one; a longer
/// line with a finding is replaced whole. Over-redacting is safe, and it
/// keeps the search (scans of windows of a line) bounded whatever the text.
const MAX_REDACT_LINE: usize = 4096;

/// Removes sensitive values from text that cannot be refused (mail that has
/// already arrived): each value is replaced by "[redacted <kind>]". Returns
/// the text and the kinds removed; text without any is returned unchanged.
/// A redacted text is returned in its folded spelling (NFKC, unified
/// separators), which is how the values were found.
pub fn redact(text: &str) -> (String, Vec<SensitiveKind>) {
    let kinds: Vec<SensitiveKind> = scan(text).into_iter().map(|f| f.kind).collect();
    if kinds.is_empty() {
        return (text.to_owned(), kinds);
    }
    let folded = fold(text).into_owned();
    let lines: Vec<String> = folded
        .split('\n')
        .map(|line| {
            if check(line).is_ok() {
                line.to_owned()
            } else if line.len() > MAX_REDACT_LINE {
                format!("[redacted {}]", scan(line)[0].kind)
            } else {
                redact_line(line)
            }
        })
        .collect();
    let mut out = lines.join("\n");
    // A value split over lines in a way folding did not join is caught
    // here: what is left is redacted whole.
    if check(&out).is_err() {
        out = format!("[redacted {}]", scan(&out)[0].kind);
    }
    (out, kinds)
}

/// Cuts each sensitive value out of one line: the smallest window of words
/// that still holds a finding is replaced, until none is left.
fn redact_line(line: &str) -> String {
    let mut line = line.to_owned();
    for _ in 0..64 {
        let Err(finding) = check(&line) else {
            return line;
        };
        let words: Vec<(usize, usize)> = word_spans(&line);
        // The shortest prefix of words that holds a finding ends the window.
        let end = words
            .iter()
            .map(|&(_, end)| end)
            .find(|&end| check(&line[..end]).is_err())
            .unwrap_or(line.len());
        // Then drop words from the front while the finding stays.
        let start = words
            .iter()
            .map(|&(start, _)| start)
            .filter(|&start| start < end)
            .take_while(|&start| check(&line[start..end]).is_err())
            .last()
            .unwrap_or(0);
        let kind = check(&line[start..end])
            .err()
            .map_or(finding.kind, |f| f.kind);
        line.replace_range(start..end, &format!("[redacted {kind}]"));
    }
    if check(&line).is_err() {
        return format!("[redacted {}]", scan(&line)[0].kind);
    }
    line
}

/// Byte ranges of the space-separated words of a line.
fn word_spans(line: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c == ' ', start) {
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, line.len()));
    }
    spans
}

// Fewest ASCII digits each detector needs; counting digits is far cheaper
// than running the regexes, and most free text has few.
const IBAN_MIN_DIGITS: usize = 2; // Only the check digits are always numeric.
const NINO_DIGITS: usize = 6;
const SSN_DIGITS: usize = 9;
const CARD_MIN_DIGITS: usize = 13;
const CARD_MAX_DIGITS: usize = 19;
const IBAN_MAX_LEN: usize = 34;
/// How far before nine bare digits an SSN context word may stand, in bytes.
const SSN_CONTEXT_WINDOW: usize = 40;
/// Longer than any SSN context word ("social security" with some spacing).
const SSN_CONTEXT_MAX_WORD: usize = 24;

// The regexes spell ASCII classes out instead of using `\d`, `\b` or `(?i)`:
// Unicode digits and case folding (the Kelvin sign folds to `k`) would let
// non-ASCII text through to checks written for ASCII.
static IBAN_SHAPE: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r"[A-Za-z]{2}[0-9]{2}(?:[A-Za-z0-9]{11,30}|(?:[ -][A-Za-z0-9]{4}){2,7}(?:[ -][A-Za-z0-9]{1,3})?)",
    )
});
static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| compile(r"[0-9]+(?:[ -][0-9]+)*"));
// Digits grouped by dots or slashes: a card only in a card's layout.
static SEPARATED_RUN: LazyLock<Regex> = LazyLock::new(|| compile(r"[0-9]+(?:[./][0-9]+)+"));
// Words that announce an SSN, matched on bytes in ASCII case-insensitive
// mode; word boundaries are checked in code against the whole text.
static SSN_CONTEXT: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
    regex::bytes::Regex::new(r"(?i-u)ssns?|tins?|ss#|social[\s-]*security|soc\.?\s*sec(?:urity)?")
        .expect("guard regex pattern is valid")
});
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
    let folded = fold(text);
    let text = folded.as_ref();
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
    if digits >= CARD_MIN_DIGITS
        && !found.contains(SensitiveKind::PaymentCard)
        && contains_separated_card(text, &ibans)
    {
        found.insert(SensitiveKind::PaymentCard);
    }
    if digits >= NINO_DIGITS && contains_nino(text, &ibans) {
        found.insert(SensitiveKind::UkNationalInsuranceNumber);
    }
    found
}

/// Folds the spellings that hide a value from the ASCII detectors (see the
/// module documentation). Plain ASCII text without a control character or
/// unusual spacing between digits is returned as is.
fn fold(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        if ascii_needs_fold(text.as_bytes()) {
            Cow::Owned(fold_chars(text.chars(), text.len()))
        } else {
            Cow::Borrowed(text)
        }
    } else {
        Cow::Owned(fold_chars(text.nfkc(), text.len()))
    }
}

fn is_ascii_blank(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Whether [`fold_chars`] would change ASCII text: it drops control
/// characters other than white space, and turns white space between two
/// digits into one space.
fn ascii_needs_fold(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if is_ascii_blank(bytes[i]) {
            let start = i;
            while i < bytes.len() && is_ascii_blank(bytes[i]) {
                i += 1;
            }
            let between_digits = start > 0
                && bytes[start - 1].is_ascii_digit()
                && bytes.get(i).is_some_and(u8::is_ascii_digit);
            if between_digits && &bytes[start..i] != b" " {
                return true;
            }
        } else if bytes[i].is_ascii_control() {
            return true;
        } else {
            i += 1;
        }
    }
    false
}

/// White space after [`fold_char`]: spaces, tabs and line breaks.
fn is_blank(c: char) -> bool {
    c.is_ascii() && is_ascii_blank(c as u8)
}

/// Folds characters (already NFKC for non-ASCII text) into what the
/// detectors read, and joins digits separated by white space with one space.
fn fold_chars(chars: impl Iterator<Item = char>, capacity: usize) -> String {
    let mut out = String::with_capacity(capacity);
    // The white space seen since the last other character.
    let mut blanks = String::new();
    for c in chars.filter_map(fold_char) {
        if is_blank(c) {
            blanks.push(c);
            continue;
        }
        // A combining mark on a digit (`4\u{301}`, a keycap `4\u{20E3}`)
        // would split the number into one-digit tokens.
        if blanks.is_empty()
            && !c.is_ascii()
            && is_combining_mark(c)
            && out.ends_with(|p: char| p.is_ascii_digit())
        {
            continue;
        }
        if !blanks.is_empty() {
            if c.is_ascii_digit() && out.ends_with(|p: char| p.is_ascii_digit()) {
                out.push(' ');
            } else {
                out.push_str(&blanks);
            }
            blanks.clear();
        }
        out.push(c);
    }
    out.push_str(&blanks);
    out
}

/// One character as the detectors should read it; `None` drops it.
fn fold_char(c: char) -> Option<char> {
    Some(match c {
        '\t' | '\n' | '\x0b' | '\x0c' | '\r' => c,
        '\u{85}' | '\u{2028}' | '\u{2029}' => '\n',
        c if is_invisible(c) => return None,
        c if c.is_ascii() => c,
        // Unicode's Dash characters (hyphens, dashes, minus signs) and the
        // other Pd punctuation, as left by NFKC.
        '\u{058A}'
        | '\u{05BE}'
        | '\u{1400}'
        | '\u{1806}'
        | '\u{2010}'..='\u{2015}'
        | '\u{2053}'
        | '\u{207B}'
        | '\u{208B}'
        | '\u{2212}'
        | '\u{2E17}'
        | '\u{2E1A}'
        | '\u{2E3A}'
        | '\u{2E3B}'
        | '\u{2E40}'
        | '\u{2E5D}'
        | '\u{301C}'
        | '\u{3030}'
        | '\u{30A0}'
        | '\u{FE31}'
        | '\u{FE32}'
        | '\u{FE58}'
        | '\u{FE63}'
        | '\u{FF0D}'
        | '\u{10EAD}' => '-',
        // Space separators (Zs) that NFKC leaves as they are.
        '\u{A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' => {
            ' '
        }
        // Middle dots, dot operators, the ideographic full stop.
        '\u{B7}' | '\u{2027}' | '\u{2219}' | '\u{22C5}' | '\u{30FB}' | '\u{3002}' => '.',
        // Fraction, division and big solidus.
        '\u{2044}' | '\u{2215}' | '\u{29F8}' => '/',
        c => decimal_digit(c).unwrap_or(c),
    })
}

/// The zero of each block of ten decimal digits (general category Nd)
/// outside ASCII, from the Unicode Character Database; each block holds the
/// digits 0 to 9 in order. Blocks that NFKC already folds (full-width,
/// mathematical, segmented) are listed too, for text that skipped it.
const DIGIT_ZEROS: [u32; 65] = [
    0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6,
    0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50,
    0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The ASCII digit for a decimal digit of another script.
fn decimal_digit(c: char) -> Option<char> {
    let code = u32::from(c);
    let block = DIGIT_ZEROS.partition_point(|&zero| zero <= code);
    let zero = *DIGIT_ZEROS.get(block.checked_sub(1)?)?;
    let value = code - zero;
    (value < 10).then(|| char::from(b'0' + value as u8))
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
/// fragment, not an international phone number (`+...`, where the `+` starts
/// a token: after a word, as in `ann+4111...@`, it is an email sub-address),
/// and not one side of a decimal or thousands separator.
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
    let phone_prefix = before == Some(b'+') && starts_token(bytes, start - 1);
    !phone_prefix && !joins_number(before, before2) && !joins_number(after, after2)
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
        .filter(|&(_, &b)| is_group_separator(b))
        .map(|(i, _)| start + i)
        .skip(1) // The first space only ends the check digits.
        .chain(std::iter::once(shape.end));
    let mut ends: Vec<usize> = group_ends.collect();
    ends.reverse();
    ends.into_iter()
        .find(|&end| ends_token(bytes, end) && is_valid_iban(&bytes[start..end]))
}

fn is_group_separator(byte: u8) -> bool {
    byte == b' ' || byte == b'-'
}

fn is_valid_iban(candidate: &[u8]) -> bool {
    let mut electronic = [0u8; IBAN_MAX_LEN];
    let mut len = 0;
    for &byte in candidate.iter().filter(|&&b| !is_group_separator(b)) {
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
        if run.is_ssn() || (run.is_bare_ssn() && has_ssn_context(bytes, m.start())) {
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
            && is_issued_ssn(
                self.group_value(0),
                self.group_value(1),
                self.group_value(2),
            )
    }

    /// Nine digits in one group, in the ranges the SSA issues.
    fn is_bare_ssn(&self) -> bool {
        self.groups.len() == 1 && self.group_len(0) == SSN_DIGITS && {
            let digits = self.text.as_bytes();
            is_issued_ssn(
                digits_value(digits[..3].iter().copied()),
                digits_value(digits[3..5].iter().copied()),
                digits_value(digits[5..9].iter().copied()),
            )
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

/// The SSA never issues area 000, 666 or 900-999, group 00 or serial 0000.
fn is_issued_ssn(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Whether an SSN context word, as a whole word, ends at most
/// [`SSN_CONTEXT_WINDOW`] bytes before `start`.
fn has_ssn_context(bytes: &[u8], start: usize) -> bool {
    // Look a little further back, so that a long phrase ("social security")
    // ending inside the window is found whole.
    let from = start.saturating_sub(SSN_CONTEXT_WINDOW + SSN_CONTEXT_MAX_WORD);
    SSN_CONTEXT.find_iter(&bytes[from..start]).any(|m| {
        let (word_start, word_end) = (from + m.start(), from + m.end());
        if word_end + SSN_CONTEXT_WINDOW < start {
            return false;
        }
        // "ss#" ends in punctuation, so only words ending in a letter need
        // a boundary after them.
        let ends_word = bytes[word_end - 1] == b'#' || ends_token(bytes, word_end);
        starts_token(bytes, word_start) && ends_word
    })
}

/// Whether a run of digits grouped by dots or slashes is a payment card laid
/// out like a printed one: one separator throughout, blocks of four (or the
/// 4-6-5 / 4-6-4 layouts), standing alone. Dates (`01/05/2024`), versions
/// (`1.2.3.4`), IP addresses and amounts never have that layout.
fn contains_separated_card(text: &str, ibans: &[Range<usize>]) -> bool {
    let bytes = text.as_bytes();
    SEPARATED_RUN.find_iter(text).any(|m| {
        // The shortest card layout, 4-4-4-1, takes 16 bytes.
        if m.len() < CARD_MIN_DIGITS + 3
            || overlaps_any(ibans, &m.range())
            || !digit_run_stands_alone(bytes, m.start(), m.end())
        {
            return false;
        }
        let run = DigitRun::parse(m.as_str());
        let count = run.groups.len();
        count <= CARD_MAX_DIGITS
            && run.uniform(count)
            && run.card_layout(count)
            && run.is_card(count)
    })
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
    fn redaction_cuts_out_the_values_and_keeps_the_words() {
        let (text, kinds) = redact(
            "Hello,\nmy card 4111 1111 1111 1111 was charged twice.\nIBAN DE89 3704 0044 0532 0130 00 please.\nThanks, Ann",
        );
        assert_eq!(kinds, [SensitiveKind::PaymentCard, SensitiveKind::Iban]);
        assert!(!text.contains("4111") && !text.contains("3704"), "{text}");
        assert!(
            text.contains("my card [redacted payment card number] was charged twice."),
            "{text}"
        );
        assert!(text.contains("Thanks, Ann"), "{text}");
        assert!(check(&text).is_ok());
        // A card broken over lines and written in full-width digits.
        let (text, kinds) = redact("card ４１１１ １１１１\n１１１１ １１１１ end");
        assert_eq!(kinds, [SensitiveKind::PaymentCard]);
        assert!(check(&text).is_ok() && text.contains("end"), "{text}");
        // Nothing to redact: the text as it was, spelling and all.
        let clean = "Order ４２ shipped";
        assert_eq!(redact(clean), (clean.to_owned(), vec![]));
        // A huge line is replaced whole, quickly.
        let huge = format!("{} 4111111111111111", "word ".repeat(2000));
        let (text, _) = redact(&huge);
        assert_eq!(text, "[redacted payment card number]");
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
    fn flags_cards_hidden_by_unicode_formatting() {
        assert_only(
            SensitiveKind::PaymentCard,
            &[
                // Full-width digits, with ASCII or ideographic spaces.
                "４１１１ １１１１ １１１１ １１１１",
                "４１１１\u{3000}１１１１\u{3000}１１１１\u{3000}１１１１",
                "４１１１１１１１１１１１１１１１",
                // Zero-width and other invisible characters inside.
                "4111\u{200B}1111 1111 1111",
                "4111 1111\u{200C} 1111 1111",
                "4\u{200D}1\u{2060}1\u{FEFF}1111111111111",
                "4111\u{AD}1111\u{AD}1111\u{AD}1111",
                "card \u{202E}4111 1111 1111 1111",
                "4111\u{0}1111\u{7}1111 1111",
                // No-break and other fixed-width spaces as separators.
                "4111\u{A0}1111\u{A0}1111\u{A0}1111",
                "4111\u{202F}1111\u{202F}1111\u{202F}1111",
                "4111\u{2007}1111\u{2009}1111\u{2002}1111",
                // Unicode dashes as separators.
                "4111\u{2013}1111\u{2013}1111\u{2013}1111",
                "4111\u{2011}1111\u{2011}1111\u{2011}1111",
                "4111\u{FF0D}1111\u{FF0D}1111\u{FF0D}1111",
                // Digits of other scripts and mathematical digits.
                "\u{664}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661}",
                "\u{1D7F0}\u{1D7ED}\u{1D7ED}\u{1D7ED}111111111111",
                // Combining marks on the digits.
                "4\u{301}1\u{301}1\u{301}1\u{301} 1111 1111 1111",
                "4\u{20E3}1\u{20E3}1\u{20E3}1\u{20E3}111111111111",
            ],
        );
    }

    #[test]
    fn flags_cards_grouped_by_dots_slashes_or_line_breaks() {
        assert_only(
            SensitiveKind::PaymentCard,
            &[
                "4111.1111.1111.1111",
                "card 4111.1111.1111.1111.",
                "4111/1111/1111/1111",
                "(4111/1111/1111/1111)",
                "amex 3782.822463.10005",
                "diners 3056/930902/5904",
                "4222.2222.2222.2",
                "4111 1111\n1111 1111",
                "4111 1111\r\n1111 1111",
                "4111\n1111\n1111\n1111",
                "4111 1111 \n 1111 1111",
                "4111  1111\t1111   1111",
                "4111\u{2028}1111\u{2029}1111\u{85}1111",
                "4111\u{B7}1111\u{B7}1111\u{B7}1111",
                "4111\u{2215}1111\u{2215}1111\u{2215}1111",
                "４１１１．１１１１．１１１１．１１１１",
                "４１１１／１１１１／１１１１／１１１１",
            ],
        );
    }

    #[test]
    fn flags_cards_inside_email_addresses() {
        assert_only(
            SensitiveKind::PaymentCard,
            &[
                "4111111111111111@example.com",
                "mail 4111-1111-1111-1111@example.com",
                "ann.4111111111111111@example.com",
                "ann+4111111111111111@example.com",
                "ann+4111 1111 1111 1111",
                "４１１１１１１１１１１１１１１１＠example.com",
            ],
        );
    }

    #[test]
    fn flags_ssns_hidden_by_unicode_dashes() {
        assert_only(
            SensitiveKind::UsSocialSecurityNumber,
            &[
                "123\u{2010}45\u{2010}6789",
                "123\u{2011}45\u{2011}6789",
                "123\u{2012}45\u{2012}6789",
                "123\u{2013}45\u{2013}6789",
                "123\u{2014}45\u{2014}6789",
                "123\u{2212}45\u{2212}6789",
                "123\u{FF0D}45\u{FF0D}6789",
                "123\u{FE63}45\u{FE63}6789",
                "１２３－４５－６７８９",
                "123\u{A0}45\u{A0}6789",
                "123-45\u{200B}-6789",
            ],
        );
    }

    #[test]
    fn flags_bare_ssns_after_a_context_word() {
        assert_only(
            SensitiveKind::UsSocialSecurityNumber,
            &[
                "SSN 123456789",
                "ssn: 123456789",
                "SSNs on file: 123456789",
                "my social security number is 123456789",
                "Social-Security 123456789",
                "Soc. Sec. No. 123456789",
                "soc sec 123456789",
                "Soc. Security 123456789",
                "SS# 123456789",
                "ss#123456789",
                "TIN 123456789",
                "tin: １２３４５６７８９",
                "SSN\n123456789",
                // The phrase ends within the window, though it starts before.
                "Social   Security: the number on the card is 123456789",
            ],
        );
    }

    #[test]
    fn ignores_bare_nine_digits_without_context() {
        assert_clean(&[
            "Order 123456789",
            "tracking 123456789 shipped",
            "routing 021000021",
            "123456789",
            // The context word must come before, as a whole word.
            "123456789 is my ssn",
            "Martin 123456789",
            "meeting 123456789",
            "classn 123456789",
            "assn 123456789",
            // Too far before.
            "SSN requested, but the customer sent order number 123456789",
            // Never-issued ranges even with context.
            "SSN 000123456",
            "SSN 666123456",
            "SSN 900123456",
            "SSN 123006789",
            "SSN 123450000",
            // Not nine digits, or part of a longer number.
            "SSN 12345678",
            "SSN 1234567890",
            "SSN +123456789",
            "SSN 123456789.50",
        ]);
    }

    #[test]
    fn flags_ibans_with_dashes_and_unicode_formatting() {
        assert_only(
            SensitiveKind::Iban,
            &[
                "DE89-3704-0044-0532-0130-00",
                "iban: de89-3704-0044-0532-0130-00.",
                "GB29-NWBK-6016-1331-9268-19",
                "DE89\u{2011}3704\u{2011}0044\u{2011}0532\u{2011}0130\u{2011}00",
                "DE89\u{A0}3704\u{A0}0044\u{A0}0532\u{A0}0130\u{A0}00",
                "ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００",
                "DE89\u{200B}370400440532013000",
            ],
        );
    }

    #[test]
    fn flags_national_insurance_numbers_in_full_width() {
        assert_only(
            SensitiveKind::UkNationalInsuranceNumber,
            &[
                "ＡＢ１２３４５６Ｃ",
                "AB\u{200B}123456C",
                "AB\u{A0}12\u{A0}34\u{A0}56\u{A0}C",
            ],
        );
    }

    #[test]
    fn ignores_dates_versions_and_numbers_with_the_new_separators() {
        assert_clean(&[
            "1.2.3.4",
            "version 1.2.3.4",
            "v2024.05.01",
            "2024.05.01",
            "12/05/2024 10:30",
            "01/05/2024",
            "01.05.2024 – 31.05.2024",
            "1/2/3/4",
            "2024/2025/2026/2027",
            "192.168.100.200",
            "10.0.0.1/24",
            "EUR 1.234.567,89",
            "EUR 4.111.111.111.111",
            "3.14159265358979",
            "+49 30 1234 5678",
            "+49\u{A0}30\u{A0}1234\u{A0}5678",
            "Tel. 030/1234567",
            "Tel.: 0049 (0)30/1234-5678",
            "Fax 030 / 1234 567",
            "ISBN 978\u{2011}3\u{2011}16\u{2011}148410\u{2011}0",
            "order 12345678, shipped 2024\u{2013}05\u{2013}01",
            // Card-like layouts that fail Luhn, or have no issuer.
            "4111.1111.1111.1112",
            "4111/1111/1111/1112",
            "1234.5678.9012.3456",
            // Card layout but part of a longer dotted run or a decimal.
            "4111.1111.1111.1111.1111",
            "1.4111.1111.1111.1111",
            "4111.1111.1111.1111,50",
            // Mixed separators read as separate numbers.
            "4111.1111/1111.1111",
            "4111.1111.1111/1111",
            // Dotted, but not a card layout (a Luhn-valid Visa number).
            "41.11111111111111",
            "411111.1111111111",
            // IBAN-like but invalid, with dashes.
            "DE88-3704-0044-0532-0130-00",
            "XX89-3704-0044-0532-0130-00",
            "AB12-3456-7890-1234-5678",
            // Unicode text without sensitive data.
            "Grüße aus München, Straße 5",
            "Ｏｒｄｅｒ １２３４５６７８",
            "会議は2024年5月1日です",
            "Price: ٤٥٠ EUR",
            "\u{FEFF}Head of Engineering",
            "",
        ]);
    }

    #[test]
    fn folding_only_touches_what_it_must() {
        assert!(matches!(fold("plain ascii 4111 1111"), Cow::Borrowed(_)));
        assert!(matches!(
            fold("line\nbreak away from digits"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(fold("1.2.3 and 4/5"), Cow::Borrowed(_)));
        assert_eq!(fold("4111\n1111"), "4111 1111");
        assert_eq!(fold("4111 \r\n 1111"), "4111 1111");
        assert_eq!(fold("a\n\nb 1\n"), "a\n\nb 1\n");
        assert_eq!(fold("x\u{0}y"), "xy");
        assert_eq!(fold("１２３‐４５"), "123-45");
        assert_eq!(fold("a\u{A0}b\u{200B}c"), "a bc");
        assert_eq!(fold("\u{966}\u{96F}"), "09");
        assert_eq!(decimal_digit('a'), None);
        assert_eq!(decimal_digit('\u{65F}'), None);
        assert_eq!(decimal_digit('\u{66A}'), None);
        assert_eq!(decimal_digit('\u{1FBF9}'), Some('9'));
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

    #[test]
    fn large_unicode_near_miss_text_finds_nothing() {
        // The same for text that takes the folding path: near misses spelled
        // with full-width digits, Unicode dashes and spaces, invisible
        // characters, dots and slashes.
        let unit = "ＡＢ１２ ３４５６ ７８９０ １２３４ ５６７８ ９０１２ ３４ ab 12 34 56 z \
                    ４１１１\u{A0}１１１１\u{A0}１１１１\u{A0}１１１２ １２３‐４５‐６７８ \
                    4111\u{200B}1111.1111.1112 DE88\u{2011}3704\u{2011}0044\u{2011}0532\u{2011}0130\u{2011}00 \
                    Order 123456789 12/05/2024 v1.2.3.4 +49\u{202F}30\u{202F}123456 ";
        let text = unit.repeat(64 * 1024 / unit.len() + 1);
        assert_eq!(kinds(&text), []);
    }
}
