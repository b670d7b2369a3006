//! Envelope encryption for personal fields at rest.
//!
//! The policy promises that personal fields are encrypted at rest. The scheme
//! is the usual envelope:
//!
//! - each record (or tenant, as the caller decides) gets a random [`DataKey`];
//!   its personal fields are sealed with [`encrypt`] under that key, with the
//!   row's identity (e.g. the resource name) as associated data, so a sealed
//!   value copied into another row does not decrypt;
//! - the data key itself is stored next to the data only as a [`WrappedKey`],
//!   sealed under a [`MasterKey`] from the [`Keyring`]; master keys live only in
//!   the key file (see [`crate::keys`]), never in the database;
//! - rotating master keys means adding a new active key, [`Keyring::rewrap`]ping
//!   every stored data key (cheap: the data is not re-encrypted), then retiring
//!   the old key.
//!
//! Encrypted values can't be searched, so fields that must be looked up by
//! equality (an email address) also store a [`BlindIndexKey::index`]: a keyed
//! hash that is deterministic for equal inputs but useless without the key.
//!
//! Everything is AES-256-GCM with a random 96-bit nonce, and every stored form
//! is ASCII text (`v1.` prefix, base64url) so it fits a TEXT column on every
//! database the sqlx Any driver speaks to.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Length of every key in this module: AES-256 and HMAC-SHA-256 keys alike.
pub const KEY_LEN: usize = 32;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Version prefix of every sealed value and wrapped key; bump it (and keep
/// reading the old one) if the format ever changes.
const VERSION: &str = "v1";
/// Master key ids are embedded in `.`-separated text and in file names and
/// logs, so they are kept short and boring.
const MAX_KEY_ID_LEN: usize = 64;

/// What can go wrong decrypting or managing keys.
///
/// Messages never carry plaintext, key bytes or ciphertext: these errors end up
/// in logs and gRPC statuses. Master key ids are not secret and are named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The value was wrapped under a master key this keyring doesn't hold
    /// (retired, or from another deployment).
    #[error("unknown master key {0:?}")]
    UnknownMasterKey(String),
    /// Authentication failed: wrong key, wrong associated data, or the stored
    /// value was tampered with. AES-GCM can't tell these apart, by design.
    #[error("decryption failed: wrong key, wrong associated data, or tampered value")]
    Decrypt,
    /// The stored text isn't in a format this version writes.
    #[error("malformed encrypted value")]
    Malformed,
    /// A master key id outside `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid master key id {0:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")]
    InvalidKeyId(String),
    /// Two master keys with the same id given to [`Keyring::new`].
    #[error("duplicate master key id {0:?}")]
    DuplicateMasterKey(String),
}

/// Whether `id` may name a master key: `[A-Za-z0-9_-]{1,64}`.
///
/// The restriction is what lets [`WrappedKey::to_text`] use `.` as separator
/// without escaping, and [`Keyring::wrap`] bind the id into the associated data
/// unambiguously (ids never contain NUL).
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_key_id(id: &str) -> Result<(), CryptoError> {
    if is_valid_key_id(id) {
        Ok(())
    } else {
        Err(CryptoError::InvalidKeyId(id.to_owned()))
    }
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Panics
///
/// If the OS has no randomness to give. Nothing sensible can continue then:
/// a predictable key or a repeated nonce is worse than a crash.
pub(crate) fn os_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// A fresh random 32-byte key, zeroized when dropped.
pub(crate) fn random_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    os_random(key.as_mut_slice());
    key
}

/// AES-256-GCM under `key`, its key schedule computed.
fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key))
}

/// Seals `plaintext` as `nonce || ciphertext || tag`.
fn seal(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    os_random(&mut nonce);
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // AES-GCM only refuses plaintexts over 64 GiB, which no field is.
        .expect("AES-GCM encryption of a field-sized plaintext");
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens `nonce || ciphertext || tag` as written by [`seal`].
fn open(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

/// The key that encrypts one record's personal fields.
///
/// Only ever stored wrapped ([`Keyring::wrap`]); the bytes are zeroized on drop
/// and never printed. A clone shares the key and its AES key schedule, made
/// once when the key is made or unwrapped, not again for every value it
/// opens; both are cleared when the last clone goes (the `aes` crate's
/// `zeroize` feature clears the schedule).
#[derive(Clone)]
pub struct DataKey(std::sync::Arc<KeyMaterial>);

struct KeyMaterial {
    bytes: [u8; KEY_LEN],
    cipher: Aes256Gcm,
}

impl DataKey {
    /// A new random data key from the OS CSPRNG.
    pub fn generate() -> DataKey {
        DataKey::from_bytes(*random_key())
    }

    fn from_bytes(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey(std::sync::Arc::new(KeyMaterial {
            cipher: cipher(&bytes),
            bytes,
        }))
    }
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A key-encryption key from the key file, named by an id so wrapped data keys
/// can say which one sealed them.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    /// Its key schedule, made once: every read of a sealed record unwraps
    /// a data key with it. The raw bytes are not kept: nothing needs them
    /// after this, and the `aes` crate's `zeroize` feature clears the
    /// schedule on drop.
    cipher: Aes256Gcm,
}

impl MasterKey {
    /// A master key from its id and raw bytes.
    pub fn new(id: impl Into<String>, mut key: [u8; KEY_LEN]) -> Result<MasterKey, CryptoError> {
        let id = id.into();
        let made = check_key_id(&id).map(|()| MasterKey {
            id,
            cipher: cipher(&key),
        });
        key.zeroize();
        made
    }

    /// A new random master key.
    pub fn generate(id: impl Into<String>) -> Result<MasterKey, CryptoError> {
        MasterKey::new(id, *random_key())
    }

    /// The key's id; not secret.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A data key sealed under a master key: what is stored next to the data.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Which master key sealed it; not secret.
    pub master_key_id: String,
    /// `nonce || AES-GCM ciphertext || tag` of the data key's bytes.
    pub ciphertext: Vec<u8>,
}

impl WrappedKey {
    /// The TEXT-column form: `v1.{master_key_id}.{base64url(ciphertext)}`.
    pub fn to_text(&self) -> String {
        format!(
            "{VERSION}.{}.{}",
            self.master_key_id,
            URL_SAFE_NO_PAD.encode(&self.ciphertext)
        )
    }

    /// Parses [`WrappedKey::to_text`]'s output. Only the format is checked
    /// here; authenticity is checked by [`Keyring::unwrap`].
    pub fn from_text(text: &str) -> Result<WrappedKey, CryptoError> {
        let mut parts = text.split('.');
        let (Some(VERSION), Some(id), Some(data), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed);
        };
        if !is_valid_key_id(id) {
            return Err(CryptoError::Malformed);
        }
        let ciphertext = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| CryptoError::Malformed)?;
        if ciphertext.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        Ok(WrappedKey {
            master_key_id: id.to_owned(),
            ciphertext,
        })
    }
}

// Ciphertext isn't secret, but it is bulky and useless in logs.
impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("master_key_id", &self.master_key_id)
            .finish_non_exhaustive()
    }
}

/// Every master key a server holds, and which one wraps new data keys.
#[derive(Clone, Debug)]
pub struct Keyring {
    active: String,
    keys: BTreeMap<String, MasterKey>,
}

impl Keyring {
    /// A keyring wrapping with `active_id`, which must be one of `keys`.
    ///
    /// The older keys are there to unwrap data keys not yet rewrapped.
    pub fn new(
        active_id: impl Into<String>,
        keys: impl IntoIterator<Item = MasterKey>,
    ) -> Result<Keyring, CryptoError> {
        let active = active_id.into();
        let mut map = BTreeMap::new();
        for key in keys {
            if map.contains_key(key.id()) {
                return Err(CryptoError::DuplicateMasterKey(key.id.clone()));
            }
            map.insert(key.id.clone(), key);
        }
        if !map.contains_key(&active) {
            return Err(CryptoError::UnknownMasterKey(active));
        }
        Ok(Keyring { active, keys: map })
    }

    /// The id of the key new data keys are wrapped with.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// The ids of every key this keyring can unwrap with.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Seals `dk` under the active master key. `aad` binds it to its owner (the
    /// same value must be passed to [`Keyring::unwrap`]).
    pub fn wrap(&self, dk: &DataKey, aad: &[u8]) -> WrappedKey {
        let key = &self.keys[&self.active];
        WrappedKey {
            master_key_id: key.id.clone(),
            ciphertext: seal(&key.cipher, &dk.0.bytes, &wrap_aad(&key.id, aad)),
        }
    }

    /// Opens `w` with whichever master key it names.
    pub fn unwrap(&self, w: &WrappedKey, aad: &[u8]) -> Result<DataKey, CryptoError> {
        let key = self
            .keys
            .get(&w.master_key_id)
            .ok_or_else(|| CryptoError::UnknownMasterKey(w.master_key_id.clone()))?;
        let bytes = Zeroizing::new(open(&key.cipher, &w.ciphertext, &wrap_aad(&key.id, aad))?);
        let bytes: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        Ok(DataKey::from_bytes(bytes))
    }

    /// `w` wrapped under the active key, for master key rotation. A key
    /// already under the active key is returned as is, so a rotation job can
    /// run over every row without rewriting the ones it has done.
    pub fn rewrap(&self, w: &WrappedKey, aad: &[u8]) -> Result<WrappedKey, CryptoError> {
        if !self.needs_rewrap(w) {
            return Ok(w.clone());
        }
        let dk = self.unwrap(w, aad)?;
        Ok(self.wrap(&dk, aad))
    }

    /// Whether `w` is under a key other than the active one.
    pub fn needs_rewrap(&self, w: &WrappedKey) -> bool {
        w.master_key_id != self.active
    }
}

/// Binds the master key id into the associated data, so a wrapped key whose
/// id was edited to another key's fails authentication instead of being
/// opened under the wrong assumptions. Ids never contain NUL, so the
/// concatenation is unambiguous.
fn wrap_aad(master_key_id: &str, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(master_key_id.len() + 1 + aad.len());
    out.extend_from_slice(master_key_id.as_bytes());
    out.push(0);
    out.extend_from_slice(aad);
    out
}

/// Seals one field: `v1.{base64url(nonce || ciphertext || tag)}`.
///
/// `aad` must identify the row the value belongs to (e.g. its resource name);
/// decrypting with any other `aad` fails, so sealed values can't be swapped
/// between rows. Every call uses a fresh random nonce, so equal plaintexts give
/// unequal outputs; use a [`BlindIndexKey`] for equality lookups.
pub fn encrypt(dk: &DataKey, plaintext: &[u8], aad: &[u8]) -> String {
    format!(
        "{VERSION}.{}",
        URL_SAFE_NO_PAD.encode(seal(&dk.0.cipher, plaintext, aad))
    )
}

/// Opens a value sealed by [`encrypt`] with the same key and `aad`.
pub fn decrypt(dk: &DataKey, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let data = sealed
        .strip_prefix(VERSION)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or(CryptoError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(data)
        .map_err(|_| CryptoError::Malformed)?;
    open(&dk.0.cipher, &bytes, aad)
}

/// The key for blind indexes: equality lookups over encrypted fields.
#[derive(Clone)]
pub struct BlindIndexKey([u8; KEY_LEN]);

impl BlindIndexKey {
    /// A blind index key from raw bytes.
    pub fn new(key: [u8; KEY_LEN]) -> BlindIndexKey {
        BlindIndexKey(key)
    }

    /// A new random blind index key.
    pub fn generate() -> BlindIndexKey {
        BlindIndexKey(*random_key())
    }

    /// `base64url(HMAC-SHA-256(key, domain || 0x00 || normalized_value))`.
    ///
    /// `domain` names what is indexed ("email", "phone") so equal strings in
    /// different fields give different indexes. The caller normalizes the value
    /// first (case, whitespace, phone formatting), since equal means
    /// byte-equal here.
    ///
    /// # Panics
    ///
    /// If `domain` contains NUL: it would make the input ambiguous, and domains
    /// are constants in code, so that is a bug.
    pub fn index(&self, domain: &str, normalized_value: &str) -> String {
        assert!(
            !domain.contains('\0'),
            "blind index domain must not contain NUL"
        );
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(normalized_value.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

impl Drop for BlindIndexKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    const ROW: &[u8] = b"tenants/acme/people/p-1";
    const OTHER_ROW: &[u8] = b"tenants/acme/people/p-2";

    fn master(id: &str, byte: u8) -> MasterKey {
        MasterKey::new(id, [byte; KEY_LEN]).unwrap()
    }

    /// Every rendering of the key bytes that could plausibly leak.
    fn leaks(debug: &str, key: &[u8]) -> bool {
        debug.contains(&STANDARD.encode(key))
            || debug.contains(&URL_SAFE_NO_PAD.encode(key))
            || debug.contains(&format!("{key:?}"))
            || debug.contains(&hex_lower(key))
    }

    fn hex_lower(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn encrypt_decrypt_round_trip() {
        let dk = DataKey::generate();
        let sealed = encrypt(&dk, b"ada@example.com", ROW);
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("ada"));
        assert_eq!(decrypt(&dk, &sealed, ROW).unwrap(), b"ada@example.com");
        assert_eq!(
            decrypt(&dk, &encrypt(&dk, b"", ROW), ROW).unwrap(),
            b"",
            "empty values round-trip too"
        );
    }

    #[test]
    fn sealed_text_is_url_safe_ascii() {
        let dk = DataKey::generate();
        for len in 0..64 {
            let sealed = encrypt(&dk, &vec![0xff; len], ROW);
            assert!(
                sealed
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{sealed}"
            );
        }
    }

    #[test]
    fn wrong_aad_fails() {
        let dk = DataKey::generate();
        let sealed = encrypt(&dk, b"secret", ROW);
        assert_eq!(decrypt(&dk, &sealed, OTHER_ROW), Err(CryptoError::Decrypt));
        assert_eq!(decrypt(&dk, &sealed, b""), Err(CryptoError::Decrypt));
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = encrypt(&DataKey::generate(), b"secret", ROW);
        assert_eq!(
            decrypt(&DataKey::generate(), &sealed, ROW),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let dk = DataKey::generate();
        let sealed = encrypt(&dk, b"secret value", ROW);
        let bytes = URL_SAFE_NO_PAD.decode(&sealed[3..]).unwrap();
        // Nonce, ciphertext and tag: a flipped bit anywhere must be caught.
        for i in [0, NONCE_LEN, NONCE_LEN + 3, bytes.len() - 1] {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            let text = format!("v1.{}", URL_SAFE_NO_PAD.encode(&tampered));
            assert_eq!(
                decrypt(&dk, &text, ROW),
                Err(CryptoError::Decrypt),
                "byte {i}"
            );
        }
        let mut truncated = bytes.clone();
        truncated.pop();
        let text = format!("v1.{}", URL_SAFE_NO_PAD.encode(&truncated));
        assert_eq!(decrypt(&dk, &text, ROW), Err(CryptoError::Decrypt));
    }

    #[test]
    fn malformed_sealed_values_are_refused() {
        let dk = DataKey::generate();
        let short = format!(
            "v1.{}",
            URL_SAFE_NO_PAD.encode([0u8; NONCE_LEN + TAG_LEN - 1])
        );
        for bad in [
            "",
            "v1.",
            "v2.AAAA",
            "v1.!!!",
            "AAAA",
            "v1AAAA",
            short.as_str(),
        ] {
            assert_eq!(
                decrypt(&dk, bad, ROW),
                Err(CryptoError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn same_plaintext_encrypts_differently() {
        let dk = DataKey::generate();
        let a = encrypt(&dk, b"same", ROW);
        let b = encrypt(&dk, b"same", ROW);
        assert_ne!(a, b);
        assert_eq!(&a[..3], "v1.");
        assert_ne!(a[3..19], b[3..19], "the nonces differ");
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let ring = Keyring::new("mk-a", [master("mk-a", 1)]).unwrap();
        let dk = DataKey::generate();
        let wrapped = ring.wrap(&dk, ROW);
        assert_eq!(wrapped.master_key_id, "mk-a");
        let text = wrapped.to_text();
        assert!(text.starts_with("v1.mk-a."), "{text}");
        let parsed = WrappedKey::from_text(&text).unwrap();
        assert_eq!(parsed, wrapped);
        let unwrapped = ring.unwrap(&parsed, ROW).unwrap();
        assert_eq!(unwrapped.0.bytes, dk.0.bytes);
        let sealed = encrypt(&dk, b"field", ROW);
        assert_eq!(decrypt(&unwrapped, &sealed, ROW).unwrap(), b"field");
    }

    #[test]
    fn unwrap_binds_aad_and_key_id() {
        let ring = Keyring::new("mk-a", [master("mk-a", 1), master("mk-b", 2)]).unwrap();
        let wrapped = ring.wrap(&DataKey::generate(), ROW);
        assert_eq!(
            ring.unwrap(&wrapped, OTHER_ROW).unwrap_err(),
            CryptoError::Decrypt
        );
        let relabelled = WrappedKey {
            master_key_id: "mk-b".into(),
            ..wrapped.clone()
        };
        assert_eq!(
            ring.unwrap(&relabelled, ROW).unwrap_err(),
            CryptoError::Decrypt
        );
        let mut tampered = wrapped;
        tampered.ciphertext[20] ^= 0x80;
        assert_eq!(
            ring.unwrap(&tampered, ROW).unwrap_err(),
            CryptoError::Decrypt
        );
    }

    #[test]
    fn unwrap_with_unknown_master_key() {
        let ring_a = Keyring::new("mk-a", [master("mk-a", 1)]).unwrap();
        let ring_b = Keyring::new("mk-b", [master("mk-b", 1)]).unwrap();
        let wrapped = ring_a.wrap(&DataKey::generate(), ROW);
        let err = ring_b.unwrap(&wrapped, ROW).unwrap_err();
        assert_eq!(err, CryptoError::UnknownMasterKey("mk-a".into()));
        assert_eq!(err.to_string(), "unknown master key \"mk-a\"");
    }

    #[test]
    fn rotation_rewraps_under_the_new_key() {
        let a = master("mk-a", 1);
        let b = master("mk-b", 2);
        let before = Keyring::new("mk-a", [a.clone()]).unwrap();
        let dk = DataKey::generate();
        let old = before.wrap(&dk, ROW);
        assert!(!before.needs_rewrap(&old));

        let during = Keyring::new("mk-b", [a, b.clone()]).unwrap();
        assert_eq!(during.active_id(), "mk-b");
        assert!(during.needs_rewrap(&old));
        assert_eq!(during.unwrap(&old, ROW).unwrap().0.bytes, dk.0.bytes);
        let new = during.rewrap(&old, ROW).unwrap();
        assert_eq!(new.master_key_id, "mk-b");
        assert!(!during.needs_rewrap(&new));
        assert_eq!(during.unwrap(&new, ROW).unwrap().0.bytes, dk.0.bytes);
        assert_eq!(
            during.rewrap(&new, ROW).unwrap(),
            new,
            "already under the active key: unchanged"
        );
        assert_eq!(
            during.rewrap(&old, OTHER_ROW).unwrap_err(),
            CryptoError::Decrypt
        );

        let after = Keyring::new("mk-b", [b]).unwrap();
        assert_eq!(after.unwrap(&new, ROW).unwrap().0.bytes, dk.0.bytes);
        assert_eq!(
            after.unwrap(&old, ROW).unwrap_err(),
            CryptoError::UnknownMasterKey("mk-a".into())
        );
        assert_eq!(
            after.rewrap(&old, ROW).unwrap_err(),
            CryptoError::UnknownMasterKey("mk-a".into())
        );
    }

    #[test]
    fn keyring_validation() {
        assert_eq!(
            Keyring::new("mk-x", [master("mk-a", 1)]).unwrap_err(),
            CryptoError::UnknownMasterKey("mk-x".into())
        );
        assert_eq!(
            Keyring::new("mk-a", [master("mk-a", 1), master("mk-a", 2)]).unwrap_err(),
            CryptoError::DuplicateMasterKey("mk-a".into())
        );
        assert_eq!(
            Keyring::new("mk-a", []).unwrap_err(),
            CryptoError::UnknownMasterKey("mk-a".into())
        );
        for bad in ["", "mk.1", "mk 1", "mk/1", "mk\u{e9}", &"m".repeat(65)] {
            assert!(!is_valid_key_id(bad), "{bad:?}");
            assert!(matches!(
                MasterKey::new(bad, [0; KEY_LEN]),
                Err(CryptoError::InvalidKeyId(_))
            ));
        }
        for good in ["mk-2026-11-29", "A_b-9", &"m".repeat(64)] {
            assert!(is_valid_key_id(good), "{good:?}");
        }
        let ring = Keyring::new("b", [master("b", 1), master("a", 2)]).unwrap();
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn malformed_wrapped_text_is_refused() {
        let ring = Keyring::new("mk-a", [master("mk-a", 1)]).unwrap();
        let good = ring.wrap(&DataKey::generate(), ROW).to_text();
        let data = good.rsplit('.').next().unwrap();
        let cases = [
            String::new(),
            "v1.mk-a".into(),
            format!("v2.mk-a.{data}"),
            format!("v1..{data}"),
            format!("v1.mk a.{data}"),
            format!("v1.mk-a.{data}.x"),
            format!("v1.mk-a.{data}="),
            format!("v1.mk-a.{}", &data[..data.len() - 2]),
        ];
        for bad in cases {
            assert_eq!(
                WrappedKey::from_text(&bad),
                Err(CryptoError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn blind_index() {
        let key = BlindIndexKey::new([7; KEY_LEN]);
        let email = key.index("email", "ada@example.com");
        assert_eq!(email, key.index("email", "ada@example.com"));
        assert_eq!(email.len(), 43, "base64url of 32 bytes, unpadded");
        assert!(!email.contains("ada"));
        assert_ne!(email, key.index("email", "bob@example.com"));
        assert_ne!(email, key.index("phone", "ada@example.com"));
        assert_ne!(
            email,
            BlindIndexKey::new([8; KEY_LEN]).index("email", "ada@example.com")
        );
        assert_ne!(
            BlindIndexKey::generate().index("email", "ada@example.com"),
            email
        );
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(key.index("ab", "c"), key.index("a", "bc"));
    }

    #[test]
    #[should_panic(expected = "NUL")]
    fn blind_index_domain_with_nul_panics() {
        BlindIndexKey::new([0; KEY_LEN]).index("a\0b", "c");
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let dk = DataKey::generate();
        let debug = format!("{dk:?} {dk:#?}");
        assert_eq!(format!("{dk:?}"), "DataKey(..)");
        assert!(!leaks(&debug, &dk.0.bytes));

        let key = *random_key();
        let mk = MasterKey::new("mk-a", key).unwrap();
        let debug = format!("{mk:?} {mk:#?}");
        assert!(debug.contains("mk-a"));
        assert!(!leaks(&debug, &key), "{debug}");

        let ring = Keyring::new("mk-a", [mk.clone()]).unwrap();
        let debug = format!("{ring:?} {ring:#?}");
        assert!(!leaks(&debug, &key), "{debug}");

        let bik = BlindIndexKey::generate();
        let debug = format!("{bik:?} {bik:#?}");
        assert_eq!(format!("{bik:?}"), "BlindIndexKey(..)");
        assert!(!leaks(&debug, &bik.0));

        let wrapped = ring.wrap(&dk, ROW);
        let debug = format!("{wrapped:?}");
        assert!(debug.contains("mk-a"));
        assert!(!leaks(&debug, &wrapped.ciphertext));
    }

    #[test]
    fn error_messages_carry_no_secrets() {
        let dk = DataKey::generate();
        let sealed = encrypt(&dk, b"plaintext-marker", ROW);
        let err = decrypt(&DataKey::generate(), &sealed, ROW).unwrap_err();
        for message in [err.to_string(), format!("{err:?}")] {
            assert!(!message.contains("plaintext-marker"));
            assert!(!message.contains(&sealed[3..]));
            assert!(!leaks(&message, &dk.0.bytes));
        }
    }

    /// Values written by this code, checked against an independent AES-GCM
    /// and HMAC implementation (Python `cryptography`, `hmac`). Stored data
    /// outlives the code: any change to the format must keep these opening.
    #[test]
    fn known_answers() {
        let dk = DataKey::from_bytes([0x42; KEY_LEN]);
        let sealed = "v1.YS9GW5A-JLgcpYlcqodpuwTt52loywxsAmRA1wJNNGqbvgjtKoetyFK5uA";
        assert_eq!(
            decrypt(&dk, sealed, b"people/p-1").unwrap(),
            b"ada@example.com"
        );

        let ring = Keyring::new("mk-1", [master("mk-1", 0x17)]).unwrap();
        let wrapped = WrappedKey::from_text(
            "v1.mk-1.kwBWLsAN0m-WqWoLIcl8eMv9YCiIakzR4KAuXGu1xohu54jWU4VSEoX3S0jweDhSiO07ocKtVHbV4_x7",
        )
        .unwrap();
        assert_eq!(
            ring.unwrap(&wrapped, b"people/p-1").unwrap().0.bytes,
            [0x42; KEY_LEN]
        );

        assert_eq!(
            BlindIndexKey::new([0x07; KEY_LEN]).index("email", "ada@example.com"),
            "iNGjP9_gN760f8NkjnDbmHW3prwa8HwwxG73sYMjTDE"
        );
    }
}
