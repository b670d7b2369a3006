//! The email channel. Inbound mail comes from the company's mail gateway as
//! raw RFC 5322 bytes: it is parsed (mail-parser), threaded onto its ticket
//! by In-Reply-To / References, or by a "[Ticket#...]" reference in the
//! subject when it comes from the ticket's requester, or opens a new email
//! ticket. Mail cannot be refused once it has arrived, so card numbers,
//! national ids and bank accounts in it are redacted before anything is
//! stored, and the message records which kinds were. Agent replies on email
//! tickets go out through the shared mailer with proper Message-ID,
//! In-Reply-To and References headers.

use std::sync::LazyLock;

use custodian_kit::{Arg, Call, Filter, Idempotency, Query, Sensitive, Stored};
use custodian_mail::{Mailbox, OutgoingMail, new_message_id, parse_inbound};
use custodian_privacy::normalize;
use custodian_proto::{
    common::v1::PersonName,
    privacy::v1::Lookup,
    tickets::v1::{
        IngestEmailResponse, Requester, Ticket, TicketMessage,
        ticket::{Channel, Kind, State},
        ticket_message,
    },
};
use custodian_runtime::{ApiError, error::Violations, paging::Page};
use regex::Regex;
use tonic::Status;

use crate::api::Api;

/// The domain of the Message-IDs this service writes.
const MESSAGE_ID_DOMAIN: &str = "tickets.custodian.localhost";

/// "[Ticket#<uuid>]" in a subject.
static TICKET_REF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\[Ticket#([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]")
        .expect("ticket reference pattern")
});

/// The most Message-IDs carried in References.
const MAX_REFERENCES: usize = 20;

/// The reference a reply's subject carries.
pub fn subject_reference(ticket_id: &str) -> String {
    format!("[Ticket#{ticket_id}]")
}

/// A display name as a person's name: the last word is the family name.
fn person_name(display: &str) -> Option<PersonName> {
    let display = display.trim().trim_matches('"').trim();
    if display.is_empty() || display.contains('@') {
        return None;
    }
    Some(match display.rsplit_once(' ') {
        Some((given, family)) => PersonName {
            given_name: given.trim().to_owned(),
            family_name: family.trim().to_owned(),
        },
        None => PersonName {
            given_name: display.to_owned(),
            family_name: String::new(),
        },
    })
}

impl Api {
    /// The keyed index a Message-ID is found by.
    fn thread_key(&self, message_id: &str) -> String {
        self.tickets
            .store()
            .privacy()
            .vault
            .blind_index("message-id", message_id)
    }

    /// The first message found with one of these Message-IDs, whole, among
    /// those the caller's tenant limit allows.
    async fn message_by_ids(
        &self,
        call: &Call,
        ids: &[String],
    ) -> Result<Option<Stored<TicketMessage>>, Status> {
        for id in ids.iter().rev().take(MAX_REFERENCES) {
            let query = Query {
                filters: vec![Filter::Eq("thread_key", Arg::Text(self.thread_key(id)))],
                ..Default::default()
            };
            let page = Page::parse(1, "", "thread")?;
            let (found, _) = self.messages.query(call, &query, &page).await?;
            if let Some(found) = found.into_iter().next() {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The ticket a mail belongs to, if any: by its headers, else by a
    /// ticket reference in its subject when the sender is the requester. A
    /// closed ticket takes nothing: the mail opens a new one.
    async fn thread_of(
        &self,
        call: &Call,
        headers: &[String],
        subject: &str,
        sender_key: &str,
    ) -> Result<Option<Stored<Ticket>>, Status> {
        let mut ticket_id = self
            .message_by_ids(call, headers)
            .await?
            .map(|m| m.parent_id);
        let by_subject = ticket_id.is_none();
        if by_subject {
            ticket_id = TICKET_REF
                .captures(subject)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str().to_owned());
        }
        let Some(id) = ticket_id else { return Ok(None) };
        let name = self.tickets.name("", "", &id);
        let query = Query {
            filters: vec![Filter::Eq("id", Arg::Text(id))],
            ..Default::default()
        };
        let page = Page::parse(1, "", "thread")?;
        let Some(ticket) = self
            .tickets
            .query(call, &query, &page)
            .await?
            .0
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        // A subject is easy to copy; only the requester threads by it.
        if by_subject {
            let requester_key = ticket
                .message
                .requester
                .as_ref()
                .filter(|r| !r.email.is_empty())
                .map(|r| self.tickets.store().lookup_key(Lookup::Email, &r.email));
            if requester_key.as_deref() != Some(sender_key) {
                tracing::debug!(ticket = %name, "subject reference from another sender: new ticket");
                return Ok(None);
            }
        }
        if ticket.message.state == State::Closed as i32 {
            return Ok(None);
        }
        Ok(Some(ticket))
    }

    /// Takes one inbound mail.
    pub(crate) async fn ingest(
        &self,
        call: &Call,
        raw: &[u8],
        tenant_id: &str,
    ) -> Result<IngestEmailResponse, Status> {
        let mail = parse_inbound(raw)
            .map_err(|_| ApiError::invalid("raw_message", "is not an RFC 5322 mail message"))?;
        let sender = mail
            .from
            .as_ref()
            .and_then(|f| normalize::email(&f.email).ok())
            .ok_or_else(|| {
                ApiError::invalid("raw_message", "the mail has no valid sender address")
            })?;
        let message_id = mail
            .message_id
            .clone()
            .filter(|id| !id.is_empty() && id.len() <= 255);

        // The same mail twice (a gateway retry) is stored once.
        if let Some(id) = &message_id
            && let Some(existing) = self.message_by_ids(call, std::slice::from_ref(id)).await?
        {
            let ticket = self
                .tickets
                .find(
                    call,
                    &self.tickets.name("", "", &existing.parent_id),
                    "raw_message",
                )
                .await?;
            return Ok(IngestEmailResponse {
                ticket: Some(self.shown(call, &ticket)?.message),
                message: Some(self.messages.shown(call, &existing)?.message),
                new_ticket: false,
                duplicate: true,
            });
        }

        let mut headers = mail.references.clone();
        headers.extend(mail.in_reply_to.iter().cloned());
        let sender_key = self.tickets.store().lookup_key(Lookup::Email, &sender);
        let thread = self
            .thread_of(call, &headers, &mail.subject, &sender_key)
            .await?;

        let mut message = TicketMessage {
            kind: ticket_message::Kind::Requester as i32,
            body: if mail.text.trim().is_empty() {
                "(no text)".to_owned()
            } else {
                mail.text.clone()
            },
            ..Default::default()
        };
        // Arrived mail is never refused for what it holds: it is redacted.
        let mut v = Violations::new();
        let mut redacted =
            self.messages
                .prepare(&mut message, "raw_message", Sensitive::Redact, &mut v)?;
        if !v.is_empty() {
            // Too long or unreadable text: keep what can be kept.
            message.body = message.body.chars().take(50_000).collect();
            message
                .body
                .retain(|c| !c.is_control() || matches!(c, '\n' | '\t'));
        }
        message.channel = Channel::Email as i32;
        if let Some(id) = &message_id {
            message.email_message_id = id.clone();
            message.thread_key = self.thread_key(id);
        }
        if let Some(ticket) = thread {
            message.redacted_kinds = redacted.iter().map(|k| (*k).to_owned()).collect();
            let stored = self.add(call, &ticket, message, None).await?;
            let ticket = self
                .tickets
                .find(call, &ticket.message.name, "raw_message")
                .await?;
            return Ok(IngestEmailResponse {
                ticket: Some(self.shown(call, &ticket)?.message),
                message: Some(self.messages.shown(call, &stored)?.message),
                new_ticket: false,
                duplicate: false,
            });
        }

        let mut subject: String = mail
            .subject
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(300)
            .collect();
        if subject.trim().is_empty() {
            subject = "(no subject)".to_owned();
        }
        let mut ticket = Ticket {
            channel: Channel::Email as i32,
            // A mail through a tenant's address is about the Platform;
            // anyone else's is an inquiry.
            kind: if tenant_id.is_empty() {
                Kind::Inquiry as i32
            } else {
                Kind::Troubleshooting as i32
            },
            subject,
            requester: Some(Requester {
                person_name: mail.from.as_ref().and_then(|f| person_name(&f.name)),
                email: sender.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut v = Violations::new();
        redacted.extend(self.tickets.prepare(
            &mut ticket,
            "raw_message",
            Sensitive::Redact,
            &mut v,
        )?);
        if !v.is_empty() {
            // A display name that is no name: the address alone will do.
            if let Some(r) = ticket.requester.as_mut() {
                r.person_name = None;
            }
        }
        redacted.sort_unstable();
        redacted.dedup();
        message.redacted_kinds = redacted.iter().map(|k| (*k).to_owned()).collect();
        // The mail's own id keys the new ticket, so a gateway's retry after
        // a failure between the ticket and its message completes the ticket
        // instead of opening a second one.
        let idempotency = message_id.as_ref().map(|id| {
            let key = self.thread_key(id);
            Idempotency {
                scope: "IngestEmail".to_owned(),
                request_id: key.clone(),
                request_hash: key,
            }
        });
        let (stored, first, _) = self
            .open(
                call,
                ticket,
                tenant_id.to_owned(),
                Some(message),
                idempotency,
            )
            .await?;
        let first =
            first.ok_or_else(|| ApiError::internal(std::io::Error::other("no first message")))?;
        Ok(IngestEmailResponse {
            ticket: Some(self.shown(call, &stored)?.message),
            message: Some(self.messages.shown(call, &first)?.message),
            new_ticket: true,
            duplicate: false,
        })
    }

    /// An agent reply on an email ticket: stored with its own Message-ID,
    /// then mailed to the requester in the thread of the last mail, and only
    /// then counted on the ticket (first response, opening). If the mail
    /// cannot be handed over, the reply is taken back and the call is
    /// UNAVAILABLE: neither the thread nor the SLA shows a reply the
    /// requester did not get.
    pub(crate) async fn reply_by_mail(
        &self,
        call: &Call,
        ticket: &Stored<Ticket>,
        mut message: TicketMessage,
        idempotency: Option<Idempotency>,
    ) -> Result<Stored<TicketMessage>, Status> {
        let message_id = new_message_id(MESSAGE_ID_DOMAIN);
        message.email_message_id = message_id.clone();
        message.thread_key = self.thread_key(&message_id);
        message.channel = Channel::Email as i32;
        // The thread's earlier mails, for In-Reply-To and References.
        let query = Query {
            parent_id: Some(ticket.id.clone()),
            ..Default::default()
        };
        let page = Page::parse(1000, "", "thread")?;
        let (thread, _) = self.messages.query(call, &query, &page).await?;
        let mut references: Vec<String> = thread
            .iter()
            .map(|m| m.message.email_message_id.clone())
            .filter(|id| !id.is_empty())
            .collect();
        let in_reply_to = references.last().cloned();
        if references.len() > MAX_REFERENCES {
            references.drain(..references.len() - MAX_REFERENCES);
        }
        let text = message.body.clone();
        let (stored, replayed) = self
            .store_message(call, ticket, message, idempotency)
            .await?;
        if replayed {
            // An idempotent retry: the mail went out with the first call.
            return Ok(stored);
        }
        let requester = ticket.message.requester.clone().unwrap_or_default();
        let name = requester
            .person_name
            .map(|n| {
                format!("{} {}", n.given_name, n.family_name)
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default();
        let mail = OutgoingMail {
            from: Mailbox::new("Support", self.mail_from.clone()),
            to: vec![Mailbox::new(name, requester.email)],
            subject: format!(
                "Re: {} {}",
                ticket.message.subject,
                subject_reference(&ticket.id)
            ),
            text,
            message_id,
            in_reply_to,
            references,
        };
        if let Err(err) = self.mailer.send(&mail).await {
            tracing::warn!(error = %err, ticket = %ticket.message.name, "reply not mailed; taking it back");
            self.messages
                .delete(call, &stored.message.name, "message")
                .await?;
            return Err(Status::unavailable(
                "the reply could not be mailed; it was not added, retry later",
            ));
        }
        self.follow_up(call, ticket, stored.message.kind).await?;
        Ok(stored)
    }
}
