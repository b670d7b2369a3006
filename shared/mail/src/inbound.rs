//! Inbound mail: the parts of a received message a ticket needs.

use std::fmt;

use mail_parser::{HeaderValue, MessageParser};

use crate::{MailError, Mailbox};

/// The largest raw message [`parse_inbound`] reads; larger input is refused,
/// never cut.
pub const MAX_INBOUND_BYTES: usize = 10 * 1024 * 1024;

/// What a received message says, decoded.
///
/// Message ids are without angle brackets. `text` is the first plain-text
/// body part (or, when the message has only HTML, that HTML as text); other
/// parts and attachments are not read. An absent subject is empty.
///
/// Its `Debug` shows counts and the date, nothing a sender wrote (ids
/// included: some mail clients put the sender's address in them).
#[derive(Clone, PartialEq, Eq)]
pub struct InboundMail {
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub from: Option<Mailbox>,
    pub subject: String,
    pub text: String,
    /// The `Date` header, in microseconds since the Unix epoch.
    pub date: Option<i64>,
}

impl fmt::Debug for InboundMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundMail")
            .field("has_message_id", &self.message_id.is_some())
            .field("in_reply_to", &self.in_reply_to.len())
            .field("references", &self.references.len())
            .field("has_from", &self.from.is_some())
            .field("subject_bytes", &self.subject.len())
            .field("text_bytes", &self.text.len())
            .field("date", &self.date)
            .finish()
    }
}

/// Parses a raw RFC 5322 message (as received over SMTP or read from an
/// `.eml` file).
///
/// Refused: input over [`MAX_INBOUND_BYTES`], and input that is not a mail at
/// all (no header fields).
pub fn parse_inbound(raw: &[u8]) -> Result<InboundMail, MailError> {
    if raw.len() > MAX_INBOUND_BYTES {
        return Err(MailError::TooLarge {
            limit: MAX_INBOUND_BYTES,
        });
    }
    let raw = header_section(raw).ok_or(MailError::NotAMail)?;
    let message = MessageParser::default()
        .parse(raw)
        .filter(|m| !m.headers().is_empty())
        .ok_or(MailError::NotAMail)?;

    let from = message
        .from()
        .and_then(|from| from.first())
        .and_then(|addr| {
            let email = addr.address()?.trim();
            (!email.is_empty()).then(|| Mailbox {
                name: addr.name().unwrap_or_default().trim().to_owned(),
                email: email.to_owned(),
            })
        });
    let date = message
        .date()
        .and_then(|date| date.to_timestamp().checked_mul(1_000_000));

    Ok(InboundMail {
        message_id: message.message_id().and_then(clean_id),
        in_reply_to: ids(message.in_reply_to()),
        references: ids(message.references()),
        from,
        subject: message.subject().unwrap_or_default().to_owned(),
        text: message
            .body_text(0)
            .map(|t| t.into_owned())
            .unwrap_or_default(),
        date,
    })
}

/// The message from its first header field on: `None` unless it starts with
/// a header field (`Name:`, the name printable ASCII without spaces), as
/// mail-parser takes any first line for one. An mbox envelope line
/// (`From sender date`) before it is skipped.
fn header_section(raw: &[u8]) -> Option<&[u8]> {
    let raw = match raw.strip_prefix(b"From ") {
        Some(rest) => &rest[rest.iter().position(|&b| b == b'\n')? + 1..],
        None => raw,
    };
    let name = raw
        .iter()
        .take_while(|&&b| b.is_ascii_graphic() && b != b':')
        .count();
    let colon = raw[name..]
        .iter()
        .find(|&&b| b != b' ' && b != b'\t')
        .is_some_and(|&b| b == b':');
    (name > 0 && colon).then_some(raw)
}

/// The ids of an `In-Reply-To` or `References` field, in order.
fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    value
        .as_text_list()
        .unwrap_or_default()
        .iter()
        .filter_map(|id| clean_id(id))
        .collect()
}

/// mail-parser already strips the angle brackets; this drops what is left
/// around an id and ignores empty ones.
fn clean_id(id: &str) -> Option<String> {
    let id = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty()).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Gmail sends for a reply typed in its web client: a
    /// multipart/alternative with a quoted-printable plain part, an encoded
    /// subject, a folded References field.
    const GMAIL_REPLY: &str = "\
Return-Path: <ada@example.com>
Received: from mail-ed1-f41.google.com (mail-ed1-f41.google.com [209.85.208.41])
\tby mx.custodian.example (Postfix) with ESMTPS id 4VdQx71Yz7z1
\tfor <support@custodian.example>; Tue, 14 May 2024 07:30:02 +0000 (UTC)
MIME-Version: 1.0
References: <0190abcd-root@tickets.custodian.example>
 <0190abcd-second@tickets.custodian.example>
In-Reply-To: <0190abcd-second@tickets.custodian.example>
From: =?UTF-8?Q?Ada_L=C3=B6velace?= <ada@example.com>
Date: Tue, 14 May 2024 09:30:00 +0200
Message-ID: <CAF=xk+2Yb8QnU6H0t9f1J_rM@mail.gmail.com>
Subject: =?UTF-8?B?TMO2c2NodW5nIG1laW5lciBEYXRlbiDigJMgYml0dGUgYmVzdMOkdGlnZW4=?=
To: Custodian Support <support@custodian.example>
Content-Type: multipart/alternative; boundary=\"000000000000a1b2c3d4e5f6\"

--000000000000a1b2c3d4e5f6
Content-Type: text/plain; charset=\"UTF-8\"
Content-Transfer-Encoding: quoted-printable

Gr=C3=BC=C3=9Fe aus K=C3=B6ln =E2=80=93 die Anfrage ist eine sehr lange Zei=
le, die weich umbrochen werden muss, damit sie passt.

On Mon, May 13, 2024 at 4:12 PM Custodian Support wrote:
> Please confirm.

--000000000000a1b2c3d4e5f6
Content-Type: text/html; charset=\"UTF-8\"
Content-Transfer-Encoding: quoted-printable

<div dir=3D\"ltr\">HTML VERSION, not the text</div>

--000000000000a1b2c3d4e5f6--
";

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    #[test]
    fn a_gmail_reply() {
        let mail = parse_inbound(&crlf(GMAIL_REPLY)).unwrap();
        assert_eq!(
            mail.message_id.as_deref(),
            Some("CAF=xk+2Yb8QnU6H0t9f1J_rM@mail.gmail.com")
        );
        assert_eq!(
            mail.in_reply_to,
            ["0190abcd-second@tickets.custodian.example"]
        );
        assert_eq!(
            mail.references,
            [
                "0190abcd-root@tickets.custodian.example",
                "0190abcd-second@tickets.custodian.example"
            ]
        );
        assert_eq!(
            mail.from,
            Some(Mailbox::new("Ada Lövelace", "ada@example.com"))
        );
        assert_eq!(mail.subject, "Löschung meiner Daten – bitte bestätigen");
        assert_eq!(
            mail.text,
            "Grüße aus Köln – die Anfrage ist eine sehr lange Zeile, die weich umbrochen \
             werden muss, damit sie passt.\r\n\r\nOn Mon, May 13, 2024 at 4:12 PM Custodian \
             Support wrote:\r\n> Please confirm.\r\n"
        );
        assert_eq!(mail.date, Some(1_715_671_800_000_000));
    }

    #[test]
    fn bare_newlines_parse_the_same() {
        let mail = parse_inbound(GMAIL_REPLY.as_bytes()).unwrap();
        assert_eq!(mail.subject, "Löschung meiner Daten – bitte bestätigen");
        assert!(mail.text.starts_with("Grüße aus Köln"), "{:?}", mail.text);
        assert_eq!(mail.references.len(), 2);
    }

    #[test]
    fn an_attachment_is_ignored_and_the_text_kept() {
        let raw = crlf(
            "\
From: bob@example.com
To: support@custodian.example
Subject: my invoice
Message-ID: <1234.5678@example.com>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=\"outer\"

--outer
Content-Type: text/plain; charset=us-ascii

Please find the invoice attached.
--outer
Content-Type: application/pdf; name=\"invoice.pdf\"
Content-Disposition: attachment; filename=\"invoice.pdf\"
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K
--outer
Content-Type: text/plain; name=\"notes.txt\"
Content-Disposition: attachment; filename=\"notes.txt\"

attached notes, not the message
--outer--
",
        );
        let mail = parse_inbound(&raw).unwrap();
        assert_eq!(mail.text, "Please find the invoice attached.");
        assert_eq!(mail.from, Some(Mailbox::new("", "bob@example.com")));
        assert_eq!(mail.message_id.as_deref(), Some("1234.5678@example.com"));
        assert!(mail.in_reply_to.is_empty() && mail.references.is_empty());
        assert_eq!(mail.date, None);
    }

    #[test]
    fn html_only_mail_becomes_text() {
        let raw = crlf(
            "\
From: Outlook User <user@example.org>
Subject: =?iso-8859-1?Q?R=E9clamation?=
Content-Type: text/html; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

<html><body><p>Bonjour,</p><p>je veux mes donn=E9es.</p></body></html>
",
        );
        let mail = parse_inbound(&raw).unwrap();
        assert_eq!(mail.subject, "Réclamation");
        assert!(mail.text.contains("Bonjour,"), "{:?}", mail.text);
        assert!(
            mail.text.contains("je veux mes données."),
            "{:?}",
            mail.text
        );
        assert!(!mail.text.contains('<'), "{:?}", mail.text);
    }

    #[test]
    fn a_quoted_printable_single_part_and_a_legacy_charset() {
        let mut raw = crlf(
            "\
From: =?ISO-2022-JP?B?GyRCJU8lbSE8ISYlbyE8JWslSRsoQg==?= <taro@example.jp>
Subject: =?ISO-2022-JP?B?GyRCJU8lbSE8ISYlbyE8JWslSRsoQg==?=
Content-Type: text/plain; charset=ISO-2022-JP
Content-Transfer-Encoding: 7bit

",
        );
        raw.extend_from_slice(b"\x1b$B%O%m!<!&%o!<%k%I\x1b(B\r\n");
        let mail = parse_inbound(&raw).unwrap();
        assert_eq!(mail.subject, "ハロー・ワールド");
        assert_eq!(mail.from.unwrap().name, "ハロー・ワールド");
        assert_eq!(mail.text.trim_end(), "ハロー・ワールド");

        let raw = crlf(
            "\
Subject: soft breaks
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

one=20
two=3Dthree, a line that wa=
s broken
",
        );
        let mail = parse_inbound(&raw).unwrap();
        assert_eq!(mail.text, "one \r\ntwo=three, a line that was broken\r\n");
        assert_eq!(mail.from, None);
        assert_eq!(mail.message_id, None);
    }

    #[test]
    fn an_mbox_envelope_line_is_skipped() {
        let raw = b"From ada@example.com Tue May 14 07:30:02 2024\nFrom: ada@example.com\nSubject: hi\n\nbody\n";
        let mail = parse_inbound(raw).unwrap();
        assert_eq!(mail.subject, "hi");
        assert_eq!(mail.from.unwrap().email, "ada@example.com");
    }

    #[test]
    fn refuses_what_is_not_a_mail() {
        for raw in [
            &b""[..],
            b"\r\n\r\nbody only",
            b"hello world",
            b"hello world\r\n\r\nbody",
            b"\x00\x01\x02garbage",
            b"%PDF-1.4\n%\xc7\xec\x8f\xa2\n",
            b": no name\r\n\r\nx",
        ] {
            let err = parse_inbound(raw).unwrap_err();
            assert!(matches!(err, MailError::NotAMail), "{raw:?}: {err:?}");
        }
        assert!(parse_inbound(b"Subject: only a subject").is_ok());
    }

    #[test]
    fn refuses_oversized_mail_instead_of_cutting_it() {
        let mut raw = b"Subject: big\r\n\r\n".to_vec();
        raw.resize(MAX_INBOUND_BYTES, b'a');
        assert_eq!(
            parse_inbound(&raw).unwrap().text.len(),
            MAX_INBOUND_BYTES - 16
        );
        raw.push(b'a');
        let err = parse_inbound(&raw).unwrap_err();
        assert!(matches!(
            err,
            MailError::TooLarge {
                limit: MAX_INBOUND_BYTES
            }
        ));
        assert_eq!(
            err.to_string(),
            "inbound mail is larger than 10485760 bytes"
        );
    }

    #[test]
    fn debug_shows_no_personal_data() {
        let mail = parse_inbound(&crlf(GMAIL_REPLY)).unwrap();
        let debug = format!("{mail:?}");
        for secret in ["ada", "Ada", "Löschung", "Grüße", "gmail"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}
