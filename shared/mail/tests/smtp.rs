//! Sending over SMTP to real servers: aiosmtpd (from PyPI) for delivery, and
//! small scripted servers for refusals and silence.
//!
//! Without aiosmtpd the delivery test is skipped with a message, except under
//! `CI=true`, where it fails (`custodian_mail::testing`, behind the
//! `testing` feature, which the workspace's test run turns on).

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use custodian_mail::{MailError, Mailbox, Mailer, OutgoingMail, SmtpMailer, parse_inbound};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

fn reply() -> OutgoingMail {
    OutgoingMail {
        from: Mailbox::new("Custodian Support", "support@tickets.custodian.local"),
        to: vec![
            Mailbox::new("Ada Lövelace", "ada@example.com"),
            Mailbox::new("", "bob@example.org"),
        ],
        subject: "Re: Löschung meiner Daten – Ticket #42".into(),
        // A lone dot ends SMTP's DATA unless the client escapes it.
        text: "Hello Ada,\n\nyour account and its data are deleted.\n.\n.. and \
               so is the backup.\nGrüße, the Custodian team\n"
            .into(),
        message_id: "0190f3a2c4d5e6f7@tickets.custodian.local".into(),
        in_reply_to: Some("CAF=xk+2Yb8Q@mail.gmail.com".into()),
        references: vec![
            "0190f3a2-root@tickets.custodian.local".into(),
            "CAF=xk+2Yb8Q@mail.gmail.com".into(),
        ],
    }
}

/// Everything in an error a caller might log, none of which may name a
/// person.
fn assert_anonymous(err: &MailError) {
    let text = format!("{err} {err:?}");
    for personal in [
        "ada",
        "Ada",
        "bob",
        "example",
        "support@",
        "Löschung",
        "Grüße",
    ] {
        assert!(!text.contains(personal), "error names {personal:?}: {text}");
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn a_reply_arrives_at_a_real_smtp_server() {
    let Some(server) = custodian_mail::testing::Aiosmtpd::start() else {
        return;
    };
    let mailer = SmtpMailer::from_url(&format!("smtp://127.0.0.1:{}", server.port())).unwrap();
    let mail = reply();
    mailer.send(&mail).await.expect("sent");

    let delivered = server.delivered();
    assert_eq!(delivered.len(), 1, "one message in the maildir");
    let raw = &delivered[0];
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    // Unfolded: a line break before white space is not part of the value.
    let headers = text[..text.find("\n\n").expect("a header section")]
        .replace("\n ", " ")
        .replace("\n\t", "\t");
    let header = |name: &str| {
        headers
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} header in:\n{headers}"))
            .to_owned()
    };

    // The raw fields, as lettre wrote them and the server stored them.
    assert_eq!(
        header("From"),
        "\"Custodian Support\" <support@tickets.custodian.local>"
    );
    assert!(header("To").contains("<ada@example.com>"), "{headers}");
    assert!(header("To").contains("bob@example.org"), "{headers}");
    assert_eq!(
        header("Message-ID"),
        "<0190f3a2c4d5e6f7@tickets.custodian.local>"
    );
    assert_eq!(header("In-Reply-To"), "<CAF=xk+2Yb8Q@mail.gmail.com>");
    assert_eq!(
        header("References"),
        "<0190f3a2-root@tickets.custodian.local> <CAF=xk+2Yb8Q@mail.gmail.com>"
    );
    assert!(header("Date").ends_with("+0000"), "{headers}");
    assert!(
        header("Content-Type").starts_with("text/plain; charset=utf-8"),
        "{headers}"
    );
    // The envelope aiosmtpd saw: both recipients, the sender.
    assert_eq!(header("X-MailFrom"), "support@tickets.custodian.local");
    assert_eq!(header("X-RcptTo"), "ada@example.com, bob@example.org");

    // Decoded: the subject, the names and the body come back unchanged.
    let inbound = parse_inbound(raw).expect("parseable");
    assert_eq!(inbound.subject, mail.subject);
    assert_eq!(inbound.from, Some(mail.from.clone()));
    assert_eq!(
        inbound.message_id.as_deref(),
        Some(mail.message_id.as_str())
    );
    assert_eq!(inbound.in_reply_to, [mail.in_reply_to.clone().unwrap()]);
    assert_eq!(inbound.references, mail.references);
    // lettre ends the body with a line break of its own, and the SMTP
    // transfer adds one more: trailing line breaks are not significant.
    assert_eq!(
        inbound.text.replace("\r\n", "\n").trim_end(),
        mail.text.trim_end()
    );

    // A second send on the same mailer is a second message.
    let mut next = reply();
    next.message_id = custodian_mail::new_message_id("tickets.custodian.local");
    mailer.send(&next).await.expect("sent again");
    assert_eq!(server.delivered().len(), 2);
}

#[tokio::test]
async fn nobody_listening_is_a_connect_error_naming_no_one() {
    let port = free_port();
    let mailer = SmtpMailer::from_url(&format!("smtp://127.0.0.1:{port}")).unwrap();
    let err = mailer.send(&reply()).await.unwrap_err();
    assert!(
        matches!(
            err,
            MailError::Connect(std::io::ErrorKind::ConnectionRefused)
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_anonymous(&err);
    assert_eq!(
        err.to_string(),
        "could not connect to the SMTP server (connection refused)"
    );
}

/// A scripted SMTP server on 127.0.0.1: greets, then answers each command
/// line with `answer(line)`; `None` leaves the client waiting.
async fn scripted_server(
    greeting: Option<&'static str>,
    answer: fn(&str) -> Option<&'static str>,
) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let Some(greeting) = greeting else {
                    // Hold the connection open, say nothing.
                    while let Ok(Some(_)) = lines.next_line().await {}
                    return;
                };
                write.write_all(greeting.as_bytes()).await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(reply) = answer(&line)
                        && write.write_all(reply.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_refusal_that_echoes_the_address_is_reported_without_it() {
    let port = scripted_server(Some("220 mx.example.com ESMTP\r\n"), |line| {
        let verb = line.get(..4).unwrap_or(line).to_ascii_uppercase();
        Some(match verb.as_str() {
            "EHLO" => "250-mx.example.com\r\n250 8BITMIME\r\n",
            "MAIL" => "250 2.1.0 Ok\r\n",
            "RCPT" => {
                "550 5.1.1 <ada@example.com>: Recipient address rejected: \
                 User unknown in virtual mailbox table\r\n"
            }
            "QUIT" => "221 2.0.0 Bye\r\n",
            _ => "250 Ok\r\n",
        })
    })
    .await;
    let mailer = SmtpMailer::from_url(&format!("smtp://127.0.0.1:{port}")).unwrap();
    let err = mailer.send(&reply()).await.unwrap_err();
    assert!(
        matches!(&err, MailError::Refused { code } if code == "550"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_anonymous(&err);
    assert_eq!(err.to_string(), "SMTP server refused the message (550)");
}

#[tokio::test]
async fn a_deferral_is_transient() {
    let port = scripted_server(Some("220 mx.example.com ESMTP\r\n"), |line| {
        let verb = line.get(..4).unwrap_or(line).to_ascii_uppercase();
        Some(match verb.as_str() {
            "EHLO" => "250 mx.example.com\r\n",
            "MAIL" => "451 4.3.0 <support@tickets.custodian.local>: try again later\r\n",
            _ => "250 Ok\r\n",
        })
    })
    .await;
    let mailer = SmtpMailer::from_url(&format!("smtp://127.0.0.1:{port}")).unwrap();
    let err = mailer.send(&reply()).await.unwrap_err();
    assert!(
        matches!(&err, MailError::Deferred { code } if code == "451"),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_anonymous(&err);
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let port = scripted_server(None, |_| None).await;
    let mailer = SmtpMailer::with_timeout(
        &format!("smtp://127.0.0.1:{port}"),
        Duration::from_millis(300),
    )
    .unwrap();
    let started = Instant::now();
    let err = mailer.send(&reply()).await.unwrap_err();
    assert!(matches!(err, MailError::Timeout), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_anonymous(&err);
}

#[tokio::test]
async fn an_invalid_message_is_refused_before_connecting() {
    // Nobody listens: a connection attempt would be a Connect error.
    let mailer = SmtpMailer::from_url(&format!("smtp://127.0.0.1:{}", free_port())).unwrap();
    let mut mail = reply();
    mail.to[1].email = "bob@@example.org".into();
    let err = mailer.send(&mail).await.unwrap_err();
    assert!(matches!(err, MailError::InvalidRecipient), "{err:?}");
    assert_anonymous(&err);
}
