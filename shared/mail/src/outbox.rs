//! The outbox: each message as an `.eml` file in a folder, for development
//! and for deployments that ask for it (`--mail-outbox`). The files hold
//! personal data (addresses, names, what was written to them), so they are
//! a holding like a table row: private, labelled so that erasure finds a
//! person's mail without reading any file, and expired.

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use futures::future::BoxFuture;

use crate::{MailError, Mailer, OutgoingMail};

/// Who sent a message and to whom, as the outbox keeps it beside the file:
/// opaque values only (the sending service's name, a keyed blind index of
/// each recipient's address made by the caller), never an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Label {
    pub service: String,
    pub recipients: Vec<String>,
}

impl Label {
    /// One value per line, each a single token: a value with white space
    /// in it could not be read back as written.
    fn to_text(&self) -> Option<String> {
        let token = |v: &str| !v.is_empty() && !v.chars().any(char::is_whitespace);
        if !token(&self.service) || !self.recipients.iter().all(|r| token(r)) {
            return None;
        }
        let mut text = format!("service {}\n", self.service);
        for recipient in &self.recipients {
            text.push_str(&format!("to {recipient}\n"));
        }
        Some(text)
    }

    fn parse(text: &str) -> Self {
        let mut label = Self::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("service", service)) => label.service = service.to_owned(),
                Some(("to", recipient)) => label.recipients.push(recipient.to_owned()),
                _ => {}
            }
        }
        label
    }
}

/// Writes each message, the full RFC 5322 bytes lettre formats, to
/// `{dir}/{unix_micros}-{uuid}.eml`, and its [`Label`], when it has one,
/// to `{unix_micros}-{uuid}.label` first. Each file is written under a
/// hidden temporary name (`.{name}.tmp`) and renamed, so whoever lists
/// `*.eml` never sees half a message. On unix the folder is 0700 and the
/// files 0600.
#[derive(Debug, Clone)]
pub struct OutboxMailer {
    dir: PathBuf,
}

impl OutboxMailer {
    /// Creates the folder (and its parents) if missing, and makes it 0700.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, MailError> {
        let dir = dir.into();
        create_private_dir(&dir).map_err(|e| MailError::Outbox(e.kind()))?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one message and returns the path of its file.
    pub async fn write(&self, mail: &OutgoingMail) -> Result<PathBuf, MailError> {
        self.write_bytes(mail.to_rfc5322()?, None).await
    }

    /// Writes one message with its label and returns the path of its file.
    pub async fn write_labelled(
        &self,
        mail: &OutgoingMail,
        label: &Label,
    ) -> Result<PathBuf, MailError> {
        let label = label
            .to_text()
            .ok_or(MailError::Outbox(io::ErrorKind::InvalidInput))?;
        self.write_bytes(mail.to_rfc5322()?, Some(label)).await
    }

    async fn write_bytes(
        &self,
        bytes: Vec<u8>,
        label: Option<String>,
    ) -> Result<PathBuf, MailError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_message(&dir, &bytes, label.as_deref()))
            .await
            .map_err(|_| MailError::Outbox(io::ErrorKind::Other))?
            .map_err(|e| MailError::Outbox(e.kind()))
    }

    /// Deletes the messages `service` sent to any of `recipients` (as
    /// their labels name them), with their labels; returns how many.
    pub async fn erase(&self, service: &str, recipients: &[String]) -> Result<u64, MailError> {
        if recipients.is_empty() {
            return Ok(0);
        }
        let (dir, service, recipients) =
            (self.dir.clone(), service.to_owned(), recipients.to_vec());
        self.blocking(move || {
            erase_labelled(&dir, |label| {
                label.service == service && label.recipients.iter().any(|r| recipients.contains(r))
            })
        })
        .await
    }

    /// Deletes the messages `service` sent before `cutoff` (microseconds
    /// since the Unix epoch, as the file names have them), and those
    /// without a label (written before labels were), with their labels and
    /// any temporary file left that old; returns how many messages.
    pub async fn expire(&self, service: &str, cutoff: i64) -> Result<u64, MailError> {
        let (dir, service) = (self.dir.clone(), service.to_owned());
        self.blocking(move || expire(&dir, &service, cutoff)).await
    }

    async fn blocking(
        &self,
        work: impl FnOnce() -> io::Result<u64> + Send + 'static,
    ) -> Result<u64, MailError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| MailError::Outbox(io::ErrorKind::Other))?
            .map_err(|e| MailError::Outbox(e.kind()))
    }
}

impl Mailer for OutboxMailer {
    fn send(&self, mail: &OutgoingMail) -> BoxFuture<'_, Result<(), MailError>> {
        let bytes = mail.to_rfc5322();
        Box::pin(async move {
            let path = self.write_bytes(bytes?, None).await?;
            tracing::debug!(file = %path.display(), "mail written to the outbox");
            Ok(())
        })
    }

    fn send_labelled<'a>(
        &'a self,
        mail: &'a OutgoingMail,
        label: &'a Label,
    ) -> BoxFuture<'a, Result<(), MailError>> {
        Box::pin(async move {
            let path = self.write_labelled(mail, label).await?;
            tracing::debug!(file = %path.display(), "mail written to the outbox");
            Ok(())
        })
    }

    fn outbox(&self) -> Option<&OutboxMailer> {
        Some(self)
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        builder.mode(0o700).create(dir)?;
        // An existing folder keeps its mode through `create`: tighten it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// Writes `bytes` to `dir/name` through a temporary file, private.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let written = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    Ok(path)
}

/// The label first, then the message: a message is never on disk without
/// the label erasure finds it by.
fn write_message(dir: &Path, bytes: &[u8], label: Option<&str>) -> io::Result<PathBuf> {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let stem = format!("{micros}-{}", uuid::Uuid::now_v7());
    let label_path = match label {
        Some(label) => Some(write_file(dir, &format!("{stem}.label"), label.as_bytes())?),
        None => None,
    };
    match write_file(dir, &format!("{stem}.eml"), bytes) {
        Ok(path) => Ok(path),
        Err(err) => {
            if let Some(label) = label_path {
                let _ = fs::remove_file(label);
            }
            Err(err)
        }
    }
}

/// Removes a file that may already be gone.
fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Removes the message of `stem` (and a temporary file of it, if a write
/// was cut short), then its label; whether there was a message.
fn remove_message(dir: &Path, stem: &str) -> io::Result<bool> {
    let removed = remove(&dir.join(format!("{stem}.eml")))?;
    remove(&dir.join(format!(".{stem}.eml.tmp")))?;
    remove(&dir.join(format!("{stem}.label")))?;
    Ok(removed)
}

fn erase_labelled(dir: &Path, doomed: impl Fn(&Label) -> bool) -> io::Result<u64> {
    let mut erased = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(stem) = stem_of(&path, "label") else {
            continue;
        };
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            // Erased by another sweep or erasure meanwhile.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        if doomed(&Label::parse(&text)) && remove_message(dir, &stem)? {
            erased += 1;
        }
    }
    Ok(erased)
}

/// The `{micros}-{uuid}` of a file named `{stem}.{extension}`.
fn stem_of(path: &Path, extension: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(&format!(".{extension}"))?;
    (!stem.starts_with('.')).then(|| stem.to_owned())
}

/// The time a message's stem was written at, in microseconds.
fn written_at(stem: &str) -> Option<i64> {
    stem.trim_start_matches('.').split('-').next()?.parse().ok()
}

fn expire(dir: &Path, service: &str, cutoff: i64) -> io::Result<u64> {
    let mut expired = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        // What a write cut short left: gone once it is that old.
        if let Some(tmp) = name.strip_suffix(".tmp") {
            if written_at(tmp).is_some_and(|t| t < cutoff) {
                remove(&path)?;
            }
            continue;
        }
        // A label whose message is gone (removed by hand, say).
        if let Some(stem) = stem_of(&path, "label") {
            if written_at(&stem).is_some_and(|t| t < cutoff)
                && !dir.join(format!("{stem}.eml")).exists()
            {
                remove(&path)?;
            }
            continue;
        }
        let Some(stem) = stem_of(&path, "eml") else {
            continue;
        };
        if written_at(&stem).is_none_or(|t| t >= cutoff) {
            continue;
        }
        let label = match fs::read_to_string(dir.join(format!("{stem}.label"))) {
            Ok(text) => Some(Label::parse(&text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        if label.is_none_or(|l| l.service == service) && remove_message(dir, &stem)? {
            expired += 1;
        }
    }
    Ok(expired)
}
