//! The three person-record services (authorized users, contacts,
//! evaluation sign-ups). Each handler is a few lines over the kit's record
//! store; what is left here is identity's own rules: who counts as a
//! person record (a name, and an email or a phone), and a user's defaults.

use custodian_kit::{Call, Filter, Idempotency, New, Query, Records, Sensitive, Shown, respond};
use custodian_privacy::normalize;
use custodian_proto::{
    identity::v1::{
        Contact, CreateContactRequest, CreateEvaluationSignupRequest, CreateUserRequest,
        DeleteContactRequest, DeleteEvaluationSignupRequest, DeleteUserRequest, EvaluationSignup,
        GetContactRequest, GetEvaluationSignupRequest, GetUserRequest, ListContactsRequest,
        ListContactsResponse, ListEvaluationSignupsRequest, ListEvaluationSignupsResponse,
        ListUsersRequest, ListUsersResponse, UpdateContactRequest, UpdateEvaluationSignupRequest,
        UpdateUserRequest, User, contact_service_server::ContactService,
        evaluation_signup_service_server::EvaluationSignupService, user,
        user_service_server::UserService,
    },
    privacy::v1::Lookup,
};
use custodian_runtime::{ApiError, error::Violations, paging::Page};
use prost_reflect::ReflectMessage;
use tonic::{Request, Response, Status};

/// Serves users, contacts and evaluation sign-ups.
#[derive(Clone)]
pub struct People {
    users: Records<User>,
    contacts: Records<Contact>,
    signups: Records<EvaluationSignup>,
}

impl People {
    pub fn new(
        users: Records<User>,
        contacts: Records<Contact>,
        signups: Records<EvaluationSignup>,
    ) -> Self {
        Self {
            users,
            contacts,
            signups,
        }
    }
}

fn name_required(
    name: Option<&custodian_proto::common::v1::PersonName>,
    prefix: &str,
    v: &mut Violations,
) {
    if name.is_none_or(|n| n.given_name.is_empty() && n.family_name.is_empty()) {
        v.add(
            format!("{prefix}.person_name"),
            "a given or family name is required",
        );
    }
}

/// An authorized user has a name and an email.
pub fn check_user(u: &User, prefix: &str, v: &mut Violations) {
    name_required(u.person_name.as_ref(), prefix, v);
    if u.email.is_empty() {
        v.add(format!("{prefix}.email"), "is required");
    }
}

/// A contact has a name and an email or a phone.
pub fn check_contact(c: &Contact, prefix: &str, v: &mut Violations) {
    name_required(c.person_name.as_ref(), prefix, v);
    if c.email.is_empty() && c.phone.is_empty() {
        v.add(
            format!("{prefix}.email"),
            "an email or a phone number is required",
        );
    }
}

/// A sign-up has a name and an email.
pub fn check_signup(s: &EvaluationSignup, prefix: &str, v: &mut Violations) {
    name_required(s.person_name.as_ref(), prefix, v);
    if s.email.is_empty() {
        v.add(format!("{prefix}.email"), "is required");
    }
}

/// How one kind of person record differs from the others.
trait Person: prost::Message + ReflectMessage + Default + Clone + 'static {
    /// The request field holding the record: the prefix of violations.
    const FIELD: &'static str;
    /// Held for a tenant (named by a `parent`), or for the company.
    const TENANT_SCOPED: bool;
    fn check(&self, prefix: &str, v: &mut Violations);
    fn name(&self) -> &str;
    /// Fills what a new record defaults to.
    fn defaults(&mut self) {}
}

impl Person for User {
    const FIELD: &'static str = "user";
    const TENANT_SCOPED: bool = true;

    fn check(&self, prefix: &str, v: &mut Violations) {
        check_user(self, prefix, v);
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn defaults(&mut self) {
        if self.role == 0 {
            self.role = user::Role::Member as i32;
        }
        if self.state == 0 {
            self.state = user::State::Active as i32;
        }
    }
}

impl Person for Contact {
    const FIELD: &'static str = "contact";
    const TENANT_SCOPED: bool = true;

    fn check(&self, prefix: &str, v: &mut Violations) {
        check_contact(self, prefix, v);
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Person for EvaluationSignup {
    const FIELD: &'static str = "evaluation_signup";
    const TENANT_SCOPED: bool = false;

    fn check(&self, prefix: &str, v: &mut Violations) {
        check_signup(self, prefix, v);
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// The tenant id of a `parent` ("tenants/{tenant}"; its form is checked by
/// the stack), or "" for the company's records.
fn parent_tenant<M: Person>(parent: &str) -> Result<String, ApiError> {
    if !M::TENANT_SCOPED {
        return Ok(String::new());
    }
    custodian_kit::pattern::tenant_id(parent)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid("parent", "must be a tenant name: tenants/{tenant}"))
}

async fn create<M: Person>(
    records: &Records<M>,
    call: &Call,
    parent: &str,
    mut message: M,
    idempotency: Option<Idempotency>,
) -> Result<Response<M>, Status> {
    let tenant_id = parent_tenant::<M>(parent)?;
    message.defaults();
    let mut v = Violations::new();
    records.prepare(&mut message, M::FIELD, Sensitive::Refuse, &mut v)?;
    message.check(M::FIELD, &mut v);
    v.finish()?;
    let stored = records
        .create(
            call,
            New {
                tenant_id,
                parent_id: String::new(),
                message,
                idempotency,
            },
        )
        .await?;
    let Shown { message, withheld } = records.shown(call, &stored)?;
    Ok(respond(message, &withheld))
}

async fn get<M: Person>(
    records: &Records<M>,
    call: &Call,
    name: &str,
) -> Result<Response<M>, Status> {
    let Shown { message, withheld } = records.read(call, name, "name").await?;
    Ok(respond(message, &withheld))
}

/// One page of a tenant's records (or the company's), optionally by email.
async fn list<M: Person>(
    records: &Records<M>,
    call: &Call,
    parent: &str,
    page_size: i32,
    page_token: &str,
    email: &str,
) -> Result<(Vec<M>, String, Vec<String>), Status> {
    let tenant_id = parent_tenant::<M>(parent)?;
    let email = if email.trim().is_empty() {
        None
    } else {
        Some(normalize::email(email).map_err(|e| ApiError::invalid("email", e))?)
    };
    // The scope binds the token to this parent and filter; it is hashed,
    // never stored in the token, since the filter is personal.
    let page = Page::parse(
        page_size,
        page_token,
        &format!(
            "{}|{tenant_id}|{}",
            records.spec().full_name(),
            email.as_deref().unwrap_or("")
        ),
    )?;
    if M::TENANT_SCOPED {
        // An unknown (or invisible) parent is NOT_FOUND, not an empty list.
        let parent_name = format!("tenants/{tenant_id}");
        if !call.sees_tenant(&tenant_id)
            || !crate::tenants::exists(records.store(), &tenant_id).await?
        {
            return Err(records.not_found(call, &parent_name).await);
        }
    }
    let query = Query {
        tenant: Some(tenant_id),
        parent_id: None,
        filters: email
            .map(|e| Filter::Lookup(Lookup::Email, e))
            .into_iter()
            .collect(),
    };
    let (shown, next, withheld) = records.list(call, &query, &page).await?;
    Ok((
        shown.into_iter().map(|s| s.message).collect(),
        next,
        withheld,
    ))
}

async fn update<M: Person>(
    records: &Records<M>,
    call: &Call,
    patch: M,
    mask: Option<prost_types::FieldMask>,
) -> Result<Response<M>, Status> {
    let field = format!("{}.name", M::FIELD);
    records.parse(patch.name(), &field)?;
    let paths = records.mask(mask)?;
    let stored = records
        .update(
            call,
            patch.name(),
            &field,
            M::FIELD,
            |_, after| records.apply_mask(after, &patch, &paths),
            |after, prefix, v| after.check(prefix, v),
        )
        .await?;
    let Shown { message, withheld } = records.shown(call, &stored)?;
    Ok(respond(message, &withheld))
}

#[tonic::async_trait]
impl UserService for People {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idem = Idempotency::of("CreateUser", &req.parent, &request_id, &req)?;
        create(
            &self.users,
            &call,
            &req.parent,
            req.user.unwrap_or_default(),
            idem,
        )
        .await
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let call = Call::of(&request)?;
        get(&self.users, &call, &request.get_ref().name).await
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let (users, next_page_token, withheld) = list(
            &self.users,
            &call,
            &req.parent,
            req.page_size,
            &req.page_token,
            &req.email,
        )
        .await?;
        Ok(respond(
            ListUsersResponse {
                users,
                next_page_token,
            },
            &withheld,
        ))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        update(
            &self.users,
            &call,
            req.user.unwrap_or_default(),
            req.update_mask,
        )
        .await
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        let call = Call::of(&request)?;
        self.users
            .delete(&call, &request.get_ref().name, "name")
            .await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl ContactService for People {
    async fn create_contact(
        &self,
        request: Request<CreateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idem = Idempotency::of("CreateContact", &req.parent, &request_id, &req)?;
        create(
            &self.contacts,
            &call,
            &req.parent,
            req.contact.unwrap_or_default(),
            idem,
        )
        .await
    }

    async fn get_contact(
        &self,
        request: Request<GetContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let call = Call::of(&request)?;
        get(&self.contacts, &call, &request.get_ref().name).await
    }

    async fn list_contacts(
        &self,
        request: Request<ListContactsRequest>,
    ) -> Result<Response<ListContactsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let (contacts, next_page_token, withheld) = list(
            &self.contacts,
            &call,
            &req.parent,
            req.page_size,
            &req.page_token,
            &req.email,
        )
        .await?;
        Ok(respond(
            ListContactsResponse {
                contacts,
                next_page_token,
            },
            &withheld,
        ))
    }

    async fn update_contact(
        &self,
        request: Request<UpdateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        update(
            &self.contacts,
            &call,
            req.contact.unwrap_or_default(),
            req.update_mask,
        )
        .await
    }

    async fn delete_contact(
        &self,
        request: Request<DeleteContactRequest>,
    ) -> Result<Response<()>, Status> {
        let call = Call::of(&request)?;
        self.contacts
            .delete(&call, &request.get_ref().name, "name")
            .await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl EvaluationSignupService for People {
    async fn create_evaluation_signup(
        &self,
        request: Request<CreateEvaluationSignupRequest>,
    ) -> Result<Response<EvaluationSignup>, Status> {
        let call = Call::of(&request)?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idem = Idempotency::of("CreateEvaluationSignup", "", &request_id, &req)?;
        create(
            &self.signups,
            &call,
            "",
            req.evaluation_signup.unwrap_or_default(),
            idem,
        )
        .await
    }

    async fn get_evaluation_signup(
        &self,
        request: Request<GetEvaluationSignupRequest>,
    ) -> Result<Response<EvaluationSignup>, Status> {
        let call = Call::of(&request)?;
        get(&self.signups, &call, &request.get_ref().name).await
    }

    async fn list_evaluation_signups(
        &self,
        request: Request<ListEvaluationSignupsRequest>,
    ) -> Result<Response<ListEvaluationSignupsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let (evaluation_signups, next_page_token, withheld) = list(
            &self.signups,
            &call,
            "",
            req.page_size,
            &req.page_token,
            &req.email,
        )
        .await?;
        Ok(respond(
            ListEvaluationSignupsResponse {
                evaluation_signups,
                next_page_token,
            },
            &withheld,
        ))
    }

    async fn update_evaluation_signup(
        &self,
        request: Request<UpdateEvaluationSignupRequest>,
    ) -> Result<Response<EvaluationSignup>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        update(
            &self.signups,
            &call,
            req.evaluation_signup.unwrap_or_default(),
            req.update_mask,
        )
        .await
    }

    async fn delete_evaluation_signup(
        &self,
        request: Request<DeleteEvaluationSignupRequest>,
    ) -> Result<Response<()>, Status> {
        let call = Call::of(&request)?;
        self.signups
            .delete(&call, &request.get_ref().name, "name")
            .await?;
        Ok(Response::new(()))
    }
}
