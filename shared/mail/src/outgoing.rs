//! Outgoing mail: what a service fills in, and how lettre turns it into an
//! RFC 5322 message.

use std::fmt;

use lettre::message::SinglePart;

use crate::MailError;

/// A display name and an address, e.g. `("Custodian Support",
/// "support@custodian.example")`. An empty name means "address only".
///
/// Its `Debug` shows neither: they are personal data, and `Debug` ends up in
/// logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: String,
    pub email: String,
}

impl Mailbox {
    pub fn new(name: impl Into<String>, email: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            email: email.into(),
        }
    }
}

/// One plain-text message to send.
///
/// Message ids are given WITHOUT angle brackets
/// (`0190abcd…@tickets.custodian.local`) and written with them. `references`
/// is the thread's chain, oldest first; a reply usually passes the parent's
/// `references` followed by the parent's `message_id`, and the parent's
/// `message_id` as `in_reply_to`.
///
/// Its `Debug` shows the ids and counts, not the addresses, subject or text.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub subject: String,
    pub text: String,
    pub message_id: String,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mailbox(<redacted>)")
    }
}

impl fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingMail")
            .field("message_id", &self.message_id)
            .field("in_reply_to", &self.in_reply_to)
            .field("references", &self.references)
            .field("recipients", &self.to.len())
            .field("text_bytes", &self.text.len())
            .finish_non_exhaustive()
    }
}

/// A fresh, unique message id (without angle brackets) in `domain`:
/// a UUID v7, so ids sort by creation time.
pub fn new_message_id(domain: &str) -> String {
    format!("{}@{domain}", uuid::Uuid::now_v7().simple())
}

/// The longest message id accepted (RFC 5322 sets no bound; the line limit
/// of 998 does, and real ids stay well below this).
const MAX_MESSAGE_ID: usize = 255;

/// Whether `id` can be written as a message id between angle brackets:
/// printable ASCII, no spaces, no brackets, not empty. Lenient on purpose
/// (no `@` required): `references` carry ids made by other people's mail
/// clients. An id received in a mail may fail this (non-ASCII, spaces): a
/// reply leaves such an id out of its `in_reply_to` and `references` rather
/// than fail to be built.
pub fn is_usable_message_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MESSAGE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
}

fn check_message_id(id: &str) -> Result<String, MailError> {
    if is_usable_message_id(id) {
        Ok(format!("<{id}>"))
    } else {
        Err(MailError::InvalidMessageId)
    }
}

fn lettre_mailbox(
    mailbox: &Mailbox,
    invalid: MailError,
) -> Result<lettre::message::Mailbox, MailError> {
    let email = match mailbox.email.parse::<lettre::Address>() {
        Ok(email) => email,
        Err(_) => return Err(invalid),
    };
    let name = one_line(mailbox.name.trim());
    let name = (!name.is_empty()).then_some(name);
    Ok(lettre::message::Mailbox::new(name, email))
}

/// Line breaks and other control characters in a one-line header field (a
/// subject, a display name) become spaces: a caller's text cannot start a
/// header field of its own, and a subject stored from a received mail (a
/// Unicode line separator, a tab) is still sent.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl OutgoingMail {
    /// The lettre message: headers checked, body `text/plain; charset=utf-8`.
    pub fn to_message(&self) -> Result<lettre::Message, MailError> {
        if self.to.is_empty() {
            return Err(MailError::NoRecipient);
        }
        let mut builder = lettre::Message::builder()
            .from(lettre_mailbox(&self.from, MailError::InvalidSender)?)
            .message_id(Some(check_message_id(&self.message_id)?))
            .subject(one_line(&self.subject))
            .date_now();
        for to in &self.to {
            builder = builder.to(lettre_mailbox(to, MailError::InvalidRecipient)?);
        }
        if let Some(parent) = &self.in_reply_to {
            builder = builder.in_reply_to(check_message_id(parent)?);
        }
        if !self.references.is_empty() {
            let chain = self
                .references
                .iter()
                .map(|id| check_message_id(id))
                .collect::<Result<Vec<_>, _>>()?
                .join(" ");
            builder = builder.references(chain);
        }
        // SinglePart::plain: MIME-Version, `text/plain; charset=utf-8`, and the
        // transfer encoding lettre finds best (7bit, quoted-printable, base64).
        builder
            .singlepart(SinglePart::plain(self.text.clone()))
            .map_err(|_| MailError::Build)
    }

    /// The full RFC 5322 bytes, as they would travel over SMTP.
    pub fn to_rfc5322(&self) -> Result<Vec<u8>, MailError> {
        Ok(self.to_message()?.formatted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> OutgoingMail {
        OutgoingMail {
            from: Mailbox::new("Custodian Support", "support@tickets.custodian.local"),
            to: vec![Mailbox::new("Ada Lovelace", "ada@example.com")],
            subject: "Re: Löschung meiner Daten".into(),
            text: "Hello Ada,\n\nyour data is gone. Grüße\n".into(),
            message_id: "0190abcd@tickets.custodian.local".into(),
            in_reply_to: Some("CAF=abc@mail.example.com".into()),
            references: vec![
                "root@mail.example.com".into(),
                "CAF=abc@mail.example.com".into(),
            ],
        }
    }

    fn text(mail: &OutgoingMail) -> String {
        String::from_utf8(mail.to_rfc5322().unwrap()).unwrap()
    }

    #[test]
    fn writes_the_threading_headers_with_angle_brackets() {
        let raw = text(&reply());
        assert!(
            raw.contains("Message-ID: <0190abcd@tickets.custodian.local>\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("In-Reply-To: <CAF=abc@mail.example.com>\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("References: <root@mail.example.com> <CAF=abc@mail.example.com>\r\n"),
            "{raw}"
        );
        assert!(raw.contains("Date: "), "{raw}");
        assert!(raw.contains("MIME-Version: 1.0\r\n"), "{raw}");
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("From: \"Custodian Support\" <support@tickets.custodian.local>"),
            "{raw}"
        );
    }

    #[test]
    fn a_first_message_has_no_threading_headers() {
        let mut mail = reply();
        mail.in_reply_to = None;
        mail.references.clear();
        let raw = text(&mail);
        assert!(!raw.contains("In-Reply-To"), "{raw}");
        assert!(!raw.contains("References"), "{raw}");
    }

    #[test]
    fn new_message_ids_are_unique_and_valid() {
        let a = new_message_id("tickets.custodian.local");
        let b = new_message_id("tickets.custodian.local");
        assert_ne!(a, b);
        assert!(a.ends_with("@tickets.custodian.local"));
        assert!(check_message_id(&a).is_ok());
    }

    #[test]
    fn refuses_bad_ids_and_addresses_without_naming_them() {
        for bad in ["", "<x@y>", "a b@c", "x@y\r\nBcc: evil@example.com", "ü@x"] {
            let mut mail = reply();
            mail.message_id = bad.into();
            assert!(
                matches!(mail.to_message(), Err(MailError::InvalidMessageId)),
                "{bad:?}"
            );
            let mut mail = reply();
            mail.references.push(bad.into());
            assert!(
                matches!(mail.to_message(), Err(MailError::InvalidMessageId)),
                "{bad:?}"
            );
        }
        let mut mail = reply();
        mail.from.email = "not-an-address".into();
        let err = mail.to_message().unwrap_err();
        assert_eq!(err.to_string(), "invalid sender address");
        let mut mail = reply();
        mail.to.push(Mailbox::new("", "bob@@example.com"));
        let err = mail.to_message().unwrap_err();
        assert_eq!(err.to_string(), "invalid recipient address");
        let mut mail = reply();
        mail.to.clear();
        assert!(matches!(mail.to_message(), Err(MailError::NoRecipient)));
    }

    #[test]
    fn line_breaks_cannot_inject_headers() {
        let mut mail = reply();
        mail.subject = "Hi\r\nBcc: evil@example.com".into();
        mail.to[0].name = "Ada\r\nBcc: evil@example.com".into();
        let raw = text(&mail);
        let headers = &raw[..raw.find("\r\n\r\n").unwrap()];
        assert!(!headers.lines().any(|l| l.starts_with("Bcc")), "{raw}");
        assert_eq!(mail.to_message().unwrap().envelope().to().len(), 1);
    }

    #[test]
    fn line_separators_and_controls_become_spaces() {
        let mut mail = reply();
        mail.subject = "Login\u{2028}broken\u{2029}again\tand\u{7}more\u{85}end".into();
        mail.to[0].name = "Ada\u{2028}Lovelace".into();
        let raw = text(&mail);
        let message = crate::parse_inbound(raw.as_bytes()).unwrap();
        assert_eq!(message.subject, "Login broken again and more end");
        assert_eq!(message.from, Some(reply().from));
        let headers = &raw[..raw.find("\r\n\r\n").unwrap()];
        assert!(headers.contains("Ada Lovelace"), "{headers}");
    }

    #[test]
    fn usable_message_ids() {
        for good in [
            "0190abcd@tickets.custodian.local",
            "CAF=xk+2Yb8QnU6H0t9f1J_rM@mail.gmail.com",
            "no-at-sign",
        ] {
            assert!(is_usable_message_id(good), "{good}");
        }
        for bad in ["", "ünï@x", "a b@c", "<x@y>", "x\r\ny", &"x".repeat(256)] {
            assert!(!is_usable_message_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn debug_shows_no_personal_data() {
        let debug = format!("{:?}", reply());
        for secret in ["Ada", "ada@", "support@", "Löschung", "Grüße"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(
            debug.contains("0190abcd@tickets.custodian.local"),
            "{debug}"
        );
    }

    #[test]
    fn a_long_reference_chain_is_folded_not_cut() {
        let mut mail = reply();
        mail.references = (0..60)
            .map(|i| format!("{i:04}-{}", new_message_id("example.com")))
            .collect();
        let raw = text(&mail);
        assert!(raw.lines().all(|l| l.len() <= 998), "{raw}");
        for id in &mail.references {
            assert!(raw.contains(&format!("<{id}>")), "{id} missing");
        }
    }
}
