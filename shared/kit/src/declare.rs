//! The privacy declarations written on the contracts
//! (`custodian.privacy.v1` options), read once from the descriptor pool.
//!
//! Everything the kit does with a field or a method is derived from here:
//! what is personal and who sees it, how a value is checked, what is looked
//! up by blind index, which purposes a method serves. Whatever is not
//! declared is refused: [`Declarations::problems`] lists every field of a
//! message a method takes, every field of a resource and every method that
//! lacks a declaration, and the suite does not start while one does.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, LazyLock},
};

use custodian_proto::privacy::v1::{
    Controller, FieldPolicy, Format, Lookup, MethodPolicy, ResourcePolicy,
};
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, ReflectMessage,
};

use crate::pattern::Pattern;

/// The declarations of every contract this binary was built with, and of
/// the contracts added with [`add_contracts`] before the first read.
pub static DECLARATIONS: LazyLock<Declarations> = LazyLock::new(|| {
    let mut added = ADDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut pool = custodian_proto::DESCRIPTOR_POOL.clone();
    for set in &added.sets {
        pool.decode_file_descriptor_set(*set)
            .expect("contracts added to the declarations decode against the suite's");
    }
    added.read = true;
    Declarations::new(pool)
});

/// Contracts of services built outside `custodian-proto`, and whether
/// [`DECLARATIONS`] was read already (after which nothing can be added).
struct Added {
    sets: Vec<&'static [u8]>,
    read: bool,
}

static ADDED: std::sync::Mutex<Added> = std::sync::Mutex::new(Added {
    sets: Vec::new(),
    read: false,
});

/// Adds the contracts of a service compiled outside `custodian-proto` (an
/// encoded `FileDescriptorSet` of its own files, whose imports are
/// contracts of the suite), so the kit reads its declarations like any
/// other: its resources can be stored, its methods pass the gate and it
/// appears in the data map. Must come before [`DECLARATIONS`] is first read;
/// adding the same set again is a no-op.
pub fn add_contracts(encoded: &'static [u8]) -> anyhow::Result<()> {
    let mut added = ADDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if added
        .sets
        .iter()
        .any(|s| std::ptr::eq(*s, encoded) || *s == encoded)
    {
        return Ok(());
    }
    anyhow::ensure!(
        !added.read,
        "contracts are added before the declarations are first read (before any service is built)"
    );
    added.sets.push(encoded);
    Ok(())
}

const FIELD_EXTENSION: &str = "custodian.privacy.v1.field";
const RESOURCE_EXTENSION: &str = "custodian.privacy.v1.resource";
const METHOD_EXTENSION: &str = "custodian.privacy.v1.method";

/// Fields every resource has, filled by the kit on every read.
pub const META_FIELDS: [&str; 5] = [
    "name",
    "controller",
    "data_category",
    "create_time",
    "update_time",
];

/// One privacy unit of a resource: a field shown, stored, exported and
/// erased as a whole (a string, an address, a name). Groups are replaced by
/// their own units.
#[derive(Debug, Clone)]
pub struct Unit {
    /// From the resource down to the unit.
    pub path: Vec<FieldDescriptor>,
    /// "requester.email".
    pub dotted: String,
    pub policy: FieldPolicy,
}

impl Unit {
    pub fn personal(&self) -> bool {
        self.policy.personal
    }

    /// Whether `purpose` may see the unit.
    pub fn visible_to(&self, purpose: custodian_proto::privacy::v1::Purpose) -> bool {
        !self.policy.personal || self.policy.visible_to.contains(&(purpose as i32))
    }

    fn is_meta(&self) -> bool {
        self.path.len() == 1 && META_FIELDS.contains(&self.path[0].name())
    }
}

/// A non-personal scalar that is also kept in a column of its own.
#[derive(Debug, Clone)]
pub struct Column {
    /// The column: the field path joined by '_' ("sla_resolution_due").
    pub name: String,
    pub path: Vec<FieldDescriptor>,
}

/// A resource, as its declarations describe it.
#[derive(Debug)]
pub struct ResourceSpec {
    pub desc: MessageDescriptor,
    pub policy: ResourcePolicy,
    pub pattern: Pattern,
    /// Every unit, meta fields included, in field order.
    pub units: Vec<Unit>,
    /// Units looked up by blind index.
    pub lookups: Vec<(Lookup, Unit)>,
    pub columns: Vec<Column>,
    /// The `tenant` field of a resource held for a tenant or the company.
    pub tenant_field: Option<FieldDescriptor>,
    /// The column its retention is counted from.
    pub retention_clock: String,
}

impl ResourceSpec {
    pub fn full_name(&self) -> &str {
        self.desc.full_name()
    }

    pub fn category(&self) -> custodian_proto::privacy::v1::DataCategory {
        self.policy.category()
    }

    pub fn controller(&self) -> Controller {
        self.policy.controller()
    }

    /// The non-meta units (what is stored and exported).
    pub fn content_units(&self) -> impl Iterator<Item = &Unit> {
        self.units.iter().filter(|u| !u.is_meta())
    }

    pub fn personal_units(&self) -> impl Iterator<Item = &Unit> {
        self.units.iter().filter(|u| u.personal())
    }

    /// The message's name in lower-case words ("evaluation signup" for
    /// `EvaluationSignup`), for messages to the caller.
    pub fn noun(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.desc.name().chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push(' ');
            }
            out.extend(c.to_lowercase());
        }
        out
    }

    pub fn unit(&self, dotted: &str) -> Option<&Unit> {
        self.units.iter().find(|u| u.dotted == dotted)
    }
}

/// A method and its declaration.
#[derive(Debug, Clone)]
pub struct MethodDecl {
    pub desc: MethodDescriptor,
    pub policy: MethodPolicy,
}

/// Every declaration of a descriptor pool.
pub struct Declarations {
    pool: DescriptorPool,
    fields: HashMap<String, FieldPolicy>,
    /// The pattern of each field that declares a `reference`, parsed once.
    references: HashMap<String, Pattern>,
    resources: HashMap<String, Arc<ResourceSpec>>,
    methods: HashMap<String, MethodDecl>,
    problems: Vec<String>,
}

impl std::fmt::Debug for Declarations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Declarations")
            .field("resources", &self.resources.len())
            .field("methods", &self.methods.len())
            .finish_non_exhaustive()
    }
}

fn extension(
    options: &DynamicMessage,
    ext: Option<&ExtensionDescriptor>,
) -> Option<DynamicMessage> {
    let ext = ext?;
    options
        .has_extension(ext)
        .then(|| options.get_extension(ext).as_message().cloned())
        .flatten()
}

fn is_well_known(desc: &MessageDescriptor) -> bool {
    desc.package_name() == "google.protobuf"
}

impl Declarations {
    /// Reads the declarations of `pool`; what is missing or inconsistent is
    /// collected in [`Self::problems`].
    pub fn new(pool: DescriptorPool) -> Self {
        let field_ext = pool.get_extension_by_name(FIELD_EXTENSION);
        let resource_ext = pool.get_extension_by_name(RESOURCE_EXTENSION);
        let method_ext = pool.get_extension_by_name(METHOD_EXTENSION);
        let mut problems = Vec::new();
        let mut fields = HashMap::new();
        let mut references = HashMap::new();
        for message in pool.all_messages() {
            for field in message.fields() {
                if let Some(policy) = extension(&field.options(), field_ext.as_ref())
                    .and_then(|m| m.transcode_to::<FieldPolicy>().ok())
                {
                    if !policy.reference.is_empty() {
                        match Pattern::parse(&policy.reference) {
                            Ok(pattern) => {
                                references.insert(field.full_name().to_owned(), pattern);
                            }
                            Err(e) => problems.push(format!(
                                "field {} has a reference that {e}",
                                field.full_name()
                            )),
                        }
                    }
                    fields.insert(field.full_name().to_owned(), policy);
                }
            }
        }
        let mut methods = HashMap::new();
        for service in pool.services() {
            if !service.package_name().starts_with("custodian.") {
                continue;
            }
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                match extension(&method.options(), method_ext.as_ref())
                    .and_then(|m| m.transcode_to::<MethodPolicy>().ok())
                {
                    Some(policy) => {
                        methods.insert(
                            path,
                            MethodDecl {
                                desc: method,
                                policy,
                            },
                        );
                    }
                    None => problems.push(format!("method {path} has no declaration")),
                }
            }
        }
        let mut declarations = Self {
            pool: pool.clone(),
            fields,
            references,
            resources: HashMap::new(),
            methods,
            problems,
        };
        for message in pool.all_messages() {
            if let Some(policy) = extension(&message.options(), resource_ext.as_ref())
                .and_then(|m| m.transcode_to::<ResourcePolicy>().ok())
            {
                match declarations.resource_spec(&message, policy) {
                    Ok(spec) => {
                        declarations
                            .resources
                            .insert(message.full_name().to_owned(), Arc::new(spec));
                    }
                    Err(problem) => declarations.problems.push(problem),
                }
            }
        }
        declarations.check_inputs();
        declarations
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Everything undeclared or inconsistent; empty when the suite may start.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The declaration of a field, if it has one.
    pub fn field(&self, field: &FieldDescriptor) -> Option<&FieldPolicy> {
        self.fields.get(field.full_name())
    }

    /// The resource pattern a field's `reference` declares, if any.
    pub fn reference(&self, field: &FieldDescriptor) -> Option<&Pattern> {
        self.references.get(field.full_name())
    }

    pub fn method(&self, path: &str) -> Option<&MethodDecl> {
        self.methods.get(path)
    }

    pub fn methods(&self) -> impl Iterator<Item = (&String, &MethodDecl)> {
        self.methods.iter()
    }

    pub fn resource(&self, full_name: &str) -> Option<&Arc<ResourceSpec>> {
        self.resources.get(full_name)
    }

    /// The resource declared for the Rust message type `M`.
    pub fn resource_of<M: ReflectMessage + Default>(&self) -> Option<&Arc<ResourceSpec>> {
        self.resource(M::default().descriptor().full_name())
    }

    pub fn resources(&self) -> impl Iterator<Item = &Arc<ResourceSpec>> {
        self.resources.values()
    }

    /// Every message a method takes must be declared field by field, down
    /// to the well-known types, so every value that can reach a service has
    /// a format and a limit.
    fn check_inputs(&mut self) {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<MessageDescriptor> =
            self.methods.values().map(|m| m.desc.input()).collect();
        stack.extend(self.resources.values().map(|r| r.desc.clone()));
        let mut problems = Vec::new();
        while let Some(message) = stack.pop() {
            if is_well_known(&message) || !seen.insert(message.full_name().to_owned()) {
                continue;
            }
            for field in message.fields() {
                let Some(policy) = self.fields.get(field.full_name()) else {
                    problems.push(format!("field {} has no declaration", field.full_name()));
                    continue;
                };
                if field.kind() == Kind::String
                    && !policy.output_only
                    && policy.format() == Format::Unspecified
                {
                    problems.push(format!(
                        "field {} is a string without a format",
                        field.full_name()
                    ));
                }
                if let Kind::Message(inner) = field.kind()
                    && !policy.output_only
                {
                    stack.push(inner);
                }
            }
        }
        self.problems.extend(problems);
    }

    fn resource_spec(
        &self,
        message: &MessageDescriptor,
        policy: ResourcePolicy,
    ) -> Result<ResourceSpec, String> {
        let name = message.full_name();
        let pattern = Pattern::parse(&policy.pattern)
            .map_err(|e| format!("resource {name}: pattern: {e}"))?;
        if policy.category() == custodian_proto::privacy::v1::DataCategory::Unspecified {
            return Err(format!("resource {name} has no data category"));
        }
        if policy.controller() == Controller::Unspecified {
            return Err(format!("resource {name} has no controller"));
        }
        if policy.erasure() == custodian_proto::privacy::v1::Erasure::Unspecified {
            return Err(format!("resource {name} does not say what erasure does"));
        }
        for meta in META_FIELDS {
            if message.get_field_by_name(meta).is_none() {
                return Err(format!("resource {name} has no `{meta}` field"));
            }
        }
        let mut units = Vec::new();
        self.collect_units(message, &mut Vec::new(), &mut units)?;
        let mut lookups: Vec<(Lookup, Unit)> = Vec::new();
        let mut columns = Vec::new();
        for unit in &units {
            let lookup = unit.policy.lookup();
            if lookup != Lookup::Unspecified {
                if lookups.iter().any(|(l, _)| *l == lookup) {
                    return Err(format!("resource {name} has two {lookup:?} lookups"));
                }
                lookups.push((lookup, unit.clone()));
            }
            if unit.policy.column {
                if unit.personal() {
                    return Err(format!(
                        "{name}.{}: a personal field is never kept in a plain column",
                        unit.dotted
                    ));
                }
                columns.push(Column {
                    name: unit.dotted.replace('.', "_"),
                    path: unit.path.clone(),
                });
            }
        }
        let tenant_field = message.get_field_by_name("tenant");
        // A child follows its parent's tenant; only a top-level resource
        // held for a tenant or the company says which in a field.
        let child =
            pattern.as_str().matches('{').count() - usize::from(pattern.has_var("tenant")) > 1;
        if policy.controller() == Controller::TenantOrCompany && tenant_field.is_none() && !child {
            return Err(format!(
                "resource {name} is held for a tenant or the company but has no `tenant` field"
            ));
        }
        if policy.controller() == Controller::Tenant && !pattern.has_var("tenant") {
            return Err(format!(
                "resource {name} is held for a tenant but its pattern names none"
            ));
        }
        let retention_clock = if policy.retention_clock.is_empty() {
            "update_time".to_owned()
        } else if columns.iter().any(|c| c.name == policy.retention_clock) {
            policy.retention_clock.clone()
        } else {
            return Err(format!(
                "resource {name}: the retention clock {} is not a column",
                policy.retention_clock
            ));
        };
        Ok(ResourceSpec {
            desc: message.clone(),
            pattern,
            units,
            lookups,
            columns,
            tenant_field: if policy.controller() == Controller::TenantOrCompany {
                tenant_field
            } else {
                None
            },
            retention_clock,
            policy,
        })
    }

    /// The units of `message` under `prefix`: each declared field, or the
    /// units of a group. An undeclared field is no unit, so it is never shown
    /// or stored (and is reported).
    fn collect_units(
        &self,
        message: &MessageDescriptor,
        prefix: &mut Vec<FieldDescriptor>,
        out: &mut Vec<Unit>,
    ) -> Result<(), String> {
        for field in message.fields() {
            let Some(policy) = self.fields.get(field.full_name()) else {
                // Reported by check_inputs; never a unit.
                continue;
            };
            prefix.push(field.clone());
            if policy.group {
                let Kind::Message(inner) = field.kind() else {
                    return Err(format!(
                        "{} is a group but not a message",
                        field.full_name()
                    ));
                };
                if policy.personal || field.is_list() {
                    return Err(format!(
                        "{} is a group: its own fields say what is personal",
                        field.full_name()
                    ));
                }
                self.collect_units(&inner, prefix, out)?;
            } else {
                if policy.personal && policy.visible_to.is_empty() {
                    // Declared personal yet visible to nobody: allowed (only
                    // the subject sees it, through an export), but say so.
                    tracing::debug!(
                        field = field.full_name(),
                        "personal field visible to no purpose"
                    );
                }
                out.push(Unit {
                    dotted: prefix
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join("."),
                    path: prefix.clone(),
                    policy: policy.clone(),
                });
            }
            prefix.pop();
        }
        Ok(())
    }
}

/// The default longest value of a format, in characters.
pub fn default_max_length(format: Format) -> usize {
    match format {
        Format::Line => 200,
        Format::Text => 10_000,
        Format::Email => 254,
        Format::Phone => 64,
        Format::RegionCode => 2,
        Format::ResourceName => 256,
        Format::Uuid => 36,
        Format::PageToken => 512,
        Format::Id => 63,
        Format::FieldPath => 100,
        Format::Token => 64,
        Format::Unspecified => 1_000,
    }
}

/// The longest value a field may hold.
pub fn max_length(policy: Option<&FieldPolicy>) -> usize {
    match policy {
        Some(p) if p.max_length > 0 => p.max_length as usize,
        Some(p) => default_max_length(p.format()),
        None => default_max_length(Format::Unspecified),
    }
}

/// The most items a repeated field may hold.
pub fn max_items(policy: Option<&FieldPolicy>) -> usize {
    match policy {
        Some(p) if p.max_items > 0 => p.max_items as usize,
        _ => 1_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::Value;

    #[test]
    fn every_contract_of_this_build_is_declared() {
        let problems = DECLARATIONS.problems();
        assert!(problems.is_empty(), "undeclared:\n{}", problems.join("\n"));
        assert!(
            DECLARATIONS
                .resource("custodian.identity.v1.Contact")
                .is_some()
        );
        let contact = DECLARATIONS
            .resource("custodian.identity.v1.Contact")
            .unwrap();
        assert_eq!(contact.noun(), "contact");
        assert!(contact.unit("email").unwrap().personal());
        let ticket = DECLARATIONS
            .resource("custodian.tickets.v1.Ticket")
            .unwrap();
        assert!(
            ticket.unit("requester.email").is_some(),
            "groups are split into their fields"
        );
        assert_eq!(ticket.retention_clock, "close_time");
    }

    /// A contract compiled here, as a new engineer might write it.
    fn pool(proto: &str) -> DescriptorPool {
        let dir = std::env::temp_dir().join(format!("custodian-kit-{}", uuid::Uuid::new_v4()));
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
        std::fs::create_dir_all(dir.join("x/v1")).unwrap();
        std::fs::write(dir.join("x/v1/x.proto"), proto).unwrap();
        let mut compiler = protox::Compiler::new([dir.as_path(), root.as_path()]).unwrap();
        compiler.include_imports(true);
        compiler.open_file("x/v1/x.proto").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        compiler.descriptor_pool()
    }

    const HEADER: &str = r#"
syntax = "proto3";
package custodian.x.v1;
import "custodian/privacy/v1/annotations.proto";
import "custodian/privacy/v1/vocabulary.proto";
import "custodian/common/v1/common.proto";
import "google/protobuf/timestamp.proto";
service ThingService {
  rpc CreateThing(CreateThingRequest) returns (Thing) {
    option (custodian.privacy.v1.method) = {purposes: [PURPOSE_SUPPORT], action: AUDIT_ACTION_CREATE, scope: SCOPE_TENANT};
  }
}
message CreateThingRequest {
  string parent = 1 [(custodian.privacy.v1.field) = {format: FORMAT_RESOURCE_NAME, reference: "tenants/{tenant}"}];
  Thing thing = 2 [(custodian.privacy.v1.field) = {}];
}
message Thing {
  option (custodian.privacy.v1.resource) = {category: DATA_CATEGORY_FEEDBACK, pattern: "tenants/{tenant}/things/{thing}", erasure: ERASURE_DELETE, controller: CONTROLLER_TENANT};
  string name = 1 [(custodian.privacy.v1.field) = {output_only: true}];
  custodian.common.v1.Controller controller = 2 [(custodian.privacy.v1.field) = {output_only: true}];
  custodian.privacy.v1.DataCategory data_category = 3 [(custodian.privacy.v1.field) = {output_only: true}];
  google.protobuf.Timestamp create_time = 4 [(custodian.privacy.v1.field) = {output_only: true}];
  google.protobuf.Timestamp update_time = 5 [(custodian.privacy.v1.field) = {output_only: true}];
  string email = 6 [(custodian.privacy.v1.field) = {personal: true, format: FORMAT_EMAIL, visible_to: [PURPOSE_SUPPORT]}];
"#;

    #[test]
    fn a_field_added_without_a_declaration_is_refused() {
        let declared = Declarations::new(pool(&format!("{HEADER}}}\n")));
        assert_eq!(declared.problems(), [] as [String; 0]);
        let thing = declared.resource("custodian.x.v1.Thing").unwrap();
        assert!(thing.unit("email").is_some());

        // A new field, forgotten in the declarations.
        let forgotten = Declarations::new(pool(&format!("{HEADER}  string nickname = 7;\n}}\n")));
        assert_eq!(
            forgotten.problems(),
            ["field custodian.x.v1.Thing.nickname has no declaration"]
        );
        // It is no unit: never shown, never stored.
        let thing = forgotten.resource("custodian.x.v1.Thing").unwrap();
        assert!(thing.unit("nickname").is_none());
        // A record holding a value for it (a caller sent one): the value
        // is not shown to any purpose, stored, or exported.
        let mut record = DynamicMessage::new(thing.desc.clone());
        record.set_field_by_name("email", Value::String("ann@example.com".into()));
        record.set_field_by_name("nickname", Value::String("Annie".into()));
        for purpose in [
            custodian_proto::privacy::v1::Purpose::Support,
            custodian_proto::privacy::v1::Purpose::ProductAnalytics,
        ] {
            let cut = crate::fields::cut(thing, &record, purpose);
            assert!(!cut.message.has_field_by_name("nickname"), "{purpose:?}");
            assert!(
                !cut.shown
                    .iter()
                    .chain(&cut.withheld)
                    .any(|u| u == "nickname"),
                "{purpose:?}"
            );
        }
        let (personal, plain) = crate::fields::split(thing, &record);
        assert!(personal.has_field_by_name("email"));
        assert!(!personal.has_field_by_name("nickname") && !plain.has_field_by_name("nickname"));
        assert!(
            !crate::fields::export(thing, &record)
                .fields
                .contains_key("nickname")
        );

        // A string declared without a format has no limit to check.
        let unformatted = Declarations::new(pool(&format!(
            "{HEADER}  string nickname = 7 [(custodian.privacy.v1.field) = {{personal: true}}];\n}}\n"
        )));
        assert_eq!(
            unformatted.problems(),
            ["field custodian.x.v1.Thing.nickname is a string without a format"]
        );
    }

    #[test]
    fn an_undeclared_method_is_a_problem() {
        let proto = format!(
            "{}}}\nservice Other {{ rpc Peek(CreateThingRequest) returns (Thing); }}\n",
            HEADER
        );
        let declared = Declarations::new(pool(&proto));
        assert_eq!(
            declared.problems(),
            ["method /custodian.x.v1.Other/Peek has no declaration"]
        );
        assert!(declared.method("/custodian.x.v1.Other/Peek").is_none());
    }
}
