//! A sixth service, made only in the tests from a small contract of its own
//! (`tests/proto/custodian/notes/v1/note_service.proto`, compiled by this
//! crate's build script): notes about a person, held by the company. It is
//! written as a new service would be, with the kit and nothing else: its
//! contract, one binding, one handler, one migration, one line in the
//! binary's table ([`suite`]). Nothing tells data-subject requests about
//! it; its declarations must.

use std::sync::{Arc, LazyLock};

use custodian_kit::{
    Binding, Call, Context, KitService, New, Records, Sensitive, Shown, Store, respond,
    retention::{PeerPolicy, StoreSweep, Sweep},
    subject::{StoreSubjectData, SubjectData},
};
use custodian_runtime::server::{Limits, service_name};
use futures::future::BoxFuture;
use tonic::{Request, Response, Status, service::RoutesBuilder};

tonic::include_proto!("custodian.notes.v1");

/// The `--target` name of the service.
pub const NAME: &str = "notes";

/// Its own contract, as an encoded descriptor set of its one file.
const CONTRACT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/notes_descriptor.bin"));

/// The suite's declarations with this contract added: the generated types
/// describe themselves from it, so the kit reads them like the suite's own.
pub static POOL: LazyLock<prost_reflect::DescriptorPool> = LazyLock::new(|| {
    register();
    custodian_kit::DECLARATIONS.pool().clone()
});

/// Adds the contract to the kit's declarations; call before anything reads
/// them (before a suite is built).
pub fn register() {
    custodian_kit::declare::add_contracts(CONTRACT)
        .expect("the notes contract is added before the declarations are read");
}

/// The suite's five services and this one: the binary's table, one line
/// longer.
pub fn suite() -> Vec<custodian::Service> {
    register();
    let mut table: Vec<custodian::Service> = custodian::SERVICES
        .iter()
        .map(|s| custodian::Service {
            name: s.name,
            construct: s.construct,
            peer_purposes: s.peer_purposes,
            peer_calls: s.peer_calls,
        })
        .collect();
    table.push(custodian::Service {
        name: NAME,
        construct: |context| Ok(Arc::new(Notes::new(context))),
        peer_purposes: &[custodian_privacy::Purpose::Administration],
        peer_calls: &["/custodian.retention.v1.RetentionService/GetRetentionPolicy"],
    });
    table
}

/// The service.
pub struct Notes {
    context: Context,
    store: Store,
    notes: Records<Note>,
}

impl Notes {
    pub fn new(context: Context) -> Self {
        let grpc = service_name::<note_service_server::NoteServiceServer<Api>>();
        let binding = Binding::of::<Note>("notes_notes", grpc, None);
        let store = Store::new(
            context.db.clone(),
            context.privacy.clone(),
            context.clock.clone(),
            vec![binding.clone()],
        );
        Self {
            notes: store.records(&binding),
            store,
            context,
        }
    }
}

impl KitService for Notes {
    fn name(&self) -> &'static str {
        NAME
    }

    fn grpc_services(&self) -> Vec<&'static str> {
        vec![service_name::<note_service_server::NoteServiceServer<Api>>()]
    }

    fn register(&self, routes: &mut RoutesBuilder, limits: Limits) {
        routes.add_service(
            note_service_server::NoteServiceServer::new(Api {
                notes: self.notes.clone(),
            })
            .max_decoding_message_size(limits.max_message_bytes),
        );
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.context
                .db
                .migrate(NAME, sqlx::migrate!("./notes/migrations"))
                .await
        })
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn subject_data(&self) -> Arc<dyn SubjectData> {
        Arc::new(StoreSubjectData::new(self.store.clone()))
    }

    fn sweeper(&self) -> Arc<dyn Sweep> {
        Arc::new(StoreSweep::new(
            self.store.clone(),
            Arc::new(PeerPolicy::new(self.context.peers.clone())),
        ))
    }
}

/// `custodian.notes.v1.NoteService`.
pub struct Api {
    notes: Records<Note>,
}

#[tonic::async_trait]
impl note_service_server::NoteService for Api {
    async fn create_note(
        &self,
        request: Request<CreateNoteRequest>,
    ) -> Result<Response<Note>, Status> {
        let call = Call::of(&request)?;
        let mut note = request.into_inner().note.unwrap_or_default();
        let mut v = custodian_runtime::error::Violations::new();
        self.notes
            .prepare(&mut note, "note", Sensitive::Refuse, &mut v)?;
        if note.email.is_empty() {
            v.add("note.email", "required");
        }
        v.finish()?;
        let stored = self
            .notes
            .create(
                &call,
                New {
                    tenant_id: String::new(),
                    parent_id: String::new(),
                    message: note,
                    idempotency: None,
                },
            )
            .await?;
        let Shown { message, withheld } = self.notes.shown(&call, &stored)?;
        Ok(respond(message, &withheld))
    }
}
