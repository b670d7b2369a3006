//! Checks and normalises contact points with well-kept crates: email syntax
//! (`email_address`), phone numbers to E.164 (`phonenumber`, Google's
//! libphonenumber metadata), ISO 3166 country codes (`isocountry`).
//!
//! Error texts describe what is wrong with a field, never its value.

use std::str::FromStr as _;

use email_address::{EmailAddress, Options};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_TEXT_CHARS: usize = 200;
pub const MAX_NOTES_CHARS: usize = 10_000;
pub const MAX_ADDRESS_LINES: usize = 5;

/// Normalises an email so the same mailbox always compares equal:
/// surrounding space removed, lower-cased. Lower-casing the local part is
/// what every major mail provider does in practice, and the policy treats
/// `Ann@Example.COM` and `ann@example.com` as one person.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("is required");
    }
    let options = Options::default()
        .without_display_text()
        .without_domain_literal()
        .with_required_tld();
    EmailAddress::parse_with_options(trimmed, options)
        .map_err(|_| "is not a valid email address")?;
    Ok(trimmed.to_lowercase())
}

/// Parses a phone number in any common notation to E.164. A national number
/// (no `+`) is read in `default_region` (ISO alpha-2), when one is known.
pub fn normalize_phone(raw: &str, default_region: Option<&str>) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("is required");
    }
    let region = default_region
        .and_then(|r| phonenumber::country::Id::from_str(&r.to_ascii_uppercase()).ok());
    if region.is_none() && !trimmed.starts_with('+') && !trimmed.starts_with("00") {
        return Err("needs a country code (+...) or a postal address with a region code");
    }
    let number = phonenumber::parse(region, trimmed).map_err(|_| "is not a phone number")?;
    if !phonenumber::is_valid(&number) {
        return Err("is not a valid phone number");
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Checks an ISO 3166-1 alpha-2 code and returns it upper-cased.
pub fn normalize_region_code(raw: &str) -> Result<String, &'static str> {
    let code = isocountry::CountryCode::for_alpha2_caseless(raw.trim())
        .map_err(|_| "is not an ISO 3166-1 alpha-2 country code")?;
    Ok(code.alpha2().to_owned())
}

/// Trims and bounds a short text.
pub fn bounded(raw: &str, max_chars: usize) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > max_chars {
        return Err(format!("is longer than {max_chars} characters"));
    }
    Ok(trimmed.to_owned())
}

/// An idempotency key must be a UUID (AIP-155), so keys of different callers
/// cannot collide by accident.
pub fn request_id(raw: &str) -> Result<(), &'static str> {
    if raw.is_empty() || uuid::Uuid::parse_str(raw).is_ok() {
        Ok(())
    } else {
        Err("must be a UUID")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_normalise_to_one_mailbox() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        assert_eq!(
            normalize_email("ann@example.com").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "Ann <ann@example.com>",
            "a b@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn phones_become_e164() {
        assert_eq!(
            normalize_phone("+49 30 901820", None).unwrap(),
            "+4930901820"
        );
        assert_eq!(
            normalize_phone("030 901820", Some("de")).unwrap(),
            "+4930901820"
        );
        assert_eq!(
            normalize_phone("(202) 456-1111", Some("US")).unwrap(),
            "+12024561111"
        );
        assert!(normalize_phone("030 901820", None).is_err());
        assert!(normalize_phone("+1 555", None).is_err());
        assert!(normalize_phone("call me", None).is_err());
    }

    #[test]
    fn region_codes_are_iso() {
        assert_eq!(normalize_region_code("de").unwrap(), "DE");
        assert!(normalize_region_code("XX").is_err());
        assert!(normalize_region_code("DEU").is_err());
    }

    #[test]
    fn tenant_ids_are_dns_labels() {
        assert!(tenant_id("acme-corp").is_ok());
        for bad in ["ac", "Acme", "1acme", "acme-", "ac_me", &"a".repeat(64)] {
            assert!(tenant_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
