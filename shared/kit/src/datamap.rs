//! The record of processing (GDPR Art. 30), derived from the running code's
//! own declarations: which personal data each service holds, in which
//! category, for whom, for which purposes, for how long, and what erasure
//! does. Privacy tools keep such a map by hand, and it goes stale; this one
//! is the declarations themselves. Served by
//! `custodian.privacy.v1.DataMapService` and printed by `custodian datamap`.

use std::collections::BTreeSet;

use custodian_privacy::retention;
use custodian_proto::privacy::v1::{
    Controller, DataMap, DataMapField, DataMapMethod, DataMapResource, DataMapSystem,
    GetDataMapRequest, Purpose, data_map_service_server::DataMapService,
};
use tonic::{Request, Response, Status};

use crate::{call::Call, declare::DECLARATIONS, store::Binding};

/// What one service of the process declares: its resources, what it holds
/// in bulk, and the gRPC services it answers.
pub struct System<'a> {
    pub service: &'static str,
    pub bindings: &'a [std::sync::Arc<Binding>],
    /// What it holds outside the store, as it describes it.
    pub bulk: Vec<DataMapResource>,
    pub grpc_services: Vec<&'static str>,
}

/// Builds the map of `systems`, in name order.
pub fn build(systems: &[System<'_>]) -> DataMap {
    let mut out: Vec<DataMapSystem> = systems
        .iter()
        .map(|system| {
            let resources = system
                .bindings
                .iter()
                .map(|binding| resource(binding))
                .chain(system.bulk.iter().cloned())
                .collect();
            let mut methods: Vec<DataMapMethod> = system
                .grpc_services
                .iter()
                .flat_map(|name| {
                    DECLARATIONS
                        .pool()
                        .get_service_by_name(name)
                        .into_iter()
                        .flat_map(|s| s.methods().collect::<Vec<_>>())
                })
                .filter_map(|method| {
                    let path =
                        format!("/{}/{}", method.parent_service().full_name(), method.name());
                    let decl = DECLARATIONS.method(&path)?;
                    Some(DataMapMethod {
                        path,
                        purposes: decl.policy.purposes.clone(),
                        action: decl.policy.action,
                        scope: decl.policy.scope,
                    })
                })
                .collect();
            methods.sort_by(|a, b| a.path.cmp(&b.path));
            DataMapSystem {
                service: system.service.to_owned(),
                resources,
                methods,
            }
        })
        .collect();
    out.sort_by(|a, b| a.service.cmp(&b.service));
    DataMap { systems: out }
}

fn resource(binding: &Binding) -> DataMapResource {
    let spec = &binding.spec;
    let personal_fields: Vec<DataMapField> = spec
        .personal_units()
        .map(|unit| DataMapField {
            path: unit.dotted.clone(),
            visible_to: unit.policy.visible_to.clone(),
            lookup: unit.policy.lookup,
            encrypted_at_rest: true,
        })
        .collect();
    let purposes: BTreeSet<i32> = personal_fields
        .iter()
        .flat_map(|f| f.visible_to.iter().copied())
        .collect();
    let category = spec.category();
    // Children go with their parent: they have no clock of their own.
    let default_retention = if binding.parent.is_some() {
        None
    } else {
        retention::default_retention(category).map(|d| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: 0,
        })
    };
    DataMapResource {
        message: spec.full_name().to_owned(),
        pattern: spec.pattern.as_str().to_owned(),
        data_category: category as i32,
        controller: spec.policy.controller,
        personal_fields,
        default_retention,
        retention_clock: if binding.parent.is_some() {
            format!(
                "deleted with its parent ({})",
                binding.parent.as_ref().map_or("", |p| p.spec.full_name())
            )
        } else {
            spec.retention_clock.clone()
        },
        tenant_may_set_retention: binding.parent.is_none()
            && retention::tenant_may_set(category)
            && spec.controller() != Controller::Company,
        erasure: spec.policy.erasure,
        purposes: purposes.into_iter().collect(),
    }
}

/// The map as JSON (the proto3 JSON form of [`DataMap`], field names as in
/// the contract).
pub fn to_json(map: &DataMap) -> String {
    use prost_reflect::ReflectMessage as _;
    let options = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::pretty(&mut out);
    map.transcode_to_dynamic()
        .serialize_with_options(&mut serializer, &options)
        .expect("a data map serialises");
    String::from_utf8(out).expect("JSON is UTF-8")
}

fn purpose_name(p: i32) -> String {
    Purpose::try_from(p)
        .map(|p| {
            p.as_str_name()
                .trim_start_matches("PURPOSE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| p.to_string())
}

fn category_name(c: i32) -> String {
    custodian_proto::privacy::v1::DataCategory::try_from(c)
        .map(|c| {
            c.as_str_name()
                .trim_start_matches("DATA_CATEGORY_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

fn duration(d: Option<prost_types::Duration>) -> String {
    match d {
        None => "while its account exists".to_owned(),
        Some(d) if d.seconds % (365 * 86_400) == 0 => {
            format!("{} years", d.seconds / (365 * 86_400))
        }
        Some(d) => format!("{} days", d.seconds / 86_400),
    }
}

/// The map as Markdown tables, for people.
pub fn to_markdown(map: &DataMap) -> String {
    let mut out = String::from(
        "# Record of processing\n\nDerived from the declarations of the running code.\n",
    );
    for system in &map.systems {
        out.push_str(&format!("\n## {}\n\n", system.service));
        out.push_str("| resource | category | controller | personal fields (who sees them) | retention | erasure |\n|---|---|---|---|---|---|\n");
        for r in &system.resources {
            let fields = r
                .personal_fields
                .iter()
                .map(|f| {
                    let seen = f
                        .visible_to
                        .iter()
                        .map(|p| purpose_name(*p))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!(
                        "`{}` ({}){}",
                        f.path,
                        if seen.is_empty() { "nobody" } else { &seen },
                        if f.encrypted_at_rest {
                            ""
                        } else {
                            ", kept reduced, not sealed"
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let controller = Controller::try_from(r.controller)
                .map(|c| {
                    c.as_str_name()
                        .trim_start_matches("CONTROLLER_")
                        .to_lowercase()
                })
                .unwrap_or_default();
            let retention = if r.retention_clock.starts_with("deleted with") {
                r.retention_clock.clone()
            } else {
                format!(
                    "{} after `{}`{}",
                    duration(r.default_retention),
                    r.retention_clock,
                    if r.tenant_may_set_retention {
                        "; the tenant may set its own"
                    } else {
                        ""
                    }
                )
            };
            let erasure = custodian_proto::privacy::v1::Erasure::try_from(r.erasure)
                .map(|e| {
                    e.as_str_name()
                        .trim_start_matches("ERASURE_")
                        .to_lowercase()
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "| `{}` `{}` | {} | {} | {} | {} | {} |\n",
                r.message,
                r.pattern,
                category_name(r.data_category),
                controller,
                fields,
                retention,
                erasure
            ));
        }
        out.push_str("\n| method | purposes |\n|---|---|\n");
        for m in &system.methods {
            out.push_str(&format!(
                "| `{}` | {} |\n",
                m.path,
                m.purposes
                    .iter()
                    .map(|p| purpose_name(*p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out
}

/// `DataMapService`, over the map of this process.
pub struct DataMapApi {
    map: DataMap,
}

impl DataMapApi {
    pub fn new(map: DataMap) -> Self {
        Self { map }
    }
}

#[tonic::async_trait]
impl DataMapService for DataMapApi {
    async fn get_data_map(
        &self,
        request: Request<GetDataMapRequest>,
    ) -> Result<Response<DataMap>, Status> {
        Call::of(&request)?;
        Ok(Response::new(self.map.clone()))
    }
}
