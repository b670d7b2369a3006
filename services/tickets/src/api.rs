//! `custodian.tickets.v1.TicketService`. The stack has already checked the
//! caller, the purpose and every value's form; the kit stores, seals, cuts
//! down and audits. What is left here is what only tickets knows: the
//! states and their transitions, the SLA clocks, the link to identity, and
//! the email channel.

use std::sync::Arc;

use custodian_kit::{
    Arg, Call, Filter, Idempotency, New, Query, Records, Sensitive, Shown, Stored, peers::Peers,
    respond,
};
use custodian_mail::Mailer;
use custodian_privacy::normalize;
use custodian_proto::{
    identity::v1::{
        GetTenantRequest, GetUserRequest, tenant_service_client::TenantServiceClient,
        user_service_client::UserServiceClient,
    },
    privacy::v1::Lookup,
    tickets::v1::{
        AddMessageRequest, CreateTicketRequest, DeleteTicketRequest, GetMessageRequest,
        GetTicketRequest, IngestEmailRequest, IngestEmailResponse, ListMessagesRequest,
        ListMessagesResponse, ListRequesterTicketsRequest, ListRequesterTicketsResponse,
        ListTicketsRequest, ListTicketsResponse, Requester, Ticket, TicketMessage,
        UpdateTicketRequest, list_requester_tickets_request,
        ticket::{Channel, Kind, Priority, State},
        ticket_message,
        ticket_service_server::TicketService,
    },
};
use custodian_runtime::{ApiError, error::Violations, paging::Page, time::to_timestamp};
use tonic::{Request, Response, Status};

use crate::sla::{self, SlaPolicy};

/// The handlers, over the kit's records.
#[derive(Clone)]
pub struct Api {
    pub(crate) tickets: Records<Ticket>,
    pub(crate) messages: Records<TicketMessage>,
    pub(crate) sla: Arc<SlaPolicy>,
    pub(crate) peers: Peers,
    pub(crate) mailer: Arc<dyn Mailer>,
    pub(crate) mail_from: String,
}

/// A requester is someone support can answer: a name and an email or a
/// phone, or an authorized user (whose record supplies the rest).
pub fn check_ticket(t: &Ticket, prefix: &str, v: &mut Violations) {
    let requester = t.requester.clone().unwrap_or_default();
    let named = requester
        .person_name
        .as_ref()
        .is_some_and(|n| !n.given_name.is_empty() || !n.family_name.is_empty());
    if requester.user.is_empty() {
        if !named {
            v.add(
                format!("{prefix}.requester.person_name"),
                "a given or family name is required (or the requester's user)",
            );
        }
        if requester.email.is_empty() && requester.phone.is_empty() {
            v.add(
                format!("{prefix}.requester.email"),
                "an email or a phone number is required (or the requester's user)",
            );
        }
    }
    if t.channel == Channel::Unspecified as i32 {
        v.add(format!("{prefix}.channel"), "is required");
    }
    if t.kind == Kind::Unspecified as i32 {
        v.add(format!("{prefix}.kind"), "is required");
    }
}

/// Whether a ticket may move from one state to another. Reopening a solved
/// ticket is allowed; nothing follows closed; nothing goes back to new.
pub fn may_move(from: State, to: State) -> bool {
    use State::*;
    from == to
        || matches!(
            (from, to),
            (New, Open | Pending | Solved | Closed)
                | (Open, Pending | Solved | Closed)
                | (Pending, Open | Solved | Closed)
                | (Solved, Open | Closed)
        )
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Unspecified => "unspecified",
        State::New => "new",
        State::Open => "open",
        State::Pending => "pending",
        State::Solved => "solved",
        State::Closed => "closed",
    }
}

/// Moves a ticket to `to` at `now`: the SLA clocks and the solve and close
/// times follow.
pub fn transition(ticket: &mut Ticket, to: State, now: i64) -> Result<(), ApiError> {
    let from = State::try_from(ticket.state).unwrap_or(State::Unspecified);
    if to == State::Unspecified {
        return Err(ApiError::invalid("ticket.state", "is required"));
    }
    if !may_move(from, to) {
        return Err(ApiError::FailedPrecondition(format!(
            "{} cannot move from {} to {}",
            ticket.name,
            state_name(from),
            state_name(to)
        )));
    }
    if from == to {
        return Ok(());
    }
    let sla = ticket.sla.get_or_insert_default();
    sla::on_state(sla, from, to, now);
    match to {
        State::Solved => ticket.solve_time = Some(to_timestamp(now)),
        State::Open => ticket.solve_time = None,
        State::Closed => {
            if ticket.solve_time.is_none() {
                ticket.solve_time = Some(to_timestamp(now));
            }
            // Retention is counted from here.
            ticket.close_time = Some(to_timestamp(now));
        }
        _ => {}
    }
    ticket.state = to as i32;
    Ok(())
}

fn closed(ticket: &Stored<Ticket>) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "{} is closed; nothing changes any more",
        ticket.message.name
    ))
}

/// What a call to identity's answer means here.
fn from_identity(status: Status, field: &str, what: &str) -> ApiError {
    match status.code() {
        tonic::Code::NotFound | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
            ApiError::invalid(field, format!("is not {what}"))
        }
        _ => ApiError::Unavailable(
            "identity could not be reached to check the requester; nothing was stored".to_owned(),
        ),
    }
}

impl Api {
    pub fn new(
        tickets: Records<Ticket>,
        messages: Records<TicketMessage>,
        sla: Arc<SlaPolicy>,
        peers: Peers,
        mailer: Arc<dyn Mailer>,
        mail_from: String,
    ) -> Self {
        Self {
            tickets,
            messages,
            sla,
            peers,
            mailer,
            mail_from,
        }
    }

    pub(crate) fn now(&self) -> i64 {
        self.tickets.store().now()
    }

    /// The breach flags as of now.
    pub(crate) fn flagged(&self, mut ticket: Ticket) -> Ticket {
        let state = State::try_from(ticket.state).unwrap_or(State::Unspecified);
        let solved = sla::at(&ticket.solve_time);
        if let Some(s) = ticket.sla.as_mut() {
            sla::flag(s, state, solved, self.now());
        }
        ticket
    }

    pub(crate) fn shown(
        &self,
        call: &Call,
        stored: &Stored<Ticket>,
    ) -> Result<Shown<Ticket>, ApiError> {
        let mut shown = self.tickets.shown(call, stored)?;
        shown.message = self.flagged(shown.message);
        Ok(shown)
    }

    /// Checks with identity that the tenant exists and the caller may see
    /// it (same purpose, same tenant limit, same deadline as the caller).
    async fn check_tenant(&self, call: &Call, tenant_id: &str) -> Result<(), ApiError> {
        if tenant_id.is_empty() {
            return Ok(());
        }
        let channel = self
            .peers
            .forward(call, "identity")
            .map_err(|s| from_identity(s, "ticket.tenant", "a tenant"))?;
        TenantServiceClient::new(channel)
            .get_tenant(GetTenantRequest {
                name: format!("tenants/{tenant_id}"),
            })
            .await
            .map_err(|s| from_identity(s, "ticket.tenant", "a tenant the caller may see"))?;
        Ok(())
    }

    /// Checks a requester's user with identity, for the caller, and fills
    /// what the requester lacks from the user's record as the caller may
    /// see it.
    async fn check_user(
        &self,
        call: &Call,
        tenant_id: &str,
        requester: &mut Requester,
    ) -> Result<(), ApiError> {
        if requester.user.is_empty() {
            return Ok(());
        }
        let user_tenant = requester
            .user
            .strip_prefix("tenants/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        if user_tenant != tenant_id {
            return Err(ApiError::invalid(
                "ticket.requester.user",
                "must be an authorized user of the ticket's tenant",
            ));
        }
        let channel = self
            .peers
            .forward(call, "identity")
            .map_err(|s| from_identity(s, "ticket.requester.user", "an authorized user"))?;
        let user = UserServiceClient::new(channel)
            .get_user(GetUserRequest {
                name: requester.user.clone(),
            })
            .await
            .map_err(|s| {
                from_identity(
                    s,
                    "ticket.requester.user",
                    "an authorized user the caller may see",
                )
            })?
            .into_inner();
        if requester
            .person_name
            .as_ref()
            .is_none_or(|n| n.given_name.is_empty() && n.family_name.is_empty())
        {
            requester.person_name = user.person_name;
        }
        if requester.email.is_empty() && requester.phone.is_empty() {
            requester.email = user.email;
            requester.phone = user.phone;
        }
        Ok(())
    }

    /// Creates a ticket (prepared and checked) and, if given, its first
    /// message; a retry with the same key creates neither again.
    pub(crate) async fn open(
        &self,
        call: &Call,
        mut ticket: Ticket,
        tenant_id: String,
        first: Option<TicketMessage>,
        idempotency: Option<Idempotency>,
    ) -> Result<(Stored<Ticket>, Option<Stored<TicketMessage>>, bool), Status> {
        let now = self.now();
        ticket.state = State::New as i32;
        if ticket.priority == Priority::Unspecified as i32 {
            ticket.priority = Priority::Normal as i32;
        }
        ticket.sla = Some(self.sla.start(ticket.priority, now));
        let (stored, replayed) = self
            .tickets
            .create_or_replay(
                call,
                New {
                    tenant_id,
                    parent_id: String::new(),
                    message: ticket,
                    idempotency,
                },
            )
            .await?;
        // The ticket and its first message are two writes: a retry (by
        // idempotency key) of a call whose second write failed completes it.
        let mut message = None;
        if let Some(first) = first {
            let has_thread = replayed && {
                let query = Query {
                    parent_id: Some(stored.id.clone()),
                    ..Default::default()
                };
                let page = Page::parse(1, "", "first")?;
                !self.messages.query(call, &query, &page).await?.0.is_empty()
            };
            if !has_thread {
                message = Some(self.add(call, &stored, first, None).await?);
            }
        }
        Ok((stored, message, replayed))
    }

    /// Stores a message on a ticket (prepared), then what it does to the
    /// ticket (see [`Self::follow_up`]).
    pub(crate) async fn add(
        &self,
        call: &Call,
        ticket: &Stored<Ticket>,
        message: TicketMessage,
        idempotency: Option<Idempotency>,
    ) -> Result<Stored<TicketMessage>, Status> {
        let (stored, replayed) = self
            .store_message(call, ticket, message, idempotency)
            .await?;
        if !replayed {
            self.follow_up(call, ticket, stored.message.kind).await?;
        }
        Ok(stored)
    }

    /// Stores a message on a ticket (prepared), and nothing else; true when
    /// it is an earlier call's (an idempotent retry).
    pub(crate) async fn store_message(
        &self,
        call: &Call,
        ticket: &Stored<Ticket>,
        mut message: TicketMessage,
        idempotency: Option<Idempotency>,
    ) -> Result<(Stored<TicketMessage>, bool), Status> {
        if ticket.message.state == State::Closed as i32 {
            return Err(closed(ticket).into());
        }
        if message.channel == Channel::Unspecified as i32 {
            message.channel = ticket.message.channel;
        }
        self.messages
            .create_or_replay(
                call,
                New {
                    tenant_id: ticket.tenant_id.clone(),
                    parent_id: ticket.id.clone(),
                    message,
                    idempotency,
                },
            )
            .await
    }

    /// What a new message of `kind` does to its ticket: a first agent reply
    /// stops the first-response clock and opens a new ticket; a requester's
    /// reply reopens a pending or solved one.
    pub(crate) async fn follow_up(
        &self,
        call: &Call,
        ticket: &Stored<Ticket>,
        kind: i32,
    ) -> Result<(), Status> {
        let kind =
            ticket_message::Kind::try_from(kind).unwrap_or(ticket_message::Kind::Unspecified);
        let now = self.now();
        let name = ticket.message.name.clone();
        let touches = match kind {
            ticket_message::Kind::AgentReply => {
                ticket
                    .message
                    .sla
                    .as_ref()
                    .is_none_or(|s| s.first_response_time.is_none())
                    || ticket.message.state == State::New as i32
            }
            ticket_message::Kind::Requester => {
                matches!(
                    State::try_from(ticket.message.state),
                    Ok(State::Pending | State::Solved)
                )
            }
            _ => false,
        };
        if touches {
            self.tickets
                .update(
                    call,
                    &name,
                    "parent",
                    "ticket",
                    |_, t| {
                        let state = State::try_from(t.state).unwrap_or(State::Unspecified);
                        match kind {
                            ticket_message::Kind::AgentReply => {
                                let sla = t.sla.get_or_insert_default();
                                if sla.first_response_time.is_none() {
                                    sla.first_response_time = Some(to_timestamp(now));
                                }
                                if state == State::New {
                                    transition(t, State::Open, now)?;
                                }
                            }
                            ticket_message::Kind::Requester
                                if matches!(state, State::Pending | State::Solved) =>
                            {
                                transition(t, State::Open, now)?;
                            }
                            _ => {}
                        }
                        Ok(())
                    },
                    |_, _, _| {},
                )
                .await?;
        }
        Ok(())
    }

    /// Checks a message's values; `field` prefixes the violations.
    fn prepare_message(
        &self,
        message: &mut TicketMessage,
        field: &str,
        v: &mut Violations,
    ) -> Result<(), ApiError> {
        self.messages
            .prepare(message, field, Sensitive::Refuse, v)?;
        if message.kind == ticket_message::Kind::Unspecified as i32 {
            v.add(format!("{field}.kind"), "is required");
        }
        if message.body.is_empty() {
            v.add(format!("{field}.body"), "is required");
        }
        Ok(())
    }
}

/// "tenants/{tenant}" (its form checked by the stack) to the tenant id.
fn tenant_of(name: &str) -> String {
    custodian_kit::pattern::tenant_id(name)
        .unwrap_or_default()
        .to_owned()
}

#[tonic::async_trait]
impl TicketService for Api {
    async fn create_ticket(
        &self,
        request: Request<CreateTicketRequest>,
    ) -> Result<Response<Ticket>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idempotency = Idempotency::of("CreateTicket", "", &request_id, &req)?;
        let mut ticket = req.ticket.unwrap_or_default();
        // A caller limited to a tenant opens tickets for its own tenant.
        let tenant_id = if ticket.tenant.is_empty() {
            call.tenant_limit().unwrap_or_default().to_owned()
        } else {
            tenant_of(&ticket.tenant)
        };
        let mut v = Violations::new();
        self.tickets
            .prepare(&mut ticket, "ticket", Sensitive::Refuse, &mut v)?;
        let first = if req.description.trim().is_empty() {
            None
        } else {
            let mut message = TicketMessage {
                kind: ticket_message::Kind::Requester as i32,
                body: req.description,
                ..Default::default()
            };
            let mut mv = Violations::new();
            self.prepare_message(&mut message, "description", &mut mv)?;
            // The description is one field of the request: its problems are
            // reported under that name.
            if !mv.is_empty() {
                v.add(
                    "description",
                    "is longer than allowed, or contains sensitive personal information or control characters",
                );
            }
            Some(message)
        };
        check_ticket(&ticket, "ticket", &mut v);
        v.finish()?;
        if !call.sees_tenant(&tenant_id) {
            return Err(self
                .tickets
                .not_found(&call, &format!("tenants/{tenant_id}"))
                .await);
        }
        self.check_tenant(&call, &tenant_id).await?;
        let mut requester = ticket.requester.take().unwrap_or_default();
        self.check_user(&call, &tenant_id, &mut requester).await?;
        ticket.requester = Some(requester);
        let (stored, _, _) = self
            .open(&call, ticket, tenant_id, first, idempotency)
            .await?;
        let Shown { message, withheld } = self.shown(&call, &stored)?;
        Ok(respond(message, &withheld))
    }

    async fn get_ticket(
        &self,
        request: Request<GetTicketRequest>,
    ) -> Result<Response<Ticket>, Status> {
        let call = Call::of(&request)?;
        let Shown { message, withheld } = self
            .tickets
            .read(&call, &request.get_ref().name, "name")
            .await?;
        Ok(respond(self.flagged(message), &withheld))
    }

    async fn list_tickets(
        &self,
        request: Request<ListTicketsRequest>,
    ) -> Result<Response<ListTicketsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let category = req.category.trim().to_ascii_lowercase();
        let start = sla::at(&req.create_time_start);
        let end = sla::at(&req.create_time_end);
        let scope = format!(
            "tickets|{}|{category}|{}|{}|{start:?}|{end:?}|{}",
            req.state, req.requester_user, req.tenant, req.sla_breached
        );
        let page = Page::parse(req.page_size, &req.page_token, &scope)?;
        let mut query = Query::default();
        if req.state != State::Unspecified as i32 {
            query
                .filters
                .push(Filter::Eq("state", Arg::Int(i64::from(req.state))));
        }
        if !category.is_empty() {
            query
                .filters
                .push(Filter::Eq("category", Arg::Text(category)));
        }
        if !req.requester_user.is_empty() {
            query
                .filters
                .push(Filter::Lookup(Lookup::User, req.requester_user));
        }
        if !req.tenant.is_empty() {
            query.tenant = Some(tenant_of(&req.tenant));
        }
        if let Some(start) = start {
            query
                .filters
                .push(Filter::AtLeast("create_time", Arg::Int(start)));
        }
        if let Some(end) = end {
            query
                .filters
                .push(Filter::Before("create_time", Arg::Int(end)));
        }
        if req.sla_breached {
            let now = self.now();
            query.filters.push(Filter::Sql(
                sla::BREACHED,
                vec![Arg::Int(now), Arg::Int(now)],
            ));
        }
        let (shown, next_page_token, withheld) = self.tickets.list(&call, &query, &page).await?;
        let tickets = shown.into_iter().map(|s| self.flagged(s.message)).collect();
        Ok(respond(
            ListTicketsResponse {
                tickets,
                next_page_token,
            },
            &withheld,
        ))
    }

    async fn list_requester_tickets(
        &self,
        request: Request<ListRequesterTicketsRequest>,
    ) -> Result<Response<ListRequesterTicketsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let filter = match req.requester {
            Some(list_requester_tickets_request::Requester::Email(email)) => Filter::Lookup(
                Lookup::Email,
                normalize::email(&email).map_err(|e| ApiError::invalid("email", e))?,
            ),
            Some(list_requester_tickets_request::Requester::Phone(phone)) => Filter::Lookup(
                Lookup::Phone,
                normalize::phone(&phone, None).map_err(|e| ApiError::invalid("phone", e))?,
            ),
            None => {
                return Err(
                    ApiError::invalid("requester", "an email or a phone is required").into(),
                );
            }
        };
        // Hashed into the token, never stored in it: the filter is personal.
        let scope = match &filter {
            Filter::Lookup(l, value) => format!("history|{}|{value}", *l as i32),
            _ => String::new(),
        };
        let page = Page::parse(req.page_size, &req.page_token, &scope)?;
        let query = Query {
            filters: vec![filter],
            ..Default::default()
        };
        let (shown, next_page_token, withheld) = self.tickets.list(&call, &query, &page).await?;
        let tickets = shown.into_iter().map(|s| self.flagged(s.message)).collect();
        Ok(respond(
            ListRequesterTicketsResponse {
                tickets,
                next_page_token,
            },
            &withheld,
        ))
    }

    async fn update_ticket(
        &self,
        request: Request<UpdateTicketRequest>,
    ) -> Result<Response<Ticket>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let mut patch = req.ticket.unwrap_or_default();
        let name = patch.name.clone();
        self.tickets.parse(&name, "ticket.name")?;
        let paths = self.tickets.mask(req.update_mask)?;
        let before = self.tickets.find(&call, &name, "ticket.name").await?;
        if before.message.state == State::Closed as i32 {
            return Err(closed(&before).into());
        }
        // A new link to a user is checked with identity before anything
        // changes; a whole new requester takes what it lacks from the user's
        // record, as on create.
        if paths
            .iter()
            .any(|p| p == "requester" || p == "requester.user")
        {
            let mut requester = patch.requester.clone().unwrap_or_default();
            if !requester.user.is_empty() {
                // The tenant was checked when the ticket was opened.
                self.check_user(&call, &before.tenant_id, &mut requester)
                    .await?;
                patch.requester = Some(requester);
            }
        }
        let now = self.now();
        let sla = self.sla.clone();
        let stored = self
            .tickets
            .update(
                &call,
                &name,
                "ticket.name",
                "ticket",
                |current, after| {
                    if current.message.state == State::Closed as i32 {
                        return Err(closed(current));
                    }
                    let old_priority = after.priority;
                    let old_state = after.state;
                    self.tickets.apply_mask(after, &patch, &paths)?;
                    if paths.iter().any(|p| p == "state") {
                        let to = State::try_from(after.state).unwrap_or(State::Unspecified);
                        after.state = old_state;
                        transition(after, to, now)?;
                    }
                    if after.priority == Priority::Unspecified as i32 {
                        after.priority = Priority::Normal as i32;
                    }
                    if after.priority != old_priority {
                        let created = current.create_time;
                        let s = after.sla.get_or_insert_default();
                        sla.reprioritise(s, old_priority, after.priority, created);
                    }
                    Ok(())
                },
                |after, prefix, v| {
                    check_ticket(after, prefix, v);
                    if let Some(user) = after.requester.as_ref().map(|r| r.user.as_str())
                        && !user.is_empty()
                        && !user.starts_with(&format!("tenants/{}/", before.tenant_id))
                    {
                        v.add(
                            format!("{prefix}.requester.user"),
                            "must be an authorized user of the ticket's tenant",
                        );
                    }
                },
            )
            .await?;
        let Shown { message, withheld } = self.shown(&call, &stored)?;
        Ok(respond(message, &withheld))
    }

    async fn delete_ticket(
        &self,
        request: Request<DeleteTicketRequest>,
    ) -> Result<Response<()>, Status> {
        let call = Call::of(&request)?;
        self.tickets
            .delete(&call, &request.get_ref().name, "name")
            .await?;
        Ok(Response::new(()))
    }

    async fn add_message(
        &self,
        request: Request<AddMessageRequest>,
    ) -> Result<Response<TicketMessage>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idempotency = Idempotency::of("AddMessage", &req.parent, &request_id, &req)?;
        let mut message = req.message.unwrap_or_default();
        let mut v = Violations::new();
        self.prepare_message(&mut message, "message", &mut v)?;
        v.finish()?;
        let ticket = self.tickets.find(&call, &req.parent, "parent").await?;
        if ticket.message.state == State::Closed as i32 {
            return Err(closed(&ticket).into());
        }
        let kind = ticket_message::Kind::try_from(message.kind)
            .unwrap_or(ticket_message::Kind::Unspecified);
        if kind != ticket_message::Kind::Requester {
            message.author = call.actor().to_owned();
        }
        let mailed = kind == ticket_message::Kind::AgentReply
            && ticket.message.channel == Channel::Email as i32
            && ticket
                .message
                .requester
                .as_ref()
                .is_some_and(|r| !r.email.is_empty());
        let stored = if mailed {
            self.reply_by_mail(&call, &ticket, message, idempotency)
                .await?
        } else {
            self.add(&call, &ticket, message, idempotency).await?
        };
        let Shown { message, withheld } = self.messages.shown(&call, &stored)?;
        Ok(respond(message, &withheld))
    }

    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<TicketMessage>, Status> {
        let call = Call::of(&request)?;
        let Shown { message, withheld } = self
            .messages
            .read(&call, &request.get_ref().name, "name")
            .await?;
        Ok(respond(message, &withheld))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let (messages, next_page_token, withheld) = self
            .messages
            .list_children(
                &call,
                &self.tickets,
                &req.parent,
                "parent",
                req.page_size,
                &req.page_token,
            )
            .await?;
        Ok(respond(
            ListMessagesResponse {
                messages,
                next_page_token,
            },
            &withheld,
        ))
    }

    async fn ingest_email(
        &self,
        request: Request<IngestEmailRequest>,
    ) -> Result<Response<IngestEmailResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        Ok(Response::new(
            self.ingest(&call, &req.raw_message, &tenant_of(&req.tenant))
                .await?,
        ))
    }
}
