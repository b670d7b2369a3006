//! One normalisation of contact points, identifiers and free text, shared by
//! every service and by every blind index.
//!
//! Erasure finds a person's copies through blind indexes of their contact
//! points, so two spellings of one mailbox that normalise differently are two
//! people, and an erasure request misses one of them. Every function here
//! therefore maps all spellings of one value to one string, or refuses it:
//!
//! - Unicode is normalised (NFKC for contact points, which folds full-width
//!   forms and composes accents; NFC for free text, which keeps what the
//!   person wrote), so NFD and NFC input give the same string.
//! - Invisible characters are refused in contact points: a zero-width space
//!   inside an email address would make a second, indistinguishable mailbox.
//! - Email domains are converted to their IDNA ASCII form (UTS-46), so
//!   `münchen.example` and `xn--mnchen-3ya.example` are one domain.
//! - Idempotency keys are UUIDs in their canonical lower-case form, so a key
//!   sent in upper case and in lower case is the same key.
//!
//! Checks use well-kept crates: `email_address` (syntax), `idna` (UTS-46),
//! `phonenumber` (E.164, Google's libphonenumber metadata), `isocountry`
//! (ISO 3166), `uuid`, `unicode-normalization`.
//!
//! Error texts describe what is wrong with a field, never its value, so they
//! can be returned to the caller and logged.

use std::str::FromStr as _;

use email_address::{EmailAddress, Options};
use unicode_normalization::UnicodeNormalization as _;

/// The longest email address accepted, in characters after normalisation
/// (the 254 of RFC 5321's path limit, less the angle brackets).
pub const MAX_EMAIL_CHARS: usize = 254;
/// The longest local part accepted, in octets of its UTF-8 form (RFC 5321;
/// RFC 6531 keeps the limit in octets for internationalised addresses).
pub const MAX_EMAIL_LOCAL_OCTETS: usize = 64;

/// The longest phone number accepted before parsing, in characters: as
/// libphonenumber's own limit on its input.
const MAX_PHONE_CHARS: usize = 250;

/// A canonical decomposition has at most four code points, so NFC and NFKC
/// output has at least a quarter of the input's characters: input longer
/// than four times a limit is over the limit whatever it normalises to, and
/// is refused before any work.
const MAX_COMPOSITION: usize = 4;

const INVALID_EMAIL: &str = "is not a valid email address";
const HIDDEN_CHARACTER: &str = "contains an invisible or control character";

/// Whether `c` is invisible: a format character (general category Cf), a
/// control character (Cc), or another default-ignorable code point that
/// renders as nothing.
///
/// The list is explicit, from the Unicode Character Database (Cf and
/// `Default_Ignorable_Code_Point`), rather than a dependency:
///
/// - Cf: U+00AD soft hyphen; U+0600–U+0605, U+061C, U+06DD, U+070F,
///   U+0890–U+0891, U+08E2 (Arabic and Syriac format marks); U+180E Mongolian
///   vowel separator; U+200B–U+200F (zero-width space, non-joiner, joiner,
///   directional marks); U+202A–U+202E (bidirectional embeddings and
///   overrides); U+2060–U+2064 (word joiner, invisible operators);
///   U+2066–U+206F (bidirectional isolates, deprecated format characters);
///   U+FEFF (zero-width no-break space, byte-order mark); U+FFF9–U+FFFB
///   (interlinear annotation); U+110BD, U+110CD (Kaithi); U+13430–U+1343F
///   (Egyptian hieroglyph format controls); U+1BCA0–U+1BCA3 (shorthand
///   format controls); U+1D173–U+1D17A (musical symbol format controls);
///   U+E0001, U+E0020–U+E007F (tags).
/// - Other default-ignorables: U+034F combining grapheme joiner; U+115F,
///   U+1160, U+3164, U+FFA0 (Hangul fillers); U+17B4, U+17B5 (Khmer inherent
///   vowels); U+180B–U+180D, U+180F (Mongolian variation selectors); U+2065,
///   U+FFF0–U+FFF8 (reserved); U+FE00–U+FE0F and U+E0100–U+E01EF (variation
///   selectors); the rest of U+E0000–U+E0FFF (reserved).
pub(crate) fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

fn refuse_invisible(value: &str) -> Result<(), &'static str> {
    if value.chars().any(is_invisible) {
        Err(HIDDEN_CHARACTER)
    } else {
        Ok(())
    }
}

/// Normalises an email address so that every spelling of one mailbox gives
/// the same string:
///
/// 1. surrounding white space is removed;
/// 2. invisible and control characters are refused anywhere
///    (listed at `is_invisible` in this module);
/// 3. NFKC folds full-width and other compatibility forms (`ａｎｎ` is `ann`)
///    and composes accents (NFD and NFC input agree);
/// 4. everything is lower-cased: every major provider treats the local part
///    case-insensitively in practice, and the policy treats `Ann@Example.COM`
///    and `ann@example.com` as one person;
/// 5. the domain becomes its IDNA ASCII form (UTS-46), so `münchen.example`
///    and `xn--mnchen-3ya.example` are one domain; the local part stays
///    Unicode;
/// 6. the result is checked by `email_address`: no display text, no domain
///    literal, a top-level domain required; at most [`MAX_EMAIL_CHARS`]
///    characters, the local part at most [`MAX_EMAIL_LOCAL_OCTETS`] octets.
pub fn email(raw: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("is required");
    }
    if trimmed.chars().count() > MAX_EMAIL_CHARS * MAX_COMPOSITION {
        return Err("is too long");
    }
    refuse_invisible(trimmed)?;
    // Lower-casing may leave a string that NFKC would change again (a
    // compatibility character's lower-case form), so normalise once more.
    let lower = trimmed.nfkc().collect::<String>().to_lowercase();
    let folded: String = lower.nfkc().collect();
    let (local, domain) = folded.rsplit_once('@').ok_or(INVALID_EMAIL)?;
    if local.is_empty() || domain.is_empty() {
        return Err(INVALID_EMAIL);
    }
    if local.len() > MAX_EMAIL_LOCAL_OCTETS {
        return Err("is too long");
    }
    let domain = idna::domain_to_ascii(domain).map_err(|_| INVALID_EMAIL)?;
    let normalized = format!("{local}@{domain}");
    if normalized.chars().count() > MAX_EMAIL_CHARS {
        return Err("is too long");
    }
    let options = Options::default()
        .without_display_text()
        .without_domain_literal()
        .with_required_tld();
    EmailAddress::parse_with_options(&normalized, options).map_err(|_| INVALID_EMAIL)?;
    Ok(normalized)
}

/// Parses a phone number in any common notation to E.164. A national number
/// (no `+`) is read in `default_region` (ISO alpha-2), when one is known.
/// Invisible characters are refused, and NFKC first folds full-width digits
/// and signs.
pub fn phone(raw: &str, default_region: Option<&str>) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("is required");
    }
    if trimmed.chars().count() > MAX_PHONE_CHARS {
        return Err("is too long");
    }
    refuse_invisible(trimmed)?;
    let folded: String = trimmed.nfkc().collect();
    let region = default_region
        .and_then(|r| phonenumber::country::Id::from_str(&r.to_ascii_uppercase()).ok());
    if region.is_none() && !folded.starts_with('+') && !folded.starts_with("00") {
        return Err("needs a country code (+...) or a postal address with a region code");
    }
    let number = phonenumber::parse(region, &folded).map_err(|_| "is not a phone number")?;
    if !phonenumber::is_valid(&number) {
        return Err("is not a valid phone number");
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Checks an ISO 3166-1 alpha-2 code and returns it upper-cased.
pub fn region_code(raw: &str) -> Result<String, &'static str> {
    let code = isocountry::CountryCode::for_alpha2_caseless(raw.trim())
        .map_err(|_| "is not an ISO 3166-1 alpha-2 country code")?;
    Ok(code.alpha2().to_owned())
}

/// Normalises free text (notes, descriptions): trimmed, NFC, at most
/// `max_chars` characters after normalisation. Control characters are
/// refused except line feed, carriage return and tab: a NUL byte reaching
/// PostgreSQL fails the whole transaction it is part of.
pub fn text(raw: &str, max_chars: usize) -> Result<String, String> {
    checked_text(raw, max_chars, true)
}

/// Like [`text`], for one-line values (names, titles): line breaks are
/// refused too (line feed, carriage return, and the Unicode line and
/// paragraph separators U+2028, U+2029).
pub fn single_line(raw: &str, max_chars: usize) -> Result<String, String> {
    checked_text(raw, max_chars, false)
}

fn checked_text(raw: &str, max_chars: usize, multi_line: bool) -> Result<String, String> {
    let too_long = || format!("is longer than {max_chars} characters");
    let trimmed = raw.trim();
    if trimmed.chars().count() > max_chars.saturating_mul(MAX_COMPOSITION) {
        return Err(too_long());
    }
    for c in trimmed.chars() {
        let line_break = matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}');
        if line_break && !multi_line {
            return Err("contains a line break".to_owned());
        }
        if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
            return Err("contains a control character".to_owned());
        }
    }
    let normalized: String = trimmed.nfc().collect();
    if normalized.chars().count() > max_chars {
        return Err(too_long());
    }
    Ok(normalized)
}

/// An idempotency key must be a UUID (AIP-155), so keys of different callers
/// cannot collide by accident. Empty means no key. Any notation the `uuid`
/// crate parses is accepted and returned in the canonical lower-case
/// hyphenated form, so one key in upper and in lower case is the same key.
pub fn request_id(raw: &str) -> Result<Option<String>, &'static str> {
    if raw.is_empty() {
        return Ok(None);
    }
    uuid::Uuid::try_parse(raw)
        .map(|id| Some(id.hyphenated().to_string()))
        .map_err(|_| "must be a UUID")
}

/// A caller-chosen tenant id: 3 to 63 characters of lower-case letters,
/// digits and hyphens, starting with a letter and not ending with a hyphen
/// (a DNS label, so it can name Kubernetes objects and URLs as is).
pub fn tenant_id(raw: &str) -> Result<(), &'static str> {
    let ok = (3..=63).contains(&raw.len())
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && !raw.ends_with('-')
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err("must be 3-63 lower-case letters, digits or hyphens, starting with a letter")
    }
}

/// A record id is a UUID in its canonical form: 36 characters, lower-case,
/// hyphenated. Other notations of the same UUID are refused rather than
/// normalised, since ids are issued by the services and never typed.
pub fn record_id(raw: &str) -> Result<(), &'static str> {
    let canonical = raw.len() == 36
        && uuid::Uuid::try_parse(raw).is_ok_and(|id| id.hyphenated().to_string() == raw);
    if canonical {
        Ok(())
    } else {
        Err("must be a UUID in lower-case hyphenated form")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_normalise_to_one_mailbox() {
        assert_eq!(email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        assert_eq!(email("ann@example.com").unwrap(), "ann@example.com");
        for bad in [
            "",
            "   ",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "Ann <ann@example.com>",
            "a b@example.com",
            "ann@[127.0.0.1]",
            "ann@example.com.",
            "ann@@example.com",
            "ann@exa mple.com",
        ] {
            assert!(email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn nfd_and_nfc_emails_are_one_mailbox() {
        let nfc = "jos\u{e9}@example.com";
        let nfd = "jose\u{301}@example.com";
        assert_ne!(nfc, nfd);
        assert_eq!(email(nfc).unwrap(), email(nfd).unwrap());
        assert_eq!(email(nfd).unwrap(), "jos\u{e9}@example.com");
        // Upper case composed and decomposed too.
        assert_eq!(
            email("JOSE\u{301}@EXAMPLE.COM").unwrap(),
            email(nfc).unwrap()
        );
    }

    #[test]
    fn unicode_and_idna_domains_are_one_domain() {
        let ascii = email("user@xn--mnchen-3ya.example").unwrap();
        assert_eq!(ascii, "user@xn--mnchen-3ya.example");
        for spelling in [
            "user@münchen.example",
            "user@MÜNCHEN.example",
            "user@mu\u{308}nchen.example",
            "user@XN--MNCHEN-3YA.EXAMPLE",
            // Ideographic full stop as a label separator (UTS-46 maps it).
            "user@münchen\u{3002}example",
        ] {
            assert_eq!(email(spelling).unwrap(), ascii, "{spelling:?}");
        }
        // An invalid Punycode label is refused, not passed through.
        assert!(email("user@xn--a.example").is_err());
    }

    #[test]
    fn full_width_emails_are_folded() {
        assert_eq!(email("ａｎｎ@example.com").unwrap(), "ann@example.com");
        assert_eq!(
            email("ＡＮＮ＠ＥＸＡＭＰＬＥ．ＣＯＭ").unwrap(),
            "ann@example.com"
        );
    }

    #[test]
    fn invisible_characters_in_emails_are_refused() {
        for bad in [
            "an\u{200B}n@example.com",
            "an\u{200D}n@example.com",
            "\u{FEFF}ann@example.com",
            "ann@exam\u{FEFF}ple.com",
            "an\u{AD}n@example.com",
            "ann\u{200E}@example.com",
            "an\u{202E}n@example.com",
            "an\u{2060}n@example.com",
            "an\u{2064}n@example.com",
            "an\u{3164}n@example.com",
            "an\u{E0041}n@example.com",
            "an\u{0}n@example.com",
            "an\u{7}n@example.com",
            "an\u{85}n@example.com",
        ] {
            assert_eq!(email(bad), Err(HIDDEN_CHARACTER), "{bad:?}");
        }
    }

    #[test]
    fn email_normalisation_is_idempotent() {
        for raw in [
            "ann@example.com",
            "JOSE\u{301}@münchen.example",
            "ａｎｎ@example.com",
            "Straße@example.com",
            "\u{130}stanbul@example.com",
            "\u{1C5}@example.com",
        ] {
            let once = email(raw).unwrap();
            assert_eq!(email(&once).unwrap(), once, "{raw:?}");
        }
    }

    #[test]
    fn email_length_is_bounded() {
        let local = "a".repeat(64);
        assert!(email(&format!("{local}@example.com")).is_ok());
        assert_eq!(email(&format!("a{local}@example.com")), Err("is too long"));
        // 32 two-octet characters fill the 64 octets.
        assert!(email(&format!("{}@example.com", "é".repeat(32))).is_ok());
        assert_eq!(
            email(&format!("{}@example.com", "é".repeat(33))),
            Err("is too long")
        );
        // 3 + 4 * 61 + 4 + 3 = 254 characters: the longest accepted.
        let label = "b".repeat(61);
        let longest = format!("an@{label}.{label}.{label}.{label}.com");
        assert_eq!(longest.len(), MAX_EMAIL_CHARS);
        assert_eq!(email(&longest).unwrap(), longest);
        let long = format!("ann@{label}.{label}.{label}.{label}.com");
        assert_eq!(email(&long), Err("is too long"));
        assert_eq!(email(&"a".repeat(10_000)), Err("is too long"));
    }

    #[test]
    fn email_errors_never_contain_the_input() {
        for bad in [
            "secret-person",
            "secret@person",
            "se\u{200B}cret@example.com",
            "secret@exa mple.com",
        ] {
            let error = email(bad).unwrap_err();
            assert!(!error.contains("secret"), "{error:?}");
        }
    }

    #[test]
    fn phones_become_e164() {
        assert_eq!(phone("+49 30 901820", None).unwrap(), "+4930901820");
        assert_eq!(phone("030 901820", Some("de")).unwrap(), "+4930901820");
        assert_eq!(phone("(202) 456-1111", Some("US")).unwrap(), "+12024561111");
        assert!(phone("030 901820", None).is_err());
        assert!(phone("+1 555", None).is_err());
        assert!(phone("call me", None).is_err());
        assert!(phone("", Some("DE")).is_err());
        assert_eq!(phone(&"1".repeat(251), None), Err("is too long"));
    }

    #[test]
    fn full_width_phones_are_folded() {
        assert_eq!(
            phone("＋４９ ３０ ９０１８２０", None).unwrap(),
            "+4930901820"
        );
        assert_eq!(
            phone("０３０ ９０１８２０", Some("DE")).unwrap(),
            "+4930901820"
        );
        // A no-break space between groups is ordinary spacing.
        assert_eq!(
            phone("+49\u{A0}30\u{A0}901820", None).unwrap(),
            "+4930901820"
        );
    }

    #[test]
    fn invisible_characters_in_phones_are_refused() {
        for bad in [
            "+49 30 9018\u{200B}20",
            "\u{FEFF}+49 30 901820",
            "+49 30 901820\u{200D}",
            "+49 30\u{0} 901820",
        ] {
            assert_eq!(phone(bad, None), Err(HIDDEN_CHARACTER), "{bad:?}");
        }
    }

    #[test]
    fn region_codes_are_iso() {
        assert_eq!(region_code("de").unwrap(), "DE");
        assert_eq!(region_code(" gb ").unwrap(), "GB");
        assert!(region_code("XX").is_err());
        assert!(region_code("DEU").is_err());
        assert!(region_code("").is_err());
    }

    #[test]
    fn text_is_trimmed_composed_and_bounded() {
        assert_eq!(text("  a note  ", 200).unwrap(), "a note");
        assert_eq!(
            text("line one\r\nline\ttwo", 200).unwrap(),
            "line one\r\nline\ttwo"
        );
        assert_eq!(text("jose\u{301}", 200).unwrap(), "jos\u{e9}");
        assert_eq!(text("", 200).unwrap(), "");
        // The bound counts characters after normalisation.
        assert_eq!(text("jose\u{301}", 4).unwrap(), "jos\u{e9}");
        assert_eq!(
            text("abcde", 4),
            Err("is longer than 4 characters".to_owned())
        );
        assert_eq!(
            text(&"x".repeat(201), 200).unwrap_err(),
            "is longer than 200 characters"
        );
        assert_eq!(
            text(&"x".repeat(10_000), 200).unwrap_err(),
            "is longer than 200 characters"
        );
        // Full-width text is what the person wrote: NFC keeps it.
        assert_eq!(text("ａｎｎ", 200).unwrap(), "ａｎｎ");
    }

    #[test]
    fn text_refuses_nul_and_other_control_characters() {
        for bad in [
            "a\u{0}b",
            "\u{0}",
            "a\u{7}b",
            "a\u{1B}[31mb",
            "a\u{7F}b",
            "a\u{85}b",
            "a\u{B}b",
            "a\u{C}b",
        ] {
            assert_eq!(
                text(bad, 200),
                Err("contains a control character".to_owned()),
                "{bad:?}"
            );
            assert!(single_line(bad, 200).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn single_line_refuses_line_breaks() {
        assert_eq!(single_line(" Ann Smith ", 200).unwrap(), "Ann Smith");
        assert_eq!(single_line("Ann\tSmith", 200).unwrap(), "Ann\tSmith");
        for bad in [
            "Ann\nSmith",
            "Ann\r\nSmith",
            "Ann\rSmith",
            "Ann\u{2028}Smith",
            "Ann\u{2029}Smith",
        ] {
            assert_eq!(
                single_line(bad, 200),
                Err("contains a line break".to_owned()),
                "{bad:?}"
            );
        }
        // Surrounding line breaks are trimmed like other white space.
        assert_eq!(single_line("\nAnn\n", 200).unwrap(), "Ann");
        assert_eq!(
            single_line("abc", 2),
            Err("is longer than 2 characters".to_owned())
        );
    }

    #[test]
    fn text_errors_never_contain_the_input() {
        for bad in ["secret\u{0}value", "secret\nvalue", &"secret".repeat(100)] {
            let error = single_line(bad, 200).unwrap_err();
            assert!(!error.contains("secret"), "{error:?}");
        }
    }

    #[test]
    fn request_ids_are_canonical_uuids() {
        let lower = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(request_id(""), Ok(None));
        assert_eq!(request_id(lower), Ok(Some(lower.to_owned())));
        for spelling in [
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67E55044-10B1-426F-9247-BB680E5FE0C8",
        ] {
            assert_eq!(request_id(spelling), request_id(lower), "{spelling:?}");
        }
        for bad in [
            "x",
            "not-a-uuid",
            " ",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
        ] {
            assert_eq!(request_id(bad), Err("must be a UUID"), "{bad:?}");
        }
    }

    #[test]
    fn tenant_ids_are_dns_labels() {
        assert!(tenant_id("acme-corp").is_ok());
        assert!(tenant_id("a1b").is_ok());
        for bad in ["ac", "Acme", "1acme", "acme-", "ac_me", "", &"a".repeat(64)] {
            assert!(tenant_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(tenant_id(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn record_ids_are_canonical_uuids() {
        assert_eq!(record_id("67e55044-10b1-426f-9247-bb680e5fe0c8"), Ok(()));
        for bad in [
            "",
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            " 67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c8 ",
            "67e55044-10b1-426f-9247-bb680e5fe0cg",
            "secret",
        ] {
            let error = record_id(bad).unwrap_err();
            assert!(!error.contains("secret"));
        }
    }

    #[test]
    fn invisible_list_covers_the_attack_characters() {
        for c in [
            '\u{AD}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202E}',
            '\u{2060}',
            '\u{2064}',
            '\u{2066}',
            '\u{FEFF}',
            '\u{0}',
            '\u{1F}',
            '\u{7F}',
            '\u{9F}',
            '\u{E0001}',
        ] {
            assert!(is_invisible(c), "U+{:04X}", u32::from(c));
        }
        for c in [
            'a',
            'é',
            ' ',
            '\u{A0}',
            '-',
            '\u{2010}',
            '٤',
            '\u{FF21}',
            '\u{1F600}',
        ] {
            assert!(!is_invisible(c), "U+{:04X}", u32::from(c));
        }
    }
}
