//! The three person-record services, each a thin adapter from its proto
//! messages to [`crate::records`].

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
    model::{Attrs, CONTACTS, PersonData, SIGNUPS, USERS},
    records::{self, idempotency, parent_tenant, request_hash},
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
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let tenant = parent_tenant(USERS, &req.parent)?;
        let idem = idempotency("CreateUser", &req.parent, &request_id, request_hash(&req))?;
        let user = req.user.unwrap_or_default();
        let record = records::create(
            &self.store,
            USERS,
            &tenant,
            PersonData::from_user(&user),
            user_attrs(&user),
            idem,
        )
        .await?;
        Ok(Response::new(record.into_user()))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let record = records::get(&self.store, USERS, &request.get_ref().name).await?;
        Ok(Response::new(record.into_user()))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let req = request.into_inner();
        let (rows, next_page_token) = records::list(
            &self.store,
            USERS,
            &req.parent,
            req.page_size,
            &req.page_token,
            &req.email,
        )
        .await?;
        Ok(Response::new(ListUsersResponse {
            users: rows.into_iter().map(|r| r.into_user()).collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let req = request.into_inner();
        let user = req.user.unwrap_or_default();
        let record = records::update(
            &self.store,
            USERS,
            &user.name,
            req.update_mask,
            PersonData::from_user(&user),
            user_attrs(&user),
        )
        .await?;
        Ok(Response::new(record.into_user()))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        records::delete(&self.store, USERS, &request.get_ref().name).await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl ContactService for People {
    async fn create_contact(
        &self,
        request: Request<CreateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
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
        let record = records::create(
            &self.store,
            CONTACTS,
            &tenant,
            PersonData::from_contact(&contact),
            Attrs::default(),
            idem,
        )
        .await?;
        Ok(Response::new(record.into_contact()))
    }

    async fn get_contact(
        &self,
        request: Request<GetContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let record = records::get(&self.store, CONTACTS, &request.get_ref().name).await?;
        Ok(Response::new(record.into_contact()))
    }

    async fn list_contacts(
        &self,
        request: Request<ListContactsRequest>,
    ) -> Result<Response<ListContactsResponse>, Status> {
        let req = request.into_inner();
        let (rows, next_page_token) = records::list(
            &self.store,
            CONTACTS,
            &req.parent,
            req.page_size,
            &req.page_token,
            &req.email,
        )
        .await?;
        Ok(Response::new(ListContactsResponse {
            contacts: rows.into_iter().map(|r| r.into_contact()).collect(),
            next_page_token,
        }))
    }

    async fn update_contact(
        &self,
        request: Request<UpdateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        let req = request.into_inner();
        let contact = req.contact.unwrap_or_default();
        let record = records::update(
            &self.store,
            CONTACTS,
            &contact.name,
            req.update_mask,
            PersonData::from_contact(&contact),
            Attrs::default(),
        )
        .await?;
        Ok(Response::new(record.into_contact()))
    }

    async fn delete_contact(
        &self,
        request: Request<DeleteContactRequest>,
    ) -> Result<Response<()>, Status> {
        records::delete(&self.store, CONTACTS, &request.get_ref().name).await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl EvaluationSignupService for People {
    async fn create_evaluation_signup(
        &self,
        request: Request<CreateEvaluationSignupRequest>,
    ) -> Result<Response<EvaluationSignup>, Status> {
        let mut req = request.into_inner();
        let request_id = std::mem::take(&mut req.request_id);
        let idem = idempotency(
            "CreateEvaluationSignup",
            "",
            &request_id,
            request_hash(&req),
        )?;
        let signup = req.evaluation_signup.unwrap_or_default();
        let record = records::create(
            &self.store,
            SIGNUPS,
            "",
            PersonData::from_signup(&signup),
            Attrs::default(),
            idem,
        )
        .await?;
        Ok(Response::new(record.into_signup()))
    }

    async fn get_evaluation_signup(
        &self,
        request: Request<GetEvaluationSignupRequest>,
    ) -> Result<Response<EvaluationSignup>, Status> {
        let record = records::get(&self.store, SIGNUPS, &request.get_ref().name).await?;
        Ok(Response::new(record.into_signup()))
    }

    async fn list_evaluation_signups(
        &self,
        request: Request<ListEvaluationSignupsRequest>,
    ) -> Result<Response<ListEvaluationSignupsResponse>, Status> {
        let req = request.into_inner();
        let (rows, next_page_token) = records::list(
            &self.store,
            SIGNUPS,
            "",
            req.page_size,
            &req.page_token,
            &req.email,
        )
        .await?;
        Ok(Response::new(ListEvaluationSignupsResponse {
            evaluation_signups: rows.into_iter().map(|r| r.into_signup()).collect(),
            next_page_token,
        }))
    }

    async fn update_evaluation_signup(
        &self,
        request: Request<UpdateEvaluationSignupRequest>,
    ) -> Result<Response<EvaluationSignup>, Status> {
        let req = request.into_inner();
        let signup = req.evaluation_signup.unwrap_or_default();
        let record = records::update(
            &self.store,
            SIGNUPS,
            &signup.name,
            req.update_mask,
            PersonData::from_signup(&signup),
            Attrs::default(),
        )
        .await?;
        Ok(Response::new(record.into_signup()))
    }

    async fn delete_evaluation_signup(
        &self,
        request: Request<DeleteEvaluationSignupRequest>,
    ) -> Result<Response<()>, Status> {
        records::delete(&self.store, SIGNUPS, &request.get_ref().name).await?;
        Ok(Response::new(()))
    }
}
