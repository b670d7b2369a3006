//! Sending over SMTP with lettre's tokio transport, TLS through rustls.

use std::{fmt, time::Duration};

use futures::future::BoxFuture;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use url::{Host, Url};

use crate::{MailError, Mailer, OutgoingMail};

/// Sends each message over its own SMTP connection to the server named by an
/// operator's `--smtp-url`:
///
/// - `smtp://host:port`: plain SMTP, for a local relay (default port 25);
/// - `smtp://user:pass@host:587?tls=required`: STARTTLS, refused if the
///   server does not offer it (`?tls=opportunistic` uses it when offered);
/// - `smtps://user:pass@host:465`: implicit TLS.
///
/// User and password are percent-decoded. Credentials are refused on a
/// connection that may stay in clear, except to a loopback relay. A path
/// (`smtp://relay/custodian.example`) sets the name sent in EHLO; by default
/// it is the machine's host name. Server certificates are checked against the
/// Mozilla roots (webpki-roots).
///
/// Its `Debug` and `Display` show the URL without user and password.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    shown: String,
    deadline: Duration,
}

impl SmtpMailer {
    /// The bound on connecting and on each read or write of the exchange.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A whole send (connect, TLS, authenticate, transfer, quit) is bounded by
    /// this many times the per-operation timeout, so a server that answers
    /// slowly but steadily cannot hold a sender forever.
    const DEADLINE_FACTOR: u32 = 6;

    /// The longest one send of [`Self::from_url`]'s mailer takes, however it
    /// ends: a caller can tell a send still under way from one that stopped.
    pub const DEFAULT_DEADLINE: Duration =
        Self::DEFAULT_TIMEOUT.saturating_mul(Self::DEADLINE_FACTOR);

    pub fn from_url(url: &str) -> Result<Self, MailError> {
        Self::with_timeout(url, Self::DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(url: &str, timeout: Duration) -> Result<Self, MailError> {
        let shown = check_url(url)?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|_| MailError::InvalidSmtpUrl("refused by the SMTP client"))?
            .timeout(Some(timeout))
            .build();
        Ok(Self {
            transport,
            shown,
            deadline: timeout.saturating_mul(Self::DEADLINE_FACTOR),
        })
    }
}

/// Checks what lettre's `from_url` would accept silently or report with the
/// URL in the message, and returns the URL as it may be shown: without user
/// and password, with the port lettre will use.
fn check_url(raw: &str) -> Result<String, MailError> {
    let url = Url::parse(raw).map_err(|_| MailError::InvalidSmtpUrl("not a URL"))?;
    let tls = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let (encrypted, port, query) = match (url.scheme(), tls.as_deref()) {
        ("smtp", None) => (false, 25, ""),
        ("smtp", Some("opportunistic")) => (false, 587, "?tls=opportunistic"),
        ("smtp", Some("required")) => (true, 587, "?tls=required"),
        ("smtp", Some(_)) => {
            return Err(MailError::InvalidSmtpUrl(
                "tls must be `required` or `opportunistic`",
            ));
        }
        ("smtps", _) => (true, 465, ""),
        _ => {
            return Err(MailError::InvalidSmtpUrl(
                "the scheme must be smtp or smtps",
            ));
        }
    };
    let host = url
        .host()
        .filter(|host| !matches!(host, Host::Domain("")))
        .ok_or(MailError::InvalidSmtpUrl("no host"))?;
    let loopback = match &host {
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    };
    let has_user = !url.username().is_empty();
    let credentials = match (has_user, url.password().is_some()) {
        (_, true) => true,
        (true, false) => {
            return Err(MailError::InvalidSmtpUrl("a user name needs a password"));
        }
        (false, false) => false,
    };
    if credentials && !encrypted && !loopback {
        return Err(MailError::CredentialsWithoutTls);
    }
    let port = url.port().unwrap_or(port);
    let path = url.path().trim_matches('/');
    Ok(format!(
        "{scheme}://{user}{host}:{port}{slash}{path}{query}",
        scheme = url.scheme(),
        user = if credentials { "***@" } else { "" },
        slash = if path.is_empty() { "" } else { "/" },
    ))
}

impl fmt::Display for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("url", &self.shown)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Mailer for SmtpMailer {
    fn send(&self, mail: &OutgoingMail) -> BoxFuture<'_, Result<(), MailError>> {
        let message = mail.to_message();
        Box::pin(async move {
            let message = message?;
            match tokio::time::timeout(self.deadline, self.transport.send(message)).await {
                Ok(Ok(_response)) => Ok(()),
                Ok(Err(err)) => Err(MailError::from_smtp(&err)),
                Err(_elapsed) => Err(MailError::Timeout),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_documented_shapes() {
        let cases = [
            ("smtp://127.0.0.1:2525", "smtp://127.0.0.1:2525"),
            ("smtp://relay.internal", "smtp://relay.internal:25"),
            (
                "smtp://user:s3cr%40t@smtp.example.com:587?tls=required",
                "smtp://***@smtp.example.com:587?tls=required",
            ),
            (
                "smtp://user:s3cr3t@smtp.example.com?tls=required",
                "smtp://***@smtp.example.com:587?tls=required",
            ),
            (
                "smtps://user:s3cr3t@smtp.example.com",
                "smtps://***@smtp.example.com:465",
            ),
            ("smtp://user:s3cr3t@localhost:25", "smtp://***@localhost:25"),
            (
                "smtp://relay:25/custodian.example",
                "smtp://relay:25/custodian.example",
            ),
        ];
        for (url, shown) in cases {
            let mailer = SmtpMailer::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(mailer.to_string(), shown);
            let debug = format!("{mailer:?}");
            assert!(!debug.contains("s3cr"), "{debug}");
            assert!(!debug.contains("user"), "{debug}");
        }
    }

    #[test]
    fn refuses_clear_text_credentials_and_odd_urls_without_echoing_them() {
        let cases = [
            "smtp://user:s3cr3t@smtp.example.com:587",
            "smtp://user:s3cr3t@smtp.example.com:587?tls=opportunistic",
            "smtp://user:s3cr3t@smtp.example.com:587?tls=sometimes",
            "http://user:s3cr3t@smtp.example.com",
            "smtp://user@smtp.example.com?tls=required",
            "user:s3cr3t@smtp.example.com",
            "smtp://",
        ];
        for url in cases {
            let err = SmtpMailer::from_url(url).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(
                !text.contains("s3cr3t") && !text.contains("example"),
                "{url}: {text}"
            );
        }
        assert!(matches!(
            SmtpMailer::from_url(cases[0]),
            Err(MailError::CredentialsWithoutTls)
        ));
    }
}
