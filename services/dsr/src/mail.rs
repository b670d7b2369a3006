//! What the requester (and their agent) is told, and when: the
//! acknowledgement with the code on receipt, a new code on request, which
//! customers hold their data, a customer's refusal, an extension with its
//! reason, cancellation and completion. Plain text, in the requester's
//! mailbox only; nothing here is logged.

use custodian_mail::{Mailbox, OutgoingMail, new_message_id};
use custodian_proto::dsr::v1::{Request, request::Kind};
use custodian_runtime::time::to_timestamp;

use crate::codes::{MAX_ATTEMPTS, VALID_FOR};

const DOMAIN: &str = "dsr.custodian.local";

pub fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Access => "access",
        Kind::Portability => "portability",
        Kind::Rectification => "rectification",
        Kind::Erasure => "erasure",
        Kind::Objection => "objection",
        Kind::Restriction => "restriction",
        Kind::Unspecified => "unspecified",
    }
}

fn what(kind: Kind) -> &'static str {
    match kind {
        Kind::Access => "a copy of your personal information",
        Kind::Portability => "your personal information in a machine-readable form",
        Kind::Rectification => "the correction of your personal information",
        Kind::Erasure => "the deletion of your personal information",
        Kind::Objection => "your objection to the use of your personal information",
        Kind::Restriction => "a restriction of the use of your personal information",
        Kind::Unspecified => "a request about your personal information",
    }
}

/// A UTC date and time, as a person reads it.
pub fn date(micros: i64) -> String {
    let ts = to_timestamp(micros);
    time::OffsetDateTime::from_unix_timestamp(ts.seconds)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_default()
}

fn to(request: &Request) -> Vec<Mailbox> {
    let requester = request.requester.clone().unwrap_or_default();
    let name = requester
        .person_name
        .map(|n| {
            format!("{} {}", n.given_name, n.family_name)
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    vec![Mailbox::new(name, requester.email)]
}

fn agent(request: &Request) -> Option<Vec<Mailbox>> {
    let agent = request.agent.clone().unwrap_or_default();
    (!agent.email.is_empty()).then(|| vec![Mailbox::new(agent.display_name, agent.email)])
}

fn message(from: &str, to: Vec<Mailbox>, subject: String, text: String) -> OutgoingMail {
    OutgoingMail {
        from: Mailbox::new("Privacy Officer", from),
        to,
        subject,
        text,
        message_id: new_message_id(DOMAIN),
        in_reply_to: None,
        references: Vec::new(),
    }
}

fn reference(request: &Request) -> String {
    request
        .name
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The acknowledgement on receipt, with the first code.
pub fn acknowledgement(from: &str, request: &Request, due: i64, code: &str) -> OutgoingMail {
    let kind = Kind::try_from(request.kind).unwrap_or_default();
    let on_behalf = if request.agent.as_ref().is_some_and(|a| a.submitted_by_agent) {
        "An authorized agent submitted it on your behalf. "
    } else {
        ""
    };
    let text = format!(
        "Hello,\n\n\
         we received your request for {what} (reference {reference}). {on_behalf}\
         We will answer by {due}.\n\n\
         Before we look for any of your information, please confirm that this \
         mailbox is yours with this code:\n\n    {code}\n\n\
         The code works for {minutes} minutes and {MAX_ATTEMPTS} attempts. If you did not \
         ask for this, ignore this message: nothing happens without the code.\n\n\
         Privacy Officer\n",
        what = what(kind),
        reference = reference(request),
        due = date(due),
        minutes = VALID_FOR / 60_000_000,
    );
    message(
        from,
        to(request),
        format!(
            "Your privacy request {}: please confirm",
            reference(request)
        ),
        text,
    )
}

/// The agent's copy: no code, which only the person may use.
pub fn agent_copy(from: &str, request: &Request, due: i64) -> Option<OutgoingMail> {
    let to = agent(request)?;
    let kind = Kind::try_from(request.kind).unwrap_or_default();
    let text = format!(
        "Hello,\n\n\
         we received the request you submitted for {what} on behalf of another \
         person (reference {reference}). We will answer by {due}. The person \
         must confirm it with the code we mailed to them.\n\n\
         Privacy Officer\n",
        what = what(kind),
        reference = reference(request),
        due = date(due),
    );
    Some(message(
        from,
        to,
        format!("Privacy request {} received", reference(request)),
        text,
    ))
}

/// A new code.
pub fn code(from: &str, request: &Request, code: &str) -> OutgoingMail {
    let text = format!(
        "Hello,\n\n\
         here is a new code for your privacy request {reference}:\n\n    {code}\n\n\
         Earlier codes no longer work. This one works for {minutes} minutes and \
         {MAX_ATTEMPTS} attempts.\n\n\
         Privacy Officer\n",
        reference = reference(request),
        minutes = VALID_FOR / 60_000_000,
    );
    message(
        from,
        to(request),
        format!("Your privacy request {}: new code", reference(request)),
        text,
    )
}

/// A reminder to a customer's administrators of an item they have not
/// instructed. Names the item, never the person it is about.
pub fn reminder(
    from: &str,
    to: Vec<Mailbox>,
    customer: &str,
    item: &str,
    kind: &str,
    due: i64,
) -> OutgoingMail {
    let text = format!(
        "Hello,\n\n\
         a privacy request about personal information we hold on behalf of \
         {customer} is waiting for your instruction:\n\n    {item} ({kind})\n\n\
         It is due on {due}. Please acknowledge it and instruct us to fulfil or \
         decline it (TenantInboxService, InstructInboxItem); past its due time the \
         request is escalated to our privacy team.\n\n\
         Privacy Officer\n",
        due = date(due),
    );
    message(
        from,
        to,
        format!("Reminder: a privacy request is waiting for {customer}"),
        text,
    )
}

/// The privacy team is told of an item past its due time without an
/// instruction. Names the item and the customer, never the person.
pub fn escalation(from: &str, customer: &str, item: &str, request: &str, due: i64) -> OutgoingMail {
    let text = format!(
        "Privacy team,\n\n\
         {customer} has not instructed us on {item}, part of {request}; it was \
         due on {due}. The requester has had the company's own part. Contact the \
         customer, and tell the requester how the rest will be handled \
         (RequestService/ExtendRequest records a reason).\n\n\
         Custodian\n",
        due = date(due),
    );
    message(
        from,
        vec![Mailbox::new("Privacy team", from)],
        format!("Overdue: {customer} has not answered a privacy request"),
        text,
    )
}

/// The notices sent by the orchestrator, each once.
pub enum Notice<'a> {
    /// Customers hold some of the data; the request went to them.
    Routed {
        tenants: &'a [String],
    },
    Declined {
        tenant: &'a str,
        reason: &'a str,
    },
    Extended {
        reason: &'a str,
        due: i64,
    },
    Cancelled,
    /// The company's own part is done; customers still decide about
    /// theirs (named as the requester knows them).
    CompanyPartDone {
        customers: &'a [String],
        export_until: Option<i64>,
    },
    Completed {
        export_until: Option<i64>,
    },
}

pub fn notice(from: &str, request: &Request, notice: &Notice<'_>) -> Vec<OutgoingMail> {
    let reference = reference(request);
    let kind = Kind::try_from(request.kind).unwrap_or_default();
    let (subject, body) = match notice {
        Notice::Routed { tenants } => (
            "some of your information is held for our customers",
            format!(
                "some of your personal information is held by us on behalf of our \
                 customer(s), who decide about it:\n\n{}\n\n\
                 We have forwarded your request to them and will carry out what they \
                 instruct; you may also contact them directly. What we hold for \
                 ourselves is handled by us as you asked.",
                tenants
                    .iter()
                    .map(|t| format!("    {t}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        ),
        Notice::Declined { tenant, reason } => (
            "a customer declined your request",
            format!(
                "our customer {tenant}, who decides about the personal information we \
                 hold on its behalf, declined your request for {what}, with this \
                 reason:\n\n{reason}\n\nYou may contact them directly.",
                what = what(kind),
            ),
        ),
        Notice::Extended { reason, due } => (
            "we need more time",
            format!(
                "we need more time to answer your request for {what}, for this \
                 reason:\n\n{reason}\n\nWe will answer by {due}.",
                what = what(kind),
                due = date(*due),
            ),
        ),
        Notice::Cancelled => (
            "cancelled",
            format!(
                "your request for {what} was cancelled; nothing more will be done \
                 for it.",
                what = what(kind),
            ),
        ),
        Notice::CompanyPartDone {
            customers,
            export_until,
        } => (
            "the company's part is handled",
            format!(
                "{done} What remains is held by us on behalf of our customer(s), who \
                 decide about it; we forwarded your request to them and will tell you \
                 when they have answered:\n\n{names}",
                done = match (kind, export_until) {
                    (Kind::Access | Kind::Portability, Some(until)) => format!(
                        "the copy of the information we hold for ourselves is ready; our \
                         privacy team will send it to you. It is kept until {until}, then \
                         deleted; the customers' parts are added as they answer.",
                        until = date(*until),
                    ),
                    _ => format!(
                        "we have carried out your request for {what} on the information \
                         we hold for ourselves.",
                        what = what(kind),
                    ),
                },
                names = customers
                    .iter()
                    .map(|c| format!("    {c}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        ),
        Notice::Completed { export_until } => (
            "done",
            match export_until {
                Some(until) => format!(
                    "your request for {what} is complete. The copy of your information \
                     is ready; our privacy team will send it to you. It is kept until \
                     {until}, then deleted.",
                    what = what(kind),
                    until = date(*until),
                ),
                None => format!("your request for {what} is complete.", what = what(kind)),
            },
        ),
    };
    let text = format!("Hello,\n\n{body}\n\nReference: {reference}\n\nPrivacy Officer\n");
    let subject = format!("Your privacy request {reference}: {subject}");
    let mut out = vec![message(from, to(request), subject.clone(), text.clone())];
    if let Some(agent) = agent(request) {
        out.push(message(from, agent, subject, text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_proto::dsr::v1::Requester;

    /// A customer's refusal reaches the requester with its reason and the
    /// customer's name (the outbox copy goes once an erasure ends, so the
    /// words are checked here).
    #[test]
    fn a_refusal_names_the_customer_and_its_reason() {
        let request = Request {
            name: "requests/0190abcd".into(),
            kind: Kind::Erasure as i32,
            requester: Some(Requester {
                email: "otto@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let reason = "Otto's account is under a legal hold until 2031";
        let mails = notice(
            "privacy@custodian.example",
            &request,
            &Notice::Declined {
                tenant: "tenants/acme",
                reason,
            },
        );
        assert_eq!(mails.len(), 1, "no agent, no copy");
        let mail = &mails[0];
        assert_eq!(mail.to[0].email, "otto@example.com");
        assert!(mail.subject.contains("declined"), "{}", mail.subject);
        assert!(mail.text.contains(reason), "{}", mail.text);
        assert!(mail.text.contains("tenants/acme"), "{}", mail.text);
        assert!(
            mail.text
                .contains("the deletion of your personal information")
        );
    }
}
