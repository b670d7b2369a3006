//! The email channel. Inbound mail comes from the company's mail gateway as
//! raw RFC 5322 bytes: it is parsed (mail-parser), and joins the ticket its
//! In-Reply-To / References or a "[Ticket#...]" subject reference name only
//! when its sender is that ticket's requester and the ticket is held for the
//! mail's tenant; anyone else's mail opens a ticket of its own, linked to the
//! one it named. A Message-ID is known to everyone who got the mail, so it
//! proves nothing about who writes.
//!
//! Mail cannot be refused once it has arrived, so what is stored from it is
//! first cut and cleaned to what its field may hold (length, control
//! characters, line breaks), then redacted by the one `prepare` of the kit:
//! card numbers, national ids and bank accounts never reach storage, on any
//! path, and the message records which kinds were removed. A display name
//! is checked whole before it is split into a name; a Message-ID holding
//! such a value (or one that cannot be written in a header) is kept as its
//! keyed hash only.
//!
//! Agent replies on email tickets are stored first, then mailed through the
//! shared mailer with proper Message-ID, In-Reply-To and References headers
//! (only ids that can be written there), then marked sent and counted on
//! the ticket, whether or not the caller still waits. A reply that cannot
//! be mailed is taken back; a retry mails a reply only when no earlier
//! call did (or its process stopped before it could record that it did).

use std::sync::LazyLock;

use custodian_kit::{Arg, Call, Filter, Idempotency, Query, Sensitive, Stored};
use custodian_mail::{
    Mailbox, OutgoingMail, SmtpMailer, is_usable_message_id, new_message_id, parse_inbound,
};
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
use custodian_runtime::{ApiError, error::Violations, paging::Page, time::to_timestamp};
use regex::Regex;
use tonic::Status;
use tracing::Instrument as _;

use crate::api::Api;

/// The domain of the Message-IDs this service writes.
const MESSAGE_ID_DOMAIN: &str = "tickets.custodian.localhost";

/// "[Ticket#<uuid>]" in a subject.
static TICKET_REF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\[Ticket#([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]")
        .expect("ticket reference pattern")
});

/// The most Message-IDs carried in References, and read from them.
const MAX_REFERENCES: usize = 20;

/// The most messages one Message-ID is looked up in. Ids are unique unless
/// someone reuses one on purpose; each reuse is its sender's own message.
const MAX_SHARING_AN_ID: i32 = 100;

/// The longest Message-ID kept (RFC 5322 sets none; real ids are far
/// shorter).
const MAX_MESSAGE_ID: usize = 255;

/// The most characters each stored field holds, as the contract declares
/// them (`TicketMessage.body`, `Ticket.subject`, a `PersonName` half).
const MAX_BODY: usize = 50_000;
const MAX_SUBJECT: usize = 300;
const MAX_NAME: usize = 200;

/// How long a reply stored and not yet marked sent is taken to be on its
/// way: longer than the SMTP mailer takes for one send, however it ends
/// (an outbox file takes far less). A retry within it waits; after it, the
/// call that stored the reply stopped with its process, and the retry
/// mails the reply.
const MAILING_LEASE_MICROS: i64 = (SmtpMailer::DEFAULT_DEADLINE.as_secs() as i64 + 30) * 1_000_000;

/// How often a value is cut shorter when its redacted form is longer than
/// its field (a "[redacted ...]" mark is longer than most values it
/// replaces) before the mail is refused as a bug rather than stored.
const FIT_ATTEMPTS: usize = 8;

/// The reference a reply's subject carries.
pub fn subject_reference(ticket_id: &str) -> String {
    format!("[Ticket#{ticket_id}]")
}

/// Text from a mail made into what a field may hold, before the guard reads
/// it: control characters dropped (a NUL or BEL is no text; a body keeps
/// tabs and line breaks, a one-line field gets spaces for them and for the
/// Unicode line and paragraph separators), at most `max_chars` characters.
/// A number cut at that limit is dropped whole: half a card is no business
/// text either.
fn fit(text: &str, max_chars: usize, multi_line: bool) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut count = 0;
    let mut cut = false;
    for c in text.chars() {
        let c = match c {
            '\n' | '\r' | '\t' if multi_line => c,
            '\u{2028}' | '\u{2029}' if multi_line => '\n',
            '\n' | '\r' | '\t' | '\u{2028}' | '\u{2029}' => ' ',
            c if c.is_control() => continue,
            c => c,
        };
        if count == max_chars {
            cut = true;
            break;
        }
        out.push(c);
        count += 1;
    }
    if cut {
        let kept = out
            .trim_end_matches(|c: char| c.is_ascii_digit() || " -./_".contains(c))
            .len();
        out.truncate(kept);
    }
    out
}

/// The next, shorter try of [`fit`] when a value came out `over` its
/// field: that much less, and at least one in a hundred less.
fn shorter(n: usize, over: usize) -> usize {
    n.saturating_sub(over.max(n / 100).max(1))
}

/// A display name as a person's name: the last word is the family name.
/// `None` for what is no name (empty, an address).
fn person_name(display: &str) -> Option<PersonName> {
    let display = display.trim().trim_matches('"').trim();
    if display.is_empty() || display.contains('@') {
        return None;
    }
    let (given, family) = display.rsplit_once(' ').unwrap_or((display, ""));
    Some(PersonName {
        given_name: fit(given.trim(), MAX_NAME, false),
        family_name: fit(family.trim(), MAX_NAME, false),
    })
}

/// Where an inbound mail goes.
enum Thread {
    /// Onto this ticket: its sender's own, open, held for the mail's tenant.
    Join(Box<Stored<Ticket>>),
    /// Into a new ticket, which names the ticket the mail referred to but
    /// may not join (another person's, or a closed one), if any.
    New { related: Option<String> },
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

    /// The messages that came or left with this Message-ID, oldest first,
    /// among those the caller's tenant limit allows.
    async fn messages_with_id(
        &self,
        call: &Call,
        message_id: &str,
    ) -> Result<Vec<Stored<TicketMessage>>, Status> {
        let query = Query {
            filters: vec![Filter::Eq(
                "thread_key",
                Arg::Text(self.thread_key(message_id)),
            )],
            ..Default::default()
        };
        let page = Page::parse(MAX_SHARING_AN_ID, "", "thread")?;
        Ok(self.messages.query(call, &query, &page).await?.0)
    }

    /// The ticket with this id, whole, if the caller may see it (unaudited,
    /// and a missing one is not reported: the id came from a mail).
    async fn ticket_by_id(&self, call: &Call, id: &str) -> Result<Option<Stored<Ticket>>, Status> {
        let query = Query {
            filters: vec![Filter::Eq("id", Arg::Text(id.to_owned()))],
            ..Default::default()
        };
        let page = Page::parse(1, "", "thread")?;
        Ok(self
            .tickets
            .query(call, &query, &page)
            .await?
            .0
            .into_iter()
            .next())
    }

    /// Whether the ticket's requester has the address keyed `sender_key`.
    fn asked_by(&self, ticket: &Stored<Ticket>, sender_key: &str) -> bool {
        ticket
            .message
            .requester
            .as_ref()
            .filter(|r| !r.email.is_empty())
            .is_some_and(|r| self.tickets.store().lookup_key(Lookup::Email, &r.email) == sender_key)
    }

    /// The sender's own earlier copy of this mail (same Message-ID, same
    /// sender, a ticket of the mail's tenant), if any: a gateway's retry.
    /// Someone else's mail with the same id is no copy: it is theirs.
    async fn earlier_copy(
        &self,
        call: &Call,
        message_id: &str,
        tenant_id: &str,
        sender_key: &str,
    ) -> Result<Option<(Stored<Ticket>, Stored<TicketMessage>)>, Status> {
        for message in self.messages_with_id(call, message_id).await? {
            if message.message.kind != ticket_message::Kind::Requester as i32 {
                continue;
            }
            let Some(ticket) = self.ticket_by_id(call, &message.parent_id).await? else {
                continue;
            };
            let joinable = tenant_id.is_empty() || ticket.tenant_id == tenant_id;
            if joinable && self.asked_by(&ticket, sender_key) {
                return Ok(Some((ticket, message)));
            }
        }
        Ok(None)
    }

    /// Where a mail goes, from the tickets it names: by its headers (the
    /// newest reference first), then by a ticket reference in its subject.
    /// The first ticket of the sender's own decides (joined if open, else
    /// a new ticket linked to it); a ticket of someone else is only linked
    /// to. A ticket of another tenant than the mail's is neither.
    async fn thread_of(
        &self,
        call: &Call,
        references: &[String],
        subject: &str,
        tenant_id: &str,
        sender_key: &str,
    ) -> Result<Thread, Status> {
        let mut named: Vec<String> = Vec::new();
        for id in references.iter().rev().take(MAX_REFERENCES) {
            for message in self.messages_with_id(call, id).await? {
                if !named.contains(&message.parent_id) {
                    named.push(message.parent_id);
                }
            }
        }
        if let Some(id) = TICKET_REF.captures(subject).and_then(|c| c.get(1))
            && !named.iter().any(|n| n == id.as_str())
        {
            named.push(id.as_str().to_owned());
        }
        let mut related = None;
        for id in named {
            let Some(ticket) = self.ticket_by_id(call, &id).await? else {
                continue;
            };
            // A mail through a tenant's address joins only that tenant's
            // tickets; one to the support address (where replies to agents
            // arrive) joins its sender's own, whoever holds them. A link
            // never crosses from one holder to another.
            let joinable = tenant_id.is_empty() || ticket.tenant_id == tenant_id;
            let linkable = ticket.tenant_id == tenant_id;
            if !joinable {
                tracing::debug!(ticket = %ticket.message.name, "mail names another tenant's ticket: new ticket");
                continue;
            }
            if self.asked_by(&ticket, sender_key) {
                if ticket.message.state == State::Closed as i32 {
                    let closed = linkable.then(|| ticket.message.name.clone());
                    return Ok(Thread::New {
                        related: closed.or(related),
                    });
                }
                return Ok(Thread::Join(Box::new(ticket)));
            }
            tracing::debug!(ticket = %ticket.message.name, "mail from another sender names this ticket: new ticket");
            if linkable && related.is_none() {
                related = Some(ticket.message.name.clone());
            }
        }
        Ok(Thread::New { related })
    }

    /// The requester's text as a message, as it is stored: cut and cleaned
    /// to what a body may hold, then redacted by the kit. Nothing leaves
    /// here unredacted: a value that still does not fit is an error.
    fn inbound_message(&self, text: &str) -> Result<(TicketMessage, Vec<&'static str>), Status> {
        let text = if text.trim().is_empty() {
            "(no text)"
        } else {
            text
        };
        let mut keep = MAX_BODY;
        for _ in 0..FIT_ATTEMPTS {
            let mut message = TicketMessage {
                kind: ticket_message::Kind::Requester as i32,
                body: fit(text, keep, true),
                ..Default::default()
            };
            let mut v = Violations::new();
            let redacted =
                self.messages
                    .prepare(&mut message, "raw_message", Sensitive::Redact, &mut v)?;
            let over = message.body.chars().count().saturating_sub(MAX_BODY);
            if v.is_empty() && over == 0 {
                return Ok((message, redacted));
            }
            keep = shorter(keep, over);
        }
        Err(ApiError::internal(std::io::Error::other("an inbound body could not be fitted")).into())
    }

    /// A new email ticket from a mail's subject and sender, as it is
    /// stored: cleaned, then redacted by the kit. A display name holding
    /// sensitive data is dropped whole (its halves alone may pass the
    /// guard), and so is one that is no name: the address alone will do.
    fn inbound_ticket(
        &self,
        subject: &str,
        display_name: &str,
        sender: &str,
        tenant_id: &str,
    ) -> Result<(Ticket, Vec<&'static str>), Status> {
        let display = fit(display_name, MAX_NAME * 2, false);
        let name_kinds: Vec<_> = custodian_privacy::scan(&display)
            .into_iter()
            .map(|f| f.kind)
            .collect();
        let mut redacted: Vec<&'static str> = name_kinds.iter().map(|k| k.as_str()).collect();
        let mut name = if name_kinds.is_empty() {
            person_name(&display)
        } else {
            None
        };
        let subject = if subject.trim().is_empty() {
            "(no subject)"
        } else {
            subject
        };
        let mut keep = MAX_SUBJECT;
        for _ in 0..FIT_ATTEMPTS {
            let mut ticket = Ticket {
                channel: Channel::Email as i32,
                // A mail through a tenant's address is about the Platform;
                // anyone else's is an inquiry.
                kind: if tenant_id.is_empty() {
                    Kind::Inquiry as i32
                } else {
                    Kind::Troubleshooting as i32
                },
                subject: fit(subject, keep, false),
                requester: Some(Requester {
                    person_name: name.clone(),
                    email: sender.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut v = Violations::new();
            let kinds =
                self.tickets
                    .prepare(&mut ticket, "raw_message", Sensitive::Redact, &mut v)?;
            let over = ticket.subject.chars().count().saturating_sub(MAX_SUBJECT);
            if v.is_empty() && over == 0 {
                redacted.extend(kinds);
                return Ok((ticket, redacted));
            }
            if !v.is_empty() && name.is_some() {
                name = None;
            } else {
                keep = shorter(keep, over);
            }
        }
        Err(ApiError::internal(std::io::Error::other(
            "an inbound subject could not be fitted",
        ))
        .into())
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
        let sender_key = self.tickets.store().lookup_key(Lookup::Email, &sender);
        let message_id = mail
            .message_id
            .clone()
            .filter(|id| !id.is_empty() && id.len() <= MAX_MESSAGE_ID);

        // The same mail twice (a gateway retry) is stored once.
        if let Some(id) = &message_id
            && let Some((ticket, existing)) =
                self.earlier_copy(call, id, tenant_id, &sender_key).await?
        {
            return Ok(IngestEmailResponse {
                ticket: Some(self.shown(call, &ticket)?.message),
                message: Some(self.messages.shown(call, &existing)?.message),
                new_ticket: false,
                duplicate: true,
            });
        }

        let (mut message, mut redacted) = self.inbound_message(&mail.text)?;
        message.channel = Channel::Email as i32;
        if let Some(id) = &message_id {
            message.thread_key = self.thread_key(id);
            // Kept in clear only when a reply can carry it and it holds
            // nothing sensitive; the keyed index threads and finds retries
            // all the same.
            let kinds = custodian_privacy::scan(id);
            if kinds.is_empty() && is_usable_message_id(id) {
                message.email_message_id = id.clone();
            }
            redacted.extend(kinds.iter().map(|f| f.kind.as_str()));
        }

        let mut references = mail.references.clone();
        references.extend(mail.in_reply_to.iter().cloned());
        let thread = self
            .thread_of(call, &references, &mail.subject, tenant_id, &sender_key)
            .await?;
        let related = match thread {
            Thread::Join(ticket) => {
                redacted.sort_unstable();
                redacted.dedup();
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
            Thread::New { related } => related,
        };

        let display_name = mail.from.as_ref().map_or("", |f| f.name.as_str());
        let (mut ticket, kinds) =
            self.inbound_ticket(&mail.subject, display_name, &sender, tenant_id)?;
        ticket.related_ticket = related.unwrap_or_default();
        redacted.extend(kinds);
        redacted.sort_unstable();
        redacted.dedup();
        message.redacted_kinds = redacted.iter().map(|k| (*k).to_owned()).collect();
        // The mail (its id, its sender, its tenant) keys the new ticket, so
        // a gateway's retry after a failure between the ticket and its
        // message completes the ticket instead of opening a second one,
        // and someone else's mail with the same id opens its own.
        let idempotency = message_id.as_ref().map(|id| {
            let key = self
                .tickets
                .store()
                .privacy()
                .vault
                .blind_index("ingest-email", &format!("{tenant_id}\n{sender}\n{id}"));
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

    /// The mail of an agent reply: to the requester, in the thread of the
    /// ticket's earlier mails (those with an id a header can carry; `reply`,
    /// the reply's own message when it is stored already, left out).
    async fn reply_mail(
        &self,
        call: &Call,
        ticket: &Stored<Ticket>,
        text: &str,
        message_id: &str,
        reply: Option<&str>,
    ) -> Result<OutgoingMail, Status> {
        let query = Query {
            parent_id: Some(ticket.id.clone()),
            ..Default::default()
        };
        let page = Page::parse(1000, "", "thread")?;
        let (thread, _) = self.messages.query(call, &query, &page).await?;
        let mut references: Vec<String> = thread
            .into_iter()
            .filter(|m| Some(m.id.as_str()) != reply)
            .map(|m| m.message.email_message_id)
            .filter(|id| is_usable_message_id(id))
            .collect();
        let in_reply_to = references.last().cloned();
        if references.len() > MAX_REFERENCES {
            references.drain(..references.len() - MAX_REFERENCES);
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
        Ok(OutgoingMail {
            from: Mailbox::new("Support", self.mail_from.clone()),
            to: vec![Mailbox::new(name, requester.email)],
            subject: format!(
                "Re: {} {}",
                ticket.message.subject,
                subject_reference(&ticket.id)
            ),
            text: text.to_owned(),
            message_id: message_id.to_owned(),
            in_reply_to,
            references,
        })
    }

    /// An agent reply on an email ticket: built as a mail first (a reply
    /// that cannot be mailed is refused, nothing stored), stored with its
    /// own Message-ID, mailed to the requester, marked sent, and only then
    /// counted on the ticket (first response, opening). If the mail cannot
    /// be handed over, the reply is taken back and the call is UNAVAILABLE:
    /// neither the thread nor the SLA shows a reply the requester did not
    /// get. Once stored, the reply is mailed (or taken back) whether or not
    /// the caller still waits. A retry with the same `request_id` mails it
    /// only if no earlier call did or is doing so: one still under way is
    /// waited for (UNAVAILABLE until it ends), one whose process stopped
    /// before it was mailed is mailed by the retry.
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
        let mail = self
            .reply_mail(call, ticket, &message.body, &message_id, None)
            .await?;
        if let Err(err) = mail.to_message() {
            // The error names the part (the recipient's address, ...), no
            // value.
            return Err(ApiError::FailedPrecondition(format!(
                "the reply cannot be mailed ({err}); it was not added"
            ))
            .into());
        }
        let (stored, replayed) = self
            .store_message(call, ticket, message, idempotency)
            .await?;
        let mail = if replayed {
            if stored.message.send_time.is_some() {
                // An earlier call mailed it; counting it may be what it
                // could not finish.
                self.follow_up(call, ticket, stored.message.kind).await?;
                return Ok(stored);
            }
            let age = self.now().saturating_sub(stored.create_time);
            if age < MAILING_LEASE_MICROS {
                return Err(ApiError::Unavailable(
                    "an earlier call with this request_id is still mailing the reply; retry later"
                        .to_owned(),
                )
                .into());
            }
            // Stored by an earlier call that stopped before mailing it.
            self.reply_mail(
                call,
                ticket,
                &stored.message.body,
                &stored.message.email_message_id,
                Some(&stored.id),
            )
            .await?
        } else {
            mail
        };
        // A caller that stops waiting (its deadline) drops this call; the
        // mail is sent or the reply taken back all the same, so no reply is
        // left stored and not mailed.
        let (api, call, ticket) = (self.clone(), call.clone(), ticket.clone());
        tokio::spawn(
            async move { api.deliver(&call, &ticket, stored, mail).await }
                .instrument(tracing::Span::current()),
        )
        .await
        .map_err(|_| ApiError::internal(std::io::Error::other("a reply's delivery stopped")))?
    }

    /// Mails a stored reply, marks it sent and counts it on its ticket; or,
    /// if the mail cannot be handed over, takes it back (UNAVAILABLE).
    async fn deliver(
        &self,
        call: &Call,
        ticket: &Stored<Ticket>,
        stored: Stored<TicketMessage>,
        mail: OutgoingMail,
    ) -> Result<Stored<TicketMessage>, Status> {
        if let Err(err) = self.mailer.send(&mail).await {
            tracing::warn!(error = %err, ticket = %ticket.message.name, "reply not mailed; taking it back");
            let current = self
                .messages
                .find(call, &stored.message.name, "message")
                .await?;
            // A retry after the lease may have mailed it meanwhile.
            if current.message.send_time.is_some() {
                return Ok(current);
            }
            self.messages
                .delete(call, &stored.message.name, "message")
                .await?;
            return Err(Status::unavailable(
                "the reply could not be mailed; it was not added, retry later",
            ));
        }
        let now = self.now();
        let sent = self
            .messages
            .update(
                call,
                &stored.message.name,
                "message",
                "message",
                |_, m| {
                    m.send_time = Some(to_timestamp(now));
                    Ok(())
                },
                |_, _, _| {},
            )
            .await?;
        self.follow_up(call, ticket, sent.message.kind).await?;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_drops_controls_and_keeps_lines_in_a_body() {
        assert_eq!(fit("a\u{7}b\0c\r\n\td", 100, true), "abc\r\n\td");
        assert_eq!(fit("a\u{2028}b", 100, true), "a\nb");
        assert_eq!(
            fit("a\nb\u{2028}c\u{2029}d\te\u{7}f", 100, false),
            "a b c d ef"
        );
    }

    #[test]
    fn fit_cuts_at_the_limit_and_drops_a_number_cut_in_half() {
        assert_eq!(fit("abcdef", 3, true), "abc");
        assert_eq!(fit("abc", 3, true), "abc");
        assert_eq!(fit("card 4111 1111 1111 1111", 14, true), "card");
        // Not cut: a number at the end stays.
        assert_eq!(fit("order 42", 8, true), "order 42");
    }

    #[test]
    fn a_display_name_splits_at_its_last_word() {
        let name = person_name("\"Ada King Lovelace\"").unwrap();
        assert_eq!(name.given_name, "Ada King");
        assert_eq!(name.family_name, "Lovelace");
        assert_eq!(person_name("Ada").unwrap().family_name, "");
        assert!(person_name("ada@example.com").is_none());
        assert!(person_name("  ").is_none());
    }
}
