//! The development outbox: complete `.eml` files, private, readable back.

use std::{
    fs,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use custodian_mail::{
    Label, MailError, Mailbox, OutboxMailer, OutgoingMail, mailer, new_message_id, parse_inbound,
};

fn verification_code(to: &str) -> OutgoingMail {
    OutgoingMail {
        from: Mailbox::new("Custodian Privacy", "privacy@dsr.custodian.local"),
        to: vec![Mailbox::new("Zoë Example", to)],
        subject: "Your verification code: 482913".into(),
        text: "Hello Zoë,\n\nyour code is 482913. It expires in 15 minutes.\n".into(),
        message_id: new_message_id("dsr.custodian.local"),
        in_reply_to: None,
        references: vec![],
    }
}

fn unix_micros() -> i64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    i64::try_from(micros).unwrap()
}

fn eml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn each_message_is_one_private_eml_file_that_parses_back() {
    let data = tempfile::tempdir().unwrap();
    let outbox = data.path().join("outbox");
    let mailer = mailer(None, &outbox).unwrap();

    let before = unix_micros();
    let first = verification_code("zoe@example.com");
    let mut second = verification_code("zoe@example.com");
    second.subject = "Re: your request".into();
    second.in_reply_to = Some(first.message_id.clone());
    second.references = vec![first.message_id.clone()];
    mailer.send(&first).await.unwrap();
    mailer.send(&second).await.unwrap();

    // Only the two finished files: no temporary file left behind.
    let files = eml_files(&outbox);
    assert_eq!(files.len(), 2, "{files:?}");
    let mut seen = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let (micros, rest) = name.split_once('-').expect("{unix_micros}-{uuid}.eml");
        let micros: i64 = micros.parse().expect("unix micros");
        assert!(micros >= before && micros <= unix_micros(), "{name}");
        let uuid = rest.strip_suffix(".eml").expect(".eml");
        uuid::Uuid::parse_str(uuid).expect("a uuid");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
        }

        let raw = fs::read(path).unwrap();
        assert!(raw.windows(4).any(|w| w == b"\r\n\r\n"), "CRLF line ends");
        seen.push(parse_inbound(&raw).unwrap());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&outbox).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "outbox: {mode:o}");
    }

    // The names sort by time: the first file is the first message.
    let (a, b) = (&seen[0], &seen[1]);
    assert_eq!(a.message_id.as_deref(), Some(first.message_id.as_str()));
    assert_eq!(a.subject, first.subject);
    assert_eq!(a.from, Some(first.from.clone()));
    assert_eq!(
        a.text.replace("\r\n", "\n").trim_end(),
        first.text.trim_end()
    );
    assert!(a.in_reply_to.is_empty() && a.references.is_empty());
    let date = a.date.expect("a Date header");
    // The Date header has whole seconds.
    assert!(date >= before / 1_000_000 * 1_000_000 && date <= unix_micros());

    assert_eq!(b.message_id.as_deref(), Some(second.message_id.as_str()));
    assert_eq!(b.in_reply_to, std::slice::from_ref(&first.message_id));
    assert_eq!(b.references, std::slice::from_ref(&first.message_id));
}

#[tokio::test]
async fn write_returns_the_file_and_an_existing_folder_is_made_private() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("outbox");
    fs::create_dir(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let outbox = OutboxMailer::new(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }
    let path = outbox
        .write(&verification_code("zoe@example.com"))
        .await
        .unwrap();
    assert_eq!(path.parent(), Some(dir.as_path()));
    assert_eq!(eml_files(&dir), [path]);
}

#[tokio::test]
async fn an_invalid_message_writes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let outbox = data.path().join("outbox");
    let mailer = mailer(None, &outbox).unwrap();
    let err = mailer
        .send(&verification_code("zoe.example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, MailError::InvalidRecipient), "{err:?}");
    assert!(!err.to_string().contains("zoe"));
    assert!(eml_files(&outbox).is_empty());
}

#[test]
fn a_folder_that_cannot_be_made_is_an_error() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("not-a-folder");
    fs::write(&file, b"").unwrap();
    let err = mailer(None, &file.join("outbox")).err().expect("an error");
    assert!(format!("{err:#}").contains("outbox"), "{err:#}");
}

#[test]
fn the_smtp_url_picks_smtp_and_its_errors_hide_the_password() {
    let data = tempfile::tempdir().unwrap();
    let outbox = data.path().join("outbox");
    assert!(mailer(Some("smtp://127.0.0.1:2525"), &outbox).is_ok());
    // SMTP chosen: no outbox folder made.
    assert!(!outbox.exists());
    let err = mailer(
        Some("smtp://mailrelayuser:hunter2@smtp.example.com:587"),
        &outbox,
    )
    .err()
    .expect("credentials in clear are refused");
    let text = format!("{err:#} {err:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("mailrelayuser"),
        "{text}"
    );
}

/// Every file of the outbox folder, by name.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn label(service: &str, recipients: &[&str]) -> Label {
    Label {
        service: service.into(),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
    }
}

#[tokio::test]
async fn a_label_beside_each_message_names_the_service_and_keys_never_an_address() {
    let data = tempfile::tempdir().unwrap();
    let outbox = OutboxMailer::new(data.path().join("outbox")).unwrap();
    let path = outbox
        .write_labelled(
            &verification_code("zoe@example.com"),
            &label("dsr", &["k-zoe", "k-agent"]),
        )
        .await
        .unwrap();
    let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        names(outbox.dir()),
        [format!("{stem}.eml"), format!("{stem}.label")]
    );
    let text = fs::read_to_string(outbox.dir().join(format!("{stem}.label"))).unwrap();
    assert_eq!(text, "service dsr\nto k-zoe\nto k-agent\n");
    assert!(!text.contains("zoe@") && !text.contains("Zoë"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let file = outbox.dir().join(format!("{stem}.label"));
        let mode = fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // A value that could not be read back is refused, and nothing written.
    let err = outbox
        .write_labelled(
            &verification_code("zoe@example.com"),
            &label("dsr", &["k zoe"]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MailError::Outbox(_)), "{err:?}");
    assert_eq!(names(outbox.dir()).len(), 2);
}

#[tokio::test]
async fn erasure_deletes_what_one_service_sent_to_one_person() {
    let data = tempfile::tempdir().unwrap();
    let outbox = OutboxMailer::new(data.path().join("outbox")).unwrap();
    let mail = verification_code("zoe@example.com");
    let zoe_dsr = outbox
        .write_labelled(&mail, &label("dsr", &["k-zoe"]))
        .await
        .unwrap();
    let zoe_and_ann = outbox
        .write_labelled(&mail, &label("dsr", &["k-ann", "k-zoe"]))
        .await
        .unwrap();
    let zoe_tickets = outbox
        .write_labelled(&mail, &label("tickets", &["k-zoe"]))
        .await
        .unwrap();
    let ann_dsr = outbox
        .write_labelled(&mail, &label("dsr", &["k-ann"]))
        .await
        .unwrap();
    let unlabelled = outbox.write(&mail).await.unwrap();
    // A write cut short after its label: the temporary file goes too.
    let stem = zoe_dsr.file_stem().unwrap().to_string_lossy().into_owned();
    fs::write(outbox.dir().join(format!(".{stem}.eml.tmp")), b"half").unwrap();

    assert_eq!(outbox.erase("dsr", &["k-zoe".to_owned()]).await.unwrap(), 2);
    for gone in [&zoe_dsr, &zoe_and_ann] {
        assert!(!gone.exists());
        assert!(!gone.with_extension("label").exists());
    }
    assert!(!outbox.dir().join(format!(".{stem}.eml.tmp")).exists());
    for kept in [&zoe_tickets, &ann_dsr, &unlabelled] {
        assert!(kept.exists(), "{kept:?}");
    }
    // Again: nothing left to erase.
    assert_eq!(outbox.erase("dsr", &["k-zoe".to_owned()]).await.unwrap(), 0);
    assert_eq!(outbox.erase("dsr", &[]).await.unwrap(), 0);
}

#[tokio::test]
async fn expiry_deletes_what_a_service_sent_before_the_cutoff_and_unlabelled_mail() {
    let data = tempfile::tempdir().unwrap();
    let outbox = OutboxMailer::new(data.path().join("outbox")).unwrap();
    let mail = verification_code("zoe@example.com");
    let old_dsr = outbox
        .write_labelled(&mail, &label("dsr", &["k-zoe"]))
        .await
        .unwrap();
    let old_tickets = outbox
        .write_labelled(&mail, &label("tickets", &["k-zoe"]))
        .await
        .unwrap();
    let old_unlabelled = outbox.write(&mail).await.unwrap();
    let cutoff = unix_micros();
    let new_dsr = outbox
        .write_labelled(&mail, &label("dsr", &["k-zoe"]))
        .await
        .unwrap();
    // Leftovers of a write cut short, older than the cutoff.
    let stale = outbox.dir().join(format!(".{}-x.eml.tmp", cutoff - 1));
    fs::write(&stale, b"half").unwrap();
    let orphan = outbox.dir().join(format!("{}-y.label", cutoff - 1));
    fs::write(&orphan, b"service dsr\n").unwrap();

    assert_eq!(outbox.expire("dsr", cutoff).await.unwrap(), 2);
    for gone in [&old_dsr, &old_unlabelled, &stale, &orphan] {
        assert!(!gone.exists(), "{gone:?}");
    }
    assert!(!old_dsr.with_extension("label").exists());
    for kept in [&old_tickets, &new_dsr] {
        assert!(kept.exists(), "{kept:?}");
        assert!(kept.with_extension("label").exists(), "{kept:?}");
    }
    assert_eq!(outbox.expire("tickets", cutoff).await.unwrap(), 1);
    assert!(!old_tickets.exists());
    assert!(new_dsr.exists());
}
