//! The access stack: what the runtime runs before any handler of any
//! service, built from the method declarations of the contracts.
//!
//! For every call: the method must be declared (an undeclared or unknown
//! method is refused), the bearer token must verify, a purpose the method
//! serves must be allowed by the token (a refusal is audited), a method for
//! the whole company refuses a caller limited to a tenant, and every value of
//! the request message must pass its declared hygiene (control characters,
//! lengths, name and id forms, known enum values). Handlers then start from
//! the [`Access`] it leaves in the request; none can forget a check.
//!
//! A service credential (`sub: svc:NAME`, kind `service`) may only make the
//! calls its service declares ([`PeerCalls`]), for the purposes it declares:
//! a compromised service holds a credential that reaches what that service
//! reaches, not everything every service does. A credential of a service the
//! suite does not have is refused outright. Both refusals are audited.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use custodian_privacy::{
    Privacy, Purpose, TokenAuthenticator,
    access::{self, Method, Refusal},
};
use custodian_proto::{audit::v1::AuditAction, privacy::v1::Scope};
use custodian_runtime::{ApiError, Gate, Verdict, error::Violations};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;

use crate::{declare::DECLARATIONS, fields};

/// Metadata choosing which service's implementation of a shared contract
/// (`SubjectDataService`, `RetentionService`) a call reaches, when one
/// process serves several.
pub const SERVICE_HEADER: &str = "custodian-service";

/// Where a method's refusals are audited: its service, or for a shared
/// contract the service the call names.
#[derive(Clone)]
struct Trail {
    /// (service, its privacy context); the first is the default.
    services: Vec<(&'static str, Privacy)>,
}

impl Trail {
    fn pick(&self, headers: &http::HeaderMap) -> Option<&Privacy> {
        let named = headers.get(SERVICE_HEADER).and_then(|v| v.to_str().ok());
        match named {
            Some(name) => self
                .services
                .iter()
                .find(|(s, _)| *s == name)
                .map(|(_, p)| p),
            None => self.services.first().map(|(_, p)| p),
        }
    }
}

struct Entry {
    method: Method,
    scope: Scope,
    input: MessageDescriptor,
    /// Unary request message, checked before the handler.
    checks_body: bool,
    trail: Trail,
}

/// The gate: the method table of the services in this process, and what
/// each service of the suite may call on it.
pub struct KitGate {
    authenticator: Arc<TokenAuthenticator>,
    methods: HashMap<String, Entry>,
    /// By credential subject ("svc:tickets").
    callers: HashMap<String, Calls>,
}

/// What one of the suite's services calls on the others, declared by the
/// service next to its code: its service credential holds `purposes` and
/// may call the methods `calls` (full gRPC paths) and nothing else.
#[derive(Debug, Clone, Copy)]
pub struct PeerCalls {
    /// The service's short name ("tickets").
    pub service: &'static str,
    pub purposes: &'static [Purpose],
    pub calls: &'static [&'static str],
}

impl PeerCalls {
    /// The subject of the service's credential.
    pub fn subject(&self) -> String {
        format!("svc:{}", self.service)
    }
}

struct Calls {
    purposes: &'static [Purpose],
    paths: HashSet<&'static str>,
}

/// Checks a service's declaration against the contracts: each call is a
/// declared method, which serves a purpose the service's credential holds
/// (else the call could never be made, and the declaration is wrong).
fn check_peer_calls(declared: &PeerCalls) -> anyhow::Result<()> {
    let service = declared.service;
    for path in declared.calls {
        let decl = DECLARATIONS.method(path).ok_or_else(|| {
            anyhow::anyhow!("{service} declares a call to {path}, which no contract declares")
        })?;
        anyhow::ensure!(
            decl.policy
                .purposes()
                .filter_map(Purpose::from_proto)
                .any(|p| declared.purposes.contains(&p)),
            "{service} declares a call to {path}, which serves none of the purposes {service}'s credential holds"
        );
    }
    anyhow::ensure!(
        declared.calls.is_empty() || !declared.purposes.is_empty(),
        "{service} declares calls but no purpose to make them for"
    );
    Ok(())
}

/// One gRPC service of the process and the trail its refusals go to.
pub struct Served {
    pub grpc_service: &'static str,
    pub trail: Vec<(&'static str, Privacy)>,
}

impl KitGate {
    /// The table of every method of `served`, from its declaration, and
    /// what each service of the suite (`callers`, all of them, whether this
    /// process runs them or not) may call. A method without a declaration
    /// is not in the table, so it is refused.
    pub fn new(
        authenticator: Arc<TokenAuthenticator>,
        served: &[Served],
        callers: &[PeerCalls],
    ) -> anyhow::Result<Self> {
        let mut callers_table = HashMap::new();
        for declared in callers {
            check_peer_calls(declared)?;
            let calls = Calls {
                purposes: declared.purposes,
                paths: declared.calls.iter().copied().collect(),
            };
            anyhow::ensure!(
                callers_table.insert(declared.subject(), calls).is_none(),
                "{} declares its calls twice",
                declared.service
            );
        }
        let mut methods = HashMap::new();
        for served in served {
            let service = DECLARATIONS
                .pool()
                .get_service_by_name(served.grpc_service)
                .ok_or_else(|| anyhow::anyhow!("no contract for {}", served.grpc_service))?;
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let Some(decl) = DECLARATIONS.method(&path) else {
                    continue;
                };
                let purposes: Vec<Purpose> = decl
                    .policy
                    .purposes()
                    .filter_map(Purpose::from_proto)
                    .collect();
                anyhow::ensure!(!purposes.is_empty(), "{path} declares no purpose");
                anyhow::ensure!(
                    decl.policy.scope() != Scope::Unspecified,
                    "{path} declares no scope"
                );
                // Leaked once per method at start-up: the table lives as long
                // as the process, and every Access copies a Method.
                let method_static = Method {
                    path: Box::leak(path.clone().into_boxed_str()),
                    action: decl.policy.action(),
                    purposes: Box::leak(purposes.into_boxed_slice()),
                };
                methods.insert(
                    path,
                    Entry {
                        method: method_static,
                        scope: decl.policy.scope(),
                        input: method.input(),
                        checks_body: !method.is_client_streaming(),
                        trail: Trail {
                            services: served.trail.clone(),
                        },
                    },
                );
            }
        }
        Ok(Self {
            authenticator,
            methods,
            callers: callers_table,
        })
    }

    /// The methods the gate admits, for tests and the data map.
    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.methods.keys()
    }

    /// Why a service credential may not make this call, if it may not.
    fn service_refusal(&self, caller: &access::Caller, path: &str) -> Option<String> {
        let Some(calls) = self.callers.get(caller.subject()) else {
            // The subject is signed, but not worth echoing: it names no one.
            return Some("the service credential names no service of this suite".to_owned());
        };
        if !calls.paths.contains(path) {
            return Some(format!(
                "{} does not call {path}: a service credential may make only the calls its service declares",
                caller.subject()
            ));
        }
        // Service credentials always name their purpose (see `access`).
        match caller.requested_purpose() {
            Some(purpose) if calls.purposes.contains(&purpose) => None,
            _ => Some(format!(
                "{} does not call other services for that purpose",
                caller.subject()
            )),
        }
    }
}

/// A refusal that is written to the trail of the service the call was for
/// before it is answered.
fn audited(
    entry: &Entry,
    headers: &http::HeaderMap,
    caller: access::Caller,
    refusal: Status,
) -> Verdict {
    let method = entry.method;
    let privacy = entry.trail.pick(headers).cloned();
    Verdict::RefuseAfter(Box::pin(async move {
        if let Some(privacy) = privacy
            && let Err(err) = privacy.audit.record(privacy.denied(&caller, method)).await
        {
            return err.into();
        }
        refusal
    }))
}

impl Gate for KitGate {
    fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &mut http::Extensions,
    ) -> Verdict {
        let Some(entry) = self.methods.get(path) else {
            return Verdict::Refuse(Status::unimplemented(
                "no such method is declared and served here",
            ));
        };
        let caller = match self.authenticator.caller(headers) {
            Ok(caller) => caller,
            Err(status) => return Verdict::Refuse(status),
        };
        if caller.is_service()
            && let Some(refusal) = self.service_refusal(&caller, path)
        {
            return audited(entry, headers, caller, Status::permission_denied(refusal));
        }
        let access = match access::authorize(Some(&caller), entry.method) {
            Ok(access) => access,
            Err(Refusal::NoCaller) => {
                return Verdict::Refuse(Status::unauthenticated("no authenticated caller"));
            }
            Err(Refusal::Purpose { caller }) => {
                let method = entry.method;
                let purposes: Vec<&str> = method.purposes.iter().map(|p| p.as_str()).collect();
                let refusal = Status::permission_denied(format!(
                    "{} serves the purposes {}; the token allows none of them{}",
                    method.path,
                    purposes.join(", "),
                    if caller.requested_purpose().is_some() {
                        " (or not the one requested)"
                    } else {
                        ""
                    }
                ));
                return audited(entry, headers, caller, refusal);
            }
        };
        if entry.scope == Scope::Company && access.tenant_limit().is_some() {
            return Verdict::Refuse(Status::permission_denied(format!(
                "{} acts for the whole company; a caller limited to a tenant cannot use it",
                entry.method.path
            )));
        }
        // A read under way until its request is dropped, answered: a busy
        // sealer lets a pass wait for the reads in flight.
        if entry.method.action == AuditAction::Read
            && let Some(privacy) = entry.trail.pick(headers)
        {
            extensions.insert(Arc::new(privacy.audit.reading()));
        }
        extensions.insert(access);
        Verdict::Admit
    }

    fn checks_body(&self, path: &str) -> bool {
        self.methods.get(path).is_some_and(|e| e.checks_body)
    }

    fn check_body(
        &self,
        path: &str,
        message: &[u8],
        _extensions: &http::Extensions,
    ) -> Result<(), Status> {
        let Some(entry) = self.methods.get(path) else {
            return Err(Status::unimplemented(
                "no such method is declared and served here",
            ));
        };
        check_message(&entry.input, message)
    }
}

/// Decodes a request message and checks the hygiene of every value in it.
/// An undecodable message is INVALID_ARGUMENT without the decoder's words.
#[allow(clippy::result_large_err)] // answered as is
pub fn check_message(input: &MessageDescriptor, message: &[u8]) -> Result<(), Status> {
    let decoded = DynamicMessage::decode(input.clone(), message).map_err(|_| {
        Status::invalid_argument(format!(
            "the request is not a valid {} message",
            input.full_name()
        ))
    })?;
    // Unknown fields are dropped by the services' own decoding; they are
    // not checked, and never stored.
    let mut violations = Violations::new();
    fields::hygiene(&DECLARATIONS, &decoded, "", &mut violations);
    violations.finish().map_err(|e: ApiError| Status::from(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_proto::identity::v1::{Contact, CreateContactRequest, GetContactRequest};
    use prost::Message as _;
    use prost_reflect::ReflectMessage;

    fn input<M: ReflectMessage + Default>() -> MessageDescriptor {
        M::default().descriptor()
    }

    #[test]
    fn hostile_values_are_refused_at_the_door_without_being_echoed() {
        let id = "0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f";
        let ok = GetContactRequest {
            name: format!("tenants/acme/contacts/{id}"),
        };
        assert!(check_message(&input::<GetContactRequest>(), &ok.encode_to_vec()).is_ok());
        for bad in [
            format!("tenants/ac\u{0}me/contacts/{id}"),
            "tenants/acme/contacts/john.doe.private@gmail.com".to_owned(),
            format!("tenants/acme/contacts/{}", "x".repeat(4_000_000)),
            format!("tenants/acme/contacts/{id}/../../x"),
        ] {
            let err = check_message(
                &input::<GetContactRequest>(),
                &GetContactRequest { name: bad.clone() }.encode_to_vec(),
            )
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().len() < 300);
            assert!(!err.message().contains("gmail") && !err.message().contains("xxxx"));
        }
        let nul = CreateContactRequest {
            parent: "tenants/acme".into(),
            contact: Some(Contact {
                notes: "hello\u{0}world".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        };
        let err =
            check_message(&input::<CreateContactRequest>(), &nul.encode_to_vec()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("contact.notes"), "{}", err.message());
    }

    #[test]
    fn undecodable_requests_are_invalid_arguments_without_decoder_words() {
        let err = check_message(&input::<GetContactRequest>(), &[0x0a, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(!err.message().contains("buffer"), "{}", err.message());
    }
}
