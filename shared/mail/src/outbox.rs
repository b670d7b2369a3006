//! The development outbox: each message as an `.eml` file in a folder.

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use futures::future::BoxFuture;

use crate::{MailError, Mailer, OutgoingMail};

/// Writes each message, the full RFC 5322 bytes lettre formats, to
/// `{dir}/{unix_micros}-{uuid}.eml`. A file is written under a hidden
/// temporary name (`.{name}.tmp`) and renamed, so whoever lists `*.eml` never
/// sees half a message. On unix the folder is 0700 and the files 0600: the
/// messages hold personal data.
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
        self.write_bytes(mail.to_rfc5322()?).await
    }

    async fn write_bytes(&self, bytes: Vec<u8>) -> Result<PathBuf, MailError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_file(&dir, &bytes))
            .await
            .map_err(|_| MailError::Outbox(io::ErrorKind::Other))?
            .map_err(|e| MailError::Outbox(e.kind()))
    }
}

impl Mailer for OutboxMailer {
    fn send(&self, mail: &OutgoingMail) -> BoxFuture<'_, Result<(), MailError>> {
        let bytes = mail.to_rfc5322();
        Box::pin(async move {
            let path = self.write_bytes(bytes?).await?;
            tracing::debug!(file = %path.display(), "mail written to the outbox");
            Ok(())
        })
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

fn write_file(dir: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let name = format!("{micros}-{}.eml", uuid::Uuid::now_v7());
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
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
