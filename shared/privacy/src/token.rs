//! Bearer tokens: who is calling, for which purposes, and within which tenant.
//!
//! Every Custodian RPC carries `authorization: Bearer <token>`, where the
//! token is a JWT signed with Ed25519 (`alg: EdDSA`) whose [`Claims`] name
//! the caller (`sub`), the [`Purpose`]s it may read personal data for, and
//! optionally the one tenant it is limited to. The policy's purpose
//! limitation and tenant isolation are enforced from these claims, so a
//! token must be impossible to forge and short-lived:
//!
//! - Only `EdDSA` is accepted. The algorithm is fixed by the verifier, never
//!   taken from the token header, so an attacker cannot downgrade to `none`
//!   or to HS256 with the public key as the HMAC secret.
//! - A [`TokenVerifier`] holds one or more public keys and accepts a token
//!   signed by any of them, so a signing key can be rotated without a flag
//!   day: deploy the new public key everywhere, then switch the issuer.
//! - Expiry is checked against an explicit clock ([`TokenVerifier::verify_at`])
//!   with [`LEEWAY_SECS`] of tolerance for clock skew between hosts;
//!   tokens live at most [`MAX_TTL`].
//! - No error message, `Debug` output or panic carries the token text or key
//!   material: tokens end up in logs through error strings more than any
//!   other way.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `iss` and `aud` of every Custodian token.
pub const ISSUER: &str = "custodian";
/// See [`ISSUER`]: Custodian issues tokens for itself only.
pub const AUDIENCE: &str = "custodian";
/// Tolerated clock skew, in seconds, when checking `exp`.
pub const LEEWAY_SECS: u64 = 30;
/// The longest lifetime [`TokenIssuer::issue`] grants.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Real tokens are a few hundred bytes; refusing huge ones up front keeps a
/// hostile header from costing base64 and JSON work per trusted key.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why personal data is read. Stable lower_snake_case names in tokens and metadata.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    ServiceDelivery,
    Support,
    DsrFulfilment,
    SecurityInvestigation,
    ProductAnalytics,
    Audit,
    Administration,
    DefectInvestigation,
}

impl Purpose {
    /// Every purpose, in declaration order.
    pub const ALL: [Purpose; 8] = [
        Purpose::ServiceDelivery,
        Purpose::Support,
        Purpose::DsrFulfilment,
        Purpose::SecurityInvestigation,
        Purpose::ProductAnalytics,
        Purpose::Audit,
        Purpose::Administration,
        Purpose::DefectInvestigation,
    ];

    /// The stable name used in tokens and metadata, e.g. `"dsr_fulfilment"`.
    pub fn as_str(&self) -> &'static str {
        // Must match serde's snake_case names: a test checks they agree.
        match self {
            Purpose::ServiceDelivery => "service_delivery",
            Purpose::Support => "support",
            Purpose::DsrFulfilment => "dsr_fulfilment",
            Purpose::SecurityInvestigation => "security_investigation",
            Purpose::ProductAnalytics => "product_analytics",
            Purpose::Audit => "audit",
            Purpose::Administration => "administration",
            Purpose::DefectInvestigation => "defect_investigation",
        }
    }
}

impl Purpose {
    /// The purpose as the contracts declare it.
    pub fn to_proto(self) -> custodian_proto::privacy::v1::Purpose {
        use custodian_proto::privacy::v1::Purpose as P;
        match self {
            Purpose::ServiceDelivery => P::ServiceDelivery,
            Purpose::Support => P::Support,
            Purpose::DsrFulfilment => P::DsrFulfilment,
            Purpose::SecurityInvestigation => P::SecurityInvestigation,
            Purpose::ProductAnalytics => P::ProductAnalytics,
            Purpose::Audit => P::Audit,
            Purpose::Administration => P::Administration,
            Purpose::DefectInvestigation => P::DefectInvestigation,
        }
    }

    /// The purpose a contract declares; `None` for PURPOSE_UNSPECIFIED.
    pub fn from_proto(purpose: custodian_proto::privacy::v1::Purpose) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.to_proto() == purpose)
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`Purpose::ALL`]'s. Display lists the valid names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown purpose {0:?}; valid purposes: {names}", names = valid_purpose_names())]
pub struct UnknownPurpose(pub String);

fn valid_purpose_names() -> String {
    Purpose::ALL.map(|p| p.as_str()).join(", ")
}

impl FromStr for Purpose {
    type Err = UnknownPurpose;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Purpose::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            // The input comes from request metadata: bound what reaches logs.
            .ok_or_else(|| UnknownPurpose(s.chars().take(64).collect()))
    }
}

/// Claims of a Custodian token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// The caller, e.g. `"svc:dsr"` or `"ops:alice"`.
    pub sub: String,
    /// What the caller may read personal data for; never empty.
    pub purposes: Vec<Purpose>,
    /// Tenant id (not `"tenants/x"`): the one tenant this caller may see.
    /// `None` means not limited to one tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Random token id, so a single token can be named in audit records.
    pub jti: String,
    /// What holds the token. Only a service credential may say whom it
    /// acts for and pass on a caller's tenant limit (see `access`).
    #[serde(default, skip_serializing_if = "TokenKind::is_caller")]
    pub kind: TokenKind,
}

/// Who holds a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A person or a tool acting for itself (operators, grpcurl, clients).
    #[default]
    Caller,
    /// One of the suite's services, calling another for its own caller.
    Service,
}

impl TokenKind {
    fn is_caller(&self) -> bool {
        *self == TokenKind::Caller
    }
}

/// Why a token could not be issued or was refused. Messages never contain
/// the token or key material.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No token was presented.
    #[error("no bearer token")]
    Missing,
    /// Not a well-formed Custodian token.
    #[error("malformed token")]
    Malformed,
    /// Not signed by a trusted key with EdDSA.
    #[error("token signature is not valid")]
    BadSignature,
    /// Past `exp` (plus leeway).
    #[error("token has expired")]
    Expired,
    /// Issued in the future (beyond the leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// Claims a lifetime longer than any issuer grants.
    #[error("token lifetime exceeds the maximum")]
    LifetimeTooLong,
    /// Signed by a trusted key, but for another issuer or audience.
    #[error("token has the wrong issuer or audience")]
    WrongIssuerOrAudience,
    /// The token grants no purpose, so it could be used for nothing.
    #[error("token grants no purpose")]
    NoPurpose,
    /// A key could not be used; the text describes the problem, never the key.
    #[error("key: {0}")]
    Key(String),
    /// [`TokenIssuer::issue`] was asked for a token it must not issue.
    #[error("cannot issue token: {0}")]
    Invalid(&'static str),
}

/// Issues tokens signed with an Ed25519 private key.
#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TokenIssuer {
    /// Loads an Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`),
    /// as written by [`generate_key_pair`] or `openssl genpkey -algorithm ed25519`.
    pub fn from_pem(private_pem: &str) -> Result<Self, TokenError> {
        let signing = SigningKey::from_pkcs8_pem(private_pem)
            .map_err(|_| TokenError::Key("not an Ed25519 private key in PKCS#8 PEM".to_owned()))?;
        // Re-encoded by the same ed25519-dalek that jsonwebtoken signs with,
        // so a key accepted here is a key it can use (checked now, not at the
        // first issue).
        let der = signing
            .to_pkcs8_der()
            .map_err(|_| TokenError::Key("cannot encode the Ed25519 private key".to_owned()))?;
        Ok(Self {
            key: EncodingKey::from_ed_der(der.as_bytes()),
        })
    }

    /// Issues a token valid from now for `ttl` (1 second to [`MAX_TTL`]).
    /// Purposes are sorted and deduplicated.
    ///
    /// # Panics
    /// If the operating system's random source fails (for the `jti`).
    pub fn issue(
        &self,
        sub: &str,
        purposes: &[Purpose],
        tenant: Option<&str>,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        self.issue_at(unix_now(), sub, purposes, tenant, ttl)
    }

    /// Issues a service credential: a token only the suite's own services
    /// hold, which may forward a caller's identity and tenant limit. Its
    /// subject must name a service ("svc:tickets").
    pub fn issue_service(
        &self,
        service: &str,
        purposes: &[Purpose],
        ttl: Duration,
    ) -> Result<String, TokenError> {
        if !service.starts_with("svc:") {
            return Err(TokenError::Invalid(
                "a service credential's subject starts with \"svc:\"",
            ));
        }
        self.sign(unix_now(), service, purposes, None, ttl, TokenKind::Service)
    }

    /// Same, at a given "now" (unix seconds) — for tests of expiry without sleeping.
    ///
    /// # Panics
    /// If the operating system's random source fails (for the `jti`).
    pub fn issue_at(
        &self,
        now: u64,
        sub: &str,
        purposes: &[Purpose],
        tenant: Option<&str>,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        self.sign(now, sub, purposes, tenant, ttl, TokenKind::Caller)
    }

    fn sign(
        &self,
        now: u64,
        sub: &str,
        purposes: &[Purpose],
        tenant: Option<&str>,
        ttl: Duration,
        kind: TokenKind,
    ) -> Result<String, TokenError> {
        if ttl.as_secs() == 0 || ttl > MAX_TTL {
            return Err(TokenError::Invalid("ttl must be 1 second to 30 days"));
        }
        // Refused here for the same reasons the verifier refuses them: a
        // token nobody would accept is a bug at the issuer.
        if sub.trim().is_empty() {
            return Err(TokenError::Invalid("sub must not be empty"));
        }
        if !is_safe_subject(sub) {
            return Err(TokenError::Invalid(SUBJECT_RULE));
        }
        if purposes.is_empty() {
            return Err(TokenError::NoPurpose);
        }
        if let Some(tenant) = tenant
            && !is_bare_tenant_id(tenant)
        {
            return Err(TokenError::Invalid(
                "tenant must be a tenant id such as \"acme\", not empty or \"tenants/acme\"",
            ));
        }
        let exp = now
            .checked_add(ttl.as_secs())
            .ok_or(TokenError::Invalid("expiry is out of range"))?;
        let mut purposes = purposes.to_vec();
        purposes.sort_unstable();
        purposes.dedup();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: sub.to_owned(),
            purposes,
            tenant: tenant.map(str::to_owned),
            iat: now,
            exp,
            jti: hex(&random_bytes::<16>()),
            kind,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.key)
            .map_err(|_| TokenError::Key("signing with the Ed25519 private key failed".to_owned()))
    }
}

/// Verifies tokens against one or more trusted Ed25519 public keys.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl TokenVerifier {
    /// Trusts each Ed25519 public key in SPKI PEM (`-----BEGIN PUBLIC KEY-----`);
    /// at least one is required.
    pub fn from_public_pems<'a>(
        pems: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, TokenError> {
        let mut keys = Vec::new();
        for (i, pem) in pems.into_iter().enumerate() {
            let n = i + 1;
            let public = VerifyingKey::from_public_key_pem(pem).map_err(|_| {
                TokenError::Key(format!(
                    "public key #{n} is not an Ed25519 public key in SPKI PEM"
                ))
            })?;
            // A small-order key lets anyone craft signatures that verify.
            if public.is_weak() {
                return Err(TokenError::Key(format!(
                    "public key #{n} is a weak Ed25519 key"
                )));
            }
            // Canonical PEM from ed25519-dalek, so jsonwebtoken's own PEM
            // parser never sees operator formatting quirks.
            let canonical = public
                .to_public_key_pem(LineEnding::LF)
                .map_err(|_| TokenError::Key(format!("public key #{n} cannot be re-encoded")))?;
            let key = DecodingKey::from_ed_pem(canonical.as_bytes())
                .map_err(|_| TokenError::Key(format!("public key #{n} is not usable for EdDSA")))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(TokenError::Key("no public key given".to_owned()));
        }

        let mut validation = Validation::new(Algorithm::EdDSA);
        // jsonwebtoken reads the system clock for exp; ours is injectable.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // `iat` is required too: `Claims` has no default for it.
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        Ok(Self { keys, validation })
    }

    /// Verifies `token` at the current system time.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, unix_now())
    }

    /// Verifies `token` as of `now` (unix seconds): signature by a trusted
    /// key with EdDSA, `iss` and `aud`, `exp` (with [`LEEWAY_SECS`]), a
    /// non-empty `sub` and at least one purpose.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if !is_jws_compact_shape(token) {
            return Err(TokenError::Malformed);
        }
        let claims = self.decode(token)?;
        if now > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        // A signed token is still refused if it claims a life no issuer
        // grants, or to have been issued in the future: a stolen signing
        // key's forgeries, or a clock gone wrong, must not live forever.
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp.saturating_sub(claims.iat) > MAX_TTL.as_secs() || claims.exp < claims.iat {
            return Err(TokenError::LifetimeTooLong);
        }
        if !is_safe_subject(&claims.sub) {
            return Err(TokenError::Malformed);
        }
        if claims.purposes.is_empty() {
            return Err(TokenError::NoPurpose);
        }
        if claims
            .tenant
            .as_deref()
            .is_some_and(|t| !is_bare_tenant_id(t))
        {
            return Err(TokenError::Malformed);
        }
        Ok(claims)
    }

    fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                // Perhaps signed by another trusted key (rotation).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                // The signature is checked before any claim, so any other
                // error holds for every key.
                Err(e) => return Err(map_jwt_error(e.kind())),
            }
        }
        Err(TokenError::BadSignature)
    }
}

fn map_jwt_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => TokenError::BadSignature,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => TokenError::WrongIssuerOrAudience,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidEddsaKey | ErrorKind::InvalidKeyFormat => {
            TokenError::Key("a trusted public key is not usable for EdDSA".to_owned())
        }
        _ => TokenError::Malformed,
    }
}

/// Three non-empty base64url segments, and not absurdly long.
fn is_jws_compact_shape(token: &str) -> bool {
    token.len() <= MAX_TOKEN_LEN
        && token.split('.').count() == 3
        && token.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// What a subject may be, as the issuer tells a caller that broke it.
pub const SUBJECT_RULE: &str = "sub must be 1 to 128 characters of A-Z a-z 0-9 and . _ - : @ + / \
     (e.g. \"ops:alice\" or \"svc:dsr\"), with no space or control character";

/// Whether a subject is one the suite issues and accepts: a short name of
/// letters, digits and a few separators. The subject goes into the audit
/// trail, log lines and trace attributes as it is; a newline or another
/// control character would let a caller forge lines there, and odd
/// characters make an identity that two readers read differently.
pub fn is_safe_subject(sub: &str) -> bool {
    (1..=128).contains(&sub.len())
        && sub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@+/".contains(&b))
}

fn is_bare_tenant_id(tenant: &str) -> bool {
    !tenant.trim().is_empty() && !tenant.contains('/')
}

/// Generates a new Ed25519 key pair: (PKCS#8 private PEM, SPKI public PEM).
///
/// # Panics
/// If the operating system's random source fails.
pub fn generate_key_pair() -> (String, String) {
    let signing = SigningKey::from_bytes(&random_bytes::<32>());
    let private_pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 key always encodes as PKCS#8");
    let public_pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 public key always encodes as SPKI");
    (private_pem.to_string(), public_pem)
}

/// Reads "Bearer <token>" (scheme case-insensitive) from an authorization
/// header value. The token must be an RFC 6750 `b64token`, checked byte by
/// byte: on every request, a check char by char for Unicode whitespace
/// took a fifth of the time of authenticating a cached token.
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once([' ', '\t'])?;
    let token = token.trim_start();
    let body = token.trim_end_matches('=');
    (scheme.eq_ignore_ascii_case("bearer")
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)))
    .then_some(token)
}

fn unix_now() -> u64 {
    // A clock before 1970 is broken; 0 makes every token look expired,
    // which fails closed.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Without OS randomness no key or token id can be trusted, and there
    // is no sensible fallback.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    /// 2026-01-01T00:00:00Z: a fixed clock for the tests that inject one.
    const T0: u64 = 1_767_225_600;

    struct Pair {
        issuer: TokenIssuer,
        public_pem: String,
        private_pem: String,
    }

    fn pair() -> Pair {
        let (private_pem, public_pem) = generate_key_pair();
        Pair {
            issuer: TokenIssuer::from_pem(&private_pem).unwrap(),
            public_pem,
            private_pem,
        }
    }

    fn verifier(pems: &[&str]) -> TokenVerifier {
        TokenVerifier::from_public_pems(pems.iter().copied()).unwrap()
    }

    fn claims_at(now: u64) -> Claims {
        Claims {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: "svc:dsr".to_owned(),
            purposes: vec![Purpose::DsrFulfilment],
            tenant: None,
            iat: now,
            exp: now + 3600,
            jti: "test".to_owned(),
            kind: TokenKind::Caller,
        }
    }

    #[test]
    fn signed_tokens_with_impossible_lifetimes_are_refused() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        for exp in [9_999_999_999, u64::MAX, T0 + MAX_TTL.as_secs() + 1] {
            let mut claims = claims_at(T0);
            claims.exp = exp;
            let token = sign_raw(&p.private_pem, &claims);
            assert!(
                matches!(v.verify_at(&token, T0), Err(TokenError::LifetimeTooLong)),
                "exp {exp} accepted"
            );
        }
        let mut future = claims_at(T0 + 3600);
        future.exp = T0 + 7200;
        let token = sign_raw(&p.private_pem, &future);
        assert!(matches!(
            v.verify_at(&token, T0),
            Err(TokenError::NotYetValid)
        ));
        // Within the leeway, a slightly fast issuer clock is tolerated.
        let skewed = claims_at(T0 + LEEWAY_SECS);
        assert!(v.verify_at(&sign_raw(&p.private_pem, &skewed), T0).is_ok());
        // The longest lifetime an issuer grants still verifies.
        let token = p
            .issuer
            .issue_at(T0, "s", &[Purpose::Audit], None, MAX_TTL)
            .unwrap();
        assert!(v.verify_at(&token, T0).is_ok());
    }

    #[test]
    fn service_credentials_say_so_and_callers_do_not() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let service = p
            .issuer
            .issue_service("svc:tickets", &[Purpose::Support], HOUR)
            .unwrap();
        assert_eq!(v.verify(&service).unwrap().kind, TokenKind::Service);
        let caller = p
            .issuer
            .issue("ops:a", &[Purpose::Support], None, HOUR)
            .unwrap();
        assert_eq!(v.verify(&caller).unwrap().kind, TokenKind::Caller);
        assert!(
            p.issuer
                .issue_service("ops:a", &[Purpose::Support], HOUR)
                .is_err()
        );
    }

    /// Signs arbitrary claims with EdDSA, bypassing the issuer's checks.
    fn sign_raw(private_pem: &str, claims: &impl Serialize) -> String {
        let key = EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap()
    }

    #[test]
    fn round_trip_keeps_every_claim() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let token = p
            .issuer
            .issue_at(
                T0,
                "ops:alice",
                &[Purpose::Support, Purpose::Audit, Purpose::Support],
                Some("acme"),
                HOUR,
            )
            .unwrap();
        let claims = v.verify_at(&token, T0 + 10).unwrap();
        assert_eq!(claims.iss, "custodian");
        assert_eq!(claims.aud, "custodian");
        assert_eq!(claims.sub, "ops:alice");
        assert_eq!(claims.purposes, [Purpose::Support, Purpose::Audit]);
        assert_eq!(claims.tenant.as_deref(), Some("acme"));
        assert_eq!(claims.iat, T0);
        assert_eq!(claims.exp, T0 + 3600);
        assert_eq!(claims.jti.len(), 32);
        assert!(claims.jti.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn verify_uses_the_system_clock() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let token = p
            .issuer
            .issue("svc:dsr", &[Purpose::DsrFulfilment], None, HOUR)
            .unwrap();
        let claims = v.verify(&token).unwrap();
        assert_eq!(claims.tenant, None);
        assert!(claims.iat.abs_diff(unix_now()) < 60);
        // The same token, checked by the real clock, from long ago: expired.
        let old = p
            .issuer
            .issue_at(T0 - 86_400 * 365, "svc:dsr", &[Purpose::Audit], None, HOUR)
            .unwrap();
        assert!(matches!(v.verify(&old), Err(TokenError::Expired)));
    }

    #[test]
    fn jti_differs_between_tokens() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let a = p
            .issuer
            .issue_at(T0, "s", &[Purpose::Audit], None, HOUR)
            .unwrap();
        let b = p
            .issuer
            .issue_at(T0, "s", &[Purpose::Audit], None, HOUR)
            .unwrap();
        assert_ne!(
            v.verify_at(&a, T0).unwrap().jti,
            v.verify_at(&b, T0).unwrap().jti
        );
    }

    /// The payload as raw names, to see what a token carries on the wire.
    #[derive(Deserialize)]
    struct RawPayload {
        purposes: Vec<String>,
        #[serde(default)]
        tenant: Option<serde::de::IgnoredAny>,
    }

    #[test]
    fn wire_form_uses_stable_names_and_omits_no_tenant() {
        let p = pair();
        let token = p
            .issuer
            .issue_at(T0, "s", &Purpose::ALL, None, HOUR)
            .unwrap();
        let raw: RawPayload = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        assert!(raw.tenant.is_none());
        let expected: Vec<String> = Purpose::ALL.iter().map(|p| p.as_str().to_owned()).collect();
        assert_eq!(raw.purposes, expected);
    }

    #[test]
    fn other_key_pair_is_a_bad_signature() {
        let p = pair();
        let other = pair();
        let token = p
            .issuer
            .issue_at(T0, "s", &[Purpose::Audit], None, HOUR)
            .unwrap();
        let v = verifier(&[&other.public_pem]);
        assert!(matches!(
            v.verify_at(&token, T0),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn rotation_accepts_old_and_new_keys() {
        let old = pair();
        let new = pair();
        let stranger = pair();
        let v = verifier(&[&old.public_pem, &new.public_pem]);
        for (issuer, sub) in [(&old.issuer, "svc:old"), (&new.issuer, "svc:new")] {
            let token = issuer
                .issue_at(T0, sub, &[Purpose::Audit], None, HOUR)
                .unwrap();
            assert_eq!(v.verify_at(&token, T0).unwrap().sub, sub);
        }
        let token = stranger
            .issuer
            .issue_at(T0, "s", &[Purpose::Audit], None, HOUR)
            .unwrap();
        assert!(matches!(
            v.verify_at(&token, T0),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn expiry_honours_the_leeway() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let token = p
            .issuer
            .issue_at(T0, "s", &[Purpose::Audit], None, HOUR)
            .unwrap();
        let exp = T0 + 3600;
        assert!(v.verify_at(&token, exp).is_ok());
        assert!(v.verify_at(&token, exp + LEEWAY_SECS).is_ok());
        assert!(matches!(
            v.verify_at(&token, exp + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            v.verify_at(&token, exp + 86_400),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn ttl_must_be_positive_and_bounded() {
        let p = pair();
        for ttl in [
            Duration::ZERO,
            Duration::from_millis(999),
            MAX_TTL + Duration::from_secs(1),
        ] {
            let err = p
                .issuer
                .issue_at(T0, "s", &[Purpose::Audit], None, ttl)
                .unwrap_err();
            assert!(matches!(err, TokenError::Invalid(_)), "{ttl:?}: {err}");
        }
        assert!(
            p.issuer
                .issue_at(T0, "s", &[Purpose::Audit], None, MAX_TTL)
                .is_ok()
        );
        assert!(matches!(
            p.issuer
                .issue_at(u64::MAX - 10, "s", &[Purpose::Audit], None, HOUR),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn issuer_refuses_tokens_nobody_would_accept() {
        let p = pair();
        assert!(matches!(
            p.issuer.issue_at(T0, "s", &[], None, HOUR),
            Err(TokenError::NoPurpose)
        ));
        assert!(matches!(
            p.issuer.issue_at(T0, " ", &[Purpose::Audit], None, HOUR),
            Err(TokenError::Invalid(_))
        ));
        // A subject goes into the audit trail and logs as it is: control
        // characters (a forged second line), spaces and the like are
        // refused, through every issuing method.
        let long = "a".repeat(129);
        for sub in [
            "a\nb",
            "ops:alice\r\nsvc:dsr",
            "ops:alice\u{0}",
            "ops:\u{7}bell",
            "ops:al ice",
            "ops:alice\t",
            "ops:al\u{2028}ice",
            "ops:ålice",
            "ops:\"alice\"",
            "ops:alice;drop",
            long.as_str(),
        ] {
            let err = p
                .issuer
                .issue_at(T0, sub, &[Purpose::Audit], None, HOUR)
                .unwrap_err();
            assert!(matches!(err, TokenError::Invalid(SUBJECT_RULE)), "{sub:?}");
            assert!(!err.to_string().contains(sub), "the subject is not echoed");
            let svc = format!("svc:{sub}");
            assert!(matches!(
                p.issuer.issue_service(&svc, &[Purpose::Audit], HOUR),
                Err(TokenError::Invalid(_))
            ));
            assert!(matches!(
                p.issuer.issue(sub, &[Purpose::Audit], None, HOUR),
                Err(TokenError::Invalid(_))
            ));
        }
        for sub in [
            "ops:alice",
            "svc:dsr",
            "test:root",
            "ops:alice@example.com",
            "a",
            &"a".repeat(128),
        ] {
            assert!(
                p.issuer
                    .issue_at(T0, sub, &[Purpose::Audit], None, HOUR)
                    .is_ok(),
                "{sub:?}"
            );
        }
        for tenant in ["", "tenants/acme"] {
            assert!(matches!(
                p.issuer
                    .issue_at(T0, "s", &[Purpose::Audit], Some(tenant), HOUR),
                Err(TokenError::Invalid(_))
            ));
        }
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let token = p
            .issuer
            .issue_at(T0, "svc:dsr", &[Purpose::Audit], Some("acme"), HOUR)
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let payload = parts[1];
        let mid = payload.len() / 2;
        let c = payload.as_bytes()[mid];
        let replacement = if c == b'A' { 'B' } else { 'A' };
        let tampered_payload = format!("{}{replacement}{}", &payload[..mid], &payload[mid + 1..]);
        let tampered = format!("{}.{tampered_payload}.{}", parts[0], parts[2]);
        assert_ne!(tampered, token);
        let err = v.verify_at(&tampered, T0).unwrap_err();
        assert!(
            matches!(err, TokenError::BadSignature | TokenError::Malformed),
            "{err:?}"
        );

        // A payload swapped wholesale (more purposes, another tenant) too.
        let mut forged = claims_at(T0);
        forged.purposes = Purpose::ALL.to_vec();
        let other = pair();
        let forged_token = sign_raw(&other.private_pem, &forged);
        let spliced = format!(
            "{}.{}.{}",
            parts[0],
            forged_token.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(matches!(
            v.verify_at(&spliced, T0),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let token = p
            .issuer
            .issue_at(T0, "s", &[Purpose::Audit], None, HOUR)
            .unwrap();
        let (two_segments, _) = token.rsplit_once('.').unwrap();
        let huge = format!("{token}{}", "A".repeat(MAX_TOKEN_LEN));
        for bad in [
            "",
            "garbage",
            "a.b",
            two_segments,
            "..",
            "a.b.c",
            "a.b.c.d",
            "héllo.wörld.!",
            &format!("{token}."),
            &format!(" {token}"),
            &huge,
        ] {
            let err = v.verify_at(bad, T0).unwrap_err();
            assert!(matches!(err, TokenError::Malformed), "{bad:?}: {err:?}");
        }
    }

    #[test]
    fn hs256_with_the_public_key_as_secret_is_rejected() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let claims = claims_at(T0);
        for secret in [p.public_pem.as_bytes(), b"secret".as_slice()] {
            let token = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret).unwrap(),
            )
            .unwrap();
            let err = v.verify_at(&token, T0).unwrap_err();
            assert!(matches!(err, TokenError::BadSignature), "{err:?}");
        }
    }

    #[test]
    fn alg_none_is_rejected() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let token = p
            .issuer
            .issue_at(T0, "s", &[Purpose::Audit], None, HOUR)
            .unwrap();
        let (_, rest) = token.split_once('.').unwrap();
        // base64url of {"alg":"none","typ":"JWT"}
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{rest}");
        let err = v.verify_at(&none, T0).unwrap_err();
        assert!(
            matches!(err, TokenError::Malformed | TokenError::BadSignature),
            "{err:?}"
        );
    }

    #[test]
    fn empty_purposes_is_no_purpose() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let mut claims = claims_at(T0);
        claims.purposes.clear();
        let token = sign_raw(&p.private_pem, &claims);
        assert!(matches!(
            v.verify_at(&token, T0),
            Err(TokenError::NoPurpose)
        ));
    }

    #[test]
    fn empty_sub_or_tenant_is_malformed() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        for sub in ["", "a\nb", "ops:alice\r\n", "ops:al ice"] {
            let mut claims = claims_at(T0);
            claims.sub = sub.to_owned();
            let token = sign_raw(&p.private_pem, &claims);
            assert!(
                matches!(v.verify_at(&token, T0), Err(TokenError::Malformed)),
                "{sub:?}"
            );
        }

        let mut claims = claims_at(T0);
        claims.tenant = Some("tenants/acme".to_owned());
        let token = sign_raw(&p.private_pem, &claims);
        assert!(matches!(
            v.verify_at(&token, T0),
            Err(TokenError::Malformed)
        ));
    }

    #[test]
    fn unknown_purpose_in_token_is_malformed() {
        #[derive(Serialize)]
        struct Loose {
            iss: &'static str,
            aud: &'static str,
            sub: &'static str,
            purposes: [&'static str; 1],
            iat: u64,
            exp: u64,
            jti: &'static str,
        }
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let claims = Loose {
            iss: ISSUER,
            aud: AUDIENCE,
            sub: "s",
            purposes: ["marketing"],
            iat: T0,
            exp: T0 + 3600,
            jti: "j",
        };
        let token = sign_raw(&p.private_pem, &claims);
        assert!(matches!(
            v.verify_at(&token, T0),
            Err(TokenError::Malformed)
        ));
    }

    #[test]
    fn wrong_issuer_or_audience_is_refused() {
        let p = pair();
        let v = verifier(&[&p.public_pem]);
        let mut wrong_iss = claims_at(T0);
        wrong_iss.iss = "someone-else".to_owned();
        let mut wrong_aud = claims_at(T0);
        wrong_aud.aud = "billing".to_owned();
        for claims in [wrong_iss, wrong_aud] {
            let token = sign_raw(&p.private_pem, &claims);
            let err = v.verify_at(&token, T0).unwrap_err();
            assert!(matches!(err, TokenError::WrongIssuerOrAudience), "{err:?}");
        }
    }

    #[test]
    fn keys_are_checked_when_loaded() {
        let p = pair();
        for bad in ["", "not a pem", p.public_pem.as_str()] {
            let err = TokenIssuer::from_pem(bad).unwrap_err();
            assert!(matches!(err, TokenError::Key(_)), "{err:?}");
        }
        for bad in ["", "not a pem", p.private_pem.as_str()] {
            let err = TokenVerifier::from_public_pems([bad]).unwrap_err();
            assert!(matches!(err, TokenError::Key(_)), "{err:?}");
        }
        let err = TokenVerifier::from_public_pems([]).unwrap_err();
        assert!(matches!(err, TokenError::Key(_)));
        // The second key's problem is attributed to it.
        let err = TokenVerifier::from_public_pems([p.public_pem.as_str(), "junk"]).unwrap_err();
        assert!(err.to_string().contains("#2"), "{err}");
    }

    #[test]
    fn debug_output_hides_keys() {
        let p = pair();
        let issuer_debug = format!("{:?}", p.issuer);
        let verifier_debug = format!("{:?}", verifier(&[&p.public_pem]));
        for body_line in p
            .private_pem
            .lines()
            .chain(p.public_pem.lines())
            .filter(|l| !l.starts_with("-----"))
        {
            assert!(!issuer_debug.contains(body_line), "{issuer_debug}");
            assert!(!verifier_debug.contains(body_line), "{verifier_debug}");
        }
    }

    #[test]
    fn openssl_style_pkcs8_v1_key_is_accepted() {
        // `openssl genpkey -algorithm ed25519` writes PKCS#8 v1, without
        // the public key; generate_key_pair writes v2, with it.
        let signing = SigningKey::from_bytes(&random_bytes::<32>());
        let v1 = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: signing.to_bytes(),
            public_key: None,
        };
        let private_pem = v1.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let issuer = TokenIssuer::from_pem(&private_pem).unwrap();
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let token = issuer
            .issue_at(T0, "s", &[Purpose::Audit], None, HOUR)
            .unwrap();
        assert!(verifier(&[&public_pem]).verify_at(&token, T0).is_ok());
    }

    #[test]
    fn error_messages_never_contain_the_token() {
        let p = pair();
        let other = pair();
        let v = verifier(&[&other.public_pem]);
        let token = p
            .issuer
            .issue_at(
                T0 - 86_400,
                "svc:dsr",
                &[Purpose::Audit],
                Some("acme"),
                HOUR,
            )
            .unwrap();
        let mut empty = claims_at(T0);
        empty.purposes.clear();
        let cases = [
            v.verify_at(&token, T0).unwrap_err(),
            verifier(&[&p.public_pem])
                .verify_at(&token, T0)
                .unwrap_err(),
            v.verify_at(&token[..token.len() - 1], T0).unwrap_err(),
            verifier(&[&p.public_pem])
                .verify_at(&sign_raw(&p.private_pem, &empty), T0)
                .unwrap_err(),
        ];
        for err in cases {
            let shown = format!("{err} {err:?}");
            for segment in token.split('.') {
                assert!(!shown.contains(segment), "{shown}");
            }
            assert!(
                !shown.contains("svc:dsr") && !shown.contains("acme"),
                "{shown}"
            );
        }
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("  Bearer   abc  "), Some("abc"));
        assert_eq!(bearer("Bearer\tabc"), Some("abc"));
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer a b"), None);
        assert_eq!(bearer("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer("Bearerabc"), None);
        assert_eq!(bearer("abc.def.ghi"), None);
        assert_eq!(bearer(""), None);
        assert_eq!(bearer("Bearer abc\u{a0}def"), None);
        assert_eq!(bearer("Bearer abc\u{0}"), None);
        assert_eq!(bearer("Bearer ab=c"), None);
        assert_eq!(bearer("Bearer ===="), None);
        assert_eq!(bearer("Bearer a-b_c.d~e+f/g=="), Some("a-b_c.d~e+f/g=="));
    }

    #[test]
    fn every_declared_purpose_is_a_token_purpose() {
        use custodian_proto::privacy::v1::Purpose as P;
        for number in 1..=8 {
            let declared = P::try_from(number).unwrap();
            let purpose = Purpose::from_proto(declared).unwrap();
            assert_eq!(purpose.to_proto(), declared);
            // The same name in both places, in its own spelling.
            assert_eq!(
                declared.as_str_name(),
                format!("PURPOSE_{}", purpose.as_str().to_uppercase())
            );
        }
        assert!(P::try_from(9).is_err(), "a purpose the tokens do not know");
        assert_eq!(Purpose::from_proto(P::Unspecified), None);
    }

    #[test]
    fn purpose_names_round_trip() {
        for purpose in Purpose::ALL {
            let name = purpose.as_str();
            assert_eq!(name.parse::<Purpose>(), Ok(purpose));
            assert_eq!(purpose.to_string(), name);
        }
        let mut names: Vec<_> = Purpose::ALL.map(|p| p.as_str()).into();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Purpose::ALL.len());
    }

    #[test]
    fn unknown_purpose_lists_valid_names() {
        let err = "marketing".parse::<Purpose>().unwrap_err();
        assert_eq!(err, UnknownPurpose("marketing".to_owned()));
        let shown = err.to_string();
        assert!(shown.contains("\"marketing\""), "{shown}");
        for purpose in Purpose::ALL {
            assert!(shown.contains(purpose.as_str()), "{shown}");
        }
        // Names are exact: no case folding, no spaces.
        assert!("Audit".parse::<Purpose>().is_err());
        assert!(" audit".parse::<Purpose>().is_err());
        assert!(
            "x".repeat(10_000)
                .parse::<Purpose>()
                .unwrap_err()
                .to_string()
                .len()
                < 400
        );
    }
}
