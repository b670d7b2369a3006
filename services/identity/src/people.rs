//! The three person-record services, each a thin adapter from its proto
//! messages to [`crate::records`]: authorise, act, answer.

use custodian_privacy::Access;
use custodian_proto::identity::v1::{
    Contact, CreateContactRequest, CreateEvaluationSignupRequest, CreateUserRequest,
    DeleteContactRequest, DeleteEvaluationSignupRequest, DeleteUserRequest, EvaluationSignup,
    GetContactRequest, GetEvaluationSignupRequest, GetUserRequest, ListContactsRequest,
    ListContactsResponse, ListEvaluationSignupsRequest, ListEvaluationSignupsResponse,
    ListUsersRequest, ListUsersResponse, UpdateContactRequest, UpdateEvaluationSignupRequest,
    UpdateUserRequest, User, contact_service_server::ContactService,
    evaluation_signup_service_server::EvaluationSignupService, user_service_server::UserService,
};
use tonic::{Request, Response, Status};

use crate::{
    access::*,
    model::{Attrs, CONTACTS, PersonData, SIGNUPS, USERS},
    records::{self, idempotency, parent_tenant, request_hash, respond},
    store::Store,
};

/// Serves users, contacts and evaluation sign-ups from one store.
#[derive(Clone)]
pub struct People {
    store: Store,
}

impl People {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn authorize<T>(
        &self,
        request: &Request<T>,
        method: custodian_privacy::Method,
    ) -> Result<Access, Status> {
        self.store.privacy().authorize(request, method).await
    }

    /// Evaluation sign-ups are the company's own records: a caller limited
    /// to one tenant has no business with them.
    async fn authorize_company<T>(
        &self,
        request: &Request<T>,
        method: custodian_privacy::Method,
    ) -> Result<Access, Status> {
        let access = self.authorize(request, method).await?;
        if access.tenant_limit().is_some() {
            return Err(Status::permission_denied(
                "evaluation sign-ups are held by the company; a token limited to a tenant cannot use them",
            ));
        }
        Ok(access)
    }
}

fn user_attrs(user: &User) -> Attrs {
    Attrs {
        role: user.role,
        state: user.state,
    }
}

#[tonic::async_trait]
impl UserService for People {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let access = self.authorize(&request, CREATE_USER).await?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let tenant = parent_tenant(USERS, &req.parent)?;
        let idem = idempotency("CreateUser", &req.parent, &request_id, request_hash(&req))?;
        let user = req.user.unwrap_or_default();
        let (record, withheld) = records::create(
            &self.store,
            &access,
            USERS,
            &tenant,
            PersonData::from_user(&user),
            user_attrs(&user),
            idem,
        )
        .await?;
        Ok(respond(record.into_user(), &withheld))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let access = self.authorize(&request, GET_USER).await?;
        let (record, withheld) =
            records::get(&self.store, &access, USERS, &request.get_ref().name).await?;
        Ok(respond(record.into_user(), &withheld))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let access = self.authorize(&request, LIST_USERS).await?;
        let req = request.into_inner();
        let (rows, next_page_token, withheld) = records::list(
            &self.store,
            &access,
            USERS,
            &req.parent,
            req.page_size,
            &req.page_token,
            &req.email,
        )
        .await?;
        let users = rows.into_iter().map(|r| r.into_user()).collect();
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
        let access = self.authorize(&request, UPDATE_USER).await?;
        let req = request.into_inner();
        let user = req.user.unwrap_or_default();
        let (record, withheld) = records::update(
            &self.store,
            &access,
            USERS,
            &user.name,
            req.update_mask,
            PersonData::from_user(&user),
            user_attrs(&user),
        )
        .await?;
        Ok(respond(record.into_user(), &withheld))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        let access = self.authorize(&request, DELETE_USER).await?;
        records::delete(&self.store, &access, USERS, &request.get_ref().name).await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl ContactService for People {
    async fn create_contact(
        &self,
        request: Request<CreateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let access = self.authorize(&request, CREATE_CONTACT).await?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let tenant = parent_tenant(CONTACTS, &req.parent)?;
        let idem = idempotency(
            "CreateContact",
            &req.parent,
            &request_id,
            request_hash(&req),
        )?;
        let contact = req.contact.unwrap_or_default();
        let (record, withheld) = records::create(
            &self.store,
            &access,
            CONTACTS,
            &tenant,
            PersonData::from_contact(&contact),
            Attrs::default(),
            idem,
        )
        .await?;
        Ok(respond(record.into_contact(), &withheld))
    }

    async fn get_contact(
        &self,
        request: Request<GetContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let access = self.authorize(&request, GET_CONTACT).await?;
        let (record, withheld) =
            records::get(&self.store, &access, CONTACTS, &request.get_ref().name).await?;
        Ok(respond(record.into_contact(), &withheld))
    }

    async fn list_contacts(
        &self,
        request: Request<ListContactsRequest>,
    ) -> Result<Response<ListContactsResponse>, Status> {
        let access = self.authorize(&request, LIST_CONTACTS).await?;
        let req = request.into_inner();
        let (rows, next_page_token, withheld) = records::list(
            &self.store,
            &access,
            CONTACTS,
            &req.parent,
            req.page_size,
            &req.page_token,
            &req.email,
        )
        .await?;
        let contacts = rows.into_iter().map(|r| r.into_contact()).collect();
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
        let access = self.authorize(&request, UPDATE_CONTACT).await?;
        let req = request.into_inner();
        let contact = req.contact.unwrap_or_default();
        let (record, withheld) = records::update(
            &self.store,
            &access,
            CONTACTS,
            &contact.name,
            req.update_mask,
            PersonData::from_contact(&contact),
            Attrs::default(),
        )
        .await?;
        Ok(respond(record.into_contact(), &withheld))
    }

    async fn delete_contact(
        &self,
        request: Request<DeleteContactRequest>,
    ) -> Result<Response<()>, Status> {
        let access = self.authorize(&request, DELETE_CONTACT).await?;
        records::delete(&self.store, &access, CONTACTS, &request.get_ref().name).await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl EvaluationSignupService for People {
    async fn create_evaluation_signup(
        &self,
        request: Request<CreateEvaluationSignupRequest>,
    ) -> Result<Response<EvaluationSignup>, Status> {
        let access = self.authorize_company(&request, CREATE_SIGNUP).await?;
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idem = idempotency(
            "CreateEvaluationSignup",
            "",
            &request_id,
            request_hash(&req),
        )?;
        let signup = req.evaluation_signup.unwrap_or_default();
        let (record, withheld) = records::create(
            &self.store,
            &access,
            SIGNUPS,
            "",
            PersonData::from_signup(&signup),
            Attrs::default(),
            idem,
        )
        .await?;
        Ok(respond(record.into_signup(), &withheld))
    }

    async fn get_evaluation_signup(
        &self,
        request: Request<GetEvaluationSignupRequest>,
    ) -> Result<Response<EvaluationSignup>, Status> {
        let access = self.authorize_company(&request, GET_SIGNUP).await?;
        let (record, withheld) =
            records::get(&self.store, &access, SIGNUPS, &request.get_ref().name).await?;
        Ok(respond(record.into_signup(), &withheld))
    }

    async fn list_evaluation_signups(
        &self,
        request: Request<ListEvaluationSignupsRequest>,
    ) -> Result<Response<ListEvaluationSignupsResponse>, Status> {
        let access = self.authorize_company(&request, LIST_SIGNUPS).await?;
        let req = request.into_inner();
        let (rows, next_page_token, withheld) = records::list(
            &self.store,
            &access,
            SIGNUPS,
            "",
            req.page_size,
            &req.page_token,
            &req.email,
        )
        .await?;
        let evaluation_signups = rows.into_iter().map(|r| r.into_signup()).collect();
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
        let access = self.authorize_company(&request, UPDATE_SIGNUP).await?;
        let req = request.into_inner();
        let signup = req.evaluation_signup.unwrap_or_default();
        let (record, withheld) = records::update(
            &self.store,
            &access,
            SIGNUPS,
            &signup.name,
            req.update_mask,
            PersonData::from_signup(&signup),
            Attrs::default(),
        )
        .await?;
        Ok(respond(record.into_signup(), &withheld))
    }

    async fn delete_evaluation_signup(
        &self,
        request: Request<DeleteEvaluationSignupRequest>,
    ) -> Result<Response<()>, Status> {
        let access = self.authorize_company(&request, DELETE_SIGNUP).await?;
        records::delete(&self.store, &access, SIGNUPS, &request.get_ref().name).await?;
        Ok(Response::new(()))
    }
}
