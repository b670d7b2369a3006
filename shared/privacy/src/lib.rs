//! The privacy kernel: what every Custodian service needs to keep the SaaS
//! privacy policy.
//!
//! [`guard`] is the sensitive-data guard: it refuses free-text values that
//! contain personal data the policy asks customers not to send (payment card
//! numbers, US Social Security numbers, IBANs, UK National Insurance numbers).

pub mod guard;

pub use guard::{Finding, SensitiveKind, check, check_fields, scan};
