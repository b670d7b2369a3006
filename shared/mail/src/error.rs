//! The one error type of the crate.
//!
//! A message never carries an email address, a display name, a subject, a
//! body or an SMTP credential: SMTP servers echo addresses in their replies
//! ("550 5.1.1 <someone@example.com>: unknown user"), so the text of lettre's
//! errors is not kept, not even as a `source()`. What is kept is the kind of
//! failure and, for an SMTP reply, its numeric code.

use std::io;

/// Why a mail could not be built, sent, stored or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    #[error("invalid sender address")]
    InvalidSender,
    #[error("invalid recipient address")]
    InvalidRecipient,
    #[error("the message has no recipient")]
    NoRecipient,
    #[error(
        "invalid message id (printable ASCII without spaces or angle brackets, at most 255 bytes)"
    )]
    InvalidMessageId,
    #[error("the message could not be built")]
    Build,

    #[error("invalid SMTP URL: {0}")]
    InvalidSmtpUrl(&'static str),
    #[error(
        "SMTP credentials would travel in clear: use smtps:// or smtp://...?tls=required (or a loopback relay)"
    )]
    CredentialsWithoutTls,
    #[error("could not connect to the SMTP server ({0})")]
    Connect(io::ErrorKind),
    #[error("TLS with the SMTP server failed")]
    Tls,
    #[error("the SMTP server did not answer in time")]
    Timeout,
    #[error("SMTP server refused the message ({code})")]
    Refused { code: String },
    #[error("SMTP server deferred the message ({code}); try again later")]
    Deferred { code: String },
    #[error("the SMTP exchange failed")]
    Smtp,

    #[error("could not write to the outbox ({0})")]
    Outbox(io::ErrorKind),

    #[error("inbound mail is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("input is not a mail message (no headers)")]
    NotAMail,
}

impl MailError {
    /// Whether sending again later may succeed: the server was unreachable,
    /// slow, or answered with a 4xx code.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::Timeout | Self::Deferred { .. }
        )
    }

    /// Classifies a lettre SMTP error, keeping nothing of its text.
    pub(crate) fn from_smtp(err: &lettre::transport::smtp::Error) -> Self {
        if let Some(code) = err.status() {
            let code = code.to_string();
            return if err.is_permanent() {
                Self::Refused { code }
            } else {
                Self::Deferred { code }
            };
        }
        if err.is_timeout() {
            return Self::Timeout;
        }
        if err.is_tls() {
            return Self::Tls;
        }
        match io_kind(err) {
            Some(io::ErrorKind::TimedOut) => Self::Timeout,
            Some(kind) => Self::Connect(kind),
            None => Self::Smtp,
        }
    }
}

/// The kind of the first I/O error in an error's source chain.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = err.source();
    }
    None
}
