//! Key files: the secrets a Custodian server needs, in TOML.
//!
//! Operators read and edit them by hand, and in production each is mounted
//! from a Kubernetes Secret, so they are plain TOML with comments. A file
//! has one of three roles ([`Role`]):
//!
//! - **a service's** (`service = "tickets"`): that service's master keys, the
//!   blind-index key and the token public keys. No signing key: a server
//!   only verifies tokens, so a compromised pod can mint none.
//! - **the operator's signing file**: the token signing key (and its public
//!   key), kept off the cluster; `custodian token` issues callers' tokens and
//!   each service's credential with it.
//! - **the suite's** (no `service`): everything in one file, for the
//!   all-in-one process (development, small installs), which mints its own
//!   services' credentials.
//!
//! ```toml
//! # Custodian keys. Keep secret (mode 0600).
//! service = "tickets"
//! active_master_key = "tickets-2026-11-29"
//! blind_index_key = "<base64 of 32 bytes>"
//! token_public_keys = ["-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"]
//!
//! [master_keys]
//! "tickets-2026-11-29" = "<base64 of 32 bytes>"
//! "mk-2026-01-01" = "<base64 of 32 bytes>"   # kept until every data key is rewrapped
//! ```
//!
//! The blind-index key is the same in every service's file: identity keeps
//! a legal hold on a data subject as the blind index of the email or phone,
//! and every other service's sweep matches it against the indexes of its
//! own rows ([`KeyFile::split`] and [`KeyFile::generate_split`] keep it so).
//!
//! Master key rotation, using [`KeyFile::add_master_key`],
//! [`KeyFile::activate_master_key`] and [`KeyFile::retire_master_key`], per
//! file (a service's file is rotated on its own):
//!
//! 1. add a new master key (not active yet) and deploy the file to every
//!    server that uses it;
//! 2. activate it and deploy again;
//! 3. run the rewrap job ([`crate::crypto::Keyring::rewrap`]) over every
//!    stored wrapped data key of the file's service(s);
//! 4. retire the old key and deploy again.
//!
//! Errors name the file and the problem but never echo a value from it: a typo
//! next to a key must not put the key into a log.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{BlindIndexKey, KEY_LEN, Keyring, MasterKey, is_valid_key_id, random_key};

const HEADER: &str = "\
# Custodian keys. Keep secret (mode 0600).
#
# master_keys wrap the data keys that encrypt personal fields. A retired master
# key must stay listed until every data key it wrapped has been rewrapped under
# active_master_key; after that it can be removed.
# blind_index_key makes personal fields searchable by equality: changing it
# breaks every stored index. It is the same in every service's file.
";

const SIGNING_HEADER: &str = "\
# Custodian token signing key: the operator's. Keep it off the cluster (mode 0600).
#
# `custodian token --key-file THIS` issues callers' tokens and each service's
# credential (`--service NAME`). Servers only verify tokens: never mount this
# file in a pod. token_public_keys go into every service's key file.
";

/// What a key file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role<'a> {
    /// Every service's keys in one file, for the all-in-one process; it may
    /// hold the signing key, to mint its services' credentials.
    Suite,
    /// One service's master keys, the blind-index key and the token public
    /// keys: what a server run with `--target` holds.
    Service(&'a str),
    /// The operator's token signing key, and nothing a server needs.
    Signing,
}

/// The contents of a key file. Key values are base64 (standard alphabet,
/// padded) of 32 random bytes; token keys are PEM.
///
/// `Debug` shows ids and counts only. Secret strings are zeroized on drop
/// (best effort: the TOML parser's own buffers are out of reach).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// The one service this file is for (its `--target` name); `None` for
    /// the suite's file and the operator's signing file.
    #[serde(default)]
    pub service: Option<String>,
    /// The id of the master key that wraps new data keys ("" in the
    /// operator's signing file, which holds none).
    #[serde(default)]
    pub active_master_key: String,
    /// Master key id to base64 key.
    #[serde(default)]
    pub master_keys: BTreeMap<String, String>,
    /// Base64 HMAC key for blind indexes ("" in the signing file).
    #[serde(default)]
    pub blind_index_key: String,
    /// Ed25519 PKCS#8 PEM: in the operator's signing file, and in the
    /// suite's file of the all-in-one; never in a service's.
    #[serde(default)]
    pub token_signing_key: Option<String>,
    /// Every public key (PEM) a valid token may be signed with: more than one
    /// while signing keys rotate.
    #[serde(default)]
    pub token_public_keys: Vec<String>,
}

impl KeyFile {
    /// Reads and validates the key file at `path`.
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<KeyFile> {
        let path = path.as_ref();
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("reading key file {}", path.display()))?,
        );
        KeyFile::from_toml_str(&text).with_context(|| format!("key file {}", path.display()))
    }

    /// Parses and validates key file text.
    pub fn from_toml_str(text: &str) -> anyhow::Result<KeyFile> {
        let file: KeyFile = toml::from_str(text).map_err(|e| sanitized_toml_error(text, &e))?;
        file.validate()?;
        Ok(file)
    }

    /// What the file is for.
    pub fn role(&self) -> Role<'_> {
        match &self.service {
            Some(service) => Role::Service(service),
            None if self.holds_master_keys() => Role::Suite,
            None => Role::Signing,
        }
    }

    /// Whether the file has any part of what a server needs to encrypt.
    fn holds_master_keys(&self) -> bool {
        !self.master_keys.is_empty()
            || !self.active_master_key.is_empty()
            || !self.blind_index_key.is_empty()
    }

    /// Checks that every key decodes and the active master key is listed, so a
    /// bad file fails at startup rather than on the first encrypted write;
    /// and that the file holds what its role needs and nothing more.
    ///
    /// Token keys are left to the token module, which parses them.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.role() {
            Role::Service(service) => {
                if !is_valid_key_id(service) {
                    bail!(
                        "invalid service name {service:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
                    );
                }
                if self.token_signing_key.is_some() {
                    bail!(
                        "the key file of {service} holds token_signing_key: a service only verifies tokens; \
                         keep the signing key in the operator's signing file"
                    );
                }
            }
            Role::Signing if self.token_signing_key.is_none() => {
                bail!("the key file holds neither master keys nor a token signing key");
            }
            Role::Signing => return Ok(()),
            Role::Suite => {}
        }
        self.keyring()?;
        self.blind_index_key()?;
        Ok(())
    }

    /// The master keys as a [`Keyring`].
    pub fn keyring(&self) -> anyhow::Result<Keyring> {
        self.needs_master_keys()?;
        let mut keys = Vec::with_capacity(self.master_keys.len());
        for (id, value) in &self.master_keys {
            let what = format!("master key {id:?}");
            let bytes = decode_key(&what, value)?;
            keys.push(MasterKey::new(id.clone(), *bytes).with_context(|| what.clone())?);
        }
        Keyring::new(self.active_master_key.clone(), keys).context("active_master_key")
    }

    /// The key for blind indexes.
    pub fn blind_index_key(&self) -> anyhow::Result<BlindIndexKey> {
        self.needs_master_keys()?;
        let bytes = decode_key("blind_index_key", &self.blind_index_key)?;
        Ok(BlindIndexKey::new(*bytes))
    }

    fn needs_master_keys(&self) -> anyhow::Result<()> {
        if self.role() == Role::Signing {
            bail!(
                "this is the operator's signing file: it holds no master keys or blind-index key, \
                 which are in each service's key file"
            );
        }
        Ok(())
    }

    /// A new suite file (for the all-in-one) with one random master key,
    /// `master_key_id`, and a random blind index key. The token key pair is
    /// `(private PEM, public PEM)`, made by the token module.
    ///
    /// The id is not checked here; [`KeyFile::write_new`] refuses an invalid
    /// file, and [`KeyFile::validate`] says why.
    pub fn generate(master_key_id: &str, token_keys: (String, String)) -> KeyFile {
        let (private_pem, public_pem) = token_keys;
        KeyFile {
            service: None,
            active_master_key: master_key_id.to_owned(),
            master_keys: BTreeMap::from([(master_key_id.to_owned(), random_key_text())]),
            blind_index_key: random_key_text(),
            token_signing_key: Some(private_pem),
            token_public_keys: vec![public_pem],
        }
    }

    /// New keys for a suite run as separate servers: the operator's signing
    /// file, and for each `(service, master key id)` a file with its own
    /// random master key, the one blind-index key they share and the token
    /// public key.
    pub fn generate_split(
        services: &[(&str, &str)],
        token_keys: (String, String),
    ) -> (KeyFile, Vec<KeyFile>) {
        let (private_pem, public_pem) = token_keys;
        let blind_index_key = Zeroizing::new(random_key_text());
        let files = services
            .iter()
            .map(|(service, master_key_id)| KeyFile {
                service: Some((*service).to_owned()),
                active_master_key: (*master_key_id).to_owned(),
                master_keys: BTreeMap::from([((*master_key_id).to_owned(), random_key_text())]),
                blind_index_key: blind_index_key.to_string(),
                token_signing_key: None,
                token_public_keys: vec![public_pem.clone()],
            })
            .collect();
        (KeyFile::signing(private_pem, vec![public_pem]), files)
    }

    /// The operator's signing file.
    pub fn signing(private_pem: String, public_pems: Vec<String>) -> KeyFile {
        KeyFile {
            service: None,
            active_master_key: String::new(),
            master_keys: BTreeMap::new(),
            blind_index_key: String::new(),
            token_signing_key: Some(private_pem),
            token_public_keys: public_pems,
        }
    }

    /// Splits a suite file into the operator's signing file (`None` when it
    /// holds no signing key) and one file per service. Every service's file
    /// keeps every master key, since data keys of any service may be
    /// wrapped under any of them: give each service a master key of its own
    /// by rotating its file afterwards (add, activate, rewrap, retire).
    pub fn split(&self, services: &[&str]) -> anyhow::Result<(Option<KeyFile>, Vec<KeyFile>)> {
        if self.role() != Role::Suite {
            bail!("only the suite's key file (no `service`, with master keys) can be split");
        }
        let signing = self
            .token_signing_key
            .clone()
            .map(|pem| KeyFile::signing(pem, self.token_public_keys.clone()));
        let files = services
            .iter()
            .map(|service| {
                let mut file = self.clone();
                file.service = Some((*service).to_owned());
                file.token_signing_key.zeroize();
                file.token_signing_key = None;
                file
            })
            .collect();
        Ok((signing, files))
    }

    /// The file's text, with a comment header for operators.
    pub fn to_toml(&self) -> String {
        let master_keys = self.holds_master_keys();
        let mut out = String::from(if master_keys { HEADER } else { SIGNING_HEADER });
        out.push('\n');
        if let Some(service) = &self.service {
            out.push_str(&format!("service = {}\n", toml_string(service)));
        }
        if master_keys {
            out.push_str(&format!(
                "active_master_key = {}\n",
                toml_string(&self.active_master_key)
            ));
            out.push_str(&format!(
                "blind_index_key = {}\n",
                toml_string(&self.blind_index_key)
            ));
        }
        if let Some(pem) = &self.token_signing_key {
            out.push_str(&format!("token_signing_key = {}\n", toml_string(pem)));
        }
        out.push_str("# Every key a token may be signed with (more than one while rotating).\n");
        out.push_str("token_public_keys = [");
        for pem in &self.token_public_keys {
            out.push_str(&format!("\n    {},", toml_string(pem)));
        }
        if !self.token_public_keys.is_empty() {
            out.push('\n');
        }
        out.push_str("]\n");
        if !master_keys {
            return out;
        }
        out.push_str("\n[master_keys]\n");
        for (id, key) in &self.master_keys {
            let note = if *id == self.active_master_key {
                "  # active"
            } else {
                ""
            };
            out.push_str(&format!(
                "{} = {}{note}\n",
                toml_string(id),
                toml_string(key)
            ));
        }
        out
    }

    /// Writes the file to `path`, which must not exist, readable by its owner
    /// only.
    ///
    /// `create_new` means an existing key file is never overwritten: losing a
    /// master key loses every record it protects. The file is created with mode
    /// 0600, so it is never readable by others, not even while being written.
    /// If writing fails the partial file is removed.
    pub fn write_new(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        self.validate()
            .with_context(|| format!("refusing to write invalid key file {}", path.display()))?;
        let text = Zeroizing::new(self.to_toml());

        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(path)
            .with_context(|| format!("creating key file {}", path.display()))?;

        let written = (|| {
            // The creation mode is masked by the umask; set it outright so the
            // owner can always read the file back.
            #[cfg(unix)]
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            drop(file);
            // We created it a moment ago, so removing it loses nothing.
            let _ = fs::remove_file(path);
            return Err(e).with_context(|| format!("writing key file {}", path.display()));
        }
        Ok(())
    }

    /// Rotation step 1: adds a new random master key `id`, not yet active:
    /// servers still on the old file must be able to unwrap what servers on
    /// the new one wrap, so a key is activated ([`Self::activate_master_key`])
    /// only once every server has it.
    pub fn add_master_key(&mut self, id: &str) -> anyhow::Result<()> {
        self.needs_master_keys()?;
        if !is_valid_key_id(id) {
            bail!(
                "invalid master key id {id:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
            );
        }
        if self.master_keys.contains_key(id) {
            bail!("master key {id:?} already exists");
        }
        self.master_keys.insert(id.to_owned(), random_key_text());
        Ok(())
    }

    /// Rotation step 2: makes master key `id` the one new data keys are
    /// wrapped with.
    pub fn activate_master_key(&mut self, id: &str) -> anyhow::Result<()> {
        self.needs_master_keys()?;
        if !self.master_keys.contains_key(id) {
            bail!("no master key {id:?}");
        }
        self.active_master_key = id.to_owned();
        Ok(())
    }

    /// Rotation step 3: removes master key `id`, once no stored data key is
    /// wrapped under it any more. The active key can't be retired.
    pub fn retire_master_key(&mut self, id: &str) -> anyhow::Result<()> {
        self.needs_master_keys()?;
        if id == self.active_master_key {
            bail!("master key {id:?} is active and can't be retired");
        }
        let Some(mut key) = self.master_keys.remove(id) else {
            bail!("no master key {id:?}");
        };
        key.zeroize();
        Ok(())
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        for key in self.master_keys.values_mut() {
            key.zeroize();
        }
        self.blind_index_key.zeroize();
        self.token_signing_key.zeroize();
    }
}

/// Stands in for a secret in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Ids<'a>(&'a BTreeMap<String, String>);
        impl fmt::Debug for Ids<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.keys().map(|id| (id, Redacted)))
                    .finish()
            }
        }
        f.debug_struct("KeyFile")
            .field("service", &self.service)
            .field("active_master_key", &self.active_master_key)
            .field("master_keys", &Ids(&self.master_keys))
            .field("blind_index_key", &Redacted)
            .field(
                "token_signing_key",
                &self.token_signing_key.as_ref().map(|_| Redacted),
            )
            .field("token_public_keys", &self.token_public_keys.len())
            .finish()
    }
}

fn random_key_text() -> String {
    STANDARD.encode(*random_key())
}

/// Decodes a base64 key of exactly [`KEY_LEN`] bytes. The error says what is
/// wrong without the decoder's detail, which quotes the offending byte.
fn decode_key(what: &str, text: &str) -> anyhow::Result<Zeroizing<[u8; KEY_LEN]>> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text)
            .map_err(|_| anyhow!("{what} is not valid base64"))?,
    );
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() != KEY_LEN {
        bail!(
            "{what} must be {KEY_LEN} bytes, base64-encoded; it is {} bytes",
            bytes.len()
        );
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// `s` as a TOML string literal, escaped by the toml crate itself.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The toml crate's `Display` quotes the offending source line, and serde's
/// type errors quote the offending value; either may be a key. Keep the
/// position and the kind of problem only.
fn sanitized_toml_error(text: &str, err: &toml::de::Error) -> anyhow::Error {
    let message = err.message();
    let quotes_a_value = ["invalid type", "invalid value", "invalid length"]
        .iter()
        .any(|prefix| message.starts_with(prefix));
    let message = if quotes_a_value {
        match message.rfind(", expected ") {
            Some(at) => format!("wrong kind of value, expected {}", &message[at + 11..]),
            None => "wrong kind of value".to_owned(),
        }
    } else {
        message.lines().next().unwrap_or("invalid TOML").to_owned()
    };
    match err.span().and_then(|span| text.get(..span.start)) {
        Some(before) => {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            anyhow!("line {line}, column {column}: {message}")
        }
        None => anyhow!(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DataKey, decrypt, encrypt};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::path::PathBuf;

    const PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPRIVATEPRIVATEPRIVATEPRIVATEPRIVATEPRIV\n-----END PRIVATE KEY-----\n";
    const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAPUBLICPUBLICPUBLICPUBLICPUBLICPUBLICPUBL\n-----END PUBLIC KEY-----\n";

    fn generated() -> KeyFile {
        KeyFile::generate(
            "mk-2026-11-29",
            (PRIVATE_PEM.to_owned(), PUBLIC_PEM.to_owned()),
        )
    }

    fn assert_same(a: &KeyFile, b: &KeyFile) {
        assert_eq!(a.service, b.service);
        assert_eq!(a.active_master_key, b.active_master_key);
        assert_eq!(a.master_keys, b.master_keys);
        assert_eq!(a.blind_index_key, b.blind_index_key);
        assert_eq!(a.token_signing_key, b.token_signing_key);
        assert_eq!(a.token_public_keys, b.token_public_keys);
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "custodian-keys-{name}-{}-{nanos}",
                std::process::id()
            ));
            fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const EXAMPLE: &str = r#"
# Custodian keys. Keep secret (mode 0600).
active_master_key = "mk-2026-11-29"
blind_index_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
token_signing_key = """-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
-----END PRIVATE KEY-----"""
token_public_keys = ["-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"]  # every key a token may be signed with (rotation)

[master_keys]
"mk-2026-11-29" = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
"mk-2026-01-01" = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="   # kept until every data key is rewrapped
"#;

    #[test]
    fn documented_example_parses() {
        let file = KeyFile::from_toml_str(EXAMPLE).unwrap();
        assert_eq!(file.active_master_key, "mk-2026-11-29");
        assert_eq!(
            file.master_keys.keys().collect::<Vec<_>>(),
            ["mk-2026-01-01", "mk-2026-11-29"]
        );
        assert!(
            file.token_signing_key
                .as_deref()
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert_eq!(file.token_public_keys.len(), 1);
        let ring = file.keyring().unwrap();
        assert_eq!(ring.active_id(), "mk-2026-11-29");
        assert_eq!(
            ring.key_ids().collect::<Vec<_>>(),
            ["mk-2026-01-01", "mk-2026-11-29"]
        );
        let index = file.blind_index_key().unwrap().index("email", "a@b.c");
        assert_eq!(
            index,
            BlindIndexKey::new([1; KEY_LEN]).index("email", "a@b.c")
        );
    }

    #[test]
    fn token_keys_are_optional() {
        let file = KeyFile::from_toml_str(
            r#"
            active_master_key = "a"
            blind_index_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
            [master_keys]
            a = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
            "#,
        )
        .unwrap();
        assert_eq!(file.token_signing_key, None);
        assert!(file.token_public_keys.is_empty());
    }

    #[test]
    fn generate_to_toml_round_trip() {
        let file = generated();
        let text = file.to_toml();
        assert!(
            text.starts_with("# Custodian keys. Keep secret (mode 0600).\n"),
            "{text}"
        );
        let parsed = KeyFile::from_toml_str(&text).unwrap();
        assert_same(&file, &parsed);
        assert_eq!(parsed.token_signing_key.as_deref(), Some(PRIVATE_PEM));
        assert_eq!(parsed.token_public_keys, [PUBLIC_PEM]);

        // The keys themselves survive: what one wraps, the other unwraps.
        let dk = DataKey::generate();
        let wrapped = file.keyring().unwrap().wrap(&dk, b"row");
        let unwrapped = parsed.keyring().unwrap().unwrap(&wrapped, b"row").unwrap();
        let sealed = encrypt(&dk, b"value", b"row");
        assert_eq!(decrypt(&unwrapped, &sealed, b"row").unwrap(), b"value");
        assert_eq!(
            file.blind_index_key().unwrap().index("email", "x"),
            parsed.blind_index_key().unwrap().index("email", "x")
        );
    }

    #[test]
    fn round_trip_after_rotation_and_without_token_keys() {
        let mut file = generated();
        file.add_master_key("mk-2027").unwrap();
        file.token_signing_key = None;
        file.token_public_keys.clear();
        let parsed = KeyFile::from_toml_str(&file.to_toml()).unwrap();
        assert_same(&file, &parsed);

        file.token_public_keys = vec!["a \"quoted\" \\ key\n".into(), "b".into()];
        let parsed = KeyFile::from_toml_str(&file.to_toml()).unwrap();
        assert_same(&file, &parsed);
    }

    #[test]
    fn generated_keys_are_random() {
        let a = generated();
        let b = generated();
        assert_ne!(
            a.master_keys["mk-2026-11-29"],
            b.master_keys["mk-2026-11-29"]
        );
        assert_ne!(a.blind_index_key, b.blind_index_key);
        assert_ne!(a.master_keys["mk-2026-11-29"], a.blind_index_key);
        for key in [&a.master_keys["mk-2026-11-29"], &a.blind_index_key] {
            assert_eq!(STANDARD.decode(key).unwrap().len(), KEY_LEN);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let with_extra = format!("{EXAMPLE}\n[extra]\nx = 1\n");
        let err = KeyFile::from_toml_str(&with_extra).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `extra`"),
            "{err:#}"
        );

        let typo = EXAMPLE.replace("blind_index_key =", "blind_index_keys =");
        let err = format!("{:#}", KeyFile::from_toml_str(&typo).unwrap_err());
        assert!(err.contains("unknown field `blind_index_keys`"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(
            !err.contains("AQEBAQEB"),
            "the line's value is not quoted: {err}"
        );
    }

    #[test]
    fn invalid_keys_are_refused() {
        let cases = [
            (
                EXAMPLE.replace(
                    "active_master_key = \"mk-2026-11-29\"",
                    "active_master_key = \"mk-gone\"",
                ),
                "unknown master key \"mk-gone\"",
            ),
            (
                EXAMPLE.replace("AQEBAQEBAQEBAQEB", "AQEB#SECRET#AQEB"),
                "blind_index_key is not valid base64",
            ),
            (
                EXAMPLE.replace("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "U0VDUkVU"),
                "blind_index_key must be 32 bytes",
            ),
            (
                EXAMPLE.replace(
                    "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=",
                    "SECRETSECRET",
                ),
                "master key \"mk-2026-01-01\" must be 32 bytes",
            ),
            (
                EXAMPLE.replace("\"mk-2026-01-01\"", "\"mk.2026\""),
                "invalid master key id \"mk.2026\"",
            ),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", KeyFile::from_toml_str(&text).unwrap_err());
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("SECRET"), "{err}");
            assert!(!err.contains("U0VDUkVU"), "{err}");
            assert!(!err.contains("AQEBAQEB"), "{err}");
            assert!(!err.contains("AwMDAwMD"), "{err}");
        }
    }

    #[test]
    fn toml_errors_never_quote_values() {
        let cases = [
            "blind_index_key = \"SECRET\\q\"",
            "blind_index_key = SECRET",
            "blind_index_key = \"SECRET",
            "blind_index_key = [\"SECRET\"]",
            "blind_index_key = 'SECRET' 'SECRET'",
            "master_keys = \"SECRET\"",
            "token_public_keys = \"SECRET\"",
            "active_master_key = \"a\"\n[master_keys]\na = 1\nb = \"SECRET\"\nc = [\"SECRET\"]",
        ];
        for text in cases {
            let err = KeyFile::from_toml_str(text).unwrap_err();
            let err = format!("{err:#} {err:?}");
            assert!(!err.contains("SECRET"), "{text:?} gave {err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    #[test]
    fn debug_redacts_every_secret() {
        let file = generated();
        let debug = format!("{file:?} {file:#?}");
        assert!(debug.contains("mk-2026-11-29"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        for secret in [
            &file.master_keys["mk-2026-11-29"],
            &file.blind_index_key,
            file.token_signing_key.as_ref().unwrap(),
        ] {
            assert!(!debug.contains(secret.as_str()), "{debug}");
            let raw = STANDARD.decode(secret).unwrap_or_default();
            if !raw.is_empty() {
                assert!(!debug.contains(&URL_SAFE_NO_PAD.encode(&raw)));
                assert!(!debug.contains(&format!("{raw:?}")));
            }
        }
        assert!(!debug.contains("PRIVATEPRIVATE"), "{debug}");
    }

    #[test]
    fn write_new_creates_0600_and_never_overwrites() {
        let dir = TempDir::new("write");
        let path = dir.0.join("keys.toml");
        let file = generated();
        file.write_new(&path).unwrap();

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        }
        let loaded = KeyFile::load(&path).unwrap();
        assert_same(&file, &loaded);

        let before = fs::read(&path).unwrap();
        let err = generated().write_new(&path).unwrap_err();
        let io = err.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(format!("{err:#}").contains(&path.display().to_string()));
        assert_eq!(fs::read(&path).unwrap(), before, "existing file untouched");
    }

    #[test]
    fn write_new_refuses_an_invalid_file() {
        let dir = TempDir::new("invalid");
        let path = dir.0.join("keys.toml");
        let file = KeyFile::generate("bad id", (PRIVATE_PEM.into(), PUBLIC_PEM.into()));
        let err = format!("{:#}", file.write_new(&path).unwrap_err());
        assert!(err.contains("invalid master key id \"bad id\""), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn load_errors_name_the_path() {
        let dir = TempDir::new("load");
        let missing = dir.0.join("missing.toml");
        let err = format!("{:#}", KeyFile::load(&missing).unwrap_err());
        assert!(err.contains("reading key file"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");

        let bad = dir.0.join("bad.toml");
        fs::write(&bad, EXAMPLE.replace("AQEBAQEBAQEB", "SECRET#")).unwrap();
        let err = format!("{:#}", KeyFile::load(&bad).unwrap_err());
        assert!(err.contains(&bad.display().to_string()), "{err}");
        assert!(err.contains("blind_index_key is not valid base64"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn rotation_through_the_key_file() {
        let mut file = generated();
        let dk = DataKey::generate();
        let old = file.keyring().unwrap().wrap(&dk, b"row");

        file.add_master_key("mk-2027-01-01").unwrap();
        // Added, not active: servers still on the old file must be able to
        // unwrap what is wrapped with the new key before anything is.
        assert_eq!(file.active_master_key, "mk-2026-11-29");
        assert_eq!(file.master_keys.len(), 2);
        assert!(!file.keyring().unwrap().needs_rewrap(&old));
        assert!(file.activate_master_key("mk-nope").is_err());
        file.activate_master_key("mk-2027-01-01").unwrap();
        assert_eq!(file.active_master_key, "mk-2027-01-01");
        let ring = file.keyring().unwrap();
        assert!(ring.needs_rewrap(&old));
        let new = ring.rewrap(&old, b"row").unwrap();
        assert_eq!(new.master_key_id, "mk-2027-01-01");

        let err = file.retire_master_key("mk-2027-01-01").unwrap_err();
        assert!(err.to_string().contains("is active"), "{err}");
        assert!(file.retire_master_key("mk-nope").is_err());
        file.retire_master_key("mk-2026-11-29").unwrap();
        assert_eq!(
            file.master_keys.keys().collect::<Vec<_>>(),
            ["mk-2027-01-01"]
        );

        let ring = file.keyring().unwrap();
        let sealed = encrypt(&dk, b"value", b"row");
        let unwrapped = ring.unwrap(&new, b"row").unwrap();
        assert_eq!(decrypt(&unwrapped, &sealed, b"row").unwrap(), b"value");
        assert_eq!(
            ring.unwrap(&old, b"row").unwrap_err(),
            crate::crypto::CryptoError::UnknownMasterKey("mk-2026-11-29".into())
        );
    }

    #[test]
    fn a_split_set_gives_each_service_its_own_master_key_and_no_signing_key() {
        let (signing, services) = KeyFile::generate_split(
            &[("identity", "identity-1"), ("tickets", "tickets-1")],
            (PRIVATE_PEM.to_owned(), PUBLIC_PEM.to_owned()),
        );
        assert_eq!(signing.role(), Role::Signing);
        assert_eq!(signing.token_signing_key.as_deref(), Some(PRIVATE_PEM));
        assert_eq!(signing.token_public_keys, [PUBLIC_PEM]);
        let text = signing.to_toml();
        assert!(!text.contains("master_keys") && !text.contains("blind_index_key"));
        assert!(text.contains("never mount this\n# file in a pod"), "{text}");
        let parsed = KeyFile::from_toml_str(&text).unwrap();
        assert_same(&signing, &parsed);
        assert!(parsed.keyring().is_err() && parsed.blind_index_key().is_err());

        let [identity, tickets] = &services[..] else {
            panic!("two files")
        };
        assert_eq!(identity.role(), Role::Service("identity"));
        assert_eq!(tickets.role(), Role::Service("tickets"));
        for file in [identity, tickets] {
            assert_eq!(file.token_signing_key, None);
            assert_eq!(file.token_public_keys, [PUBLIC_PEM]);
            let text = file.to_toml();
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            assert_same(file, &KeyFile::from_toml_str(&text).unwrap());
        }
        assert_eq!(
            identity.master_keys.keys().collect::<Vec<_>>(),
            ["identity-1"]
        );
        assert_eq!(
            tickets.master_keys.keys().collect::<Vec<_>>(),
            ["tickets-1"]
        );
        assert_ne!(
            identity.master_keys["identity-1"],
            tickets.master_keys["tickets-1"]
        );
        // Shared: identity's legal holds are blind indexes the others match.
        assert_eq!(identity.blind_index_key, tickets.blind_index_key);
    }

    #[test]
    fn a_service_file_never_holds_the_signing_key() {
        let (_, services) = KeyFile::generate_split(
            &[("tickets", "tickets-1")],
            (PRIVATE_PEM.to_owned(), PUBLIC_PEM.to_owned()),
        );
        let mut file = services[0].clone();
        file.token_signing_key = Some(PRIVATE_PEM.to_owned());
        let text = file.to_toml();
        let err = format!("{:#}", KeyFile::from_toml_str(&text).unwrap_err());
        assert!(err.contains("tickets holds token_signing_key"), "{err}");
        assert!(!err.contains("PRIVATEPRIVATE"), "{err}");
        let dir = TempDir::new("service-signing");
        assert!(file.write_new(dir.0.join("keys.toml")).is_err());
        assert!(!dir.0.join("keys.toml").exists());
    }

    #[test]
    fn splitting_the_suite_file_keeps_every_key_where_it_is_needed() {
        let mut suite = generated();
        suite.add_master_key("mk-2027").unwrap();
        let (signing, services) = suite.split(&["identity", "dsr"]).unwrap();
        let signing = signing.expect("the suite file could sign");
        assert_eq!(signing.token_signing_key, suite.token_signing_key);
        assert_eq!(signing.role(), Role::Signing);
        for (file, name) in services.iter().zip(["identity", "dsr"]) {
            assert_eq!(file.role(), Role::Service(name));
            assert_eq!(file.token_signing_key, None);
            assert_eq!(file.master_keys, suite.master_keys);
            assert_eq!(file.active_master_key, suite.active_master_key);
            assert_eq!(file.blind_index_key, suite.blind_index_key);
            assert_eq!(file.token_public_keys, suite.token_public_keys);
            file.validate().unwrap();
        }
        assert!(services[0].split(&["identity"]).is_err(), "a service's own");
        assert!(signing.split(&["identity"]).is_err(), "the signing file");
    }

    #[test]
    fn the_signing_file_has_no_master_keys_to_rotate() {
        let (mut signing, _) =
            KeyFile::generate_split(&[], (PRIVATE_PEM.to_owned(), PUBLIC_PEM.to_owned()));
        let err = signing.add_master_key("mk-1").unwrap_err().to_string();
        assert!(err.contains("signing file"), "{err}");
        assert!(signing.activate_master_key("mk-1").is_err());
        assert!(signing.master_keys.is_empty());
        let err = format!(
            "{:#}",
            KeyFile::from_toml_str("token_public_keys = []").unwrap_err()
        );
        assert!(
            err.contains("neither master keys nor a token signing key"),
            "{err}"
        );
    }

    #[test]
    fn add_master_key_validates() {
        let mut file = generated();
        assert!(file.add_master_key("mk-2026-11-29").is_err(), "exists");
        assert!(file.add_master_key("mk.1").is_err(), "invalid id");
        assert!(file.add_master_key("").is_err(), "empty id");
        assert_eq!(file.active_master_key, "mk-2026-11-29");
        assert_eq!(file.master_keys.len(), 1);
    }
}
