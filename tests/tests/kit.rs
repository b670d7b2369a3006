//! The service kit, checked against its own declarations: redaction for
//! every purpose and category, the shared subject-data contract routed per
//! service on one database, forged and widened calls between services,
//! deadlines carried across them, the access stack in front of every
//! handler, the data map, and the kernel's writers started for every
//! service.
//!
//! The expectations are read from the contracts' options here, not from the
//! kit's own tables, so a test fails when the kit and the declarations part.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use custodian_kit::{
    Call, DECLARATIONS,
    call::REDACTED_HEADER,
    fields,
    gate::KitGate,
    peers::{Credential, Peers},
};
use custodian_privacy::{
    Method, Purpose, TokenAuthenticator,
    token::{TokenIssuer, TokenVerifier, generate_key_pair},
};
use custodian_proto::{
    DESCRIPTOR_POOL,
    audit::v1::{
        AuditAction, AuditOutcome, ListAuditEventsRequest, audit_service_client::AuditServiceClient,
    },
    common::v1::{SubjectIdentifier, subject_identifier},
    identity::v1::{
        Contact, CreateContactRequest, CreateUserRequest, GetContactRequest, GetTenantRequest,
        GetUserRequest, contact_service_client::ContactServiceClient,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
    privacy::v1::{DataMap, FieldPolicy, GetDataMapRequest},
    prost_reflect::{
        DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
        bytes::{Buf as _, BufMut as _, Bytes},
        prost::Message as _,
    },
    subject::v1::{
        EraseSubjectDataRequest, ExportSubjectDataRequest, LocateSubjectDataRequest,
        subject_data_service_client::SubjectDataServiceClient,
    },
    tickets::v1::{
        CreateTicketRequest, GetTicketRequest, ListMessagesRequest, ListTicketsRequest, Requester,
        Ticket,
        ticket::{Channel as TicketChannel, Kind as TicketKind},
    },
};
use custodian_runtime::{server::AdmissionLayer, time::SystemClock};
use custodian_tests::{
    Backend, Bearer, TestApp, TestDatabase, fixtures, issue, spawn, spawn_with, storage_test,
    test_config, test_keys,
};
use tokio_stream::StreamExt as _;
use tonic::{
    Code, Status,
    body::Body,
    codegen::{Service, http},
    metadata::MetadataValue,
    transport::Channel,
};
use tower::Layer as _;

// --- the declarations, read from the contracts' options ---------------------

/// A field's declaration, straight from its options.
fn declared(field: &FieldDescriptor) -> Option<FieldPolicy> {
    let ext = DESCRIPTOR_POOL.get_extension_by_name("custodian.privacy.v1.field")?;
    let options = field.options();
    if !options.has_extension(&ext) {
        return None;
    }
    options
        .get_extension(&ext)
        .as_message()?
        .transcode_to::<FieldPolicy>()
        .ok()
}

/// One privacy unit as the options declare it: a path and its policy.
#[derive(Clone)]
struct DeclaredUnit {
    path: Vec<FieldDescriptor>,
    dotted: String,
    policy: FieldPolicy,
}

impl DeclaredUnit {
    fn shown_to(&self, purpose: Purpose) -> bool {
        !self.policy.personal
            || self
                .policy
                .visible_to
                .contains(&(purpose.to_proto() as i32))
    }
}

/// Every declared unit of `message`, groups split into their fields.
fn declared_units(message: &MessageDescriptor) -> Vec<DeclaredUnit> {
    fn walk(
        message: &MessageDescriptor,
        prefix: &mut Vec<FieldDescriptor>,
        out: &mut Vec<DeclaredUnit>,
    ) {
        for field in message.fields() {
            let Some(policy) = declared(&field) else {
                continue;
            };
            prefix.push(field.clone());
            match field.kind() {
                Kind::Message(inner) if policy.group => walk(&inner, prefix, out),
                _ => out.push(DeclaredUnit {
                    dotted: prefix
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join("."),
                    path: prefix.clone(),
                    policy,
                }),
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(message, &mut Vec::new(), &mut out);
    out
}

/// A value for every field of `message` (the first field of each oneof),
/// whatever its type: the record a purpose is cut down from.
fn filled(message: &MessageDescriptor, depth: usize) -> DynamicMessage {
    assert!(depth < 8, "{} nests too deep to fill", message.full_name());
    let mut out = DynamicMessage::new(message.clone());
    for field in message.fields() {
        if let Some(oneof) = field.containing_oneof()
            && oneof.fields().next().is_some_and(|first| first != field)
        {
            continue;
        }
        let one = match field.kind() {
            Kind::String => Value::String(format!("{} value", field.name())),
            Kind::Bytes => Value::Bytes(Bytes::from_static(b"bytes")),
            Kind::Bool => Value::Bool(true),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(7),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(7),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(7),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(7),
            Kind::Float => Value::F32(1.5),
            Kind::Double => Value::F64(1.5),
            Kind::Enum(e) => Value::EnumNumber(
                e.values()
                    .map(|v| v.number())
                    .find(|n| *n != 0)
                    .unwrap_or_default(),
            ),
            Kind::Message(inner) => Value::Message(filled(&inner, depth + 1)),
        };
        let value = if field.is_list() {
            Value::List(vec![one])
        } else {
            one
        };
        out.set_field(&field, value);
    }
    out
}

fn get_at(message: &DynamicMessage, path: &[FieldDescriptor]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut current = message.clone();
    for field in parents {
        if !current.has_field(field) {
            return None;
        }
        current = current.get_field(field).as_message()?.clone();
    }
    current
        .has_field(last)
        .then(|| current.get_field(last).into_owned())
}

fn set_at(message: &mut DynamicMessage, path: &[FieldDescriptor], value: Value) {
    let (last, parents) = path.split_last().expect("a path");
    let mut current = message;
    for field in parents {
        current = current
            .get_field_mut(field)
            .as_message_mut()
            .expect("a group is a message");
    }
    current.set_field(last, value);
}

/// What `purpose` may see of `full`, built unit by unit from the options:
/// every non-personal unit, and the personal units it is declared to see.
/// Returns the record and the personal units withheld.
fn expected_cut(
    message: &MessageDescriptor,
    full: &DynamicMessage,
    purpose: Purpose,
) -> (DynamicMessage, Vec<String>, Vec<String>) {
    let mut out = DynamicMessage::new(message.clone());
    let mut shown = Vec::new();
    let mut withheld = Vec::new();
    for unit in declared_units(message) {
        let Some(value) = get_at(full, &unit.path) else {
            continue;
        };
        if unit.shown_to(purpose) {
            set_at(&mut out, &unit.path, value);
            if unit.policy.personal {
                shown.push(unit.dotted.clone());
            }
        } else {
            withheld.push(unit.dotted.clone());
        }
    }
    (out, shown, withheld)
}

const RESOURCES: [&str; 5] = [
    "custodian.identity.v1.User",
    "custodian.identity.v1.Contact",
    "custodian.identity.v1.EvaluationSignup",
    "custodian.tickets.v1.Ticket",
    "custodian.tickets.v1.TicketMessage",
];

#[test]
fn every_purpose_sees_exactly_what_every_resource_declares_for_it() {
    // The purposes of the vocabulary, all of them.
    let vocabulary = DESCRIPTOR_POOL
        .get_enum_by_name("custodian.privacy.v1.Purpose")
        .unwrap();
    assert_eq!(
        vocabulary.values().filter(|v| v.number() != 0).count(),
        Purpose::ALL.len(),
        "a purpose of the contract is missing from the kernel"
    );
    let mut seen = BTreeSet::new();
    let mut cases = 0;
    for spec in DECLARATIONS.resources() {
        seen.insert(spec.full_name().to_owned());
        let units = declared_units(&spec.desc);
        // The kit found the same units as the options declare.
        assert_eq!(
            spec.units
                .iter()
                .map(|u| u.dotted.as_str())
                .collect::<Vec<_>>(),
            units.iter().map(|u| u.dotted.as_str()).collect::<Vec<_>>(),
            "{}",
            spec.full_name()
        );
        let full = filled(&spec.desc, 0);
        for unit in &units {
            assert!(
                get_at(&full, &unit.path).is_some(),
                "{}.{} is not filled",
                spec.full_name(),
                unit.dotted
            );
        }
        let personal: Vec<&str> = units
            .iter()
            .filter(|u| u.policy.personal)
            .map(|u| u.dotted.as_str())
            .collect();
        assert!(
            !personal.is_empty(),
            "{} holds nothing personal",
            spec.full_name()
        );
        for purpose in Purpose::ALL {
            let cut = fields::cut(spec, &full, purpose.to_proto());
            let (expected, shown, withheld) = expected_cut(&spec.desc, &full, purpose);
            assert_eq!(
                cut.message,
                expected,
                "{} for {purpose:?}: shows other than declared",
                spec.full_name()
            );
            assert_eq!(cut.shown, shown, "{} for {purpose:?}", spec.full_name());
            assert_eq!(
                cut.withheld,
                withheld,
                "{} for {purpose:?}",
                spec.full_name()
            );
            // The read path's cut of the stored parts, on the wire, is the
            // same record without its meta fields (the store encodes those
            // after it), naming the same units.
            let (personal_part, plain_part) = fields::split(spec, &full);
            let mut encoded = fields::EncodedCut::new(spec, purpose.to_proto(), 0);
            encoded.add(&plain_part.encode_to_vec()).unwrap();
            encoded.add(&personal_part.encode_to_vec()).unwrap();
            let mut content = cut.message.clone();
            for meta in custodian_kit::declare::META_FIELDS {
                content.clear_field_by_name(meta);
            }
            assert_eq!(
                DynamicMessage::decode(spec.desc.clone(), encoded.encoded.as_slice()).unwrap(),
                content,
                "{} for {purpose:?}: the wire cut shows other than the cut",
                spec.full_name()
            );
            assert_eq!(encoded.units(), (shown.clone(), withheld.clone()));
            // Whole, meta fields and all, the wire cut is the cut.
            let mut whole = fields::EncodedCut::new(spec, purpose.to_proto(), 0);
            whole.add(&full.encode_to_vec()).unwrap();
            assert_eq!(
                DynamicMessage::decode(spec.desc.clone(), whole.encoded.as_slice()).unwrap(),
                cut.message,
                "{} for {purpose:?}",
                spec.full_name()
            );
            // Shown and withheld together are every personal unit, once.
            let mut all: Vec<&str> = shown.iter().chain(&withheld).map(String::as_str).collect();
            all.sort();
            let mut declared_personal = personal.clone();
            declared_personal.sort();
            assert_eq!(all, declared_personal, "{}", spec.full_name());
            cases += 1;
        }
    }
    for resource in RESOURCES {
        assert!(seen.contains(resource), "{resource} is not declared");
    }
    assert_eq!(cases, seen.len() * Purpose::ALL.len());
}

/// A field nobody declared is never shown, whatever the purpose: the cut
/// starts empty and copies declared units only.
#[test]
fn an_undeclared_field_is_never_shown() {
    let spec = DECLARATIONS
        .resource("custodian.identity.v1.Contact")
        .unwrap();
    let mut full = filled(&spec.desc, 0);
    // A value the declarations know nothing of: an unknown field on the
    // wire, as a newer client or a forgotten field would leave it.
    let mut bytes = full.encode_to_vec();
    bytes.extend([0xf8, 0x06, 0x01]); // field 111, varint 1
    full = DynamicMessage::decode(spec.desc.clone(), bytes.as_slice()).unwrap();
    for purpose in Purpose::ALL {
        let cut = fields::cut(spec, &full, purpose.to_proto());
        assert_eq!(cut.message.unknown_fields().count(), 0, "{purpose:?}");
        // Nor on the read path's cut, which copies bytes as they are.
        let mut encoded = fields::EncodedCut::new(spec, purpose.to_proto(), 0);
        encoded.add(&bytes).unwrap();
        let read = DynamicMessage::decode(spec.desc.clone(), encoded.encoded.as_slice()).unwrap();
        assert_eq!(read.unknown_fields().count(), 0, "{purpose:?}");
        assert_eq!(read, cut.message, "{purpose:?}");
    }
}

/// A read as one purpose: the message and the fields its
/// `custodian-redacted-fields` names, or `None` where the method refuses it.
type Read<M> = (Purpose, Option<(M, Vec<String>)>);

/// `read` (a call of `method`) with a token of each purpose: the message
/// and its redacted-fields header where the method serves the purpose, and
/// `None` (after checking PERMISSION_DENIED) where it does not.
async fn read_as<M, F, Fut>(app: &TestApp, method: &str, read: F) -> Vec<Read<M>>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<tonic::Response<M>, Status>>,
{
    let serves: Vec<Purpose> = DECLARATIONS
        .method(method)
        .unwrap_or_else(|| panic!("{method} is not declared"))
        .policy
        .purposes()
        .filter_map(Purpose::from_proto)
        .collect();
    let mut out = Vec::new();
    for purpose in Purpose::ALL {
        let answer = read(app.token(&[purpose], None)).await;
        if serves.contains(&purpose) {
            let response = answer.unwrap_or_else(|s| panic!("{method} for {purpose:?}: {s:?}"));
            let mut redacted: Vec<String> = response
                .metadata()
                .get(REDACTED_HEADER)
                .map(|v| v.to_str().unwrap().split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            redacted.sort();
            out.push((purpose, Some((response.into_inner(), redacted))));
        } else {
            let status = answer
                .err()
                .unwrap_or_else(|| panic!("{method} does not serve {purpose:?}, yet answered"));
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{method} {purpose:?}"
            );
            out.push((purpose, None));
        }
    }
    out
}

/// Checks each purpose's answer against the declarations, over the whole
/// record `full` (as a purpose that sees everything got it).
fn check_reads<M>(method: &str, full: &M, reads: Vec<Read<M>>)
where
    M: ReflectMessage,
{
    let desc = full.descriptor();
    let full = full.transcode_to_dynamic();
    let mut served = 0;
    for (purpose, read) in reads {
        let Some((message, redacted)) = read else {
            continue;
        };
        served += 1;
        let (expected, _, mut withheld) = expected_cut(&desc, &full, purpose);
        withheld.sort();
        assert_eq!(
            message.transcode_to_dynamic(),
            expected,
            "{method} for {purpose:?} shows other than declared"
        );
        assert_eq!(
            redacted, withheld,
            "{method} for {purpose:?}: {REDACTED_HEADER} must name exactly the withheld fields"
        );
    }
    assert!(served >= 2, "{method} serves too few purposes to compare");
}

fn full_contact() -> Contact {
    Contact {
        person_name: fixtures::name("Ben", "Baker"),
        email: "ben@example.com".into(),
        phone: "+49 30 901820".into(),
        postal_address: fixtures::address("DE"),
        organization: "Baker & Sons".into(),
        job_title: "Buyer".into(),
        notes: "Prefers mornings.".into(),
        ..Default::default()
    }
}

/// Fails unless `message` has a value in every field its resource declares
/// personal, so a read that shows it all is a full check.
fn assert_every_personal_field_set<M: ReflectMessage + Default>(message: &M) {
    let spec = DECLARATIONS.resource_of::<M>().unwrap();
    let dynamic = message.transcode_to_dynamic();
    for unit in spec.personal_units() {
        assert!(
            get_at(&dynamic, &unit.path).is_some(),
            "the {} lacks {}",
            spec.noun(),
            unit.dotted
        );
    }
}

fn has_no_redaction<M>(response: &tonic::Response<M>) -> bool {
    response.metadata().get(REDACTED_HEADER).is_none()
}

storage_test!(
    each_purpose_reads_exactly_the_declared_fields_through_the_api,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let user = app
            .users()
            .create_user(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(fixtures::user("ann@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();

        // A contact with every field filled, as service delivery (which
        // sees all of it) created it.
        let created = app
            .contacts()
            .create_contact(CreateContactRequest {
                parent: "tenants/acme".into(),
                contact: Some(full_contact()),
                request_id: String::new(),
            })
            .await
            .unwrap();
        assert!(has_no_redaction(&created));
        let contact = created.into_inner();
        assert_every_personal_field_set(&contact);
        let path = "/custodian.identity.v1.ContactService/GetContact";
        let reads = read_as(&app, path, |token| {
            let mut client = app.contacts_as(Bearer::new(Some(&token)));
            let name = contact.name.clone();
            async move { client.get_contact(GetContactRequest { name }).await }
        })
        .await;
        check_reads(path, &contact, reads);

        // A ticket with every field a caller may set, as support (which
        // sees all of it) created it.
        let created = app
            .tickets()
            .create_ticket(CreateTicketRequest {
                ticket: Some(Ticket {
                    tenant: "tenants/acme".into(),
                    channel: TicketChannel::Phone as i32,
                    kind: TicketKind::Troubleshooting as i32,
                    category: "login".into(),
                    subject: "Cannot sign in".into(),
                    assignee: "ops:alice".into(),
                    requester: Some(Requester {
                        person_name: fixtures::name("Ann", "Archer"),
                        email: "ann@example.com".into(),
                        phone: "+49 30 901821".into(),
                        postal_address: fixtures::address("DE"),
                        user: user.name.clone(),
                    }),
                    ..Default::default()
                }),
                description: "The login page loops.".into(),
                request_id: String::new(),
            })
            .await
            .unwrap();
        assert!(has_no_redaction(&created));
        let ticket = created.into_inner();
        assert_every_personal_field_set(&ticket);
        let path = "/custodian.tickets.v1.TicketService/GetTicket";
        let reads = read_as(&app, path, |token| {
            let mut client = app.tickets_as(Bearer::new(Some(&token)));
            let name = ticket.name.clone();
            async move { client.get_ticket(GetTicketRequest { name }).await }
        })
        .await;
        // Analytics is served and sees nothing personal of a ticket.
        let analytics = reads
            .iter()
            .find(|(p, _)| *p == Purpose::ProductAnalytics)
            .and_then(|(_, r)| r.as_ref())
            .expect("analytics reads tickets");
        assert!(analytics.0.requester.is_none() && analytics.0.subject.is_empty());
        check_reads(path, &ticket, reads);
        app.stop().await.unwrap();
    }
);

// --- one process, two services, one database --------------------------------

fn email(e: &str) -> Option<SubjectIdentifier> {
    Some(SubjectIdentifier {
        kind: Some(subject_identifier::Kind::Email(e.into())),
    })
}

async fn locate(app: &TestApp, service: &str, who: &str) -> Vec<(String, String)> {
    let mut records: Vec<(String, String)> = app
        .subjects_of(service)
        .locate_subject_data(LocateSubjectDataRequest {
            subject: email(who),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records
        .into_iter()
        .map(|r| (r.resource, r.service))
        .collect();
    records.sort();
    records
}

/// Ann is a user and a contact in identity, and the requester of a ticket
/// (with its first message) in tickets; each service answers for its own.
async fn subject_data_per_service(app: TestApp) {
    fixtures::tenant(&app, "acme").await;
    let user = app
        .users()
        .create_user(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(fixtures::user("ann@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let contact = app
        .contacts()
        .create_contact(CreateContactRequest {
            parent: "tenants/acme".into(),
            contact: Some(fixtures::contact("ann@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let ticket = app
        .tickets()
        .create_ticket(CreateTicketRequest {
            ticket: Some(Ticket {
                tenant: "tenants/acme".into(),
                channel: TicketChannel::WebForm as i32,
                kind: TicketKind::Inquiry as i32,
                subject: "Invoice address".into(),
                requester: Some(Requester {
                    person_name: fixtures::name("Ann", "Archer"),
                    email: "ann@example.com".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            description: "Please change it.".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let messages = app
        .tickets()
        .list_messages(ListMessagesRequest {
            parent: ticket.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(messages.len(), 1);

    let mut identity_records = vec![
        (
            user.name.clone(),
            "custodian.identity.v1.UserService".to_owned(),
        ),
        (
            contact.name.clone(),
            "custodian.identity.v1.ContactService".to_owned(),
        ),
    ];
    identity_records.sort();
    let mut ticket_records = vec![
        (
            ticket.name.clone(),
            "custodian.tickets.v1.TicketService".to_owned(),
        ),
        (
            messages[0].name.clone(),
            "custodian.tickets.v1.TicketService".to_owned(),
        ),
    ];
    ticket_records.sort();

    // Locate: each service its own records, nothing of the other's.
    assert_eq!(
        locate(&app, "identity", "ann@example.com").await,
        identity_records
    );
    assert_eq!(
        locate(&app, "tickets", "ann@example.com").await,
        ticket_records
    );

    // Export: the same records, each with its own data.
    for (service, expected) in [
        ("identity", &identity_records),
        ("tickets", &ticket_records),
    ] {
        let mut stream = app
            .subjects_of(service)
            .export_subject_data(ExportSubjectDataRequest {
                subject: email("ann@example.com"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut exported = Vec::new();
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            let record = item.record.unwrap();
            assert!(item.data.is_some_and(|d| !d.fields.is_empty()));
            exported.push((record.resource, record.service));
        }
        exported.sort();
        assert_eq!(&exported, expected, "export of {service}");
    }

    // The audit trail names the service each record belongs to.
    let events = app.audit_events().await;
    for (resource, _) in identity_records.iter().chain(&ticket_records) {
        let service = if resource.starts_with("tickets/") {
            "tickets"
        } else {
            "identity"
        };
        assert!(
            events.iter().any(|e| e.action == AuditAction::Export as i32
                && &e.resource == resource
                && e.service == service),
            "no export of {resource} in {service}'s trail"
        );
    }

    // Erasing in tickets erases tickets' records only.
    let mut erased: Vec<(String, String)> = app
        .subjects_of("tickets")
        .erase_subject_data(EraseSubjectDataRequest {
            subject: email("ann@example.com"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .erased
        .into_iter()
        .map(|r| (r.resource, r.service))
        .collect();
    erased.sort();
    assert_eq!(erased, ticket_records);
    assert!(locate(&app, "tickets", "ann@example.com").await.is_empty());
    assert_eq!(
        locate(&app, "identity", "ann@example.com").await,
        identity_records
    );
    app.users()
        .get_user(GetUserRequest {
            name: user.name.clone(),
        })
        .await
        .expect("identity's records survive tickets' erasure");

    let mut erased: Vec<(String, String)> = app
        .subjects_of("identity")
        .erase_subject_data(EraseSubjectDataRequest {
            subject: email("ann@example.com"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .erased
        .into_iter()
        .map(|r| (r.resource, r.service))
        .collect();
    erased.sort();
    assert_eq!(erased, identity_records);
    assert!(locate(&app, "identity", "ann@example.com").await.is_empty());

    // The all-in-one needs to be told which service a call is for.
    let mut unrouted = SubjectDataServiceClient::with_interceptor(
        app.channel.clone(),
        Bearer::new(Some(&app.root_token)),
    );
    let refused = unrouted
        .locate_subject_data(LocateSubjectDataRequest {
            subject: email("ann@example.com"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("identity") && refused.message().contains("tickets"),
        "{}",
        refused.message()
    );
    let refused = app
        .subjects_of("billing")
        .locate_subject_data(LocateSubjectDataRequest {
            subject: email("ann@example.com"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("identity, tickets"),
        "{}",
        refused.message()
    );
    app.stop().await.unwrap();
}

mod subject_data_is_routed_per_service {
    use super::*;

    /// No database URL: one SQLite file per service in the data folder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_one_file_per_service() {
        let app = spawn_with(Backend::Sqlite, |c| c.database_url = None)
            .await
            .unwrap();
        for service in ["identity", "tickets"] {
            assert!(
                app.db.dir().join(format!("{service}.db")).exists(),
                "{service} has no file of its own"
            );
        }
        subject_data_per_service(app).await;
    }

    /// Both services in one PostgreSQL database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_one_database() {
        if let Some(app) = spawn(Backend::Postgres).await {
            subject_data_per_service(app).await;
        }
    }
}

// --- forged and widened calls ------------------------------------------------

/// A contact client sending `token` and one extra header.
/// Sends `token` and the `extra` metadata with every call.
fn with_metadata(
    token: &str,
    extra: &[(&'static str, &str)],
) -> impl tonic::service::Interceptor + use<> {
    let auth: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let extra: Vec<(&'static str, MetadataValue<_>)> = extra
        .iter()
        .map(|(k, v)| (*k, v.parse().unwrap()))
        .collect();
    move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", auth.clone());
        for (k, v) in &extra {
            r.metadata_mut().insert(*k, v.clone());
        }
        Ok(r)
    }
}

fn contacts_with(
    app: &TestApp,
    token: &str,
    extra: &[(&'static str, &str)],
) -> ContactServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        impl tonic::service::Interceptor + use<>,
    >,
> {
    ContactServiceClient::with_interceptor(app.channel.clone(), with_metadata(token, extra))
}

storage_test!(
    forwarding_headers_from_a_non_service_token_are_refused_and_change_nothing,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        let person = app.token(&[Purpose::ServiceDelivery], None);
        let limited = app.token(&[Purpose::ServiceDelivery], Some("globex"));
        for (token, header, value) in [
            (&person, "custodian-on-behalf-of", "ops:alice"),
            (&person, "custodian-tenant-limit", "acme"),
            (&limited, "custodian-tenant-limit", "acme"),
            (&app.root_token, "custodian-on-behalf-of", "ops:alice"),
        ] {
            let refused = contacts_with(&app, token, &[(header, value)])
                .create_contact(CreateContactRequest {
                    parent: "tenants/acme".into(),
                    contact: Some(fixtures::contact("ben@example.com")),
                    request_id: String::new(),
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::PermissionDenied, "{header}");
            assert!(refused.message().contains(header), "{}", refused.message());
        }
        assert_eq!(app.count("identity_contacts").await, 0);
        let events = app.audit_events().await;
        assert!(
            !events
                .iter()
                .any(|e| e.on_behalf_of == "ops:alice" || e.method.ends_with("/CreateContact")),
            "a forged call left a trace of acting: {events:?}"
        );
        app.stop().await.unwrap();
    }
);

fn tickets_credential(app: &TestApp) -> TokenIssuer {
    TokenIssuer::from_pem(app.keys.token_signing_key.as_deref().unwrap()).unwrap()
}

/// A call as tickets serves it, for a caller limited to `tenant`.
fn limited_call(subject: &str, tenant: &str, deadline: Option<Instant>) -> Call {
    Call {
        access: custodian_tests::verified_access(
            subject,
            &[Purpose::Support],
            Some(tenant),
            Method {
                path: "/custodian.tickets.v1.TicketService/CreateTicket",
                action: AuditAction::Create,
                purposes: &[Purpose::Support, Purpose::ServiceDelivery],
            },
        ),
        deadline,
        request: None,
    }
}

storage_test!(
    a_tenant_limit_survives_every_hop_between_services,
    |app: TestApp| async move {
        fixtures::tenant(&app, "acme").await;
        fixtures::tenant(&app, "globex").await;
        let acme_user = app
            .users()
            .create_user(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(fixtures::user("ann@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let globex_user = app
            .users()
            .create_user(CreateUserRequest {
                parent: "tenants/globex".into(),
                user: Some(fixtures::user("gus@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let acme_contact = app
            .contacts()
            .create_contact(CreateContactRequest {
                parent: "tenants/acme".into(),
                contact: Some(fixtures::contact("ben@example.com")),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mallory = issue(
            &app.keys,
            "ops:mallory",
            &[Purpose::Support, Purpose::ServiceDelivery],
            Some("globex"),
        );
        let mut tickets = app.tickets_as(Bearer::new(Some(&mallory)));
        let ticket = |tenant: &str, requester: Requester| CreateTicketRequest {
            ticket: Some(Ticket {
                tenant: tenant.into(),
                channel: TicketChannel::Phone as i32,
                kind: TicketKind::Troubleshooting as i32,
                subject: "Locked out".into(),
                requester: Some(requester),
                ..Default::default()
            }),
            description: String::new(),
            request_id: String::new(),
        };

        // A ticket of globex whose requester is acme's user.
        let refused = tickets
            .create_ticket(ticket(
                "",
                Requester {
                    user: acme_user.name.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(!refused.message().contains("ann@"), "{}", refused.message());
        // The id of acme's user under globex's name: tickets asks identity,
        // for mallory and within her limit, and identity finds nothing.
        let disguised = acme_user.name.replace("tenants/acme/", "tenants/globex/");
        let refused = tickets
            .create_ticket(ticket(
                "",
                Requester {
                    user: disguised.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("ticket.requester.user"),
            "{}",
            refused.message()
        );
        let asked = app
            .audit_events()
            .await
            .into_iter()
            .find(|e| e.resource == disguised)
            .expect("identity was asked, and audited the miss");
        assert_eq!(
            (
                asked.service.as_str(),
                asked.caller.as_str(),
                asked.on_behalf_of.as_str(),
                asked.outcome
            ),
            (
                "identity",
                "svc:tickets",
                "ops:mallory",
                AuditOutcome::NotFound as i32
            )
        );
        // A ticket for acme itself.
        let refused = tickets
            .create_ticket(ticket(
                "tenants/acme",
                Requester {
                    person_name: fixtures::name("Ann", "Archer"),
                    email: "ann@example.com".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        assert_eq!(app.count("tickets_tickets").await, 0);
        assert_eq!(app.count("tickets_messages").await, 0);
        // A ticket of globex for globex's user goes through: the refusals
        // above were the limit, nothing else.
        let own = tickets
            .create_ticket(ticket(
                "",
                Requester {
                    user: globex_user.name.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(own.tenant, "tenants/globex");
        assert_eq!(
            own.requester.unwrap().email,
            "gus@example.com",
            "filled from identity, through the forwarded call"
        );
        assert_eq!(app.count("tickets_tickets").await, 1);

        // What tickets sends identity for mallory: tickets' own credential,
        // mallory's purpose, her name and her limit. Identity keeps the
        // limit: acme's records are missing, globex's are there.
        let peers = Peers::new(
            BTreeMap::from([("identity".to_owned(), format!("http://{}", app.addr))]),
            Credential::Mint {
                issuer: tickets_credential(&app),
                subject: "svc:tickets".into(),
                purposes: custodian_tickets::PEER_PURPOSES.to_vec(),
            },
            Duration::from_secs(5),
        );
        let call = limited_call(
            "ops:mallory",
            "globex",
            Some(Instant::now() + Duration::from_secs(10)),
        );
        let forward = || peers.forward(&call, "identity").unwrap();
        let missing = UserServiceClient::new(forward())
            .get_user(GetUserRequest {
                name: acme_user.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        let missing = TenantServiceClient::new(forward())
            .get_tenant(GetTenantRequest {
                name: "tenants/acme".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        // Tickets never reads contacts, so its credential may not.
        let refused = ContactServiceClient::new(forward())
            .get_contact(GetContactRequest {
                name: acme_contact.name.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        let found = UserServiceClient::new(forward())
            .get_user(GetUserRequest {
                name: globex_user.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.email, "gus@example.com");
        let events = app.audit_events().await;
        let refused_event = events
            .iter()
            .find(|e| e.resource == acme_user.name && e.outcome == AuditOutcome::NotFound as i32)
            .expect("the refused read is audited");
        assert_eq!(
            (
                refused_event.caller.as_str(),
                refused_event.on_behalf_of.as_str(),
                refused_event.purpose.as_str()
            ),
            ("svc:tickets", "ops:mallory", "support")
        );

        // A service credential with the forwarded limit, sent by hand: the
        // same. Without the limit the same credential reads the user, so it
        // is the limit that hides it.
        let service = tickets_credential(&app)
            .issue_service("svc:tickets", &[Purpose::Support], Duration::from_secs(60))
            .unwrap();
        let get = GetUserRequest {
            name: acme_user.name.clone(),
        };
        let missing = UserServiceClient::with_interceptor(
            app.channel.clone(),
            with_metadata(
                &service,
                &[
                    ("custodian-purpose", "support"),
                    ("custodian-on-behalf-of", "ops:mallory"),
                    ("custodian-tenant-limit", "globex"),
                ],
            ),
        )
        .get_user(get.clone())
        .await
        .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        UserServiceClient::with_interceptor(
            app.channel.clone(),
            with_metadata(&service, &[("custodian-purpose", "support")]),
        )
        .get_user(get)
        .await
        .expect("the credential itself may read it");
        app.stop().await.unwrap();
    }
);

// --- deadlines ---------------------------------------------------------------

/// A stand-in for identity's TenantService that records what each call
/// carried and answers NOT_FOUND.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
}

impl tonic::server::NamedService for Recorder {
    const NAME: &'static str = "custodian.identity.v1.TenantService";
}

impl Service<http::Request<Body>> for Recorder {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.seen
            .lock()
            .unwrap()
            .push((request.uri().path().to_owned(), request.headers().clone()));
        std::future::ready(Ok(Status::not_found("recorded").into_http()))
    }
}

impl Recorder {
    /// Serves on a free port; returns its URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(self.clone())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        url
    }

    fn calls(&self) -> Vec<(String, http::HeaderMap)> {
        self.seen.lock().unwrap().clone()
    }
}

/// A `grpc-timeout` value ("2999871u").
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_carries_what_is_left_of_the_deadline_or_is_not_made() {
    let recorder = Recorder::default();
    let url = recorder.serve().await;
    let (private, _) = generate_key_pair();
    let peers = Peers::new(
        BTreeMap::from([("identity".to_owned(), url)]),
        Credential::Mint {
            issuer: TokenIssuer::from_pem(&private).unwrap(),
            subject: "svc:tickets".into(),
            purposes: vec![Purpose::Support],
        },
        Duration::from_secs(5),
    );
    let get = || GetTenantRequest {
        name: "tenants/globex".into(),
    };

    // Two seconds left: the callee is told no more.
    let started = Instant::now();
    let call = limited_call(
        "ops:alice",
        "globex",
        Some(started + Duration::from_secs(2)),
    );
    let answer = TenantServiceClient::new(peers.forward(&call, "identity").unwrap())
        .get_tenant(get())
        .await
        .unwrap_err();
    assert_eq!(answer.code(), Code::NotFound, "{answer:?}");
    let calls = recorder.calls();
    assert_eq!(calls.len(), 1);
    let (path, headers) = &calls[0];
    assert_eq!(path, "/custodian.identity.v1.TenantService/GetTenant");
    let carried = grpc_timeout(headers).expect("the forwarded call carries grpc-timeout");
    assert!(
        carried <= Duration::from_secs(2)
            && carried > Duration::from_secs(2) - started.elapsed() - Duration::from_millis(500),
        "carried {carried:?} of 2s"
    );
    assert_eq!(header(headers, "custodian-purpose"), Some("support"));
    assert_eq!(header(headers, "custodian-on-behalf-of"), Some("ops:alice"));
    assert_eq!(header(headers, "custodian-tenant-limit"), Some("globex"));
    assert_eq!(header(headers, "custodian-service"), Some("identity"));
    assert!(header(headers, "authorization").is_some_and(|a| a.starts_with("Bearer ")));

    // The deadline already passed: DEADLINE_EXCEEDED, and nothing is sent.
    let past = Instant::now()
        .checked_sub(Duration::from_millis(1))
        .unwrap();
    let call = limited_call("ops:alice", "globex", Some(past));
    let answer = TenantServiceClient::new(peers.forward(&call, "identity").unwrap())
        .get_tenant(get())
        .await
        .unwrap_err();
    assert_eq!(answer.code(), Code::DeadlineExceeded, "{answer:?}");
    assert_eq!(recorder.calls().len(), 1, "the callee was reached");
}

/// A stand-in for a service that accepts connections and never answers, as
/// a frozen process does: its sockets are held open and never read.
async fn silent_peer() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

fn peers_at(peer: &str, url: String, timeout: Duration) -> Peers {
    let (private, _) = generate_key_pair();
    Peers::new(
        BTreeMap::from([(peer.to_owned(), url)]),
        Credential::Mint {
            issuer: TokenIssuer::from_pem(&private).unwrap(),
            subject: "svc:dsr".into(),
            purposes: vec![Purpose::Support, Purpose::DsrFulfilment],
        },
        timeout,
    )
}

/// Every call to a peer ends by itself, DEADLINE_EXCEEDED, at the peer
/// timeout or the caller's deadline, whichever is first: also the calls of
/// work no caller waits for (a data-subject request's steps), which had no
/// deadline at all. The callee is told the same in `grpc-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_peer_that_never_answers_ends_at_its_deadline() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let silent = peers_at("identity", silent_peer().await, TIMEOUT);
    let get = || GetTenantRequest {
        name: "tenants/globex".into(),
    };
    let soon = Duration::from_millis(150);
    // (what, the caller's time left if there is a caller, the limit)
    let cases = [
        ("work for a request", None, TIMEOUT),
        (
            "a caller with time to spare",
            Some(Duration::from_secs(60)),
            TIMEOUT,
        ),
        ("a caller in a hurry", Some(soon), soon),
    ];
    for (what, left, limit) in cases {
        let channel = match left {
            None => silent
                .acting("identity", Purpose::DsrFulfilment, "requests/r1")
                .unwrap(),
            Some(left) => {
                // The access first (a token is signed and verified), so
                // the caller's time left starts with the call.
                let mut call = limited_call("ops:alice", "globex", None);
                call.deadline = Some(Instant::now() + left);
                silent.forward(&call, "identity").unwrap()
            }
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            TenantServiceClient::new(channel).get_tenant(get()),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the call to a silent peer never ended"));
        let took = started.elapsed();
        let err = answer.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{what}: {err:?}");
        assert!(
            took + Duration::from_millis(50) >= limit && took < limit + Duration::from_secs(1),
            "{what}: ended after {took:?}, not {limit:?}"
        );
    }

    // What the callee is told: no more than the peer timeout.
    let recorder = Recorder::default();
    let told = peers_at("identity", recorder.serve().await, TIMEOUT);
    TenantServiceClient::new(
        told.acting("identity", Purpose::DsrFulfilment, "requests/r1")
            .unwrap(),
    )
    .get_tenant(get())
    .await
    .unwrap_err();
    TenantServiceClient::new(
        told.forward(
            &limited_call(
                "ops:alice",
                "globex",
                Some(Instant::now() + Duration::from_secs(60)),
            ),
            "identity",
        )
        .unwrap(),
    )
    .get_tenant(get())
    .await
    .unwrap_err();
    let calls = recorder.calls();
    assert_eq!(calls.len(), 2);
    for (_, headers) in &calls {
        let carried = grpc_timeout(headers).expect("every call carries grpc-timeout");
        assert!(carried <= TIMEOUT, "carried {carried:?}");
    }
}

/// A subject-data service whose export sends `messages` records `gap`
/// apart, then ends, or stalls for ever.
struct Trickle {
    gap: Duration,
    messages: usize,
    stall: bool,
}

type ExportStream = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<custodian_proto::subject::v1::ExportSubjectDataResponse, Status>,
            > + Send,
    >,
>;

#[tonic::async_trait]
impl custodian_proto::subject::v1::subject_data_service_server::SubjectDataService for Trickle {
    async fn locate_subject_data(
        &self,
        _: tonic::Request<LocateSubjectDataRequest>,
    ) -> Result<tonic::Response<custodian_proto::subject::v1::LocateSubjectDataResponse>, Status>
    {
        Err(Status::unimplemented("a stand-in"))
    }

    type ExportSubjectDataStream = ExportStream;

    async fn export_subject_data(
        &self,
        _: tonic::Request<ExportSubjectDataRequest>,
    ) -> Result<tonic::Response<ExportStream>, Status> {
        let (gap, messages, stall) = (self.gap, self.messages, self.stall);
        let records = futures::stream::unfold(0, move |sent| async move {
            if sent == messages {
                if stall {
                    futures::future::pending::<()>().await;
                }
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((Ok(Default::default()), sent + 1))
        });
        Ok(tonic::Response::new(Box::pin(records)))
    }

    async fn rectify_subject_data(
        &self,
        _: tonic::Request<custodian_proto::subject::v1::RectifySubjectDataRequest>,
    ) -> Result<tonic::Response<custodian_proto::subject::v1::RectifySubjectDataResponse>, Status>
    {
        Err(Status::unimplemented("a stand-in"))
    }

    async fn erase_subject_data(
        &self,
        _: tonic::Request<EraseSubjectDataRequest>,
    ) -> Result<tonic::Response<custodian_proto::subject::v1::EraseSubjectDataResponse>, Status>
    {
        Err(Status::unimplemented("a stand-in"))
    }
}

impl Trickle {
    async fn serve(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(
                custodian_proto::subject::v1::subject_data_service_server::SubjectDataServiceServer::new(self),
            )
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        url
    }
}

/// An export (of a large subject) may take longer than the peer timeout,
/// as long as its records keep coming; one that stops ends
/// DEADLINE_EXCEEDED a peer timeout after its last record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_a_peer_ends_when_the_peer_stops_sending() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let export = |peers: &Peers| {
        SubjectDataServiceClient::new(
            peers
                .acting("tickets", Purpose::DsrFulfilment, "requests/r1")
                .unwrap(),
        )
    };
    let steady = Trickle {
        gap: Duration::from_millis(100),
        messages: 8,
        stall: false,
    };
    let peers = peers_at("tickets", steady.serve().await, TIMEOUT);
    let started = Instant::now();
    let mut stream = export(&peers)
        .export_subject_data(ExportSubjectDataRequest::default())
        .await
        .expect("the export starts")
        .into_inner();
    let mut records = 0;
    while let Some(record) = stream.message().await.expect("every record comes in time") {
        let _ = record;
        records += 1;
    }
    assert_eq!(records, 8);
    assert!(
        started.elapsed() > TIMEOUT,
        "longer than the timeout in all"
    );

    let stalling = Trickle {
        gap: Duration::from_millis(10),
        messages: 1,
        stall: true,
    };
    let peers = peers_at("tickets", stalling.serve().await, TIMEOUT);
    let mut stream = export(&peers)
        .export_subject_data(ExportSubjectDataRequest::default())
        .await
        .expect("the export starts")
        .into_inner();
    stream
        .message()
        .await
        .expect("the first record")
        .expect("one record");
    let last = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a stalled stream ends by itself")
        .unwrap_err();
    let took = last.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        took + Duration::from_millis(50) >= TIMEOUT && took < TIMEOUT + Duration::from_secs(1),
        "ended {took:?} after the last record, not {TIMEOUT:?}"
    );
}

/// Through the whole stack: the caller's `grpc-timeout` (or the server's
/// request timeout) becomes the handler's deadline, and tickets' call to
/// identity carries what is left of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_forwards_the_callers_deadline_to_its_peer() {
    let recorder = Recorder::default();
    let url = recorder.serve().await;
    let app = spawn_with(Backend::Sqlite, |c| {
        c.peers.insert("identity".into(), url);
        c.request_timeout = Duration::from_secs(4);
    })
    .await
    .unwrap();
    let create = || CreateTicketRequest {
        ticket: Some(Ticket {
            tenant: "tenants/acme".into(),
            channel: TicketChannel::Phone as i32,
            kind: TicketKind::Inquiry as i32,
            subject: "Deadline".into(),
            requester: Some(Requester {
                person_name: fixtures::name("Ann", "Archer"),
                email: "ann@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        description: String::new(),
        request_id: String::new(),
    };
    for (asked, limit) in [
        (Some(Duration::from_secs(2)), Duration::from_secs(2)),
        (None, Duration::from_secs(4)),
    ] {
        let mut request = tonic::Request::new(create());
        if let Some(asked) = asked {
            request.set_timeout(asked);
        }
        let before = recorder.calls().len();
        let refused = app.tickets().create_ticket(request).await.unwrap_err();
        // The stand-in knows no tenant.
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        let calls = recorder.calls();
        assert_eq!(calls.len(), before + 1);
        let (path, headers) = calls.last().unwrap();
        assert_eq!(path, "/custodian.identity.v1.TenantService/GetTenant");
        let carried = grpc_timeout(headers).unwrap_or_else(|| {
            panic!("the call to identity carries no grpc-timeout (caller asked {asked:?})")
        });
        assert!(
            carried <= limit && carried > limit / 2,
            "carried {carried:?}, limit {limit:?}"
        );
        assert_eq!(header(headers, "custodian-on-behalf-of"), Some("test:root"));
        assert_eq!(header(headers, "custodian-purpose"), Some("support"));
    }
    assert_eq!(app.count("tickets_tickets").await, 0);
    app.stop().await.unwrap();
}

// --- the access stack ----------------------------------------------------------

/// An inner service that only counts the calls that reach it.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl Service<http::Request<Body>> for Counting {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(http::Response::new(Body::empty())))
    }
}

fn grpc_request(path: &str, token: Option<&str>, message: &[u8]) -> http::Request<Body> {
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder
        .body(Body::new(http_body_util::Full::new(Bytes::from(frame))))
        .unwrap()
}

#[tokio::test]
async fn the_gate_refuses_before_any_handler_runs() {
    let (private, public) = generate_key_pair();
    let issuer = TokenIssuer::from_pem(&private).unwrap();
    let authenticator =
        TokenAuthenticator::new(TokenVerifier::from_public_pems([public.as_str()]).unwrap());
    let gate = KitGate::new(
        authenticator,
        &[custodian_kit::gate::Served {
            grpc_service: "custodian.identity.v1.ContactService",
            trail: Vec::new(),
        }],
        &custodian::peer_calls(),
    )
    .unwrap();
    let (_ready, ready_rx) = tokio::sync::watch::channel(true);
    let inner = Counting::default();
    let calls = inner.0.clone();
    let mut admission = AdmissionLayer::new(
        8,
        ready_rx,
        Arc::new(gate),
        4 * 1024 * 1024,
        Duration::from_secs(10),
    )
    .layer(inner);
    let mut send = async |request: http::Request<Body>| -> Option<Status> {
        std::future::poll_fn(|cx| admission.poll_ready(cx))
            .await
            .unwrap();
        let response = admission.call(request).await.unwrap();
        Status::from_header_map(response.headers())
    };
    let hour = Duration::from_secs(3600);
    let token = issuer
        .issue("ops:a", &[Purpose::ServiceDelivery], None, hour)
        .unwrap();
    let get = GetContactRequest {
        name: "tenants/acme/contacts/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f".into(),
    }
    .encode_to_vec();
    let get_path = "/custodian.identity.v1.ContactService/GetContact";

    // A declared method with a good token and a good message reaches it.
    assert!(
        send(grpc_request(get_path, Some(&token), &get))
            .await
            .is_none()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let other_key = TokenIssuer::from_pem(&generate_key_pair().0)
        .unwrap()
        .issue("ops:a", &[Purpose::ServiceDelivery], None, hour)
        .unwrap();
    let audit_only = issuer
        .issue("ops:a", &[Purpose::Audit], None, hour)
        .unwrap();
    let nul = GetContactRequest {
        name: "tenants/ac\u{0}me/contacts/x".into(),
    }
    .encode_to_vec();
    for (what, request, code) in [
        (
            "an undeclared method of a served service",
            grpc_request(
                "/custodian.identity.v1.ContactService/NoSuchMethod",
                Some(&token),
                &get,
            ),
            Code::Unimplemented,
        ),
        (
            "a declared method of a service not served here",
            grpc_request(
                "/custodian.tickets.v1.TicketService/GetTicket",
                Some(&token),
                &get,
            ),
            Code::Unimplemented,
        ),
        (
            "an unknown service",
            grpc_request("/custodian.x.v1.Nope/Nope", Some(&token), &get),
            Code::Unimplemented,
        ),
        (
            "no token",
            grpc_request(get_path, None, &get),
            Code::Unauthenticated,
        ),
        (
            "a malformed token",
            grpc_request(get_path, Some("not-a-token"), &get),
            Code::Unauthenticated,
        ),
        (
            "a token of another key",
            grpc_request(get_path, Some(&other_key), &get),
            Code::Unauthenticated,
        ),
        (
            "a purpose the method does not serve",
            grpc_request(get_path, Some(&audit_only), &get),
            Code::PermissionDenied,
        ),
        (
            "a control character in a value",
            grpc_request(get_path, Some(&token), &nul),
            Code::InvalidArgument,
        ),
        (
            "an undecodable message",
            grpc_request(get_path, Some(&token), &[0x0a, 0xff, 0xff]),
            Code::InvalidArgument,
        ),
    ] {
        let status = send(request)
            .await
            .unwrap_or_else(|| panic!("{what}: admitted"));
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{what}: the handler ran");
    }
}

/// Bytes in, bytes out: calls any path, declared or not.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(app: &TestApp, path: &'static str, message: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", app.root_token).parse().unwrap(),
    );
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_is_unimplemented_even_with_a_valid_token() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let get = GetContactRequest {
        name: "tenants/acme/contacts/0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f".into(),
    }
    .encode_to_vec();
    let refused = raw_call(
        &app,
        "/custodian.identity.v1.ContactService/NoSuchMethod",
        get.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    // The same bytes to the declared method reach its handler.
    let answered = raw_call(
        &app,
        "/custodian.identity.v1.ContactService/GetContact",
        get,
    )
    .await
    .unwrap_err();
    assert_eq!(answered.code(), Code::NotFound, "{answered:?}");
    app.stop().await.unwrap();
}

/// The custodian.* services a server's reflection lists.
async fn reflected_services(channel: &Channel) -> BTreeSet<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no reflection answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list")
    };
    list.service
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with("custodian."))
        .collect()
}

fn methods_of<'a>(services: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    services
        .into_iter()
        .flat_map(|name| {
            let service = DESCRIPTOR_POOL
                .get_service_by_name(name)
                .unwrap_or_else(|| panic!("{name} is not in the descriptor set"));
            service
                .methods()
                .map(|m| format!("/{}/{}", service.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_table_is_every_method_served_and_nothing_else() {
    custodian_tests::init_for_tests();
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let config = test_config(&db);
    let keys = test_keys();
    let suite = custodian::suite(
        custodian::Target::All,
        &config,
        &keys,
        Arc::new(SystemClock),
    )
    .unwrap();
    let table: BTreeSet<String> = suite.gate.paths().cloned().collect();
    let served: BTreeSet<String> = suite
        .modules
        .iter()
        .flat_map(|m| m.grpc_services())
        .map(str::to_owned)
        .collect();
    let app = custodian::bind(config.clone(), suite).await.unwrap();
    let addr = app.local_addr();
    let mut ready = app.readiness();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_with_shutdown(async move {
        let _ = stopped.await;
    }));
    ready.wait_for(|r| *r).await.unwrap();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let listed = reflected_services(&channel).await;
    // What reflection lists is what is served, and the gate knows exactly
    // its methods.
    assert_eq!(listed, served);
    assert_eq!(table, methods_of(listed.iter().map(String::as_str)));
    for path in &table {
        assert!(DECLARATIONS.method(path).is_some(), "{path} undeclared");
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // A process of one service admits that service's methods and the
    // shared contracts, nothing of the other's.
    for (target, name, other) in [
        (
            custodian::Target::Identity,
            "identity",
            "custodian.tickets.",
        ),
        (custodian::Target::Tickets, "tickets", "custodian.identity."),
    ] {
        let mut config = config.clone();
        let own = custodian_tests::for_target(&keys, name, &mut config);
        let suite = custodian::suite(target, &config, &own, Arc::new(SystemClock)).unwrap();
        let table: BTreeSet<String> = suite.gate.paths().cloned().collect();
        let served: Vec<&str> = suite
            .modules
            .iter()
            .flat_map(|m| m.grpc_services())
            .collect();
        assert!(
            served.iter().all(|s| !s.starts_with(other)),
            "{target:?} serves {served:?}"
        );
        assert!(table.iter().all(|p| !p.starts_with(&format!("/{other}"))));
        assert_eq!(table, methods_of(served), "{target:?}");
    }
}

// --- the data map ----------------------------------------------------------------

fn retention_of(category: i32) -> Option<i64> {
    let category = custodian_proto::privacy::v1::DataCategory::try_from(category).unwrap();
    custodian_privacy::retention::default_retention(category).map(|d| d.as_secs() as i64)
}

/// Checks a data map field by field against the declarations, as read from
/// the contracts' options.
fn check_map(map: &DataMap) {
    let services: Vec<&str> = map.systems.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        ["analytics", "dsr", "feedback", "identity", "tickets"]
    );
    let mut mapped = BTreeSet::new();
    for system in &map.systems {
        let package = format!("custodian.{}.v1.", system.service);
        // Every declared resource of the service's contracts, once.
        let declared_here: BTreeSet<&str> = DECLARATIONS
            .resources()
            .map(|r| r.full_name())
            .filter(|n| n.starts_with(&package))
            .collect();
        // Survey free text is sealed by its service itself, under its
        // survey's key.
        let sealed_by_service = ["custodian.feedback.v1.SurveyAnswer"];
        // The mail a service keeps in the outbox, described by the kit: a
        // holding of the service's mail category, in files, deleted.
        let (outbox, resources): (Vec<_>, Vec<_>) = system
            .resources
            .iter()
            .partition(|r| r.pattern == "outbox/{file}");
        let mails = match system.service.as_str() {
            "tickets" => Some(custodian_proto::privacy::v1::DataCategory::SupportRequest as i32),
            "dsr" => Some(custodian_proto::privacy::v1::DataCategory::DsrRecord as i32),
            _ => None,
        };
        assert_eq!(
            outbox.iter().map(|r| r.data_category).collect::<Vec<_>>(),
            mails.into_iter().collect::<Vec<_>>(),
            "{}: the outbox",
            system.service
        );
        for resource in &outbox {
            assert_eq!(
                resource.erasure,
                custodian_proto::privacy::v1::Erasure::Delete as i32
            );
            assert!(
                resource
                    .personal_fields
                    .iter()
                    .all(|f| !f.encrypted_at_rest)
            );
            assert!(resource.default_retention.is_some());
        }
        // What a service holds in bulk, outside the store, it describes
        // itself: a message of its contracts, with a category; sealed only
        // where the service seals it itself.
        let (bulk, records): (Vec<_>, Vec<_>) = resources
            .into_iter()
            .partition(|r| DECLARATIONS.resource(&r.message).is_none());
        for resource in &bulk {
            assert!(
                resource.message.starts_with(&package),
                "{}",
                resource.message
            );
            assert!(
                DECLARATIONS
                    .pool()
                    .get_message_by_name(&resource.message)
                    .is_some(),
                "{} is not a message of the contracts",
                resource.message
            );
            assert_ne!(resource.data_category, 0, "{}", resource.message);
            let sealed = sealed_by_service.contains(&resource.message.as_str());
            assert!(
                resource
                    .personal_fields
                    .iter()
                    .all(|f| f.encrypted_at_rest == sealed),
                "{}",
                resource.message
            );
        }
        let listed: BTreeSet<&str> = records.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(listed, declared_here, "{}", system.service);
        assert_eq!(listed.len(), records.len(), "a resource twice");
        for resource in records {
            mapped.insert(resource.message.clone());
            let spec = DECLARATIONS.resource(&resource.message).unwrap();
            let policy = &spec.policy;
            let what = &resource.message;
            assert_eq!(resource.pattern, policy.pattern, "{what}");
            assert_eq!(resource.data_category, policy.category, "{what}");
            assert_eq!(resource.controller, policy.controller, "{what}");
            assert_eq!(resource.erasure, policy.erasure, "{what}");
            let personal: Vec<DeclaredUnit> = declared_units(&spec.desc)
                .into_iter()
                .filter(|u| u.policy.personal)
                .collect();
            assert_eq!(
                resource
                    .personal_fields
                    .iter()
                    .map(|f| (
                        f.path.clone(),
                        f.visible_to.clone(),
                        f.lookup,
                        f.encrypted_at_rest
                    ))
                    .collect::<Vec<_>>(),
                personal
                    .iter()
                    .map(|u| (
                        u.dotted.clone(),
                        u.policy.visible_to.clone(),
                        u.policy.lookup,
                        true
                    ))
                    .collect::<Vec<_>>(),
                "{what}: personal fields"
            );
            let purposes: BTreeSet<i32> = personal
                .iter()
                .flat_map(|u| u.policy.visible_to.iter().copied())
                .collect();
            assert_eq!(
                resource.purposes,
                purposes.into_iter().collect::<Vec<_>>(),
                "{what}"
            );
            // A child (its names under another resource's) goes with its
            // parent; the rest are kept as their category says.
            let parent = DECLARATIONS.resources().find(|other| {
                other.full_name() != spec.full_name()
                    && policy
                        .pattern
                        .starts_with(&format!("{}/", other.policy.pattern))
            });
            match parent {
                Some(parent) => {
                    assert_eq!(resource.default_retention, None, "{what}");
                    assert_eq!(
                        resource.retention_clock,
                        format!("deleted with its parent ({})", parent.full_name())
                    );
                    assert!(!resource.tenant_may_set_retention, "{what}");
                }
                None => {
                    assert_eq!(
                        resource.default_retention.map(|d| d.seconds),
                        retention_of(policy.category),
                        "{what}"
                    );
                    assert_eq!(resource.default_retention.map(|d| d.nanos).unwrap_or(0), 0);
                    let clock = if policy.retention_clock.is_empty() {
                        "update_time"
                    } else {
                        policy.retention_clock.as_str()
                    };
                    assert_eq!(resource.retention_clock, clock, "{what}");
                    let category =
                        custodian_proto::privacy::v1::DataCategory::try_from(policy.category)
                            .unwrap();
                    assert_eq!(
                        resource.tenant_may_set_retention,
                        custodian_privacy::retention::tenant_may_set(category)
                            && policy.controller
                                != custodian_proto::privacy::v1::Controller::Company as i32,
                        "{what}"
                    );
                }
            }
        }
        // Its methods: its own services' and the shared contracts it
        // implements, each with its declaration.
        let own: BTreeSet<String> = DESCRIPTOR_POOL
            .services()
            .filter(|s| s.full_name().starts_with(&package))
            .map(|s| s.full_name().to_owned())
            .chain([
                "custodian.subject.v1.SubjectDataService".to_owned(),
                "custodian.retention.v1.RetentionService".to_owned(),
            ])
            .collect();
        let expected = methods_of(own.iter().map(String::as_str));
        let listed: BTreeSet<String> = system.methods.iter().map(|m| m.path.clone()).collect();
        assert_eq!(listed, expected, "{}", system.service);
        for method in &system.methods {
            let decl = DECLARATIONS.method(&method.path).unwrap();
            assert_eq!(method.purposes, decl.policy.purposes, "{}", method.path);
            assert_eq!(method.action, decl.policy.action, "{}", method.path);
            assert_eq!(method.scope, decl.policy.scope, "{}", method.path);
        }
    }
    for resource in RESOURCES {
        assert!(mapped.contains(resource), "{resource} is not in the map");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_map_is_the_declarations() {
    let app = spawn(Backend::Sqlite).await.unwrap();
    let map = app
        .data_map()
        .get_data_map(GetDataMapRequest {})
        .await
        .unwrap()
        .into_inner();
    check_map(&map);
    // The binary prints what the running code declares, also as Markdown.
    let markdown = custodian_kit::datamap::to_markdown(&map);
    for system in &map.systems {
        assert!(markdown.contains(&format!("## {}", system.service)));
        for resource in &system.resources {
            assert!(markdown.contains(&format!("`{}`", resource.message)));
        }
    }
    // Only for the purposes that review the installation.
    let refused = app
        .data_map_as(Bearer::new(Some(&app.token(&[Purpose::Support], None))))
        .get_data_map(GetDataMapRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    app.stop().await.unwrap();
}

// --- the kernel's writers ---------------------------------------------------------

/// Every Rust file of a service's sources.
fn sources(service: &str) -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../services")
        .join(service)
        .join("src");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    assert!(!out.is_empty(), "no sources in {}", dir.display());
    out
}

/// Tickets alone in its process: it never starts the privacy kernel
/// itself, yet its audited reads are answered at once and are in its trail.
async fn the_kit_starts_the_kernel(backend: Backend) {
    for service in ["tickets", "identity"] {
        for (file, text) in sources(service) {
            for call in [
                "privacy.start(",
                "audit.start(",
                "Privacy::start",
                "AuditLog::start",
            ] {
                assert!(!text.contains(call), "{file} calls {call}");
            }
        }
    }
    custodian_tests::init_for_tests();
    let Some(db) = TestDatabase::create(backend).await else {
        return;
    };
    let mut config = test_config(&db);
    let keys = test_keys();
    let own = custodian_tests::for_target(&keys, "tickets", &mut config);
    let suite = custodian::suite(
        custodian::Target::Tickets,
        &config,
        &own,
        Arc::new(SystemClock),
    )
    .unwrap();
    assert_eq!(suite.names, ["tickets"]);
    let app = custodian::bind(config, suite).await.unwrap();
    let addr = app.local_addr();
    let mut ready = app.readiness();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_with_shutdown(async move {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let root = issue(&keys, "test:root", &Purpose::ALL, None);
    let mut tickets =
        custodian_proto::tickets::v1::ticket_service_client::TicketServiceClient::with_interceptor(
            channel.clone(),
            Bearer::new(Some(&root)),
        );
    // The company's own ticket: no call to identity.
    let ticket = tickets
        .create_ticket(CreateTicketRequest {
            ticket: Some(Ticket {
                channel: TicketChannel::Phone as i32,
                kind: TicketKind::Inquiry as i32,
                subject: "Pricing".into(),
                requester: Some(Requester {
                    person_name: fixtures::name("Cat", "Cole"),
                    email: "cat@example.com".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            description: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tickets.get_ticket(GetTicketRequest {
            name: ticket.name.clone(),
        }),
    )
    .await
    .expect("an audited read is answered promptly")
    .unwrap()
    .into_inner();
    assert_eq!(read.subject, "Pricing");
    let listed = tickets
        .list_tickets(ListTicketsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tickets;
    assert_eq!(listed.len(), 1);
    let events = AuditServiceClient::with_interceptor(channel, Bearer::new(Some(&root)))
        .list_audit_events(ListAuditEventsRequest {
            resource: ticket.name.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let read_event = events
        .iter()
        .find(|e| e.method == "/custodian.tickets.v1.TicketService/GetTicket")
        .unwrap_or_else(|| panic!("the read is not in the trail: {events:?}"));
    assert_eq!(read_event.service, "tickets");
    assert_eq!(read_event.action, AuditAction::Read as i32);
    assert_eq!(read_event.outcome, AuditOutcome::Ok as i32);
    assert_eq!(read_event.caller, "test:root");
    assert!(read_event.fields.iter().any(|f| f == "subject"));
    assert!(
        events
            .iter()
            .any(|e| e.method == "/custodian.tickets.v1.TicketService/ListTickets"),
        "the list is not in the trail"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

mod the_kit_starts_the_kernels_writers_for_every_service {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        the_kit_starts_the_kernel(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        the_kit_starts_the_kernel(Backend::Postgres).await;
    }
}
