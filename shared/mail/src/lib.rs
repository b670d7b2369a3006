//! Mail for Custodian services: sending plain-text messages (agent replies,
//! verification codes) over SMTP or, in the all-in-one development mode, into
//! an outbox folder of `.eml` files; and reading inbound mail.
//!
//! A service takes an `Arc<dyn Mailer>` from [`mailer`], built from the
//! operator's `--smtp-url` (when given) and the data folder:
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use custodian_mail::{Mailbox, OutgoingMail, mailer, new_message_id};
//!
//! let mailer = mailer(None, std::path::Path::new("/var/lib/custodian/outbox"))?;
//! mailer
//!     .send(&OutgoingMail {
//!         from: Mailbox::new("Custodian Support", "support@custodian.example"),
//!         to: vec![Mailbox::new("", "someone@example.com")],
//!         subject: "Your request".into(),
//!         text: "Hello,\n\nwe are on it.\n".into(),
//!         message_id: new_message_id("tickets.custodian.example"),
//!         in_reply_to: None,
//!         references: vec![],
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Errors ([`MailError`]) never contain an address, a name, a subject, a body
//! or a credential, so they can be logged and returned as they are.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use futures::future::BoxFuture;

mod error;
mod inbound;
mod outbox;
mod outgoing;
mod smtp;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::MailError;
pub use inbound::{InboundMail, MAX_INBOUND_BYTES, parse_inbound};
pub use outbox::OutboxMailer;
pub use outgoing::{Mailbox, OutgoingMail, is_usable_message_id, new_message_id};
pub use smtp::SmtpMailer;

/// Sends a message: over SMTP ([`SmtpMailer`]) or into a folder
/// ([`OutboxMailer`]). `Ok` means the message was handed over (accepted by
/// the SMTP server, or the file is complete), not that it was delivered.
pub trait Mailer: Send + Sync + 'static {
    fn send(&self, mail: &OutgoingMail) -> BoxFuture<'_, Result<(), MailError>>;
}

/// The mailer a service runs with: SMTP when `smtp_url` is given (the
/// operator's `--smtp-url`), otherwise the outbox folder `outbox` (usually
/// `DATA_DIR/outbox`), created if missing.
pub fn mailer(smtp_url: Option<&str>, outbox: &Path) -> anyhow::Result<Arc<dyn Mailer>> {
    Ok(match smtp_url {
        Some(url) => {
            let smtp = SmtpMailer::from_url(url)?;
            tracing::info!(smtp = %smtp, "mail goes out over SMTP");
            Arc::new(smtp)
        }
        None => {
            let outbox = OutboxMailer::new(outbox)
                .with_context(|| format!("creating the outbox folder {}", outbox.display()))?;
            tracing::info!(outbox = %outbox.dir().display(), "mail goes to the outbox folder");
            Arc::new(outbox)
        }
    })
}
