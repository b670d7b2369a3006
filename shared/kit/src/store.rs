//! The privacy record store every service uses: each record's personal
//! units sealed under its data subject's key, looked up by keyed blind
//! index, idempotent creates, compare-and-set updates, erasure with key
//! shredding, retention sweeps that respect legal holds, and an audit event
//! in the same transaction as every change.
//!
//! A service supplies its resource types (the proto messages and their
//! declarations), a table per resource and its own queries (filters over
//! declared columns); nothing else. Its tables follow one shape:
//!
//! ```sql
//! CREATE TABLE {service}_{things} (
//!     id          TEXT   PRIMARY KEY,   -- a UUIDv7, the last segment of the name
//!     tenant_id   TEXT   NOT NULL,      -- '' when the company is the controller
//!     parent_id   TEXT   NOT NULL,      -- '' for a top-level resource
//!     subject_id  TEXT   NOT NULL,      -- whose key seals `data`; '' once anonymised
//!     data        TEXT   NOT NULL,      -- the personal units, sealed ('' when none)
//!     attrs       TEXT   NOT NULL,      -- the other units (protobuf, base64)
//!     email_key   TEXT,                 -- blind indexes of the lookup units
//!     phone_key   TEXT,
//!     create_time BIGINT NOT NULL,
//!     update_time BIGINT NOT NULL,
//!     ...                               -- one column per declared `column` unit
//! );
//! ```
//!
//! Shared tables (data keys, the audit trail, idempotency keys) carry the
//! service's name, so every service can use one database.
//!
//! Writes are arranged so that a transaction's first statement is a write:
//! on SQLite a transaction that reads first and writes later can fail with
//! SQLITE_BUSY when another writer commits in between, which busy_timeout
//! cannot wait out.

use std::{collections::BTreeSet, marker::PhantomData, sync::Arc};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use custodian_privacy::{
    Privacy,
    audit::Event,
    crypto::DataKey,
    vault::{EMAIL, PHONE},
};
use custodian_proto::{
    audit::v1::AuditOutcome,
    common::v1::{Controller as ControllerMsg, controller},
    privacy::v1::{Controller, Lookup, Purpose},
};
use custodian_runtime::{ApiError, Backend, Database, paging::Page, time::Clock};
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};
use sha2::{Digest as _, Sha256};
use sqlx::{AssertSqlSafe, Row as _, any::AnyRow};
use tonic::Status;

use crate::{
    call::Call,
    declare::{DECLARATIONS, ResourceSpec},
    fields::{self, Cut, Sensitive},
    pattern::Vars,
};

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
    NullText,
    NullInt,
}

fn bind<'q, DB>(
    query: sqlx::query::Query<'q, DB, DB::Arguments>,
    arg: &Arg,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    Option<String>: for<'e> sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    Option<i64>: for<'e> sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    String: for<'e> sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    i64: for<'e> sqlx::Encode<'e, DB> + sqlx::Type<DB>,
{
    match arg {
        Arg::Text(s) => query.bind(s.clone()),
        Arg::Int(n) => query.bind(*n),
        Arg::NullText => query.bind(None::<String>),
        Arg::NullInt => query.bind(None::<i64>),
    }
}

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            Arg::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::Int(n) => ToSqlOutput::Owned(Value::Integer(*n)),
            Arg::NullText | Arg::NullInt => ToSqlOutput::Owned(Value::Null),
        })
    }
}

/// A condition of a service's own query, over the standard columns and the
/// columns its resource declares. Column names are checked against the
/// declaration, so no caller's text ever becomes SQL.
#[derive(Debug, Clone)]
pub enum Filter {
    Eq(&'static str, Arg),
    /// `column >= value`.
    AtLeast(&'static str, Arg),
    /// `column < value`.
    Before(&'static str, Arg),
    /// Records whose lookup unit holds this (normalised) value, through the
    /// blind index.
    Lookup(Lookup, String),
    /// A fixed SQL condition of the service's, `?` standing for each argument.
    Sql(&'static str, Vec<Arg>),
}

/// What a list asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only records held for this tenant ("" for the company's own).
    pub tenant: Option<String>,
    /// Only children of this record.
    pub parent_id: Option<String>,
    pub filters: Vec<Filter>,
}

/// A create's idempotency key (AIP-155).
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub scope: String,
    /// Canonical UUID.
    pub request_id: String,
    pub request_hash: String,
}

impl Idempotency {
    /// The key of a Create call, when the caller sent one. `request` is the
    /// request without its `request_id`, to tell a retry from another call.
    pub fn of<R: prost::Message>(
        method: &str,
        parent: &str,
        request_id: &str,
        request: &R,
    ) -> Result<Option<Self>, ApiError> {
        let request_id = custodian_privacy::normalize::request_id(request_id)
            .map_err(|e| ApiError::invalid("request_id", e))?;
        Ok(request_id.map(|request_id| Self {
            scope: format!("{method}:{parent}"),
            request_id,
            request_hash: hex::encode(Sha256::digest(request.encode_to_vec())),
        }))
    }
}

/// What holds an idempotency key taken with [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This call, since this time (which settles or releases it).
    Ours(i64),
    /// An earlier call, which answered this (as it was settled).
    Answered(String),
    /// Another call, still at work.
    Busy,
    /// A different request.
    Different,
}

/// The `resource` of a claimed key whose call has not answered yet; an
/// answered one holds [`ANSWERED`] and the answer. Neither is a resource
/// name, so erasing a record never forgets them (they hold no personal
/// value, and go with the day's sweep).
const CLAIMED: &str = "claimed";
const ANSWERED: &str = "answered:";

/// Work done in the transaction of a change, after its rows are written
/// (see [`Records::update_with`]).
pub type Beside<'a> = &'a mut (
            dyn for<'t> FnMut(
    &'t mut sqlx::Transaction<'static, sqlx::Any>,
) -> futures::future::BoxFuture<'t, Result<(), ApiError>>
                + Send
        );

/// Types a closure as work beside a change (`&mut beside(|tx| ...)`), so
/// the compiler sees the future borrows only the transaction.
pub fn beside<F>(work: F) -> F
where
    F: for<'t> FnMut(
            &'t mut sqlx::Transaction<'static, sqlx::Any>,
        ) -> futures::future::BoxFuture<'t, Result<(), ApiError>>
        + Send,
{
    work
}

/// A stored record, whole (nothing cut for a purpose).
#[derive(Debug, Clone)]
pub struct Stored<M> {
    pub id: String,
    pub tenant_id: String,
    pub parent_id: String,
    /// The data subject whose key seals it; also the opaque subject
    /// reference of its audit events. Empty once anonymised.
    pub subject_id: String,
    pub create_time: i64,
    pub update_time: i64,
    pub message: M,
    dynamic: DynamicMessage,
}

impl<M> Stored<M> {
    pub fn name(&self) -> String {
        name_of(&self.dynamic)
    }

    pub fn dynamic(&self) -> &DynamicMessage {
        &self.dynamic
    }
}

/// A record as a purpose may see it.
#[derive(Debug, Clone)]
pub struct Shown<M> {
    pub message: M,
    /// Units withheld from this purpose, for `custodian-redacted-fields`.
    pub withheld: Vec<String>,
}

/// A new record.
#[derive(Debug, Clone)]
pub struct New<M> {
    pub tenant_id: String,
    pub parent_id: String,
    pub message: M,
    pub idempotency: Option<Idempotency>,
}

/// A record as the store keeps it, whatever its type.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: String,
    pub tenant_id: String,
    pub parent_id: String,
    pub subject_id: String,
    pub create_time: i64,
    pub update_time: i64,
    pub message: DynamicMessage,
}

/// A constraint a record's insert can break.
enum Violation {
    Unique,
    ForeignKey,
}

/// How a create's subject and data key are found.
enum Subject {
    /// A child's: its parent's subject, whose key was read before.
    Known(String, DataKey),
    /// The person the record's email (its row's `email_key`) names, made
    /// or found inside the create's own transaction (the unique blind
    /// index decides); no email, a subject of its own.
    ByEmail,
}

/// A new record's row, but for its subject and its documents, which are
/// settled inside the write.
#[derive(Clone)]
struct NewRow {
    id: String,
    tenant_id: String,
    parent_id: String,
    email_key: Option<String>,
    phone_key: Option<String>,
    now: i64,
    /// The binding's own columns.
    columns: Vec<Arg>,
}

/// A create as its write takes it: settled but for its subject and its
/// documents.
struct Insert {
    binding: Arc<Binding>,
    name: String,
    subject: Subject,
    row: NewRow,
    message: DynamicMessage,
    idem: Option<Idempotency>,
    /// Its subject is set inside the write.
    event: Event,
}

impl Insert {
    /// The create's audit event, once its subject is known.
    fn event_of(&self, subject_id: &str) -> Event {
        Event {
            subject_ref: subject_id.to_owned(),
            ..self.event.clone()
        }
    }
}

/// Why a create's write kept nothing.
enum Refused {
    /// A concurrent call with the same idempotency key got there first.
    Replayed,
    Failed(ApiError),
}

/// One resource of a service: its declaration and its table.
#[derive(Debug)]
pub struct Binding {
    pub spec: Arc<ResourceSpec>,
    pub table: &'static str,
    /// The gRPC service that serves it, as subject-data references name it.
    pub grpc_service: &'static str,
    /// The binding of its parent, for a child resource.
    pub parent: Option<Arc<Binding>>,
}

impl Binding {
    /// `M`'s declaration bound to `table`. Panics when `M` is not a
    /// declared resource: a programming error found at start-up.
    pub fn of<M: ReflectMessage + Default>(
        table: &'static str,
        grpc_service: &'static str,
        parent: Option<Arc<Binding>>,
    ) -> Arc<Self> {
        let spec = DECLARATIONS
            .resource_of::<M>()
            .unwrap_or_else(|| {
                panic!(
                    "{} is not declared as a resource",
                    M::default().descriptor().full_name()
                )
            })
            .clone();
        Arc::new(Self {
            spec,
            table,
            grpc_service,
            parent,
        })
    }

    fn select(&self, service: &str) -> String {
        format!(
            "SELECT r.id, r.tenant_id, r.parent_id, r.subject_id, r.data, r.attrs, r.create_time, \
             r.update_time, k.wrapped_key FROM {} r LEFT JOIN subject_keys k \
             ON k.service = '{service}' AND k.id = r.subject_id",
            self.table
        )
    }

    /// The resource name of a row.
    pub fn name(&self, tenant_id: &str, parent_id: &str, id: &str) -> String {
        let vars = self.spec.pattern.as_str().matches('{').count();
        let values: Vec<&str> = match (self.spec.pattern.has_var("tenant"), vars) {
            (true, 2) => vec![tenant_id, id],
            (true, 3) => vec![tenant_id, parent_id, id],
            (false, 1) => vec![id],
            (false, _) => vec![parent_id, id],
            (true, _) => vec![tenant_id, id],
        };
        self.spec.pattern.format(&values)
    }

    /// The declared columns, then `user_key` when a unit is looked up by
    /// user name.
    fn column_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.spec.columns.iter().map(|c| c.name.as_str()).collect();
        if self.user_lookup().is_some() {
            names.push("user_key");
        }
        names
    }

    fn user_lookup(&self) -> Option<&crate::declare::Unit> {
        self.spec
            .lookups
            .iter()
            .find(|(l, _)| *l == Lookup::User)
            .map(|(_, u)| u)
    }

    fn is_column(&self, name: &str) -> bool {
        matches!(
            name,
            "id" | "tenant_id" | "parent_id" | "create_time" | "update_time"
        ) || self.spec.columns.iter().any(|c| c.name == name)
    }

    /// Maps a constraint violation to what the caller did wrong.
    fn write_error(&self, tenant_id: &str, err: sqlx::Error) -> ApiError {
        if let sqlx::Error::Database(db) = &err {
            match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => {
                    return self.violation(tenant_id, Violation::Unique);
                }
                sqlx::error::ErrorKind::ForeignKeyViolation => {
                    return self.violation(tenant_id, Violation::ForeignKey);
                }
                _ => {}
            }
        }
        err.into()
    }

    /// As [`Self::write_error`], for a write on the native SQLite writer.
    fn sqlite_write_error(&self, tenant_id: &str, err: rusqlite::Error) -> ApiError {
        use rusqlite::ffi;
        match err.sqlite_error().map(|e| e.extended_code) {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                self.violation(tenant_id, Violation::Unique)
            }
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => {
                self.violation(tenant_id, Violation::ForeignKey)
            }
            _ => ApiError::internal(err),
        }
    }

    fn violation(&self, tenant_id: &str, violation: Violation) -> ApiError {
        match violation {
            Violation::Unique => {
                let noun = self.spec.noun();
                let lookup = self
                    .spec
                    .lookups
                    .first()
                    .map_or("key", |(_, u)| u.dotted.as_str());
                ApiError::AlreadyExists(if tenant_id.is_empty() {
                    format!("a {noun} with this {lookup} already exists")
                } else {
                    format!("a {noun} with this {lookup} already exists in tenants/{tenant_id}")
                })
            }
            // The one foreign key of a record is its tenant.
            Violation::ForeignKey => ApiError::not_found(format!("tenants/{tenant_id}")),
        }
    }

    /// The statement that inserts a record: the kit's columns, then the
    /// binding's own, in [`Store::insert_args`]'s order.
    fn insert_sql(&self) -> String {
        self.insert_sql_rows(1)
    }

    /// As [`Self::insert_sql`], for `rows` records at once.
    fn insert_sql_rows(&self, rows: usize) -> String {
        let columns = self.column_names();
        let width = 10 + columns.len();
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let row: Vec<String> = (1..=width).map(|i| format!("${}", r * width + i)).collect();
                format!("({})", row.join(", "))
            })
            .collect();
        format!(
            "INSERT INTO {} (id, tenant_id, parent_id, subject_id, data, attrs, email_key, phone_key, \
             create_time, update_time{}{}) VALUES {}",
            self.table,
            if columns.is_empty() { "" } else { ", " },
            columns.join(", "),
            values.join(", ")
        )
    }

    fn controller(&self, tenant_id: &str) -> ControllerMsg {
        let kind = match (self.spec.controller(), tenant_id) {
            (Controller::Company, _) | (Controller::TenantOrCompany, "") => {
                controller::Kind::Company(true)
            }
            _ => controller::Kind::Tenant(format!("tenants/{tenant_id}")),
        };
        ControllerMsg { kind: Some(kind) }
    }
}

/// What a data subject's lookup finds: one record of one resource.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub binding: Arc<Binding>,
    pub row: Row,
}

/// Records what an idempotency key created (or that a call holds it),
/// unless the key is already taken.
const REMEMBER: &str = "INSERT INTO kit_idempotency (service, scope, request_id, request_hash, \
     resource, create_time) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (service, scope, request_id) DO NOTHING RETURNING request_id";

mod pg;

/// A record's resource name, as its message carries it.
fn name_of(message: &DynamicMessage) -> String {
    message
        .get_field_by_name("name")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A meta field's value: what the store, not the caller, says of a record.
enum Meta {
    Text(String),
    Enum(i32),
    Controller(ControllerMsg),
    Time(prost_types::Timestamp),
}

impl Meta {
    /// As the field's value on the wire; an enum at its default is absent,
    /// as a message holding it encodes it. Text is written even when empty,
    /// so that it replaces whatever an earlier part of the encoding held.
    fn encode(&self, number: u32, out: &mut Vec<u8>) {
        use prost::encoding::{int32, message, string};
        match self {
            Self::Text(text) => string::encode(number, text, out),
            Self::Enum(0) => {}
            Self::Enum(value) => int32::encode(number, value, out),
            Self::Controller(controller) => message::encode(number, controller, out),
            Self::Time(time) => message::encode(number, time, out),
        }
    }
}

/// A record's meta fields and their values, those its message has: the
/// one list both `Store::set_meta` and `Store::open_cut` give a record.
fn meta(
    binding: &Binding,
    name: &str,
    tenant_id: &str,
    create_time: i64,
    update_time: i64,
) -> Vec<(prost_reflect::FieldDescriptor, Meta)> {
    let desc = &binding.spec.desc;
    let time = |micros| Meta::Time(custodian_runtime::time::to_timestamp(micros));
    let mut meta: Vec<_> = [
        ("name", Meta::Text(name.to_owned())),
        ("data_category", Meta::Enum(binding.spec.category() as i32)),
        (
            "controller",
            Meta::Controller(binding.controller(tenant_id)),
        ),
        ("create_time", time(create_time)),
        ("update_time", time(update_time)),
    ]
    .into_iter()
    .filter_map(|(field, value)| Some((desc.get_field_by_name(field)?, value)))
    .collect();
    if let Some(tenant_field) = &binding.spec.tenant_field {
        // Even when empty: a record of the company has none, whatever was
        // stored.
        let value = if tenant_id.is_empty() {
            String::new()
        } else {
            format!("tenants/{tenant_id}")
        };
        meta.push((tenant_field.clone(), Meta::Text(value)));
    }
    meta
}

fn internal(what: &'static str) -> ApiError {
    ApiError::internal(std::io::Error::other(what))
}

/// A service's records: every resource it holds, in one database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    service: &'static str,
    db: Database,
    privacy: Privacy,
    clock: Arc<dyn Clock>,
    bindings: Vec<Arc<Binding>>,
    /// Each table's point read, for the backend: written once, not on
    /// every read.
    point_reads: std::collections::HashMap<&'static str, String>,
    /// On PostgreSQL, the loop that groups creates, started by the first.
    pg_creates: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<pg::Create>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

/// The read of one row of `binding`'s table by id: on PostgreSQL for
/// [`custodian_runtime::database::PgPointReads`], which batches the ids.
fn point_read(binding: &Binding, service: &str, backend: Backend) -> String {
    let select = binding.select(service);
    match backend {
        Backend::Postgres => format!("{select} WHERE r.id = ANY($1)"),
        Backend::Sqlite => format!("{select} WHERE r.id = $1"),
    }
}

impl Store {
    pub fn new(
        db: Database,
        privacy: Privacy,
        clock: Arc<dyn Clock>,
        bindings: Vec<Arc<Binding>>,
    ) -> Self {
        let service = privacy.service();
        let point_reads = bindings
            .iter()
            .map(|b| (b.table, point_read(b, service, db.backend())))
            .collect();
        Self {
            inner: Arc::new(StoreInner {
                service,
                db,
                privacy,
                clock,
                bindings,
                point_reads,
                pg_creates: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    pub fn privacy(&self) -> &Privacy {
        &self.inner.privacy
    }

    pub fn db(&self) -> &Database {
        &self.inner.db
    }

    pub fn now(&self) -> i64 {
        self.inner.clock.now_micros()
    }

    pub fn bindings(&self) -> &[Arc<Binding>] {
        &self.inner.bindings
    }

    /// The typed records of `binding`.
    pub fn records<M>(&self, binding: &Arc<Binding>) -> Records<M> {
        Records {
            store: self.clone(),
            binding: binding.clone(),
            _m: PhantomData,
        }
    }

    /// Checks that every table has the kit's shape, so a mistake in a
    /// migration stops the start instead of the first request.
    pub async fn check_tables(&self) -> anyhow::Result<()> {
        for binding in &self.inner.bindings {
            let mut columns = vec![
                "id",
                "tenant_id",
                "parent_id",
                "subject_id",
                "data",
                "attrs",
                "email_key",
                "phone_key",
                "create_time",
                "update_time",
            ];
            columns.extend(binding.column_names());
            let sql = format!(
                "SELECT {} FROM {} WHERE 1 = 0",
                columns.join(", "),
                binding.table
            );
            sqlx::query(AssertSqlSafe(sql))
                .fetch_all(self.inner.db.pool())
                .await
                .map_err(|e| {
                    anyhow::anyhow!("table {} lacks a column the kit needs: {e}", binding.table)
                })?;
        }
        Ok(())
    }

    fn vault(&self) -> &custodian_privacy::vault::Vault {
        &self.inner.privacy.vault
    }

    /// The blind index of a lookup value (already normalised).
    pub fn lookup_key(&self, lookup: Lookup, value: &str) -> String {
        let domain = match lookup {
            Lookup::Phone => PHONE,
            Lookup::User => "user",
            _ => EMAIL,
        };
        self.vault().blind_index(domain, value)
    }

    // --- rows ------------------------------------------------------------

    pub(crate) fn open(&self, binding: &Binding, row: &AnyRow) -> Result<Row, ApiError> {
        self.open_raw(binding, Raw::of(row)?)
    }

    fn open_raw(&self, binding: &Binding, raw: Raw) -> Result<Row, ApiError> {
        let Raw {
            id,
            tenant_id,
            parent_id,
            subject_id,
            data: sealed,
            attrs,
            create_time,
            update_time,
            wrapped_key: wrapped,
        } = raw;
        let name = binding.name(&tenant_id, &parent_id, &id);
        let attrs = STANDARD
            .decode(attrs)
            .map_err(|_| internal("stored attributes are not base64"))?;
        let mut message = DynamicMessage::decode(binding.spec.desc.clone(), attrs.as_slice())
            .map_err(ApiError::internal)?;
        if !sealed.is_empty() {
            let wrapped = wrapped.ok_or_else(|| internal("a sealed record has no data key"))?;
            let key = self.vault().unwrap(&subject_id, &wrapped)?;
            let plain = self.vault().open(&key, &sealed, &name)?;
            // The two parts hold different fields (see `fields::split`):
            // decoding one into the other joins them, nested messages
            // included, with no copy of either.
            message
                .merge(plain.as_slice())
                .map_err(ApiError::internal)?;
        }
        self.set_meta(
            binding,
            &mut message,
            &name,
            &tenant_id,
            create_time,
            update_time,
        );
        Ok(Row {
            id,
            tenant_id,
            parent_id,
            subject_id,
            create_time,
            update_time,
            message,
        })
    }

    /// A stored record opened and cut down to `purpose` without becoming
    /// a message on the way: its two parts are cut on the wire
    /// ([`fields::EncodedCut`]) and its meta fields encoded after them, as
    /// [`Self::set_meta`] sets them, so the generated type decodes the
    /// answer in one pass. What `open_raw`, `set_meta` and [`fields::cut`]
    /// make of the same row, byte for byte the same record.
    fn open_cut(&self, binding: &Binding, raw: Raw, purpose: Purpose) -> Result<Opened, ApiError> {
        let name = binding.name(&raw.tenant_id, &raw.parent_id, &raw.id);
        let spec = &binding.spec;
        let attrs = STANDARD
            .decode(&raw.attrs)
            .map_err(|_| internal("stored attributes are not base64"))?;
        let mut cut = fields::EncodedCut::new(spec, purpose, attrs.len() + raw.data.len());
        cut.add(&attrs).map_err(ApiError::internal)?;
        if !raw.data.is_empty() {
            let wrapped = raw
                .wrapped_key
                .as_deref()
                .ok_or_else(|| internal("a sealed record has no data key"))?;
            let key = self.vault().unwrap(&raw.subject_id, wrapped)?;
            let plain = self.vault().open(&key, &raw.data, &name)?;
            cut.add(&plain).map_err(ApiError::internal)?;
        }
        // The meta fields last: on the wire the last value of a field is
        // its value, as `set_meta` overwrites whatever was stored. Each
        // only where the resource declares it a unit the purpose may see,
        // as `fields::cut` would keep it.
        let meta = meta(
            binding,
            &name,
            &raw.tenant_id,
            raw.create_time,
            raw.update_time,
        );
        for (field, value) in meta {
            let shown = spec
                .units
                .iter()
                .any(|u| u.path.len() == 1 && u.path[0] == field && u.visible_to(purpose));
            if shown {
                value.encode(field.number(), &mut cut.encoded);
            }
        }
        let (shown, withheld) = cut.units();
        Ok(Opened {
            name,
            subject_id: raw.subject_id,
            encoded: cut.encoded,
            shown,
            withheld,
        })
    }

    fn set_meta(
        &self,
        binding: &Binding,
        message: &mut DynamicMessage,
        name: &str,
        tenant_id: &str,
        create_time: i64,
        update_time: i64,
    ) {
        for (field, value) in meta(binding, name, tenant_id, create_time, update_time) {
            let value = match value {
                Meta::Text(text) => Value::String(text),
                Meta::Enum(number) => Value::EnumNumber(number),
                Meta::Controller(controller) => Value::Message(controller.transcode_to_dynamic()),
                Meta::Time(time) => Value::Message(time.transcode_to_dynamic()),
            };
            message.set_field(&field, value);
        }
    }

    /// The column values of a record, in the binding's column order.
    fn column_args(&self, binding: &Binding, message: &DynamicMessage) -> Vec<Arg> {
        let mut args: Vec<Arg> = binding
            .spec
            .columns
            .iter()
            .map(|column| {
                let field = column.path.last().expect("a column has a field");
                let value = fields::get_path(message, &column.path);
                match (field.kind(), value.as_deref()) {
                    (Kind::String, Some(Value::String(s))) => Arg::Text(s.clone()),
                    (Kind::String, _) => Arg::Text(String::new()),
                    (Kind::Message(m), Some(Value::Message(v)))
                        if m.full_name() == "google.protobuf.Timestamp" =>
                    {
                        let seconds = v
                            .get_field_by_name("seconds")
                            .and_then(|s| s.as_i64())
                            .unwrap_or(0);
                        let nanos = v
                            .get_field_by_name("nanos")
                            .and_then(|s| s.as_i32())
                            .unwrap_or(0);
                        Arg::Int(
                            seconds
                                .saturating_mul(1_000_000)
                                .saturating_add(i64::from(nanos) / 1000),
                        )
                    }
                    (Kind::Message(_), _) => Arg::NullInt,
                    (_, Some(Value::EnumNumber(n) | Value::I32(n))) => Arg::Int(i64::from(*n)),
                    (_, Some(Value::I64(n))) => Arg::Int(*n),
                    (_, Some(Value::Bool(b))) => Arg::Int(i64::from(*b)),
                    _ => Arg::Int(0),
                }
            })
            .collect();
        if let Some(unit) = binding.user_lookup() {
            let key = fields::get_path(message, &unit.path)
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|v| !v.is_empty())
                .map(|v| self.lookup_key(Lookup::User, &v));
            args.push(key.map_or(Arg::NullText, Arg::Text));
        }
        args
    }

    /// The blind indexes of a record's lookup units.
    fn lookup_args(
        &self,
        binding: &Binding,
        message: &DynamicMessage,
    ) -> (Option<String>, Option<String>) {
        let mut email = None;
        let mut phone = None;
        for (lookup, unit) in &binding.spec.lookups {
            let value = fields::get_path(message, &unit.path)
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|v| !v.is_empty());
            let key = value.map(|v| self.lookup_key(*lookup, &v));
            match lookup {
                Lookup::Email => email = key,
                Lookup::Phone => phone = key,
                Lookup::User | Lookup::Unspecified => {}
            }
        }
        (email, phone)
    }

    /// The sealed and plain documents of a record.
    fn documents(
        &self,
        binding: &Binding,
        name: &str,
        message: &DynamicMessage,
        key: Option<&DataKey>,
    ) -> (String, String) {
        let (personal, plain) = fields::split(&binding.spec, message);
        let sealed = match key {
            Some(key) if personal.fields().next().is_some() => {
                self.vault().seal(key, &personal.encode_to_vec(), name)
            }
            _ => String::new(),
        };
        (sealed, STANDARD.encode(plain.encode_to_vec()))
    }

    async fn fetch(&self, binding: &Binding, id: &str) -> Result<Option<Row>, ApiError> {
        self.fetch_raw(binding, id)
            .await?
            .map(|raw| self.open_raw(binding, raw))
            .transpose()
    }

    /// A record's row as stored, not yet opened.
    async fn fetch_raw(&self, binding: &Binding, id: &str) -> Result<Option<Raw>, ApiError> {
        let written;
        let sql = match self.inner.point_reads.get(binding.table) {
            Some(sql) => sql.as_str(),
            None => {
                written = point_read(binding, self.inner.service, self.inner.db.backend());
                written.as_str()
            }
        };
        // On PostgreSQL, batched with the concurrent reads of this table.
        if let Some(reads) = self.inner.db.pg_point_reads() {
            let row = reads.read(sql, id).await.map_err(ApiError::internal)?;
            return Ok(row.map(|r| Raw::of(&*r)).transpose()?);
        }
        // The hot read path: in place on SQLite (see `SqliteReader`).
        if let Some(reader) = self.inner.db.sqlite_reader() {
            let raw = reader
                .read(|conn| {
                    use rusqlite::OptionalExtension as _;
                    conn.prepare_cached(sql)?
                        // By position, in `Binding::select`'s order: a
                        // name is looked up column by column on every call.
                        .query_row([id], |r| {
                            Ok(Raw {
                                id: r.get(0)?,
                                tenant_id: r.get(1)?,
                                parent_id: r.get(2)?,
                                subject_id: r.get(3)?,
                                data: r.get(4)?,
                                attrs: r.get(5)?,
                                create_time: r.get(6)?,
                                update_time: r.get(7)?,
                                wrapped_key: r.get(8)?,
                            })
                        })
                        .optional()
                })
                .map_err(ApiError::internal)?;
            return Ok(raw);
        }
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.inner.db.pool())
            .await?;
        Ok(row.map(|r| Raw::of(&r)).transpose()?)
    }

    /// The data key of a subject, read outside a transaction.
    async fn subject_key(&self, subject_id: &str) -> Result<Option<DataKey>, ApiError> {
        let row =
            sqlx::query("SELECT wrapped_key FROM subject_keys WHERE service = $1 AND id = $2")
                .bind(self.inner.service)
                .bind(subject_id)
                .fetch_optional(self.inner.db.pool())
                .await?;
        row.map(|r| {
            self.vault()
                .unwrap(subject_id, &r.try_get::<String, _>("wrapped_key")?)
        })
        .transpose()
    }

    /// Seals bytes a service keeps beside its records (a data-subject
    /// request's export) under the data key of `subject_id`, the subject of
    /// a record of this service: erasing that subject's records shreds them
    /// too. `context` binds the ciphertext to the place it is kept.
    pub async fn seal_beside(
        &self,
        subject_id: &str,
        plaintext: &[u8],
        context: &str,
    ) -> Result<String, ApiError> {
        let key = self
            .subject_key(subject_id)
            .await?
            .ok_or_else(|| internal("the subject's data key is gone"))?;
        Ok(self.vault().seal(&key, plaintext, context))
    }

    /// Opens what [`Self::seal_beside`] sealed; `None` once the subject's
    /// key was destroyed.
    pub async fn open_beside(
        &self,
        subject_id: &str,
        sealed: &str,
        context: &str,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        match self.subject_key(subject_id).await? {
            Some(key) => self.vault().open(&key, sealed, context).map(Some),
            None => Ok(None),
        }
    }

    /// Destroys the data keys of these subjects that no record of this
    /// service uses any more (crypto-shredding). An erase running on this
    /// task notes the keys destroyed, for the erasure log.
    async fn shred_unused(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        subjects: impl IntoIterator<Item = &String>,
    ) -> Result<(), ApiError> {
        let unused: Vec<String> = self
            .inner
            .bindings
            .iter()
            .map(|b| {
                format!(
                    "AND NOT EXISTS (SELECT 1 FROM {} WHERE subject_id = $2)",
                    b.table
                )
            })
            .collect();
        let sql = format!(
            "DELETE FROM subject_keys WHERE service = $1 AND id = $2 {}",
            unused.join(" ")
        );
        let mut seen = BTreeSet::new();
        for subject in subjects {
            if subject.is_empty() || !seen.insert(subject.clone()) {
                continue;
            }
            let destroyed = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(self.inner.service)
                .bind(subject)
                .execute(&mut **tx)
                .await?;
            if destroyed.rows_affected() > 0 {
                self.vault().forget(subject);
                crate::erasure::note_destroyed([subject.clone()]);
            }
        }
        Ok(())
    }

    /// Destroys these data keys whatever still uses them, as the erasure
    /// log says an erasure did; one audit event (by `call`) per key that
    /// was still there. Returns how many were.
    pub(crate) async fn destroy_keys(&self, call: &Call, ids: &[String]) -> Result<u64, ApiError> {
        let mut destroyed = 0;
        for id in ids.iter().filter(|id| !id.is_empty()) {
            let mut tx = self.db().pool().begin().await?;
            let done = sqlx::query("DELETE FROM subject_keys WHERE service = $1 AND id = $2")
                .bind(self.inner.service)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            self.vault().forget(id);
            if done.rows_affected() == 0 {
                tx.rollback().await?;
                continue;
            }
            destroyed += 1;
            let mut event = call.event(self.privacy(), "", id, &[], AuditOutcome::Ok);
            event.detail = call.detail("data key destroyed again, from the erasure log");
            self.privacy().audit.commit(tx, &[event]).await?;
        }
        Ok(destroyed)
    }

    async fn forget_idempotency(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        resource: &str,
    ) -> Result<(), ApiError> {
        // The key's request hash derives from personal data: it goes with it.
        sqlx::query("DELETE FROM kit_idempotency WHERE service = $1 AND resource = $2")
            .bind(self.inner.service)
            .bind(resource)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The resource an idempotency key already created, if any. A key
    /// reused for a different request is refused.
    pub async fn replayed(&self, idem: &Idempotency) -> Result<Option<String>, ApiError> {
        let row = sqlx::query(
            "SELECT request_hash, resource FROM kit_idempotency \
             WHERE service = $1 AND scope = $2 AND request_id = $3",
        )
        .bind(self.inner.service)
        .bind(&idem.scope)
        .bind(&idem.request_id)
        .fetch_optional(self.inner.db.pool())
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let hash: String = row.try_get("request_hash")?;
                if hash != idem.request_hash {
                    return Err(ApiError::invalid(
                        "request_id",
                        "was already used for a different request",
                    ));
                }
                Ok(Some(row.try_get("resource")?))
            }
        }
    }

    /// Remembers what an idempotency key created; false when a concurrent
    /// call with the same key got there first.
    pub async fn remember<DB>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        idem: &Idempotency,
        resource: &str,
    ) -> Result<bool, ApiError>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        let done = sqlx::query::<DB>(REMEMBER)
            .bind(self.inner.service)
            .bind(&idem.scope)
            .bind(&idem.request_id)
            .bind(&idem.request_hash)
            .bind(resource)
            .bind(self.now())
            .fetch_optional(&mut **tx)
            .await?;
        Ok(done.is_some())
    }

    /// As [`Self::remember`], on the native SQLite writer.
    fn remember_sqlite(
        &self,
        conn: &rusqlite::Connection,
        idem: &Idempotency,
        resource: &str,
    ) -> rusqlite::Result<bool> {
        use rusqlite::OptionalExtension as _;
        let done = conn
            .prepare_cached(REMEMBER)?
            .query_row(
                rusqlite::params![
                    self.inner.service,
                    idem.scope,
                    idem.request_id,
                    idem.request_hash,
                    resource,
                    self.now()
                ],
                |r| r.get::<_, String>(0),
            )
            .optional()?;
        Ok(done.is_some())
    }

    /// A create's write through sqlx (the native PostgreSQL driver, or
    /// `Any`): the subject's key, the record, its idempotency key and its
    /// audit event, in one transaction. Returns the record's subject and
    /// its message.
    async fn insert_tx<DB>(
        &self,
        mut tx: sqlx::Transaction<'_, DB>,
        insert: Insert,
    ) -> Result<(String, DynamicMessage), Refused>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        String: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
        Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'s> &'s str: sqlx::ColumnIndex<DB::Row>,
    {
        // Until the commit, a database fault stored nothing.
        let failed = |err: ApiError| Refused::Failed(err.uncommitted());
        let (subject_id, key) = match &insert.subject {
            Subject::Known(subject, key) => (subject.clone(), key.clone()),
            Subject::ByEmail => self
                .vault()
                .subject_key(&mut tx, insert.row.email_key.as_deref())
                .await
                .map_err(failed)?,
        };
        let binding = &insert.binding;
        let mut q = sqlx::query::<DB>(AssertSqlSafe(binding.insert_sql()));
        for arg in &self.insert_args(&insert, &subject_id, &key) {
            q = bind(q, arg);
        }
        q.execute(&mut *tx)
            .await
            .map_err(|err| failed(binding.write_error(&insert.row.tenant_id, err)))?;
        if let Some(idem) = &insert.idem
            && !self
                .remember(&mut tx, idem, &insert.name)
                .await
                .map_err(failed)?
        {
            return Err(Refused::Replayed);
        }
        let event = insert.event_of(&subject_id);
        self.privacy()
            .audit
            .commit(tx, &[event])
            .await
            .map_err(Refused::Failed)?;
        Ok((subject_id, insert.message))
    }

    /// As [`Self::insert_tx`], on the native SQLite writer: in place, in a
    /// savepoint of a transaction the writes queued beside it share.
    fn insert_sqlite(
        &self,
        conn: &rusqlite::Connection,
        insert: Insert,
    ) -> Result<(String, DynamicMessage), Refused> {
        let failed = |err: rusqlite::Error| Refused::Failed(ApiError::internal(err));
        let (subject_id, key) = match &insert.subject {
            Subject::Known(subject, key) => (subject.clone(), key.clone()),
            Subject::ByEmail => self
                .vault()
                .subject_key_sqlite(conn, insert.row.email_key.as_deref())
                .map_err(Refused::Failed)?,
        };
        let binding = &insert.binding;
        let args = self.insert_args(&insert, &subject_id, &key);
        conn.prepare_cached(&binding.insert_sql())
            .and_then(|mut statement| statement.execute(rusqlite::params_from_iter(&args)))
            .map_err(|err| {
                Refused::Failed(binding.sqlite_write_error(&insert.row.tenant_id, err))
            })?;
        if let Some(idem) = &insert.idem
            && !self
                .remember_sqlite(conn, idem, &insert.name)
                .map_err(failed)?
        {
            return Err(Refused::Replayed);
        }
        let event = insert.event_of(&subject_id);
        self.privacy()
            .audit
            .stage_sqlite(conn, &[event])
            .map_err(failed)?;
        Ok((subject_id, insert.message))
    }

    /// A new record's values in [`Binding::insert_sql`]'s order, its
    /// personal fields sealed under its subject's `key`.
    fn insert_args(&self, insert: &Insert, subject_id: &str, key: &DataKey) -> Vec<Arg> {
        let (binding, name, row) = (&insert.binding, &insert.name, insert.row.clone());
        let message = &insert.message;
        let (sealed, attrs) = self.documents(binding, name, message, Some(key));
        let text = |value: Option<String>| value.map_or(Arg::NullText, Arg::Text);
        let mut args = vec![
            Arg::Text(row.id),
            Arg::Text(row.tenant_id),
            Arg::Text(row.parent_id),
            Arg::Text(subject_id.to_owned()),
            Arg::Text(sealed),
            Arg::Text(attrs),
            text(row.email_key),
            text(row.phone_key),
            Arg::Int(row.now),
            Arg::Int(row.now),
        ];
        args.extend(row.columns);
        args
    }

    /// Takes `idem` for this call, or tells what holds it: an earlier
    /// call's answer, a call still at work (a claim younger than `lease`
    /// microseconds), or a different request. For work whose answer spans
    /// several transactions (every part of a service's data-subject rights),
    /// so a retry waits for the first call or replays its answer. A claim
    /// older than `lease` was left by a call that never finished (its
    /// process stopped) and is taken over.
    pub(crate) async fn claim(
        &self,
        idem: &Idempotency,
        now: i64,
        lease: i64,
    ) -> Result<Claim, ApiError> {
        for _ in 0..3 {
            let done = sqlx::query(REMEMBER)
                .bind(self.inner.service)
                .bind(&idem.scope)
                .bind(&idem.request_id)
                .bind(&idem.request_hash)
                .bind(CLAIMED)
                .bind(now)
                .fetch_optional(self.inner.db.pool())
                .await?;
            if done.is_some() {
                return Ok(Claim::Ours(now));
            }
            let row = sqlx::query(
                "SELECT request_hash, resource, create_time FROM kit_idempotency \
                 WHERE service = $1 AND scope = $2 AND request_id = $3",
            )
            .bind(self.inner.service)
            .bind(&idem.scope)
            .bind(&idem.request_id)
            .fetch_optional(self.inner.db.pool())
            .await?;
            // Released or swept in between: claim again.
            let Some(row) = row else { continue };
            let hash: String = row.try_get("request_hash")?;
            let held: String = row.try_get("resource")?;
            let since: i64 = row.try_get("create_time")?;
            if hash != idem.request_hash {
                return Ok(Claim::Different);
            }
            if let Some(answer) = held.strip_prefix(ANSWERED) {
                return Ok(Claim::Answered(answer.to_owned()));
            }
            if since >= now.saturating_sub(lease) {
                return Ok(Claim::Busy);
            }
            let taken = sqlx::query(
                "UPDATE kit_idempotency SET create_time = $1 WHERE service = $2 AND scope = $3 \
                 AND request_id = $4 AND resource = $5 AND create_time = $6",
            )
            .bind(now)
            .bind(self.inner.service)
            .bind(&idem.scope)
            .bind(&idem.request_id)
            .bind(CLAIMED)
            .bind(since)
            .execute(self.inner.db.pool())
            .await?;
            return Ok(if taken.rows_affected() == 1 {
                Claim::Ours(now)
            } else {
                Claim::Busy
            });
        }
        Ok(Claim::Busy)
    }

    /// Stores the answer of the call that claimed `idem` at `claimed`.
    pub(crate) async fn settle(
        &self,
        idem: &Idempotency,
        claimed: i64,
        answer: &str,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE kit_idempotency SET resource = $1 WHERE service = $2 AND scope = $3 \
             AND request_id = $4 AND resource = $5 AND create_time = $6",
        )
        .bind(format!("{ANSWERED}{answer}"))
        .bind(self.inner.service)
        .bind(&idem.scope)
        .bind(&idem.request_id)
        .bind(CLAIMED)
        .bind(claimed)
        .execute(self.inner.db.pool())
        .await?;
        Ok(())
    }

    /// Gives up the claim of a call that failed, so a retry can run.
    pub(crate) async fn release(&self, idem: &Idempotency, claimed: i64) -> Result<(), ApiError> {
        sqlx::query(
            "DELETE FROM kit_idempotency WHERE service = $1 AND scope = $2 AND request_id = $3 \
             AND resource = $4 AND create_time = $5",
        )
        .bind(self.inner.service)
        .bind(&idem.scope)
        .bind(&idem.request_id)
        .bind(CLAIMED)
        .bind(claimed)
        .execute(self.inner.db.pool())
        .await?;
        Ok(())
    }

    /// Forgets idempotency keys older than `cutoff`: retries come within
    /// minutes, and the request hashes derive from personal data.
    pub async fn sweep_idempotency(&self, cutoff: i64) -> Result<u64, ApiError> {
        Ok(
            sqlx::query("DELETE FROM kit_idempotency WHERE service = $1 AND create_time < $2")
                .bind(self.inner.service)
                .bind(cutoff)
                .execute(self.inner.db.pool())
                .await?
                .rows_affected(),
        )
    }

    fn children(&self, binding: &Arc<Binding>) -> Vec<Arc<Binding>> {
        self.inner
            .bindings
            .iter()
            .filter(|b| b.parent.as_ref().is_some_and(|p| Arc::ptr_eq(p, binding)))
            .cloned()
            .collect()
    }

    /// Deletes the children of `parent_id`, returning (name, subject) of
    /// each for their audit events.
    async fn delete_children(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        binding: &Arc<Binding>,
        tenant_id: &str,
        parent_id: &str,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let mut gone = Vec::new();
        for child in self.children(binding) {
            let sql = format!(
                "DELETE FROM {} WHERE parent_id = $1 RETURNING id, subject_id",
                child.table
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(parent_id)
                .fetch_all(&mut **tx)
                .await?;
            for row in rows {
                let id: String = row.try_get("id")?;
                let name = child.name(tenant_id, parent_id, &id);
                self.forget_idempotency(tx, &name).await?;
                gone.push((name, row.try_get("subject_id")?));
            }
        }
        Ok(gone)
    }

    /// Runs `work` in one transaction of this service's database.
    pub async fn in_tx<T>(
        &self,
        work: impl for<'t> FnOnce(
            &'t mut sqlx::Transaction<'static, sqlx::Any>,
        ) -> futures::future::BoxFuture<'t, Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let mut tx = self.inner.db.pool().begin().await?;
        // Until the commit, a database fault stored nothing.
        let out = work(&mut tx).await.map_err(ApiError::uncommitted)?;
        tx.commit().await?;
        // The work may have staged audit events.
        self.privacy().audit.wake();
        Ok(out)
    }

    /// Deletes every record held for `tenant_id` (and their children) inside
    /// `tx`, destroying keys no record needs any more. Returns one audit
    /// event per record, from `template`.
    pub async fn purge_tenant(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant_id: &str,
        template: &Event,
    ) -> Result<Vec<Event>, ApiError> {
        let mut events = Vec::new();
        let mut subjects = Vec::new();
        for binding in self.inner.bindings.iter().filter(|b| b.parent.is_none()) {
            let sql = format!(
                "DELETE FROM {} WHERE tenant_id = $1 RETURNING id, subject_id",
                binding.table
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(tenant_id)
                .fetch_all(&mut **tx)
                .await?;
            for row in rows {
                let id: String = row.try_get("id")?;
                let subject: String = row.try_get("subject_id")?;
                for (name, child_subject) in
                    self.delete_children(tx, binding, tenant_id, &id).await?
                {
                    events.push(stamp(template, name, &child_subject));
                }
                let name = binding.name(tenant_id, "", &id);
                self.forget_idempotency(tx, &name).await?;
                events.push(stamp(template, name, &subject));
                subjects.push(subject);
            }
        }
        self.shred_unused(tx, &subjects).await?;
        Ok(events)
    }
}

/// A record cut down to a purpose, still encoded (see `Store::open_cut`).
struct Opened {
    name: String,
    subject_id: String,
    encoded: Vec<u8>,
    shown: Vec<String>,
    withheld: Vec<String>,
}

/// A record's columns as stored, before it is opened.
struct Raw {
    id: String,
    tenant_id: String,
    parent_id: String,
    subject_id: String,
    data: String,
    attrs: String,
    create_time: i64,
    update_time: i64,
    wrapped_key: Option<String>,
}

impl Raw {
    /// The row's columns, as `Binding::select` names them, from either
    /// driver's row.
    fn of<R>(row: &R) -> Result<Self, sqlx::Error>
    where
        R: sqlx::Row,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            parent_id: row.try_get("parent_id")?,
            subject_id: row.try_get("subject_id")?,
            data: row.try_get("data")?,
            attrs: row.try_get("attrs")?,
            create_time: row.try_get("create_time")?,
            update_time: row.try_get("update_time")?,
            wrapped_key: row.try_get("wrapped_key")?,
        })
    }
}

/// Whether a record (by tenant, email key, phone key) is under a legal hold.
pub type Held<'a> = &'a (dyn Fn(&str, Option<&str>, Option<&str>) -> bool + Sync);

/// Which root records a sweep batch looks at.
#[derive(Debug, Clone, Copy)]
pub struct SweepScope<'a> {
    /// Held for this tenant, or (with `None`) for any tenant not in `except`.
    pub tenant: Option<&'a str>,
    pub except: &'a [String],
    /// Retention clock before this (microseconds).
    pub cutoff: i64,
    pub batch: i64,
}

/// Fills an event template with what only the store knows.
pub fn stamp(template: &Event, resource: String, subject_ref: &str) -> Event {
    Event {
        resource,
        subject_ref: subject_ref.to_owned(),
        ..template.clone()
    }
}

/// A later write time than `previous`, even if the clock has not moved.
fn next_update_time(now: i64, previous: i64) -> i64 {
    now.max(previous + 1)
}

/// One resource's records, typed.
pub struct Records<M> {
    store: Store,
    binding: Arc<Binding>,
    _m: PhantomData<fn() -> M>,
}

impl<M> Clone for Records<M> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            binding: self.binding.clone(),
            _m: PhantomData,
        }
    }
}

impl<M> Records<M>
where
    M: prost::Message + ReflectMessage + Default + Clone,
{
    pub fn spec(&self) -> &ResourceSpec {
        &self.binding.spec
    }

    pub fn binding(&self) -> &Arc<Binding> {
        &self.binding
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn typed(&self, row: &Row) -> Result<M, ApiError> {
        row.message.transcode_to::<M>().map_err(ApiError::internal)
    }

    fn stored(&self, row: Row) -> Result<Stored<M>, ApiError> {
        Ok(Stored {
            message: self.typed(&row)?,
            id: row.id,
            tenant_id: row.tenant_id,
            parent_id: row.parent_id,
            subject_id: row.subject_id,
            create_time: row.create_time,
            update_time: row.update_time,
            dynamic: row.message,
        })
    }

    /// Reads a name of this resource; a name of another form is
    /// INVALID_ARGUMENT under `field`, never echoed.
    pub fn parse(&self, name: &str, field: &str) -> Result<Vars, ApiError> {
        self.binding
            .spec
            .pattern
            .parse_name(name)
            .ok_or_else(|| ApiError::invalid(field, self.binding.spec.pattern.describe()))
    }

    pub fn name(&self, tenant_id: &str, parent_id: &str, id: &str) -> String {
        self.binding.name(tenant_id, parent_id, id)
    }

    /// Checks and normalises a record's values (see [`fields::prepare`]);
    /// every bad field is reported under `prefix` at once. Returns the kinds
    /// redacted in [`Sensitive::Redact`] mode.
    pub fn prepare(
        &self,
        message: &mut M,
        prefix: &str,
        sensitive: Sensitive,
        violations: &mut custodian_runtime::error::Violations,
    ) -> Result<Vec<&'static str>, ApiError> {
        let mut dynamic = message.transcode_to_dynamic();
        let redacted = fields::prepare(&DECLARATIONS, &mut dynamic, prefix, sensitive, violations);
        *message = dynamic.transcode_to::<M>().map_err(ApiError::internal)?;
        Ok(redacted)
    }

    /// The record as `call`'s purpose may see it.
    pub fn shown(&self, call: &Call, stored: &Stored<M>) -> Result<Shown<M>, ApiError> {
        let Cut {
            message, withheld, ..
        } = fields::cut(
            &self.binding.spec,
            &stored.dynamic,
            call.purpose().to_proto(),
        );
        Ok(Shown {
            message: message.transcode_to::<M>().map_err(ApiError::internal)?,
            withheld,
        })
    }

    /// Records that `name` was not found (or not visible) and answers so.
    pub async fn not_found(&self, call: &Call, name: &str) -> Status {
        self.store.privacy().not_found(&call.access, name).await
    }

    /// The record named `name`, whole and unaudited, if it exists and the
    /// caller may see it; an invisible one is answered (and audited) as
    /// missing. For a handler's own decisions; answer with [`Self::read`].
    pub async fn find(&self, call: &Call, name: &str, field: &str) -> Result<Stored<M>, Status> {
        let row = self.visible(call, name, field).await?;
        Ok(self.stored(row)?)
    }

    /// The row behind [`Self::find`], not yet made the typed record.
    async fn visible(&self, call: &Call, name: &str, field: &str) -> Result<Row, Status> {
        let raw = self.visible_raw(call, name, field).await?;
        Ok(self.store.open_raw(&self.binding, raw)?)
    }

    /// The stored row named `name`, if it exists and the caller may see
    /// it; an invisible one is answered (and audited) as missing.
    async fn visible_raw(&self, call: &Call, name: &str, field: &str) -> Result<Raw, Status> {
        let vars = self.parse(name, field)?;
        let row = self.store.fetch_raw(&self.binding, vars.id()).await?;
        let visible = row.filter(|row| {
            call.sees_tenant(&row.tenant_id)
                && vars.tenant().is_none_or(|t| t == row.tenant_id)
                && vars.parent().is_none_or(|p| p == row.parent_id)
        });
        match visible {
            Some(row) => Ok(row),
            None => Err(self.not_found(call, name).await),
        }
    }

    /// Reads a record for the caller: cut down to its purpose, audited
    /// before it is answered. The stored bytes are cut as they are and
    /// decoded once, into the typed record (see `Store::open_cut`): the
    /// whole record is never made.
    pub async fn read(&self, call: &Call, name: &str, field: &str) -> Result<Shown<M>, Status> {
        let privacy = self.store.privacy();
        let raw = self.visible_raw(call, name, field).await?;
        let opened = self
            .store
            .open_cut(&self.binding, raw, call.purpose().to_proto())?;
        let message = M::decode(opened.encoded.as_slice()).map_err(ApiError::internal)?;
        let fields: Vec<&str> = opened.shown.iter().map(String::as_str).collect();
        let event = privacy.event(
            &call.access,
            &opened.name,
            &opened.subject_id,
            &fields,
            AuditOutcome::Ok,
        );
        privacy.audit.record(event).await?;
        Ok(Shown {
            message,
            withheld: opened.withheld,
        })
    }

    /// Cuts records down to the caller's purpose and audits each read.
    pub async fn audited(
        &self,
        call: &Call,
        records: Vec<Stored<M>>,
    ) -> Result<Vec<Shown<M>>, Status> {
        self.cut_and_audit(call, records.iter().map(|r| (&r.subject_id, &r.dynamic)))
            .await
    }

    /// Each record (its subject, its whole message) cut to the caller's
    /// purpose; every read's event is durable before this returns.
    async fn cut_and_audit<'a>(
        &self,
        call: &Call,
        records: impl IntoIterator<Item = (&'a String, &'a DynamicMessage)>,
    ) -> Result<Vec<Shown<M>>, Status> {
        let privacy = self.store.privacy();
        let mut events = Vec::new();
        let mut shown = Vec::new();
        for (subject_id, message) in records {
            let cut = fields::cut(&self.binding.spec, message, call.purpose().to_proto());
            let fields: Vec<&str> = cut.shown.iter().map(String::as_str).collect();
            let name = name_of(message);
            events.push(privacy.event(&call.access, &name, subject_id, &fields, AuditOutcome::Ok));
            shown.push(Shown {
                message: cut
                    .message
                    .transcode_to::<M>()
                    .map_err(ApiError::internal)?,
                withheld: cut.withheld,
            });
        }
        privacy.record_all(events).await?;
        Ok(shown)
    }

    /// One page of records matching `query`, whole and unaudited; a caller
    /// limited to a tenant gets only that tenant's, whatever it asked.
    pub async fn query(
        &self,
        call: &Call,
        query: &Query,
        page: &Page,
    ) -> Result<(Vec<Stored<M>>, String), Status> {
        let mut sql = format!(
            "{} WHERE r.id > $1",
            self.binding.select(self.store.service())
        );
        let mut args = vec![Arg::Text(page.after.clone().unwrap_or_default())];
        let add = |sql: &mut String, args: &mut Vec<Arg>, condition: &str, arg: Arg| {
            args.push(arg);
            sql.push_str(&format!(" AND {condition} ${}", args.len()));
        };
        if let Some(limit) = call.tenant_limit() {
            add(
                &mut sql,
                &mut args,
                "r.tenant_id =",
                Arg::Text(limit.to_owned()),
            );
        }
        if let Some(tenant) = &query.tenant {
            add(
                &mut sql,
                &mut args,
                "r.tenant_id =",
                Arg::Text(tenant.clone()),
            );
        }
        if let Some(parent) = &query.parent_id {
            add(
                &mut sql,
                &mut args,
                "r.parent_id =",
                Arg::Text(parent.clone()),
            );
        }
        for filter in &query.filters {
            match filter {
                Filter::Eq(column, arg)
                | Filter::AtLeast(column, arg)
                | Filter::Before(column, arg) => {
                    if !self.binding.is_column(column) {
                        return Err(ApiError::internal(std::io::Error::other(
                            "filter on an undeclared column",
                        ))
                        .into());
                    }
                    let op = match filter {
                        Filter::Eq(..) => "=",
                        Filter::AtLeast(..) => ">=",
                        _ => "<",
                    };
                    add(
                        &mut sql,
                        &mut args,
                        &format!("r.{column} {op}"),
                        arg.clone(),
                    );
                }
                Filter::Lookup(lookup, value) => {
                    let column = match lookup {
                        Lookup::Phone => "r.phone_key =",
                        Lookup::User => "r.user_key =",
                        _ => "r.email_key =",
                    };
                    let key = self.store.lookup_key(*lookup, value);
                    add(&mut sql, &mut args, column, Arg::Text(key));
                }
                Filter::Sql(condition, values) => {
                    let mut text = String::new();
                    let mut values = values.iter();
                    for piece in condition.split('?').enumerate() {
                        if piece.0 > 0 {
                            let arg = values.next().cloned().unwrap_or(Arg::NullText);
                            args.push(arg);
                            text.push_str(&format!("${}", args.len()));
                        }
                        text.push_str(piece.1);
                    }
                    sql.push_str(&format!(" AND ({text})"));
                }
            }
        }
        args.push(Arg::Int(page.fetch_limit()));
        sql.push_str(&format!(" ORDER BY r.id LIMIT ${}", args.len()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for arg in &args {
            q = bind(q, arg);
        }
        let rows = q
            .fetch_all(self.store.db().pool())
            .await
            .map_err(ApiError::from)?;
        let rows = rows
            .iter()
            .map(|r| self.store.open(&self.binding, r))
            .collect::<Result<Vec<_>, _>>()?;
        let (rows, next) = page.finish(rows, |r| r.id.as_str());
        let stored = rows
            .into_iter()
            .map(|r| self.stored(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((stored, next))
    }

    /// One page for the caller: cut down and audited.
    pub async fn list(
        &self,
        call: &Call,
        query: &Query,
        page: &Page,
    ) -> Result<(Vec<Shown<M>>, String, Vec<String>), Status> {
        let (records, next) = self.query(call, query, page).await?;
        let shown = self.audited(call, records).await?;
        let withheld: BTreeSet<String> = shown
            .iter()
            .flat_map(|s| s.withheld.iter().cloned())
            .collect();
        Ok((shown, next, withheld.into_iter().collect()))
    }

    /// One page of the records under the parent named `parent` (read
    /// through `parents`, so a parent the caller may not see is NOT_FOUND
    /// and audited as such): the messages, the next page token and the
    /// fields withheld. The page token is bound to the parent.
    pub async fn list_children<P>(
        &self,
        call: &Call,
        parents: &Records<P>,
        parent: &str,
        field: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<M>, String, Vec<String>), Status>
    where
        P: prost::Message + ReflectMessage + Default + Clone,
    {
        let page = Page::parse(
            page_size,
            page_token,
            &format!("{}|{parent}", self.binding.table),
        )?;
        let found = parents.find(call, parent, field).await?;
        let query = Query {
            parent_id: Some(found.id.clone()),
            ..Default::default()
        };
        let (shown, next, withheld) = self.list(call, &query, &page).await?;
        Ok((
            shown.into_iter().map(|s| s.message).collect(),
            next,
            withheld,
        ))
    }

    /// Stores a new record (already prepared by the service), sealed under
    /// its subject's key, with its audit event, in one transaction. With an
    /// idempotency key already used, returns the record it created.
    pub async fn create(&self, call: &Call, new: New<M>) -> Result<Stored<M>, Status> {
        self.create_or_replay(call, new)
            .await
            .map(|(stored, _)| stored)
    }

    /// As [`Self::create`], and whether the record is an earlier call's
    /// (an idempotent retry), so the caller does not repeat what followed.
    pub async fn create_or_replay(
        &self,
        call: &Call,
        new: New<M>,
    ) -> Result<(Stored<M>, bool), Status> {
        if !call.sees_tenant(&new.tenant_id) {
            return Err(self
                .not_found(call, &format!("tenants/{}", new.tenant_id))
                .await);
        }
        if let Some(idem) = &new.idempotency
            && let Some(resource) = self.store.replayed(idem).await?
        {
            return self.replay(call, &resource).await.map(|s| (s, true));
        }
        let store = &self.store;
        let id = uuid::Uuid::now_v7().to_string();
        let name = self.binding.name(&new.tenant_id, &new.parent_id, &id);
        let now = store.now();
        let mut message = new.message.transcode_to_dynamic();
        store.set_meta(&self.binding, &mut message, &name, &new.tenant_id, now, now);
        let (email_key, phone_key) = store.lookup_args(&self.binding, &message);
        // A child is sealed under its parent's subject, so erasing the
        // subject takes the whole thread.
        let parent_subject = match &self.binding.parent {
            Some(parent) => {
                let row = store.fetch(parent, &new.parent_id).await?.ok_or_else(|| {
                    ApiError::not_found(parent.name(&new.tenant_id, "", &new.parent_id))
                })?;
                Some(row.subject_id)
            }
            None => None,
        };
        let parent_key = match parent_subject.as_deref().filter(|s| !s.is_empty()) {
            Some(subject) => store.subject_key(subject).await?,
            None => None,
        };
        let subject = match (parent_subject, parent_key) {
            (Some(subject), Some(key)) => Subject::Known(subject, key),
            // The parent's subject was erased: nothing personal may be
            // sealed under a key that no longer exists.
            (Some(_), None) => {
                let parent = self
                    .binding
                    .parent
                    .as_ref()
                    .map_or("", |p| p.spec.pattern.as_str());
                return Err(ApiError::FailedPrecondition(format!(
                    "the person of this {} was erased; nothing can be added to it",
                    parent
                        .split('/')
                        .next()
                        .unwrap_or("record")
                        .trim_end_matches('s')
                ))
                .into());
            }
            (None, _) => Subject::ByEmail,
        };
        let present = fields::present_personal(&self.binding.spec, &message);
        let fields: Vec<&str> = present.iter().map(String::as_str).collect();
        // Its subject is known only inside the write.
        let event = store
            .privacy()
            .event(&call.access, &name, "", &fields, AuditOutcome::Ok);
        let row = NewRow {
            id: id.clone(),
            tenant_id: new.tenant_id.clone(),
            parent_id: new.parent_id.clone(),
            email_key,
            phone_key,
            now,
            columns: store.column_args(&self.binding, &message),
        };
        let insert = Insert {
            binding: self.binding.clone(),
            name: name.clone(),
            subject,
            row,
            message,
            idem: new.idempotency.clone(),
            event,
        };
        let written = match store.db().sqlite_writer() {
            Some(writer) => {
                let writing = store.clone();
                let written = writer
                    .write(move |conn| writing.insert_sqlite(conn, insert))
                    .await?;
                if written.is_ok() {
                    store.privacy().audit.wake();
                }
                written
            }
            None if store.db().backend() == Backend::Postgres => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                store.insert_grouped(pg::Create { insert, reply })?;
                answer
                    .await
                    .map_err(|_| ApiError::Unavailable("the create was not written".into()))?
            }
            None => {
                let tx = store.db().pool().begin().await.map_err(ApiError::from)?;
                store.insert_tx(tx, insert).await
            }
        };
        let (subject_id, message) = match written {
            Ok(created) => created,
            Err(Refused::Failed(err)) => return Err(err.into()),
            Err(Refused::Replayed) => {
                let idem = new
                    .idempotency
                    .as_ref()
                    .ok_or_else(|| internal("a replay without an idempotency key"))?;
                let resource = store
                    .replayed(idem)
                    .await?
                    .ok_or_else(|| internal("idempotency key vanished"))?;
                return self.replay(call, &resource).await.map(|s| (s, true));
            }
        };
        let stored = self.stored(Row {
            id,
            tenant_id: new.tenant_id,
            parent_id: new.parent_id,
            subject_id,
            create_time: now,
            update_time: now,
            message,
        })?;
        Ok((stored, false))
    }

    async fn replay(&self, call: &Call, resource: &str) -> Result<Stored<M>, Status> {
        let vars = self.parse(resource, "request_id")?;
        match self.store.fetch(&self.binding, vars.id()).await? {
            Some(row) if call.sees_tenant(&row.tenant_id) => Ok(self.stored(row)?),
            _ => Err(ApiError::FailedPrecondition(format!(
                "request_id was used to create {resource}, which has since been deleted"
            ))
            .into()),
        }
    }

    /// Changes a record: reads it, lets `change` edit the whole record (an
    /// update mask, a transition), checks and normalises the result as the
    /// declarations say, then runs the service's own `check`, and writes it
    /// back with its audit event only if no one else wrote in between (else
    /// reads again). A record whose email changed moves to the key of the
    /// subject with the new email, with its children.
    #[allow(clippy::too_many_arguments)] // one per part of an AIP-134 update
    pub async fn update(
        &self,
        call: &Call,
        name: &str,
        field: &str,
        prefix: &str,
        change: impl FnMut(&Stored<M>, &mut M) -> Result<(), ApiError>,
        check: impl Fn(&M, &str, &mut custodian_runtime::error::Violations),
    ) -> Result<Stored<M>, Status> {
        let mut nothing = beside(|_| Box::pin(async { Ok(()) }));
        self.update_with(call, name, field, prefix, change, check, &mut nothing)
            .await
    }

    /// As [`Self::update`], and `also` in the same transaction, after the
    /// record is written: what the service keeps beside the record (its
    /// history, its next steps) changes with it or not at all. `also` runs
    /// once per attempt; an attempt that lost a race is rolled back with it.
    #[allow(clippy::too_many_arguments)] // update's, and the work beside it
    pub async fn update_with(
        &self,
        call: &Call,
        name: &str,
        field: &str,
        prefix: &str,
        mut change: impl FnMut(&Stored<M>, &mut M) -> Result<(), ApiError>,
        check: impl Fn(&M, &str, &mut custodian_runtime::error::Violations),
        also: Beside<'_>,
    ) -> Result<Stored<M>, Status> {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let before = self.find(call, name, field).await?;
            let mut after = before.message.clone();
            change(&before, &mut after)?;
            let mut violations = custodian_runtime::error::Violations::new();
            let mut dynamic = after.transcode_to_dynamic();
            fields::prepare_stored(&DECLARATIONS, &mut dynamic, prefix, &mut violations);
            after = dynamic.transcode_to::<M>().map_err(ApiError::internal)?;
            check(&after, prefix, &mut violations);
            violations.finish()?;
            if let Some(row) = self
                .replace(call, &[(before, after)], Some(&mut *also))
                .await?
                .and_then(|rows| rows.into_iter().next())
            {
                return Ok(self.stored(row)?);
            }
        }
        Err(ApiError::Unavailable(format!("{name} is being changed concurrently; retry")).into())
    }

    /// The paths of an update mask, checked against what the declarations
    /// let an update change. A path is never echoed: it is the caller's.
    pub fn mask(&self, mask: Option<prost_types::FieldMask>) -> Result<Vec<String>, ApiError> {
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(ApiError::invalid(
                "update_mask",
                "must name at least one field",
            ));
        }
        let allowed = fields::updatable(&self.binding.spec);
        let mut v = custodian_runtime::error::Violations::new();
        for (i, path) in paths.iter().enumerate() {
            if !allowed.contains(path) {
                v.add(
                    "update_mask",
                    format!(
                        "paths[{i}] is not an updatable field; updatable: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
        v.finish()?;
        Ok(paths)
    }

    /// Copies the masked paths of `patch` into `target`.
    pub fn apply_mask(&self, target: &mut M, patch: &M, paths: &[String]) -> Result<(), ApiError> {
        let mut dynamic = target.transcode_to_dynamic();
        fields::apply_mask(
            &self.binding.spec,
            &mut dynamic,
            &patch.transcode_to_dynamic(),
            paths,
        );
        *target = dynamic.transcode_to::<M>().map_err(ApiError::internal)?;
        Ok(())
    }

    /// Writes changed records at once, or none; the rows as written, or
    /// `None` if any changed since it was read.
    async fn replace(
        &self,
        call: &Call,
        changes: &[(Stored<M>, M)],
        also: Option<Beside<'_>>,
    ) -> Result<Option<Vec<Row>>, ApiError> {
        let pairs: Vec<(Arc<Binding>, Row, DynamicMessage)> = changes
            .iter()
            .map(|(before, after)| {
                (
                    self.binding.clone(),
                    Row {
                        id: before.id.clone(),
                        tenant_id: before.tenant_id.clone(),
                        parent_id: before.parent_id.clone(),
                        subject_id: before.subject_id.clone(),
                        create_time: before.create_time,
                        update_time: before.update_time,
                        message: before.dynamic.clone(),
                    },
                    after.transcode_to_dynamic(),
                )
            })
            .collect();
        self.store.replace_rows(call, &pairs, also).await
    }

    /// Stores again, under its own id, a top-level record of which nothing
    /// personal is known any more (the proof of a data-subject request,
    /// made again from the erasure log after a restore): its units that
    /// are not personal, with no subject, as an anonymised record is kept.
    /// Nothing is written when a record of that id exists; returns whether
    /// one was. Audited as a create by `call`.
    pub async fn restore_anonymous(
        &self,
        call: &Call,
        id: &str,
        create_time: i64,
        message: M,
    ) -> Result<bool, Status> {
        let store = &self.store;
        let binding = &self.binding;
        if binding.parent.is_some() || binding.spec.pattern.has_var("tenant") {
            return Err(internal("only a company's top-level record is restored").into());
        }
        let name = binding.name("", "", id);
        let now = store.now();
        let mut message = message.transcode_to_dynamic();
        store.set_meta(binding, &mut message, &name, "", create_time, now);
        let kept = fields::without_personal(&binding.spec, &message);
        let (_, attrs) = store.documents(binding, &name, &kept, None);
        let mut args = vec![
            Arg::Text(id.to_owned()),
            Arg::Text(String::new()),
            Arg::Text(String::new()),
            Arg::Text(String::new()),
            Arg::Text(String::new()),
            Arg::Text(attrs),
            Arg::NullText,
            Arg::NullText,
            Arg::Int(create_time),
            Arg::Int(now),
        ];
        args.extend(store.column_args(binding, &kept));
        let sql = format!("{} ON CONFLICT (id) DO NOTHING", binding.insert_sql());
        let mut tx = store.db().pool().begin().await.map_err(ApiError::from)?;
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for arg in &args {
            q = bind(q, arg);
        }
        let written = q.execute(&mut *tx).await.map_err(ApiError::from)?;
        if written.rows_affected() == 0 {
            tx.rollback().await.map_err(ApiError::from)?;
            return Ok(false);
        }
        let mut event = call.event(store.privacy(), &name, "", &[], AuditOutcome::Ok);
        event.detail = call.detail("re-created from the erasure log, without personal data");
        store.privacy().audit.commit(tx, &[event]).await?;
        Ok(true)
    }

    /// Deletes a record and its children; keys no record needs are destroyed.
    pub async fn delete(&self, call: &Call, name: &str, field: &str) -> Result<(), Status> {
        let stored = self.find(call, name, field).await?;
        let store = &self.store;
        let template = store
            .privacy()
            .event(&call.access, "", "", &[], AuditOutcome::Ok);
        let mut tx = store.db().pool().begin().await.map_err(ApiError::from)?;
        let sql = format!(
            "DELETE FROM {} WHERE id = $1 AND update_time = $2 RETURNING subject_id",
            self.binding.table
        );
        let gone = sqlx::query(AssertSqlSafe(sql))
            .bind(&stored.id)
            .bind(stored.update_time)
            .fetch_optional(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        if gone.is_none() {
            return Err(ApiError::Aborted(format!(
                "{name} changed while it was being deleted; retry"
            ))
            .into());
        }
        let mut events = Vec::new();
        let mut subjects = vec![stored.subject_id.clone()];
        for (child, subject) in store
            .delete_children(&mut tx, &self.binding, &stored.tenant_id, &stored.id)
            .await?
        {
            events.push(stamp(&template, child, &subject));
            subjects.push(subject);
        }
        store.forget_idempotency(&mut tx, name).await?;
        store.shred_unused(&mut tx, &subjects).await?;
        events.push(stamp(&template, name.to_owned(), &stored.subject_id));
        store.privacy().audit.commit(tx, &events).await?;
        Ok(())
    }
}

impl Store {
    /// Writes changed rows (each as binding, before, after) at once, or
    /// none; returns the rows as written, or `None` if any changed since it
    /// was read. Re-keys a root record whose email changed, and its children.
    pub(crate) async fn replace_rows(
        &self,
        call: &Call,
        changes: &[(Arc<Binding>, Row, DynamicMessage)],
        also: Option<Beside<'_>>,
    ) -> Result<Option<Vec<Row>>, ApiError> {
        // Keys of unchanged subjects are read before the transaction, which
        // must begin with a write. A key read here stays valid: if it is
        // destroyed meanwhile, so is the record, and the compare-and-set
        // below fails.
        let mut keys = std::collections::HashMap::new();
        for (binding, before, _) in changes {
            if !before.subject_id.is_empty() && !keys.contains_key(&before.subject_id) {
                match self.subject_key(&before.subject_id).await? {
                    Some(key) => {
                        keys.insert(before.subject_id.clone(), key);
                    }
                    None if binding.parent.is_some() => {}
                    None => return Ok(None),
                }
            }
        }
        let template = call.event(self.privacy(), "", "", &[], AuditOutcome::Ok);
        let now = self.now();
        let mut tx = self.db().pool().begin().await?;
        let mut events = Vec::new();
        let mut released = Vec::new();
        let mut written = Vec::with_capacity(changes.len());
        for (binding, before, after) in changes {
            let mut after = after.clone();
            let name = binding.name(&before.tenant_id, &before.parent_id, &before.id);
            let update_time = next_update_time(now, before.update_time);
            self.set_meta(
                binding,
                &mut after,
                &name,
                &before.tenant_id,
                before.create_time,
                update_time,
            );
            // An anonymised record holds nothing personal and never will
            // again: its subject's key is gone.
            if before.subject_id.is_empty()
                && fields::split(&binding.spec, &after)
                    .0
                    .fields()
                    .next()
                    .is_some()
            {
                return Err(ApiError::FailedPrecondition(format!(
                    "{name} was anonymised when its person was erased; it takes no personal data"
                )));
            }
            let (email_key, phone_key) = self.lookup_args(binding, &after);
            let (old_email, _) = self.lookup_args(binding, &before.message);
            let rekey = binding.parent.is_none()
                && !before.subject_id.is_empty()
                && binding
                    .spec
                    .lookups
                    .iter()
                    .any(|(l, _)| *l == Lookup::Email)
                && email_key != old_email;
            let mut subject_id = before.subject_id.clone();
            let fresh;
            let key = if rekey {
                let (subject, key) = self
                    .vault()
                    .subject_key(&mut tx, email_key.as_deref())
                    .await?;
                released.push(before.subject_id.clone());
                subject_id = subject;
                fresh = key;
                Some(&fresh)
            } else {
                keys.get(&before.subject_id)
            };
            let (sealed, attrs) = self.documents(binding, &name, &after, key);
            let columns = binding.column_names();
            let sets: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!(", {c} = ${}", i + 9))
                .collect();
            let sql = format!(
                "UPDATE {} SET subject_id = $1, data = $2, attrs = $3, email_key = $4, phone_key = $5, \
                 update_time = $6{} WHERE id = $7 AND update_time = $8",
                binding.table,
                sets.join("")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(&subject_id)
                .bind(sealed)
                .bind(attrs)
                .bind(email_key)
                .bind(phone_key)
                .bind(update_time)
                .bind(&before.id)
                .bind(before.update_time);
            for arg in self.column_args(binding, &after) {
                q = bind(q, &arg);
            }
            let done = q
                .execute(&mut *tx)
                .await
                .map_err(|e| binding.write_error(&before.tenant_id, e))?;
            if done.rows_affected() != 1 {
                return Ok(None);
            }
            if rekey {
                self.reseal_children(&mut tx, binding, before, &subject_id, key)
                    .await?;
            }
            let changed = fields::changed_units(&binding.spec, &before.message, &after);
            events.push(Event {
                fields: changed,
                ..stamp(&template, name, &subject_id)
            });
            written.push(Row {
                subject_id,
                update_time,
                message: after,
                ..before.clone()
            });
        }
        self.shred_unused(&mut tx, &released).await?;
        if let Some(also) = also {
            also(&mut tx).await?;
        }
        self.privacy().audit.commit(tx, &events).await?;
        Ok(Some(written))
    }

    /// Moves the children of a re-keyed record to its new subject.
    async fn reseal_children(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        binding: &Arc<Binding>,
        parent: &Row,
        subject_id: &str,
        key: Option<&DataKey>,
    ) -> Result<(), ApiError> {
        let old_key = self.subject_key(&parent.subject_id).await?;
        for child in self.children(binding) {
            let sql = format!("SELECT id, data FROM {} WHERE parent_id = $1", child.table);
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(&parent.id)
                .fetch_all(&mut **tx)
                .await?;
            for row in rows {
                let id: String = row.try_get("id")?;
                let sealed: String = row.try_get("data")?;
                let name = child.name(&parent.tenant_id, &parent.id, &id);
                let resealed = match (sealed.is_empty(), &old_key, key) {
                    (true, _, _) => String::new(),
                    (false, Some(old), Some(new)) => {
                        let plain = self.vault().open(old, &sealed, &name)?;
                        self.vault().seal(new, &plain, &name)
                    }
                    _ => return Err(internal("a sealed child without a key")),
                };
                let sql = format!(
                    "UPDATE {} SET subject_id = $1, data = $2 WHERE id = $3",
                    child.table
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(subject_id)
                    .bind(resealed)
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    // --- data subjects -------------------------------------------------

    /// Every record of the subject with this email or phone (normalised),
    /// and the children of each, that the caller may see.
    pub(crate) async fn find_subject(
        &self,
        call: &Call,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Vec<Found>, ApiError> {
        let email_key = email.map(|e| self.lookup_key(Lookup::Email, e));
        let phone_key = phone.map(|p| self.lookup_key(Lookup::Phone, p));
        let mut found = Vec::new();
        for binding in self
            .inner
            .bindings
            .iter()
            .filter(|b| b.parent.is_none() && !b.spec.lookups.is_empty())
        {
            let sql = format!(
                "{} WHERE r.email_key = $1 OR r.phone_key = $2 ORDER BY r.id",
                binding.select(self.inner.service)
            );
            // NULL matches nothing, so an absent key never matches a row.
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(email_key.as_deref())
                .bind(phone_key.as_deref())
                .fetch_all(self.inner.db.pool())
                .await?;
            for row in &rows {
                let row = self.open(binding, row)?;
                if call.sees_tenant(&row.tenant_id) {
                    found.push(Found {
                        binding: binding.clone(),
                        row,
                    });
                }
            }
        }
        self.with_children(found).await
    }

    /// The names of the root records the caller may see whose email,
    /// phone or user blind index is one of `lookups` (`email:KEY`,
    /// `phone:KEY`, `user:KEY`) and that were created at or before
    /// `created_by`: what an erasure by those keys found, or would have.
    pub(crate) async fn names_by_lookups(
        &self,
        call: &Call,
        lookups: &[String],
        created_by: i64,
    ) -> Result<Vec<String>, ApiError> {
        let keys = |prefix: &str| -> Vec<&str> {
            lookups
                .iter()
                .filter_map(|l| l.strip_prefix(prefix))
                .collect()
        };
        let (emails, phones, users) = (keys("email:"), keys("phone:"), keys("user:"));
        let mut names = Vec::new();
        for binding in self.inner.bindings.iter().filter(|b| b.parent.is_none()) {
            let mut args: Vec<Arg> = vec![Arg::Int(created_by)];
            let mut wanted = Vec::new();
            let mut any = |column: &str, values: &[&str], args: &mut Vec<Arg>| {
                if values.is_empty() {
                    return;
                }
                let mut placeholders = Vec::new();
                for value in values {
                    args.push(Arg::Text((*value).to_owned()));
                    placeholders.push(format!("${}", args.len()));
                }
                wanted.push(format!("{column} IN ({})", placeholders.join(", ")));
            };
            any("email_key", &emails, &mut args);
            any("phone_key", &phones, &mut args);
            if binding.user_lookup().is_some() {
                any("user_key", &users, &mut args);
            }
            if wanted.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT id, tenant_id, parent_id FROM {} WHERE create_time <= $1 AND ({}) ORDER BY id",
                binding.table,
                wanted.join(" OR ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for arg in &args {
                q = bind(q, arg);
            }
            for row in q.fetch_all(self.db().pool()).await? {
                let (id, tenant_id, parent_id): (String, String, String) = (
                    row.try_get("id")?,
                    row.try_get("tenant_id")?,
                    row.try_get("parent_id")?,
                );
                if call.sees_tenant(&tenant_id) {
                    names.push(binding.name(&tenant_id, &parent_id, &id));
                }
            }
        }
        Ok(names)
    }

    /// The record named `name`, of any resource here, with its children;
    /// or, for the name of an authorized user, every record that refers to
    /// that user.
    pub(crate) async fn find_named(
        &self,
        call: &Call,
        name: &str,
    ) -> Result<Option<Vec<Found>>, ApiError> {
        let referring: Vec<&Arc<Binding>> = self
            .inner
            .bindings
            .iter()
            .filter(|b| {
                b.user_lookup().is_some_and(|u| {
                    u.path
                        .last()
                        .and_then(|field| DECLARATIONS.reference(field))
                        .is_some_and(|p| p.parse_name(name).is_some())
                })
            })
            .collect();
        if !referring.is_empty() {
            let key = self.lookup_key(Lookup::User, name);
            let mut found = Vec::new();
            for binding in referring {
                let sql = format!(
                    "{} WHERE r.user_key = $1 ORDER BY r.id",
                    binding.select(self.inner.service)
                );
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(&key)
                    .fetch_all(self.inner.db.pool())
                    .await?;
                for row in &rows {
                    let row = self.open(binding, row)?;
                    if call.sees_tenant(&row.tenant_id) {
                        found.push(Found {
                            binding: binding.clone(),
                            row,
                        });
                    }
                }
            }
            return self.with_children(found).await.map(Some);
        }
        for binding in &self.inner.bindings {
            let Some(vars) = binding.spec.pattern.parse_name(name) else {
                continue;
            };
            let Some(row) = self.fetch(binding, vars.id()).await? else {
                return Ok(Some(Vec::new()));
            };
            let matches = call.sees_tenant(&row.tenant_id)
                && vars.tenant().is_none_or(|t| t == row.tenant_id)
                && vars.parent().is_none_or(|p| p == row.parent_id);
            if !matches {
                return Ok(Some(Vec::new()));
            }
            let found = vec![Found {
                binding: binding.clone(),
                row,
            }];
            return self.with_children(found).await.map(Some);
        }
        Ok(None)
    }

    async fn with_children(&self, found: Vec<Found>) -> Result<Vec<Found>, ApiError> {
        // Children are read for many parents at once: a subject with
        // thousands of tickets is a few queries, not one per ticket.
        const PER_QUERY: usize = 500;
        let mut children_of: std::collections::HashMap<(String, String), Vec<Found>> =
            std::collections::HashMap::new();
        let mut bindings: Vec<Arc<Binding>> = Vec::new();
        for parent in &found {
            if !bindings.iter().any(|b| Arc::ptr_eq(b, &parent.binding)) {
                bindings.push(parent.binding.clone());
            }
        }
        for binding in &bindings {
            let ids: Vec<&str> = found
                .iter()
                .filter(|f| Arc::ptr_eq(&f.binding, binding))
                .map(|f| f.row.id.as_str())
                .collect();
            for child in self.children(binding) {
                for chunk in ids.chunks(PER_QUERY) {
                    let placeholders: Vec<String> =
                        (1..=chunk.len()).map(|i| format!("${i}")).collect();
                    let sql = format!(
                        "{} WHERE r.parent_id IN ({}) ORDER BY r.id",
                        child.select(self.inner.service),
                        placeholders.join(", ")
                    );
                    let mut query = sqlx::query(AssertSqlSafe(sql));
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    for row in &query.fetch_all(self.inner.db.pool()).await? {
                        let row = self.open(&child, row)?;
                        children_of
                            .entry((child.table.to_owned(), row.parent_id.clone()))
                            .or_default()
                            .push(Found {
                                binding: child.clone(),
                                row,
                            });
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(found.len());
        for parent in found {
            let children = self.children(&parent.binding);
            let (tenant_id, id) = (parent.row.tenant_id.clone(), parent.row.id.clone());
            out.push(parent);
            for child in children {
                for found in children_of
                    .remove(&(child.table.to_owned(), id.clone()))
                    .unwrap_or_default()
                {
                    debug_assert_eq!(found.row.tenant_id, tenant_id);
                    out.push(found);
                }
            }
        }
        Ok(out)
    }

    /// Erases what was found: each record deleted or anonymised as its
    /// resource declares, children deleted, the subjects' keys destroyed
    /// when no record needs them, one audit event per record, at once.
    pub(crate) async fn erase(&self, call: &Call, found: &[Found]) -> Result<(), ApiError> {
        let template = call.event(self.privacy(), "", "", &[], AuditOutcome::Ok);
        let mut tx = self.db().pool().begin().await?;
        let mut events = Vec::new();
        let mut subjects = Vec::new();
        let now = self.now();
        for Found { binding, row } in found {
            let name = binding.name(&row.tenant_id, &row.parent_id, &row.id);
            match binding.spec.policy.erasure() {
                custodian_proto::privacy::v1::Erasure::Anonymize => {
                    let kept = fields::without_personal(&binding.spec, &row.message);
                    let (_, attrs) = self.documents(binding, &name, &kept, None);
                    let sql = format!(
                        "UPDATE {} SET subject_id = '', data = '', attrs = $1, email_key = NULL, \
                         phone_key = NULL{}, update_time = $2 WHERE id = $3",
                        binding.table,
                        if binding.user_lookup().is_some() {
                            ", user_key = NULL"
                        } else {
                            ""
                        }
                    );
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(attrs)
                        .bind(next_update_time(now, row.update_time))
                        .bind(&row.id)
                        .execute(&mut *tx)
                        .await?;
                }
                _ => {
                    let sql = format!("DELETE FROM {} WHERE id = $1", binding.table);
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(&row.id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            // Children of an erased record go whatever their own policy:
            // they are sealed under the subject's key, which is destroyed.
            if binding.parent.is_none() {
                for (child, subject) in self
                    .delete_children(&mut tx, binding, &row.tenant_id, &row.id)
                    .await?
                {
                    if !found.iter().any(|f| {
                        f.binding
                            .name(&f.row.tenant_id, &f.row.parent_id, &f.row.id)
                            == child
                    }) {
                        events.push(stamp(&template, child, &subject));
                    }
                }
            }
            self.forget_idempotency(&mut tx, &name).await?;
            events.push(stamp(&template, name, &row.subject_id));
            subjects.push(row.subject_id.clone());
        }
        self.shred_unused(&mut tx, &subjects).await?;
        self.privacy().audit.commit(tx, &events).await?;
        Ok(())
    }

    // --- retention -------------------------------------------------------

    /// Deletes up to `batch` root records of `binding` whose retention clock
    /// is before `cutoff`, held for `tenant` (or, with `None`, for any tenant
    /// not in `except`), skipping those `held` says to keep; with their
    /// children; destroys keys no record needs. Returns (deleted, examined).
    pub(crate) async fn sweep_batch(
        &self,
        binding: &Arc<Binding>,
        scope: &SweepScope<'_>,
        after: &str,
        held: Held<'_>,
    ) -> Result<(i64, Option<String>), ApiError> {
        let clock = &binding.spec.retention_clock;
        let mut sql = format!(
            "SELECT id, tenant_id, subject_id, email_key, phone_key FROM {} \
             WHERE parent_id = '' AND {clock} IS NOT NULL AND {clock} < $1 AND id > $2",
            binding.table
        );
        let SweepScope {
            tenant,
            except,
            cutoff,
            batch,
        } = *scope;
        let mut args = vec![Arg::Int(cutoff), Arg::Text(after.to_owned())];
        match tenant {
            Some(t) => {
                args.push(Arg::Text(t.to_owned()));
                sql.push_str(&format!(" AND tenant_id = ${}", args.len()));
            }
            None => {
                for t in except {
                    args.push(Arg::Text(t.clone()));
                    sql.push_str(&format!(" AND tenant_id <> ${}", args.len()));
                }
            }
        }
        args.push(Arg::Int(batch));
        sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for arg in &args {
            q = bind(q, arg);
        }
        let rows = q.fetch_all(self.db().pool()).await?;
        let Some(last) = rows.last() else {
            return Ok((0, None));
        };
        let last: String = last.try_get("id")?;
        let mut doomed = Vec::new();
        for row in &rows {
            let tenant_id: String = row.try_get("tenant_id")?;
            let email: Option<String> = row.try_get("email_key")?;
            let phone: Option<String> = row.try_get("phone_key")?;
            if !held(&tenant_id, email.as_deref(), phone.as_deref()) {
                doomed.push((
                    row.try_get::<String, _>("id")?,
                    tenant_id,
                    row.try_get::<String, _>("subject_id")?,
                ));
            }
        }
        let mut tx = self.db().pool().begin().await?;
        let mut subjects = Vec::new();
        let mut deleted = 0;
        for (id, tenant_id, subject) in &doomed {
            let sql = format!(
                "DELETE FROM {} WHERE id = $1 AND {clock} IS NOT NULL AND {clock} < $2",
                binding.table
            );
            let done = sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 1 {
                deleted += 1;
                for (_, child_subject) in self
                    .delete_children(&mut tx, binding, tenant_id, id)
                    .await?
                {
                    subjects.push(child_subject);
                }
                self.forget_idempotency(&mut tx, &binding.name(tenant_id, "", id))
                    .await?;
                subjects.push(subject.clone());
            }
        }
        self.shred_unused(&mut tx, &subjects).await?;
        tx.commit().await?;
        Ok((deleted, Some(last)))
    }
}
