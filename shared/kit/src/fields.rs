//! What the kit does to a message, field by field, from the declarations
//! alone: check the hygiene of every value a caller sends, check and
//! normalise a resource's values, cut a record down to what a purpose may
//! see, split it into its sealed and plain parts, diff, export and correct
//! it. Nothing here names a service's field.

use std::borrow::Cow;

use custodian_privacy::{guard, normalize};
use custodian_proto::privacy::v1::{FieldPolicy, Format, Purpose};
use custodian_runtime::error::Violations;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

use crate::{
    declare::{Declarations, ResourceSpec, Unit, max_items, max_length},
    pattern::Pattern,
};

// --- paths -------------------------------------------------------------

/// The value at `path`, when every message on the way and the value itself
/// are set.
pub fn get_path<'a>(msg: &'a DynamicMessage, path: &[FieldDescriptor]) -> Option<Cow<'a, Value>> {
    let (last, parents) = path.split_last()?;
    let mut current = Cow::Borrowed(msg);
    for field in parents {
        if !current.has_field(field) {
            return None;
        }
        current = match current {
            Cow::Borrowed(m) => match m.get_field(field) {
                Cow::Borrowed(Value::Message(inner)) => Cow::Borrowed(inner),
                other => Cow::Owned(other.as_message()?.clone()),
            },
            Cow::Owned(m) => Cow::Owned(m.get_field(field).as_message()?.clone()),
        };
    }
    if !current.has_field(last) {
        return None;
    }
    Some(match current {
        Cow::Borrowed(m) => m.get_field(last),
        Cow::Owned(m) => Cow::Owned(m.get_field(last).into_owned()),
    })
}

/// Sets the value at `path`, making the messages on the way.
pub fn set_path(msg: &mut DynamicMessage, path: &[FieldDescriptor], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = msg;
    for field in parents {
        let slot = current.get_field_mut(field);
        let Value::Message(inner) = slot else { return };
        current = inner;
    }
    current.set_field(last, value);
}

/// Clears the value at `path`.
pub fn clear_path(msg: &mut DynamicMessage, path: &[FieldDescriptor]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = msg;
    for field in parents {
        if !current.has_field(field) {
            return;
        }
        let Value::Message(inner) = current.get_field_mut(field) else {
            return;
        };
        current = inner;
    }
    current.clear_field(last);
}

// --- what a purpose sees -------------------------------------------------

/// A record cut down to what one purpose may see.
#[derive(Debug, Clone)]
pub struct Cut {
    pub message: DynamicMessage,
    /// Personal units present and shown (what the audit event names).
    pub shown: Vec<String>,
    /// Personal units present and withheld.
    pub withheld: Vec<String>,
}

/// Keeps only what `purpose` may see. The result starts empty and receives
/// each declared unit the purpose may see: a field without a declaration is
/// never copied, so whatever is forgotten stays hidden.
pub fn cut(spec: &ResourceSpec, msg: &DynamicMessage, purpose: Purpose) -> Cut {
    let mut out = DynamicMessage::new(spec.desc.clone());
    let mut shown = Vec::new();
    let mut withheld = Vec::new();
    for unit in &spec.units {
        let Some(value) = get_path(msg, &unit.path) else {
            continue;
        };
        if unit.visible_to(purpose) {
            set_path(&mut out, &unit.path, value.into_owned());
            if unit.personal() {
                shown.push(unit.dotted.clone());
            }
        } else {
            withheld.push(unit.dotted.clone());
        }
    }
    Cut {
        message: out,
        shown,
        withheld,
    }
}

/// [`cut`], on a record's encoding: the fields of each part added that
/// `purpose` may see, copied as they are on the wire, and the units met
/// there. Nothing is decoded into a message: a unit's bytes are copied
/// whole, a group is cut again inside, and what no unit declares (an
/// unknown field) is dropped, as [`cut`] drops it. The stored parts hold no
/// meta fields: the store encodes those after them. The read path
/// decodes the result straight into the generated type; `cut` on a decoded
/// record stays the definition (a test holds the two together).
pub struct EncodedCut<'a> {
    spec: &'a ResourceSpec,
    purpose: Purpose,
    /// Indexed as `spec.units`: met in a part, shown or not.
    present: Vec<bool>,
    pub encoded: Vec<u8>,
}

impl<'a> EncodedCut<'a> {
    pub fn new(spec: &'a ResourceSpec, purpose: Purpose, capacity: usize) -> Self {
        Self {
            spec,
            purpose,
            present: vec![false; spec.units.len()],
            encoded: Vec::with_capacity(capacity),
        }
    }

    /// Cuts one encoded part of the record (its parts hold different
    /// fields, so their cuts joined are the record's).
    pub fn add(&mut self, part: &[u8]) -> Result<(), Malformed> {
        let units: Vec<usize> = (0..self.spec.units.len()).collect();
        cut_level(
            self.spec,
            &units,
            0,
            part,
            self.purpose,
            &mut self.present,
            &mut self.encoded,
        )
    }

    /// The personal units shown and the units withheld, as [`Cut`] names
    /// them.
    pub fn units(&self) -> (Vec<String>, Vec<String>) {
        let (mut shown, mut withheld) = (Vec::new(), Vec::new());
        for (unit, _) in self
            .spec
            .units
            .iter()
            .zip(&self.present)
            .filter(|(_, p)| **p)
        {
            if !unit.visible_to(self.purpose) {
                withheld.push(unit.dotted.clone());
            } else if unit.personal() {
                shown.push(unit.dotted.clone());
            }
        }
        (shown, withheld)
    }
}

/// A stored part that is not a well-formed protobuf encoding.
#[derive(Debug)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a stored record is not a well-formed encoding")
    }
}

impl std::error::Error for Malformed {}

impl From<prost::DecodeError> for Malformed {
    fn from(_: prost::DecodeError) -> Self {
        Malformed
    }
}

/// One message level of an [`EncodedCut`]: `units` are those whose path
/// passes through this message, `depth` the index of its fields in them.
fn cut_level(
    spec: &ResourceSpec,
    units: &[usize],
    depth: usize,
    mut encoded: &[u8],
    purpose: Purpose,
    present: &mut [bool],
    out: &mut Vec<u8>,
) -> Result<(), Malformed> {
    use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
    while !encoded.is_empty() {
        let record = encoded;
        let (number, wire_type) = decode_key(&mut encoded)?;
        let payload = match wire_type {
            WireType::Varint => {
                decode_varint(&mut encoded)?;
                None
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let width = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                if encoded.len() < width {
                    return Err(Malformed);
                }
                encoded = &encoded[width..];
                None
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut encoded)?).map_err(|_| Malformed)?;
                if encoded.len() < len {
                    return Err(Malformed);
                }
                let (payload, rest) = encoded.split_at(len);
                encoded = rest;
                Some(payload)
            }
            // proto3 has no groups; a stored record never holds one.
            WireType::StartGroup | WireType::EndGroup => {
                return Err(Malformed);
            }
        };
        let whole = &record[..record.len() - encoded.len()];
        let on_path = |&&u: &&usize| {
            spec.units[u]
                .path
                .get(depth)
                .is_some_and(|f| f.number() == number)
        };
        // Units never overlap (a group is not a unit), so the field is
        // either one unit or a group of them.
        if let Some(&unit) = units
            .iter()
            .find(|u| on_path(u) && spec.units[**u].path.len() == depth + 1)
        {
            present[unit] = true;
            if spec.units[unit].visible_to(purpose) {
                out.extend_from_slice(whole);
            }
            continue;
        }
        let inner: Vec<usize> = units.iter().filter(on_path).copied().collect();
        let Some(payload) = payload.filter(|_| !inner.is_empty()) else {
            continue;
        };
        let mut kept = Vec::new();
        cut_level(
            spec,
            &inner,
            depth + 1,
            payload,
            purpose,
            present,
            &mut kept,
        )?;
        // As `cut` makes a group only to hold a unit it shows.
        if !kept.is_empty() {
            encode_key(number, WireType::LengthDelimited, out);
            encode_varint(kept.len() as u64, out);
            out.extend_from_slice(&kept);
        }
    }
    Ok(())
}

/// The personal units that hold a value.
pub fn present_personal(spec: &ResourceSpec, msg: &DynamicMessage) -> Vec<String> {
    spec.personal_units()
        .filter(|u| get_path(msg, &u.path).is_some())
        .map(|u| u.dotted.clone())
        .collect()
}

/// The units whose values differ.
pub fn changed_units(
    spec: &ResourceSpec,
    before: &DynamicMessage,
    after: &DynamicMessage,
) -> Vec<String> {
    spec.content_units()
        .filter(|u| get_path(before, &u.path) != get_path(after, &u.path))
        .map(|u| u.dotted.clone())
        .collect()
}

/// The stored parts of a record: its personal units (sealed at rest) and
/// its other content units (plain). Meta fields (name, times, controller,
/// category) are never stored in either: they are derived on every read.
pub fn split(spec: &ResourceSpec, msg: &DynamicMessage) -> (DynamicMessage, DynamicMessage) {
    let mut personal = DynamicMessage::new(spec.desc.clone());
    let mut plain = DynamicMessage::new(spec.desc.clone());
    for unit in spec.content_units() {
        if let Some(value) = get_path(msg, &unit.path) {
            let target = if unit.personal() {
                &mut personal
            } else {
                &mut plain
            };
            set_path(target, &unit.path, value.into_owned());
        }
    }
    (personal, plain)
}

/// A record without its personal units: what anonymisation keeps.
pub fn without_personal(spec: &ResourceSpec, msg: &DynamicMessage) -> DynamicMessage {
    split(spec, msg).1
}

/// The record's content as the data subject receives it: every unit but
/// the meta fields, field names as in the contract, enums by name, times as
/// RFC 3339.
pub fn export(spec: &ResourceSpec, msg: &DynamicMessage) -> prost_types::Struct {
    let mut content = DynamicMessage::new(spec.desc.clone());
    for unit in spec.content_units() {
        if let Some(value) = get_path(msg, &unit.path) {
            set_path(&mut content, &unit.path, value.into_owned());
        }
    }
    let options = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let json = content
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(serde_json::Value::Null);
    match json_to_value(json).kind {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        _ => prost_types::Struct::default(),
    }
}

fn json_to_value(json: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind as V;
    let kind = match json {
        serde_json::Value::Null => V::NullValue(0),
        serde_json::Value::Bool(b) => V::BoolValue(b),
        serde_json::Value::Number(n) => V::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => V::StringValue(s),
        serde_json::Value::Array(items) => V::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => V::StructValue(prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

// --- updates and corrections ---------------------------------------------

/// A path an update mask or a correction may name, and the units it covers.
struct Target<'a> {
    /// The unit (or units of a group) the path reaches.
    units: Vec<&'a Unit>,
    /// Fields below the unit, for a path into a name or an address.
    below: Vec<FieldDescriptor>,
}

fn resolve<'a>(spec: &'a ResourceSpec, path: &str) -> Option<Target<'a>> {
    if let Some(unit) = spec.unit(path) {
        return Some(Target {
            units: vec![unit],
            below: Vec::new(),
        });
    }
    // A group: every unit below it.
    let prefix = format!("{path}.");
    let units: Vec<&Unit> = spec
        .units
        .iter()
        .filter(|u| u.dotted.starts_with(&prefix))
        .collect();
    if !units.is_empty() {
        return Some(Target {
            units,
            below: Vec::new(),
        });
    }
    // A field inside a unit's message (person_name.given_name).
    let unit = spec
        .units
        .iter()
        .filter(|u| path.starts_with(&format!("{}.", u.dotted)))
        .max_by_key(|u| u.dotted.len())?;
    let Kind::Message(mut message) = unit.path.last()?.kind() else {
        return None;
    };
    let mut below = Vec::new();
    for name in path[unit.dotted.len() + 1..].split('.') {
        let field = message.get_field_by_name(name)?;
        if let Kind::Message(inner) = field.kind() {
            message = inner;
        }
        below.push(field);
    }
    Some(Target {
        units: vec![unit],
        below,
    })
}

/// The paths an update mask may name: units that are neither output only
/// nor immutable, the groups holding them, and fields inside a unit.
pub fn updatable(spec: &ResourceSpec) -> Vec<String> {
    let mut out = Vec::new();
    for unit in spec.content_units() {
        if unit.policy.output_only || unit.policy.immutable {
            continue;
        }
        if unit.path.len() > 1 {
            let group = unit.path[..unit.path.len() - 1]
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(".");
            if !out.contains(&group) {
                out.push(group);
            }
        }
        out.push(unit.dotted.clone());
        if let Kind::Message(inner) = unit.path.last().map(|f| f.kind()).unwrap_or(Kind::Bool)
            && inner.package_name() != "google.protobuf"
        {
            for field in inner.fields() {
                out.push(format!("{}.{}", unit.dotted, field.name()));
            }
        }
    }
    out
}

/// Copies the masked paths from `patch` into `target`; unset in the patch
/// means cleared. Paths must come from [`updatable`].
pub fn apply_mask(
    spec: &ResourceSpec,
    target: &mut DynamicMessage,
    patch: &DynamicMessage,
    paths: &[String],
) {
    for path in paths {
        let Some(resolved) = resolve(spec, path) else {
            continue;
        };
        for unit in resolved.units {
            let mut full = unit.path.clone();
            full.extend(resolved.below.iter().cloned());
            if resolved.below.is_empty() {
                match get_path(patch, &full) {
                    Some(value) => set_path(target, &full, value.into_owned()),
                    None => clear_path(target, &full),
                }
            } else {
                // Inside a unit: make the unit's message if it is missing.
                if get_path(target, &unit.path).is_none()
                    && let Kind::Message(inner) =
                        unit.path.last().map(|f| f.kind()).unwrap_or(Kind::Bool)
                {
                    set_path(
                        target,
                        &unit.path,
                        Value::Message(DynamicMessage::new(inner)),
                    );
                }
                match get_path(patch, &full) {
                    Some(value) => set_path(target, &full, value.into_owned()),
                    None => clear_path(target, &full),
                }
            }
        }
    }
}

/// The single-string paths a correction (rectification) may name: personal
/// string units, and the string fields of personal names and addresses.
pub fn rectifiable(spec: &ResourceSpec) -> Vec<String> {
    let mut out = Vec::new();
    for unit in spec.personal_units() {
        let Some(field) = unit.path.last() else {
            continue;
        };
        if field.is_list() || unit.policy.output_only {
            continue;
        }
        match field.kind() {
            Kind::String => out.push(unit.dotted.clone()),
            Kind::Message(inner) if inner.package_name() != "google.protobuf" => {
                for inner_field in inner.fields() {
                    if inner_field.kind() == Kind::String && !inner_field.is_list() {
                        out.push(format!("{}.{}", unit.dotted, inner_field.name()));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Sets a correction's value. `path` must come from [`rectifiable`].
pub fn set_rectified(spec: &ResourceSpec, msg: &mut DynamicMessage, path: &str, value: &str) {
    let Some(resolved) = resolve(spec, path) else {
        return;
    };
    let Some(unit) = resolved.units.first() else {
        return;
    };
    if !resolved.below.is_empty()
        && get_path(msg, &unit.path).is_none()
        && let Some(Kind::Message(inner)) = unit.path.last().map(|f| f.kind())
    {
        set_path(msg, &unit.path, Value::Message(DynamicMessage::new(inner)));
    }
    let mut full = unit.path.clone();
    full.extend(resolved.below);
    set_path(msg, &full, Value::String(value.to_owned()));
}

// --- checking values -------------------------------------------------------

fn is_well_known(desc: &MessageDescriptor) -> bool {
    desc.package_name() == "google.protobuf"
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The control characters a format allows: line breaks and tabs in free
/// text, none anywhere else.
fn allows(format: Format, c: char) -> bool {
    format == Format::Text && matches!(c, '\n' | '\r' | '\t')
}

/// Checks every value a caller sent, before any handler runs: no control
/// characters (a NUL byte breaks a PostgreSQL transaction), lengths and
/// counts within their limits, enums known, names, ids and tokens in their
/// form. Violations name the field and the rule, never the value.
pub fn hygiene(decl: &Declarations, msg: &DynamicMessage, prefix: &str, v: &mut Violations) {
    for (field, value) in msg.fields() {
        let policy = decl.field(&field);
        let path = join(prefix, field.name());
        match value {
            Value::List(items) => {
                if items.len() > max_items(policy) {
                    v.add(&path, format!("has more than {} items", max_items(policy)));
                    continue;
                }
                for (i, item) in items.iter().enumerate() {
                    let item_path = if matches!(item, Value::Message(_)) {
                        format!("{path}[{i}]")
                    } else {
                        path.clone()
                    };
                    value_hygiene(decl, &field, policy, item, &item_path, v);
                }
            }
            other => value_hygiene(decl, &field, policy, other, &path, v),
        }
    }
}

fn value_hygiene(
    decl: &Declarations,
    field: &FieldDescriptor,
    policy: Option<&FieldPolicy>,
    value: &Value,
    path: &str,
    v: &mut Violations,
) {
    match value {
        Value::String(s) => {
            let format = policy.map(|p| p.format()).unwrap_or(Format::Unspecified);
            let max = max_length(policy);
            // Bytes bound chars from above: a cheap refusal of huge values
            // before anything walks them.
            if s.len() > max * 4 || s.chars().count() > max {
                v.add(path, format!("is longer than {max} characters"));
                return;
            }
            if s.chars().any(|c| c.is_control() && !allows(format, c)) {
                v.add(path, "contains a control character");
                return;
            }
            if !s.is_empty()
                && let Err(rule) = form(decl, field, format, s)
            {
                v.add(path, rule);
            }
        }
        Value::Bytes(b) => {
            let max = policy
                .filter(|p| p.max_length > 0)
                .map_or(1 << 20, |p| p.max_length as usize);
            if b.len() > max {
                v.add(path, format!("is longer than {max} bytes"));
            }
        }
        Value::EnumNumber(n) => {
            if let Kind::Enum(e) = field.kind()
                && e.get_value(*n).is_none()
            {
                v.add(path, "is not a known value");
            }
        }
        Value::Message(inner) => hygiene(decl, inner, path, v),
        _ => {}
    }
}

/// The resource patterns a name field may match.
fn name_patterns<'d>(decl: &'d Declarations, field: &FieldDescriptor) -> Vec<&'d Pattern> {
    if let Some(reference) = decl.reference(field) {
        return vec![reference];
    }
    // A resource's own name.
    if field.name() == "name"
        && let Some(spec) = decl.resource(field.parent_message().full_name())
    {
        return vec![&spec.pattern];
    }
    // Any resource of the suite (a subject's id, a correction's record).
    decl.resources().map(|r| &r.pattern).collect()
}

/// The form a value of `format` must have; the error names the rule.
fn form(
    decl: &Declarations,
    field: &FieldDescriptor,
    format: Format,
    s: &str,
) -> Result<(), String> {
    let ok = |b: bool, rule: &str| if b { Ok(()) } else { Err(rule.to_owned()) };
    match format {
        Format::ResourceName => {
            let patterns = name_patterns(decl, field);
            if patterns.iter().any(|p| p.parse_name(s).is_some()) {
                Ok(())
            } else {
                Err(match patterns.as_slice() {
                    [one] => one.describe(),
                    _ => "is not the name of a resource of this suite".to_owned(),
                })
            }
        }
        Format::Uuid => ok(uuid::Uuid::parse_str(s).is_ok(), "must be a UUID"),
        Format::Id => normalize::tenant_id(s).map_err(str::to_owned),
        Format::PageToken => ok(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "is not a token from this server",
        ),
        Format::FieldPath => ok(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'),
            "is not a field path",
        ),
        Format::Token => ok(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "may hold only letters, digits, '-' and '_'",
        ),
        _ => Ok(()),
    }
}

/// What the guard does with sensitive data in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitive {
    /// Refuse the value (data sent through the API).
    Refuse,
    /// Remove it and note the kind (mail that has already arrived).
    Redact,
}

/// Checks and normalises a resource's values in place, reporting every bad
/// field under `prefix` at once: output-only fields are cleared, strings
/// normalised by their format (email, phone, country, text), every string
/// scanned by the sensitive-data guard. Returns the kinds of sensitive data
/// redacted (only in [`Sensitive::Redact`] mode).
pub fn prepare(
    decl: &Declarations,
    msg: &mut DynamicMessage,
    prefix: &str,
    sensitive: Sensitive,
    v: &mut Violations,
) -> Vec<&'static str> {
    prepare_in(decl, msg, prefix, sensitive, v, true)
}

/// As [`prepare`], for a stored record being changed: its output-only
/// fields are the server's and are kept as they are.
pub fn prepare_stored(
    decl: &Declarations,
    msg: &mut DynamicMessage,
    prefix: &str,
    v: &mut Violations,
) -> Vec<&'static str> {
    prepare_in(decl, msg, prefix, Sensitive::Refuse, v, false)
}

fn prepare_in(
    decl: &Declarations,
    msg: &mut DynamicMessage,
    prefix: &str,
    sensitive: Sensitive,
    v: &mut Violations,
    input: bool,
) -> Vec<&'static str> {
    let mut redacted = Vec::new();
    let mut pass = Pass {
        decl,
        sensitive,
        input,
        phones: false,
    };
    prepare_message(&pass, msg, prefix, v, &mut redacted);
    // Phones are read in the country of a sibling address, so they come
    // after every address is normalised.
    pass.phones = true;
    prepare_message(&pass, msg, prefix, v, &mut redacted);
    redacted.sort_unstable();
    redacted.dedup();
    redacted
}

/// One pass of [`prepare`] over a message tree.
struct Pass<'a> {
    decl: &'a Declarations,
    sensitive: Sensitive,
    /// Input from a caller: output-only fields are cleared.
    input: bool,
    /// This pass normalises phone numbers, and only them.
    phones: bool,
}

fn prepare_message(
    pass: &Pass<'_>,
    msg: &mut DynamicMessage,
    prefix: &str,
    v: &mut Violations,
    redacted: &mut Vec<&'static str>,
) {
    let (decl, sensitive, phones) = (pass.decl, pass.sensitive, pass.phones);
    let fields: Vec<FieldDescriptor> = msg.descriptor().fields().collect();
    for field in fields {
        let policy = decl.field(&field).cloned().unwrap_or_default();
        if policy.output_only {
            if !phones && pass.input {
                msg.clear_field(&field);
            }
            continue;
        }
        if !msg.has_field(&field) {
            if policy.required && !phones {
                v.add(join(prefix, field.name()), "is required");
            }
            continue;
        }
        let path = join(prefix, field.name());
        let format = policy.format();
        if (format == Format::Phone) != phones && field.kind() == Kind::String {
            continue;
        }
        let region = (format == Format::Phone && !policy.region_from.is_empty())
            .then(|| region_of(msg, &policy.region_from))
            .flatten();
        let value = msg.get_field_mut(&field);
        match value {
            Value::String(s) => {
                prepare_string(&policy, s, region.as_deref(), &path, sensitive, v, redacted);
            }
            Value::List(items) => {
                if items.len() > max_items(Some(&policy)) {
                    v.add(
                        &path,
                        format!("has more than {} items", max_items(Some(&policy))),
                    );
                    continue;
                }
                for (i, item) in items.iter_mut().enumerate() {
                    match item {
                        Value::String(s) => {
                            prepare_string(&policy, s, None, &path, sensitive, v, redacted);
                        }
                        Value::Message(inner) if !is_well_known(&inner.descriptor()) => {
                            let item_path = format!("{path}[{i}]");
                            prepare_message(pass, inner, &item_path, v, redacted);
                        }
                        _ => {}
                    }
                }
                if !phones {
                    // Empty lines of an address are no lines.
                    items.retain(|i| !matches!(i, Value::String(s) if s.is_empty()));
                }
            }
            Value::Message(inner) if !is_well_known(&inner.descriptor()) => {
                prepare_message(pass, inner, &path, v, redacted);
            }
            Value::EnumNumber(n) => {
                if let Kind::Enum(e) = field.kind()
                    && e.get_value(*n).is_none()
                {
                    v.add(&path, "is not a known value");
                }
            }
            _ => {}
        }
    }
    if !phones {
        // A message left holding nothing (an address of empty strings) is
        // no message.
        let empty: Vec<FieldDescriptor> = msg
            .fields()
            .filter(|(_, value)| matches!(value, Value::Message(m) if m.fields().next().is_none()))
            .map(|(f, _)| f)
            .collect();
        for field in empty {
            msg.clear_field(&field);
        }
    }
}

fn region_of(msg: &DynamicMessage, path: &str) -> Option<String> {
    let mut current = msg.clone();
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let field = current.descriptor().get_field_by_name(name)?;
        if !current.has_field(&field) {
            return None;
        }
        let value = current.get_field(&field).into_owned();
        if parts.peek().is_none() {
            return value.as_str().map(str::to_owned);
        }
        current = value.as_message()?.clone();
    }
    None
}

fn prepare_string(
    policy: &FieldPolicy,
    s: &mut String,
    region: Option<&str>,
    path: &str,
    sensitive: Sensitive,
    v: &mut Violations,
    redacted: &mut Vec<&'static str>,
) {
    let max = max_length(Some(policy));
    let normalised = match policy.format() {
        Format::Text => normalize::text(s, max),
        Format::Email if s.trim().is_empty() => Ok(String::new()),
        Format::Email => normalize::email(s).map_err(str::to_owned),
        Format::Phone if s.trim().is_empty() => Ok(String::new()),
        Format::Phone => normalize::phone(s, region).map_err(str::to_owned),
        Format::RegionCode if s.trim().is_empty() => Ok(String::new()),
        Format::RegionCode => normalize::region_code(s).map_err(str::to_owned),
        Format::Uuid => normalize::request_id(s)
            .map(Option::unwrap_or_default)
            .map_err(str::to_owned),
        Format::Token => {
            let t = s.trim().to_ascii_lowercase();
            if t.chars().count() > max {
                Err(format!("is longer than {max} characters"))
            } else if t
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                Ok(t)
            } else {
                Err("may hold only letters, digits, '-' and '_'".to_owned())
            }
        }
        Format::ResourceName | Format::PageToken | Format::Id | Format::FieldPath => {
            // Checked in form by the stack already; only trimmed here.
            Ok(s.trim().to_owned())
        }
        Format::Line | Format::Unspecified => normalize::single_line(s, max),
    };
    match normalised {
        Ok(value) => *s = value,
        Err(rule) => {
            v.add(path, rule);
            return;
        }
    }
    if s.is_empty() {
        return;
    }
    // The policy asks customers not to send sensitive personal information;
    // every string is checked, and only the kind found is ever named.
    match sensitive {
        Sensitive::Refuse => {
            if let Err(found) = custodian_privacy::check(s) {
                v.add(
                    path,
                    format!(
                        "contains {} ({}); sensitive personal information must not be sent",
                        found.kind.with_article(),
                        found.kind.as_str()
                    ),
                );
            }
        }
        Sensitive::Redact => {
            let (clean, kinds) = guard::redact(s);
            if !kinds.is_empty() {
                *s = clean;
                redacted.extend(kinds.iter().map(|k| k.as_str()));
            }
        }
    }
}
