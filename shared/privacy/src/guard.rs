//! The sensitive-data guard.
//!
//! The privacy policy asks customers not to send sensitive personal
//! information, so services run free-text fields (notes, job titles, ticket
//! bodies, ...) through [`check`] or [`check_fields`] and refuse values that
//! contain any, or through [`redact`] where the text has already arrived.
//!
//! A false positive refuses a legitimate business note, so every detector
//! needs structure *and* a checksum or registry rule before it reports
//! anything.
//!
//! # Card and account numbers, however they are spelled
//!
//! Card numbers and IBANs are read from *groups*, the runs of ASCII letters
//! and digits of the text, and from how each group is joined to the one
//! before: by white space; by one mark of `- . / _ , * | : ~` touching the
//! group before it (`4111_1111`, `4111,1111`), where a hyphen or slash may
//! have spaces around it too (`4111 - 1111`); or by a line break followed
//! by the `>` markers of a quoted reply (`> 4111 1111\n> 1111 1111`), also
//! after a mark (`4111-\n> 1111`). Anything else (a letter, a `+`, a `(`, a
//! comma or bar between spaces as in a list, long white space) ends a chain
//! of joined groups.
//!
//! - **Payment cards**: consecutive digit groups of a chain laid out as
//!   cards are printed or typed, joined by one mark throughout: one group of
//!   13–19 digits; blocks of four (4-4-4-4, 4-4-4-1, 4-4-4-4-3, also with
//!   blocks run together where an invisible separator was removed, as in
//!   8-4-4); American Express's 4-6-5 and Diners Club's 4-6-4 for their
//!   numbers; or blocks of three to six joined by spaces or by hyphens. The
//!   digits must have a known issuer prefix and length and pass the Luhn
//!   check. The card may stand anywhere in its chain: after a digit
//!   (`order 7 4111 …`), before its expiry date and security code
//!   (`4111 1111 1111 1111 12/26 123`, `4111111111111111 1226 737`), or
//!   beside another card. Rules keep other numbers out: a card does not
//!   start right after a `+` that starts a token (an international phone
//!   number; in `ann+4111…@example.com` it is an email sub-address); a bare
//!   `.` or `,` does not join it to more digits (`4111111111111111.50` is
//!   an amount, `3.14159265358979` a fraction); and blocks of four are not
//!   taken out of a longer list of blocks joined alike (purchase orders,
//!   tracking numbers such as `9405 5036 9930 0012 3456 78`), unless the
//!   block after the card reads as an expiry date (`MMYY`) ending the list,
//!   or another card starts there.
//! - **IBANs**: a group starting with a country code, the check digits and
//!   the BBAN, read across the groups that follow whatever joins them
//!   (`DE89 3704 …`, `DE89.3704.…`, `DE89/3704/…`, `DE 89 3704 …`,
//!   `DE893 704004 …`), any case, ending where a group ends, and validated
//!   with `iban_validate` (mod-97 and the country's BBAN format and length).
//!   Digits inside a validated IBAN are attributed to the IBAN, never
//!   re-reported as a card or another number.
//!
//! # Other numbers
//!
//! - **US Social Security numbers**: the grouped `AAA-GG-SSSS` form (hyphens
//!   or spaces), excluding ranges the SSA never issues. Nine bare digits
//!   (`123456789`) are flagged only when a context word stands shortly
//!   before them (ending at most 40 bytes before): `ssn`, `social security`, `soc. sec`,
//!   `ss#` or `tin`, case-insensitively, as whole words. SSNs carry no
//!   checksum, and nine-digit order numbers, tracking codes, routing numbers
//!   and subscriber numbers are far more common in business notes than SSNs,
//!   so the range exclusions alone would refuse many legitimate notes
//!   (`Order 123456789`); a context word after the number does not count.
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
//! # Cost
//!
//! Every string of every request is scanned, so the scan is linear in the
//! text: one pass splits it into groups, each detector looks at a bounded
//! number of groups from each one (a card spans at most 19 digits, an IBAN
//! 34 characters), and checksums run only on what is laid out like a value.
//! `cargo bench -p custodian-privacy --bench guard` measures it.
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

    /// The human phrase with its indefinite article, for messages ("contains
    /// an IBAN").
    pub fn with_article(&self) -> &'static str {
        match self {
            SensitiveKind::PaymentCard => "a payment card number",
            SensitiveKind::UsSocialSecurityNumber => "a US Social Security number",
            SensitiveKind::Iban => "an IBAN",
            SensitiveKind::UkNationalInsuranceNumber => "a UK National Insurance number",
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
    let folded = fold(text);
    let found = kinds_of(&find(&folded));
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

/// Rounds of cutting before a text that still holds a finding is replaced
/// whole. A marker is letters, which end every group, so cutting seldom
/// makes a value appear; but a shorter text can bring a context word within
/// reach of a number (an SSN), so the text is scanned again after each
/// round, and what is still found after the last goes whole (fail closed).
const REDACT_ROUNDS: usize = 2;

/// Removes sensitive values from text that cannot be refused (mail that has
/// already arrived): each value is replaced by "[redacted <kind>]". Returns
/// the text and the kinds removed; text without any is returned unchanged.
/// A redacted text is returned in its folded spelling (NFKC, unified
/// separators), which is how the values were found.
///
/// A card is cut with the expiry date and security code written after it
/// (`4111 1111 1111 1111 12/26 123`), and a value split over quoted lines
/// of a reply is cut across them.
pub fn redact(text: &str) -> (String, Vec<SensitiveKind>) {
    let folded = fold(text);
    let mut spans = find(&folded);
    if spans.is_empty() {
        return (text.to_owned(), Vec::new());
    }
    let mut found = kinds_of(&spans);
    let mut out = folded.into_owned();
    for _ in 0..REDACT_ROUNDS {
        out = cut(&out, spans);
        let folded = fold(&out);
        spans = find(&folded);
        if spans.is_empty() {
            break;
        }
        found.0 |= kinds_of(&spans).0;
        out = folded.into_owned();
    }
    if !spans.is_empty() {
        out = format!("[redacted {}]", spans[0].kind);
    }
    let kinds = SensitiveKind::ALL
        .into_iter()
        .filter(|kind| found.contains(*kind))
        .collect();
    (out, kinds)
}

/// Replaces each found value of `text` (overlapping ones together) by a
/// marker naming its kind.
fn cut(text: &str, mut spans: Vec<Span>) -> String {
    spans.sort_by_key(|span| (span.range.start, std::cmp::Reverse(span.range.end)));
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut spans = spans.into_iter().peekable();
    while let Some(span) = spans.next() {
        let mut end = span.range.end;
        while let Some(next) = spans.next_if(|next| next.range.start < end) {
            end = end.max(next.range.end);
        }
        out.push_str(&text[at..span.range.start]);
        out.push_str("[redacted ");
        out.push_str(&span.kind.to_string());
        out.push(']');
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

// Fewest ASCII digits each detector needs; counting digits is far cheaper
// than any search, and most free text has few.
const IBAN_MIN_DIGITS: usize = 2; // Only the check digits are always numeric.
const NINO_DIGITS: usize = 6;
const SSN_DIGITS: usize = 9;
const CARD_MIN_DIGITS: usize = 13;
const CARD_MAX_DIGITS: usize = 19;
const IBAN_MIN_LEN: usize = 15; // Norway's.
const IBAN_MAX_LEN: usize = 34;
/// How far before nine bare digits an SSN context word may stand, in bytes.
const SSN_CONTEXT_WINDOW: usize = 40;
/// Longer than any SSN context word ("social security" with some spacing).
const SSN_CONTEXT_MAX_WORD: usize = 24;

// The regexes spell ASCII classes out instead of using `\d`, `\b` or `(?i)`:
// Unicode digits and case folding (the Kelvin sign folds to `k`) would let
// non-ASCII text through to checks written for ASCII.
static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| compile(r"[0-9]+(?:[ -][0-9]+)*"));
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

/// A value found: its kind, and where it is in the folded text. Never
/// leaves this module, so the position cannot reach a caller.
struct Span {
    range: Range<usize>,
    kind: SensitiveKind,
}

fn kinds_of(spans: &[Span]) -> KindSet {
    let mut found = KindSet::default();
    for span in spans {
        found.insert(span.kind);
    }
    found
}

/// Every sensitive value in `text`, which is already folded.
fn find(text: &str) -> Vec<Span> {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    if digits < IBAN_MIN_DIGITS {
        return Vec::new();
    }
    let groups = groups(text.as_bytes());
    // IBANs go first so that their digits can be excluded from the other
    // detectors.
    let ibans = iban_spans(text.as_bytes(), &groups);
    let mut spans: Vec<Span> = Vec::new();
    if digits >= CARD_MIN_DIGITS {
        let cards = card_spans(text.as_bytes(), &groups);
        spans.extend(
            cards
                .into_iter()
                .filter(|card| !overlaps_any(&ibans, card))
                .map(|range| Span {
                    range,
                    kind: SensitiveKind::PaymentCard,
                }),
        );
    }
    if digits >= SSN_DIGITS {
        spans.extend(ssn_spans(text, &ibans).into_iter().map(|range| Span {
            range,
            kind: SensitiveKind::UsSocialSecurityNumber,
        }));
    }
    if digits >= NINO_DIGITS {
        spans.extend(nino_spans(text, &ibans).into_iter().map(|range| Span {
            range,
            kind: SensitiveKind::UkNationalInsuranceNumber,
        }));
    }
    spans.extend(ibans.into_iter().map(|range| Span {
        range,
        kind: SensitiveKind::Iban,
    }));
    spans
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

// --- groups: what card and account numbers are read from ------------------

/// A maximal run of ASCII letters and digits in folded text.
#[derive(Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
    /// Digits only.
    numeric: bool,
    /// How it is joined to the group before it: `None` when it is the first,
    /// or when anything but a short separator stands between them.
    link: Option<Link>,
    /// Right after a `+` that starts a token: an international phone number.
    after_plus: bool,
}

impl Group {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// A short separator between two groups.
#[derive(Clone, Copy)]
struct Link {
    /// Its punctuation mark, or a space for white space alone (line breaks
    /// and quote markers included).
    mark: u8,
    /// A mark with no white space around it: it ties the two groups into
    /// one number (`2026-12-07`, `1,234.56`), where a spaced one may stand
    /// between the items of a list (`4411 / 2233`).
    tight: bool,
}

impl Link {
    /// A lone `.` or `,`: between digits, a decimal or thousands separator.
    fn is_point(self) -> bool {
        self.tight && matches!(self.mark, b'.' | b',')
    }
}

/// The punctuation that may join the groups of a number, one mark between
/// two groups.
const JOIN_MARKS: &[u8] = b"-./_,*|:~";
/// The marks that join with spaces around them too (`4111 - 1111`,
/// `DE89 / 3704`). The others join only touching the group before, and
/// only a line break may follow them: a comma, colon or bar between
/// spaces separates the items of a list or the cells of a table
/// (`parts 6511, 9046, 2494, 1821`), not the groups of one number.
const SPACED_MARKS: &[u8] = b"-/";
/// The longest white space on either side of a mark that still joins.
const MAX_BLANK: usize = 16;

/// Every group of `bytes`, each with how it is joined to the one before.
fn groups(bytes: &[u8]) -> Vec<Group> {
    let mut out = Vec::new();
    let mut link = None;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_alphanumeric) {
            i += 1;
        }
        out.push(Group {
            start,
            end: i,
            numeric: bytes[start..i].iter().all(u8::is_ascii_digit),
            link: link.take(),
            after_plus: start > 0 && bytes[start - 1] == b'+' && starts_token(bytes, start - 1),
        });
        if let Some((next, len)) = link_at(bytes, i)
            && bytes.get(i + len).is_some_and(u8::is_ascii_alphanumeric)
        {
            link = Some(next);
            i += len;
        }
    }
    out
}

/// The separator at `at`: white space, at most one mark of [`JOIN_MARKS`],
/// white space; at least one byte (see [`SPACED_MARKS`] for where white
/// space may stand). With its length.
fn link_at(bytes: &[u8], at: usize) -> Option<(Link, usize)> {
    let before = blank_len(bytes, at)?;
    let mark = bytes
        .get(at + before)
        .copied()
        .filter(|b| JOIN_MARKS.contains(b));
    let after = match mark {
        Some(_) => blank_len(bytes, at + before + 1)?,
        None => 0,
    };
    if let Some(mark) = mark
        && !SPACED_MARKS.contains(&mark)
    {
        let wrapped = bytes[at + before + 1..][..after].contains(&b'\n');
        if before > 0 || (after > 0 && !wrapped) {
            return None;
        }
    }
    let len = before + usize::from(mark.is_some()) + after;
    let link = Link {
        mark: mark.unwrap_or(b' '),
        tight: mark.is_some() && before == 0 && after == 0,
    };
    (len > 0).then_some((link, len))
}

/// The length of the white space at `at`: spaces, tabs and line breaks,
/// and after a line break the `>` markers of a quoted reply, so that a
/// number split over quoted lines (`> 4111 1111\n> 1111 1111`) is one.
/// `None` when it is longer than [`MAX_BLANK`].
fn blank_len(bytes: &[u8], at: usize) -> Option<usize> {
    let mut len = 0;
    let mut line_start = false;
    while let Some(&byte) = bytes.get(at + len) {
        match byte {
            b'\n' => line_start = true,
            b' ' | b'\t' | b'\r' => {}
            b'>' if line_start => {}
            _ => break,
        }
        len += 1;
        if len > MAX_BLANK {
            return None;
        }
    }
    Some(len)
}

// --- IBANs -------------------------------------------------------------------

/// Byte ranges of every valid IBAN: a country code starting a group, then
/// the check digits and BBAN read across the groups that follow, whatever
/// joins them (`DE89 3704 …`, `DE89.3704.…`, `DE 89 3704 …`,
/// `DE893 704004 …`), ending where a group ends.
fn iban_spans(bytes: &[u8], groups: &[Group]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        match iban_from(bytes, &groups[i..]) {
            Some(last) => {
                spans.push(groups[i].start..groups[i + last].end);
                i += last + 1;
            }
            None => i += 1,
        }
    }
    spans
}

/// The index of the last group of a valid IBAN that starts with the first
/// of `groups`. The IBAN's length is its country's, so at most one group
/// end can close it; the search stops at the longest IBAN any country has.
fn iban_from(bytes: &[u8], groups: &[Group]) -> Option<usize> {
    let mut electronic = [0u8; IBAN_MAX_LEN];
    let mut len = 0;
    for (i, group) in groups.iter().enumerate() {
        if i > 0 && group.link.is_none() {
            return None;
        }
        for &byte in &bytes[group.start..group.end] {
            let shaped = match len {
                0 | 1 => byte.is_ascii_alphabetic(),
                2 | 3 => byte.is_ascii_digit(),
                _ => true,
            };
            if !shaped || len == IBAN_MAX_LEN {
                return None;
            }
            electronic[len] = byte.to_ascii_uppercase();
            len += 1;
        }
        if len >= IBAN_MIN_LEN && is_valid_iban(&electronic[..len]) {
            return Some(i);
        }
    }
    None
}

/// Mod-97 and the country's BBAN format, by `iban_validate`.
fn is_valid_iban(electronic: &[u8]) -> bool {
    std::str::from_utf8(electronic).is_ok_and(|iban| iban.parse::<iban::Iban>().is_ok())
}

// --- payment cards -------------------------------------------------------------

/// How the groups of a card candidate are laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One group of 13 to 19 digits.
    Compact,
    /// Blocks of four and a last one of one to four (4-4-4-4, 4-4-4-1,
    /// 4-4-4-4-3), joined by one mark throughout. Blocks may have run
    /// together where a separator was an invisible character, which folding
    /// removed (`41111111 1111 1111`, 8-4-4); with three groups or more the
    /// last may be such a run too (4-4-8), with two it must be a block
    /// (12-4), so that two eight-digit numbers (8-8) are not one card.
    Fours,
    /// American Express's 4-6-5 and Diners Club's 4-6-4, for numbers of
    /// those schemes only.
    Printed,
    /// Any grouping in blocks of three to six digits (the last may be
    /// shorter), joined throughout by spaces or throughout by hyphens, and
    /// not joined so to a group on either side. Longer blocks are other
    /// numbers side by side (`orders 4500123 450012346`).
    Free,
}

/// Consecutive groups of a chain that may hold a card, `first..=last`.
#[derive(Clone, Copy)]
struct Window {
    first: usize,
    last: usize,
    layout: Layout,
}

/// How many short groups after a card (an expiry date, a security code)
/// are cut with it, and how many digits they may hold together
/// (`12/2026 1234`).
const MAX_TAIL_GROUPS: usize = 3;
const MAX_TAIL_DIGITS: usize = 10;

/// Byte ranges of every payment card, with the expiry date and security
/// code written after it. Cards are read from chains, the runs of numeric
/// groups each joined to the one before.
fn card_spans(bytes: &[u8], groups: &[Group]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    while start < groups.len() {
        let mut end = start + 1;
        if groups[start].numeric {
            while groups
                .get(end)
                .is_some_and(|g| g.numeric && g.link.is_some())
            {
                end += 1;
            }
            chain_cards(bytes, &groups[start..end], &mut spans);
        }
        start = end;
    }
    spans
}

fn chain_cards(bytes: &[u8], chain: &[Group], out: &mut Vec<Range<usize>>) {
    if chain.iter().map(Group::len).sum::<usize>() < CARD_MIN_DIGITS {
        return;
    }
    let cards: Vec<Window> = windows(chain)
        .into_iter()
        .filter(|w| is_card(bytes, &chain[w.first..=w.last], w.layout))
        .collect();
    if cards.is_empty() {
        return;
    }
    // Where a card candidate starts, and where it ends with or without
    // what is written after it, so that two cards in a row are read as
    // two, not as a list.
    let mut starts = vec![false; chain.len()];
    let mut ends = vec![false; chain.len()];
    for w in &cards {
        starts[w.first] = true;
    }
    let tails: Vec<usize> = cards
        .iter()
        .map(|w| tail_end(chain, w.last, &starts))
        .collect();
    for (w, &tail) in cards.iter().zip(&tails) {
        ends[w.last] = true;
        ends[tail] = true;
    }
    for (w, &tail) in cards.iter().zip(&tails) {
        if stands_as_card(bytes, chain, w, &starts, &ends) {
            out.push(chain[w.first].start..chain[tail].end);
        }
    }
}

/// The mark joining `chain[i]` to the group before it.
fn mark(chain: &[Group], i: usize) -> Option<u8> {
    chain.get(i).and_then(|g| g.link).map(|link| link.mark)
}

/// Every window of `chain` laid out like a card ([`Layout`]); digit count,
/// issuer and checksum are checked after.
fn windows(chain: &[Group]) -> Vec<Window> {
    let len_at = |i: usize| chain.get(i).map_or(0, Group::len);
    let mut out = Vec::new();
    for first in 0..chain.len() {
        let len = len_at(first);
        if (CARD_MIN_DIGITS..=CARD_MAX_DIGITS).contains(&len) {
            out.push(Window {
                first,
                last: first,
                layout: Layout::Compact,
            });
        }
        if !len.is_multiple_of(4) {
            continue;
        }
        let joint = mark(chain, first + 1);
        let alike = |i: usize| joint.is_some() && mark(chain, i) == joint;
        let mut digits = len;
        let mut last = first + 1;
        while alike(last) && digits < CARD_MAX_DIGITS {
            let block = len_at(last);
            digits += block;
            let blocks = last - first + 1;
            let closes = block <= 4 || (blocks >= 3 && block.is_multiple_of(4));
            if (CARD_MIN_DIGITS..=CARD_MAX_DIGITS).contains(&digits) && closes {
                out.push(Window {
                    first,
                    last,
                    layout: Layout::Fours,
                });
            }
            if !block.is_multiple_of(4) {
                break;
            }
            last += 1;
        }
        if len == 4
            && alike(first + 1)
            && alike(first + 2)
            && len_at(first + 1) == 6
            && matches!(len_at(first + 2), 4 | 5)
        {
            out.push(Window {
                first,
                last: first + 2,
                layout: Layout::Printed,
            });
        }
    }
    // Maximal runs joined by spaces or by hyphens; neighbouring runs share
    // the group between them.
    let mut first = 0;
    while first < chain.len() {
        let joint = mark(chain, first + 1).filter(|m| matches!(m, b' ' | b'-'));
        let mut last = first;
        while joint.is_some() && last + 1 < chain.len() && mark(chain, last + 1) == joint {
            last += 1;
        }
        let sized = chain[first..last]
            .iter()
            .all(|g| (3..=6).contains(&g.len()))
            && chain[last].len() <= 6;
        if last > first && sized {
            out.push(Window {
                first,
                last,
                layout: Layout::Free,
            });
        }
        first = last.max(first + 1);
    }
    out
}

/// Whether `groups` hold 13 to 19 digits with a known issuer's prefix and
/// length (of a scheme printed so, for [`Layout::Printed`]), passing the
/// Luhn check.
fn is_card(bytes: &[u8], groups: &[Group], layout: Layout) -> bool {
    let mut digits = [0u8; CARD_MAX_DIGITS];
    let mut len = 0;
    for group in groups {
        let group = &bytes[group.start..group.end];
        let Some(slot) = digits.get_mut(len..len + group.len()) else {
            return false;
        };
        slot.copy_from_slice(group);
        len += group.len();
    }
    let digits = &digits[..len];
    let printed = || {
        let prefix = |n: usize| digits_value(digits[..n].iter().copied());
        match len {
            15 => matches!(prefix(2), 34 | 37),
            _ => {
                (300..=305).contains(&prefix(3))
                    || prefix(4) == 3095
                    || matches!(prefix(2), 36 | 38 | 39)
            }
        }
    };
    len >= CARD_MIN_DIGITS
        && (layout != Layout::Printed || printed())
        && has_known_issuer(digits)
        && std::str::from_utf8(digits).is_ok_and(luhn::valid)
}

/// Whether a card candidate stands as a card where it is:
///
/// - not the rest of an international phone number;
/// - not one side of a decimal or thousands separator: a lone `.` or `,`
///   joins a grouped card to nothing, and a compact one to nothing shorter
///   than four digits (`4111111111111111.50`, `3.14159265358979`), while a
///   longer run on the other side is a number of its own
///   (`20261207.4111111111111111@host`);
/// - laid out in blocks of four, not a slice of a longer list of such
///   blocks joined alike (purchase orders, tracking numbers). A block of
///   four beside the card is part of such a list unless it is tied by a
///   different unspaced mark to another number (`2026-12-07`), ends another
///   card's spelling (before it), or (after it) starts another card or reads
///   as an expiry date (`MMYY`) that ends the blocks.
fn stands_as_card(
    bytes: &[u8],
    chain: &[Group],
    w: &Window,
    starts: &[bool],
    ends: &[bool],
) -> bool {
    let link = |i: usize| chain.get(i).and_then(|g| g.link);
    let point = |i: usize, other: usize| {
        link(i).is_some_and(Link::is_point)
            && (w.layout != Layout::Compact || chain[other].len() < 4)
    };
    if chain[w.first].after_plus
        || (w.first > 0 && point(w.first, w.first - 1))
        || (w.last + 1 < chain.len() && point(w.last + 1, w.last + 1))
    {
        return false;
    }
    if w.layout != Layout::Fours {
        return true;
    }
    let joint = mark(chain, w.first + 1);
    let alike = |i: usize| mark(chain, i) == joint;
    let four = |i: usize| chain[i].len() == 4;
    // Tied by a different unspaced mark to the group on its far side.
    let tied = |i: usize| link(i).is_some_and(|l| l.tight && Some(l.mark) != joint);
    if w.first > 0 {
        let before = w.first - 1;
        let own_number = before > 0 && tied(before);
        if alike(w.first) && four(before) && !own_number && !ends[before] {
            return false;
        }
    }
    let after = w.last + 1;
    let ends_in_block = chain[w.last].len().is_multiple_of(4);
    if after < chain.len() && ends_in_block && alike(after) && four(after) && !starts[after] {
        let next = after + 1;
        let own_number = next < chain.len() && tied(next);
        let more_blocks = next < chain.len() && alike(next) && four(next) && !starts[next];
        let expiry = is_expiry(&bytes[chain[after].start..chain[after].end]) && !more_blocks;
        if !own_number && !expiry {
            return false;
        }
    }
    true
}

/// Four digits that read as a month and year, `MMYY`.
fn is_expiry(digits: &[u8]) -> bool {
    (1..=12).contains(&digits_value(digits[..2].iter().copied()))
}

/// The last group of a card's spelling: the card, then up to
/// [`MAX_TAIL_GROUPS`] short groups (an expiry date, a security code) that
/// do not start another card.
fn tail_end(chain: &[Group], last: usize, starts: &[bool]) -> usize {
    let mut end = last;
    let mut digits = 0;
    while end + 1 < chain.len() && end - last < MAX_TAIL_GROUPS {
        let next = chain[end + 1].len();
        if next > 4 || starts[end + 1] || digits + next > MAX_TAIL_DIGITS {
            break;
        }
        digits += next;
        end += 1;
    }
    end
}

/// Whether the leading digits name a card scheme that issues numbers of
/// this length.
fn has_known_issuer(digits: &[u8]) -> bool {
    let len = digits.len();
    let prefix = |n: usize| digits_value(digits[..n].iter().copied());
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

fn digits_value(digits: impl Iterator<Item = u8>) -> u32 {
    digits.fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
}

// --- US Social Security and UK National Insurance numbers ---------------------

/// Whether a maximal digit run stands on its own as a number: not a token
/// fragment, not an international phone number (`+...`, where the `+` starts
/// a token: after a word, as in `ann+123-45-6789@`, it is an email
/// sub-address), and not one side of a decimal or thousands separator.
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

/// Byte ranges of every SSN: grouped, or nine bare digits after a context
/// word.
fn ssn_spans(text: &str, ibans: &[Range<usize>]) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    DIGIT_RUN
        .find_iter(text)
        .filter(|m| {
            // Byte length bounds the digit count, so short numbers (dates,
            // amounts, postal codes) are skipped before any work.
            if m.len() < SSN_DIGITS
                || overlaps_any(ibans, &m.range())
                || !digit_run_stands_alone(bytes, m.start(), m.end())
            {
                return false;
            }
            let run = DigitRun::parse(m.as_str());
            run.is_ssn() || (run.is_bare_ssn() && has_ssn_context(bytes, m.start()))
        })
        .map(|m| m.range())
        .collect()
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

    fn group_len(&self, i: usize) -> usize {
        self.groups[i].len()
    }

    fn group_value(&self, i: usize) -> u32 {
        digits_value(self.text[self.groups[i].clone()].bytes())
    }

    /// `AAA-GG-SSSS` with one kind of separator (mixed ones read as
    /// separate numbers), in the ranges the SSA issues.
    fn is_ssn(&self) -> bool {
        self.groups.len() == 3
            && [0, 1, 2].map(|i| self.group_len(i)) == [3, 2, 4]
            && self.separator(0) == self.separator(1)
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

/// Byte ranges of every UK National Insurance number.
fn nino_spans(text: &str, ibans: &[Range<usize>]) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    NINO_SHAPE
        .find_iter(text)
        .filter(|m| {
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
        .map(|m| m.range())
        .collect()
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
        // A long line loses its value only.
        let words = "word ".repeat(2000);
        let (text, _) = redact(&format!("{words}4111111111111111"));
        assert!(
            text == format!("{words}[redacted payment card number]"),
            "{}",
            &text[text.len() - 60..]
        );
    }

    #[test]
    fn redaction_cuts_the_whole_spelling_of_a_value() {
        let cases = [
            (
                "paid with 4111 1111 1111 1111 12/26 123, thanks",
                "paid with [redacted payment card number], thanks",
            ),
            (
                "4111111111111111 1226 737 was declined",
                "[redacted payment card number] was declined",
            ),
            (
                "card 4111-1111-1111-1111-1226.",
                "card [redacted payment card number].",
            ),
            (
                "cards 4111 1111 1111 1111 5500 0000 0000 0004 both",
                "cards [redacted payment card number] [redacted payment card number] both",
            ),
            (
                "order 7 4111 1111 1111 1111",
                "order 7 [redacted payment card number]",
            ),
            ("4111_1111_1111_1111", "[redacted payment card number]"),
            (
                "IBAN DE89.3704.0044.0532.0130.00 please",
                "IBAN [redacted IBAN] please",
            ),
            (
                "IBAN DE893 704004 405320 13000 please",
                "IBAN [redacted IBAN] please",
            ),
        ];
        for (text, expected) in cases {
            let (out, kinds) = redact(text);
            assert_eq!(out, expected, "{text:?}");
            assert_eq!(kinds.len(), 1, "{text:?}");
            assert_eq!(check(&out), Ok(()), "{out:?}");
        }
        let (out, kinds) = redact(
            "On Monday Ann wrote:\n> card 4111 1111\n> 1111 1111 exp 12/26\n\
             > IBAN DE89 3704 0044\n> 0532 0130 00\nThanks",
        );
        assert_eq!(kinds, [SensitiveKind::PaymentCard, SensitiveKind::Iban]);
        assert_eq!(
            out,
            "On Monday Ann wrote:\n> card [redacted payment card number] exp 12/26\n\
             > IBAN [redacted IBAN]\nThanks"
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
                "4111 1111 1111 1111 1226",
                "4111-1111-1111-1111-1226",
                "4111 1111 1111 1111 12/26 123",
                "4111111111111111 1226 737",
                "4111 1111 1111 1111 1226 737",
                "card 5555 5555 5555 4444 0127, cvc 321",
                "4111.1111.1111.1111 12/26",
                "amex 3782 822463 10005 1226 1234",
                "4111|1111|1111|1111|12/26|737",
            ],
        );
    }

    #[test]
    fn flags_cards_beside_other_numbers() {
        assert_only(
            SensitiveKind::PaymentCard,
            &[
                // Two cards in a row.
                "4111 1111 1111 1111 5500 0000 0000 0004",
                "4111-1111-1111-1111-5500-0000-0000-0004",
                "4111111111111111 5500000000000004",
                // A digit or a number before the card.
                "1 4111 1111 1111 1111",
                "order 7 4111 1111 1111 1111",
                "acct 9 4111 1111 1111 1111",
                "7 4111111111111111",
                "item 12 4111-1111-1111-1111",
                "ref 12345 4111 1111 1111 1111",
                "1. 4111 1111 1111 1111",
                // Beside a date.
                "paid 07.12.2026 4111 1111 1111 1111",
                "4111 1111 1111 1111 2026-12-07",
                // In a Message-ID or a display name.
                "<4111111111111111@mail.example.com>",
                "\"Card 4111 1111 1111 1111\" <ann@example.com>",
            ],
        );
    }

    #[test]
    fn flags_blocks_run_together_but_not_numbers_side_by_side() {
        assert_only(
            SensitiveKind::PaymentCard,
            &[
                // An invisible separator, removed by folding, runs two
                // blocks together.
                "4111\u{200B}1111 1111 1111",
                "4111 1111 1111\u{200B}1111",
                "41111111 1111 1111",
                "4111 11111111 1111",
                "411111111111 1111",
                // A compact card beside a longer number, or its expiry.
                "<20261207.4111111111111111@mail.example.com>",
                "4111111111111111.1226",
            ],
        );
        assert_clean(&[
            // Two numbers of eight digits, or of seven and nine.
            "orders 41111111 11111111",
            "orders 4111111 111111111",
            "orders 41111111-11111111",
            // Beside a decimal part.
            "4111111111111111.50",
            "0.4111111111111111",
        ]);
    }

    #[test]
    fn flags_cards_joined_by_any_short_separator() {
        let joining = [
            " ", "-", ".", "/", "_", ",", "*", "|", ":", "~", " - ", " / ", "-\n", " -\n> ", "  ",
            "\t", ",\n> ", "|\n>> ",
        ];
        // Two marks, or a comma, bar or colon between spaces, separate the
        // items of a list, not the groups of one number.
        let separating = ["--", ", ", " , ", " | ", " : ", ". ", "; ", ";", "(", "+"];
        for (marks, expected) in [
            (&joining[..], &[SensitiveKind::PaymentCard][..]),
            (&separating[..], &[][..]),
        ] {
            for mark in marks {
                let card = ["4111", "1111", "1111", "1111"].join(mark);
                for text in [card.clone(), format!("card {card}, thanks")] {
                    assert_eq!(kinds(&text), expected, "{text:?}");
                }
            }
        }
        assert_only(
            SensitiveKind::PaymentCard,
            &[
                "amex 3782_822463_10005",
                "diners 3056*930902*5904",
                "mc 5555,5555,5555,4444",
                "4111~1111~1111~1111~12/26",
            ],
        );
    }

    #[test]
    fn flags_values_split_over_quoted_lines() {
        assert_only(
            SensitiveKind::PaymentCard,
            &[
                "> 4111 1111\n> 1111 1111",
                ">> 4111 1111\n>> 1111 1111",
                "> > 4111 1111\n> > 1111 1111",
                "> card 4111 1111 1111\n> 1111 exp 12/26",
                "> 4111 1111 1111 1111\r\n> 12/26 123",
                "On Monday Ann wrote:\n> my card is 4111-1111-\n> 1111-1111, thanks",
                "> 4111111111111111\n> 1226 737",
            ],
        );
        assert_only(
            SensitiveKind::Iban,
            &[
                "> IBAN DE89 3704 0044\n> 0532 0130 00",
                ">> DE89 3704 0044 0532\n>> 0130 00",
            ],
        );
        // A quote marker in the middle of a line is a comparison.
        assert_clean(&["4111 1111 > 1111 1111", "PO 4111 1111 > 1111 1111"]);
    }

    #[test]
    fn flags_ibans_with_any_separator_or_grouping() {
        assert_only(
            SensitiveKind::Iban,
            &[
                "DE89.3704.0044.0532.0130.00",
                "DE89/3704/0044/0532/0130/00",
                "DE 89 3704 0044 0532 0130 00",
                "DE893 704004 405320 13000",
                "DE89_3704_0044_0532_0130_00",
                "de89 3704 0044 0532 0130 00.",
                "IBAN: DE89 - 3704 - 0044 - 0532 - 0130 - 00",
                "GB29.NWBK.6016.1331.9268.19",
                "GB 29 NWBK 601613 31926819",
                "fr76 3000 6000 0112 3456 7890 189",
                "NL91 ABNA 0417 1643 00, BIC ABNANL2A",
                "iban:DE89370400440532013000;",
                "DE89|3704|0044|0532|0130|00",
            ],
        );
    }

    #[test]
    fn ignores_iban_like_text() {
        assert_clean(&[
            "DE88.3704.0044.0532.0130.00",
            "DE 88 3704 0044 0532 0130 00",
            "XDE89.3704.0044.0532.0130.00",
            "DE89.3704.0044.0532.0130.001",
            "DE89 3704 0044 0532 0130 00X",
            "at 12 noon we shipped 3704 0044 0532 0130 crates",
            "Room DE 12, floor 3, desk 0044",
            "VAT DE123456789, company reg. HRB 12345 B",
        ]);
    }

    #[test]
    fn ignores_business_notes_heavy_in_digits() {
        assert_clean(&[
            "Invoice 2026-0012345, order 4411-2233, call +1 (555) 123-4567 before 12/26",
            "Meeting 2026-12-07 at 14:30, room 4.12, dial-in +49 30 901820",
            "Delivery 07.12.2026 between 08:00 and 12:00, 3 pallets, 1,250 kg",
            "Total EUR 1,234.56 incl. 19% VAT (EUR 197.10), due 31.12.2026",
            "Amounts: 1,234.56, 2,345.67, 3,456.78, 4,567.89, 5,678.90",
            "PO 4500012345, 4500012346 and 4500012347 shipped 2026-12-07",
            "Orders 4411-2233, 4411-2234, 4411-2235, 4411-2236, 4411-2237",
            "Call (555) 123-4567 or (555) 765-4321, fax (555) 123-4568",
            "Tel. +49 30 901820, mobile +49 151 2345 6789, fax +49 30 901821",
            "Phone +1 415 555 2671 / +44 20 7946 0958 / +33 1 42 68 53 00",
            "Support hours 08:00-18:00 CET, Mon-Fri; hotline 0800 123 4567",
            "Tracking 9405 5036 9930 0012 3456 78 (USPS), 1Z 999 AA1 01 2345 6784 (UPS)",
            "DHL 00340434161094042557, FedEx 7489 1234 5678",
            "Version 2.14.3 (build 20261207.1432), API v1.2.3.4",
            "Upgrade from 1.9.12 to 2.0.1 on 2026/12/07 at 23:00 UTC",
            "Invoice INV-2026-000123 / customer 100234 / contract 2024-118",
            "Quote Q-4411-2233-5566 valid until 2026-12-31",
            "Serial numbers 4111 4112 4113 4110 4115 returned",
            "Parts 1234-5678, 2345-6789, 3456-7890, 4567-8901",
            "Server 192.168.100.200:8443, backup 10.0.0.1/24, port 5432",
            "ISBN 978-3-16-148410-0 and 978-0-306-40615-7, 12 copies each",
            "Account manager ext. 4411, team 22, floor 3, desk 4-112",
            "Shipment 3 of 5: 12 x 24 x 36 cm, 4.5 kg, 2 boxes",
            "Budget 2026: Q1 125,000; Q2 130,000; Q3 128,500; Q4 140,250",
            "Timesheet 07.12.2026 08:15-12:30, 13:00-17:45 (8.75 h)",
            "Dates 01.05.2024 - 31.05.2024 and 01.06.2024 - 30.06.2024",
            "Postcodes 10115, 20095, 80331, 50667 and 60311",
            "Ticket #48213 merged into #48190; see also #48222",
            "Reference 2026-12-07/4411/2233 for the December run",
            "Batch 20261207-001 to 20261207-048 produced, lot 4411",
            "Coordinates 52.5200, 13.4050 (Berlin office)",
            "Password policy: 12 characters, rotation every 90 days, 5 attempts",
            "Customer 10023, contract 2024-118, renewal 2026-12-31, 36 months",
            "Sizes 38, 40, 42, 44, 46, 48, 50, 52 in stock",
            "Rooms 101 102 103 104 105 106 booked for 12/26-12/28",
            "Line items: 10 x 4411, 20 x 4412, 30 x 4413, 40 x 4414",
            "Card ending 1111, expires 12/26, paid EUR 49.00",
            "Last four digits 4444 only, as asked",
            "Call +1 (555) 123-4567 ext. 89, then +1 (555) 987-6543",
            "Wire of EUR 12,345.67 on 2026-12-07, ref 4411223344",
            "ids 1234 5678 9012 3456 7890",
            "order 12345678, shipped 2024-05-01, invoice 2024-000123",
            "NHS number 943 476 5919",
            "VAT DE123456789, company reg. HRB 12345 B",
            "Meter reading 004411.2 kWh on 07.12.2026, previous 004102.7",
            "> On 07.12.2026 14:30, Ann wrote:\n> order 4411-2233\n> 12 units",
            "Times 09:15:30.250 and 09:15:31.500, drift 1.25 s",
            "IPv6 2001:db8:85a3:0:0:8a2e:370:7334 and 2001:db8::1",
        ]);
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
        let phrases = SensitiveKind::ALL.map(|kind| kind.with_article());
        assert_eq!(
            phrases,
            [
                "a payment card number",
                "a US Social Security number",
                "an IBAN",
                "a UK National Insurance number"
            ]
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
