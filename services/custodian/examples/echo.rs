//! The yardstick for `benches/h2load-get-contact.sh`: a bare tonic server
//! answering `GetContact` with a fixed contact of the same shape the real
//! service returns, and nothing else — no tokens, no database, no audit, no
//! encryption, no tower layers. Whatever the real server reaches is read as
//! a share of what this one reaches on the same machine in the same run.
//!
//!   cargo run --release -p custodian --example echo -- 127.0.0.1:50098

use custodian_proto::{
    common::v1::PersonName,
    identity::v1::{
        Contact, CreateContactRequest, DeleteContactRequest, GetContactRequest,
        ListContactsRequest, ListContactsResponse, UpdateContactRequest,
        contact_service_server::{ContactService, ContactServiceServer},
    },
};
use tonic::{Request, Response, Status};

// The suite's allocator, so the two servers differ only in what they do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Echo;

#[tonic::async_trait]
impl ContactService for Echo {
    async fn get_contact(
        &self,
        request: Request<GetContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        // The fields the bench's contact has, so both servers send about
        // the same bytes per answer.
        Ok(Response::new(Contact {
            name: request.into_inner().name,
            person_name: Some(PersonName {
                given_name: "Bench".into(),
                family_name: "Contact".into(),
            }),
            email: "c0@example.com".into(),
            phone: "+4930901820".into(),
            organization: "Example Supplies".into(),
            notes: "Met at the trade fair; prefers email over calls.".into(),
            create_time: Some(prost_types::Timestamp::default()),
            update_time: Some(prost_types::Timestamp::default()),
            ..Contact::default()
        }))
    }

    async fn create_contact(
        &self,
        _: Request<CreateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        Err(Status::unimplemented("echo answers GetContact only"))
    }

    async fn list_contacts(
        &self,
        _: Request<ListContactsRequest>,
    ) -> Result<Response<ListContactsResponse>, Status> {
        Err(Status::unimplemented("echo answers GetContact only"))
    }

    async fn update_contact(
        &self,
        _: Request<UpdateContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        Err(Status::unimplemented("echo answers GetContact only"))
    }

    async fn delete_contact(
        &self,
        _: Request<DeleteContactRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("echo answers GetContact only"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50098".into())
        .parse::<std::net::SocketAddr>()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("echo: serving on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(ContactServiceServer::new(Echo))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
