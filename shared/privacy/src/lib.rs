//! The privacy kernel: what every Custodian service needs to keep the SaaS
//! privacy policy, so that each service gets it by construction.
//!
//! - [`guard`]: the sensitive-data guard refuses free-text values containing
//!   data the policy asks customers not to send (payment card numbers, US
//!   Social Security numbers, IBANs, UK National Insurance numbers).
//! - [`normalize`]: one normalisation of email addresses, phone numbers,
//!   free text and identifiers, for every service and every blind index.
//! - [`token`] and [`access`]: every call is authenticated by a signed
//!   bearer token; each method serves declared purposes; a caller limited to
//!   a tenant sees only that tenant.
//! - [`audit`]: every access to personal data is written to a hash-chained
//!   audit trail.
//! - [`crypto`], [`keys`] and [`vault`]: personal fields are encrypted at rest
//!   under per-subject data keys; lookups use keyed blind indexes; erasure
//!   destroys the key.
//! - [`retention`]: how long each category is kept, and the sweep schedule.
//!
//! A service holds one [`Privacy`]; which fields a purpose sees, and which
//! purposes a method serves, are declared on the contracts and applied by
//! the service kit (`custodian-kit`). The kernel knows no service's fields.

pub mod access;
pub mod audit;
pub mod context;
pub mod crypto;
pub mod guard;
pub mod keys;
pub mod normalize;
pub mod retention;
mod sealer;
pub mod token;
pub mod vault;

pub use access::{Access, Caller, Forward, Method, TokenAuthenticator};
pub use context::{Actor, Privacy};
pub use guard::{Finding, SensitiveKind, check, check_fields, redact, scan};
pub use token::Purpose;
pub use token::TokenKind;
