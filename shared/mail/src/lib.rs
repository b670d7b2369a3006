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
pub use outbox::{Label, OutboxMailer};
pub use outgoing::{Mailbox, OutgoingMail, is_usable_message_id, new_message_id};
pub use smtp::SmtpMailer;

/// Sends a message: over SMTP ([`SmtpMailer`]) or into a folder
/// ([`OutboxMailer`]). `Ok` means the message was handed over (accepted by
/// the SMTP server, or the file is complete), not that it was delivered.
pub trait Mailer: Send + Sync + 'static {
    fn send(&self, mail: &OutgoingMail) -> BoxFuture<'_, Result<(), MailError>>;

    /// Sends a message with what the outbox keeps beside it (who sent it,
    /// keyed indexes of its recipients); a mailer that keeps nothing of
    /// what it sends, SMTP, just sends it.
    fn send_labelled<'a>(
        &'a self,
        mail: &'a OutgoingMail,
        _label: &'a Label,
    ) -> BoxFuture<'a, Result<(), MailError>> {
        self.send(mail)
    }

    /// The outbox folder messages are kept in, if they are kept at all.
    fn outbox(&self) -> Option<&OutboxMailer> {
        None
    }
}

/// The mailer a service runs with: SMTP when `smtp_url` is given (the
/// operator's `--smtp-url`), otherwise the outbox folder `outbox` (usually
/// `DATA_DIR/outbox`), created if missing. Mail that goes to files is
/// never delivered, and the files hold personal data: said at WARN.
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
            tracing::warn!(
                outbox = %outbox.dir().display(),
                "mail is NOT sent: it is written as .eml files to the outbox folder \
                 (development; set --smtp-url to deliver it)"
            );
            Arc::new(outbox)
        }
    })
}
