//! Hostile inputs for every method of every service (see `tests/tests/hardening.rs`).
//!
//! Nothing here names a service, a method or a field: the methods are the
//! declared ones ([`custodian_kit::DECLARATIONS`]) of the gRPC services the
//! server lists by reflection, and the string fields are found in each
//! method's input message by walking its descriptor (nested messages,
//! repeated fields and maps included). A new service, method or field is
//! covered without a change here.
//!
//! For one string field at a time, a request is built as a
//! [`DynamicMessage`] holding only that field, set to a hostile spelling of
//! a value of the field's declared format (a resource name of its pattern,
//! an email, free text); it is encoded here (so a string can be made
//! invalid UTF-8 on the wire) and sent as raw bytes with [`RawCodec`]. The
//! [`Prober`] then checks what a refusal must never do: fail as the
//! server's fault, echo the value, store anything, or write the value into
//! the audit trail.
//!
//! The card and account numbers among them ([`HostileKind::Sensitive`])
//! come from [`sensitive_spelling`], every spelling the sensitive-data
//! guard must see through, with random separators and grouping;
//! [`sensitive_spellings`] lists them once each, in free text and in mail,
//! for tests that check refusal or redaction field by field.

use std::{collections::BTreeMap, fmt, time::Duration};

use bytes::{Buf as _, BufMut as _};
use custodian_kit::{DECLARATIONS, pattern::Pattern};
use custodian_proto::privacy::v1::Format;
use proptest::{prelude::*, sample::select};
use prost::Message as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};
use sqlx::{AnyPool, Row as _};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use crate::TestApp;

// --- raw calls -----------------------------------------------------------

/// A codec that sends and receives message bytes as they are: requests
/// encoded by the test (malformed ones included), responses undecoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `path` with `body` as the request message and `metadata`, and
/// reads the whole answer (one message of a unary method, every message of
/// a streaming one). The answer's messages, or the status it ended with.
pub async fn call_raw(
    channel: &Channel,
    path: &str,
    body: Vec<u8>,
    metadata: &[(&'static str, String)],
) -> Result<Vec<Vec<u8>>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let mut request = tonic::Request::new(body);
    request.set_timeout(Duration::from_secs(30));
    for (key, value) in metadata {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("ASCII metadata"));
    }
    let path = path.parse().expect("a method path");
    // A server-streaming call reads a unary answer just as well.
    let mut stream = grpc
        .server_streaming(request, path, RawCodec)
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await? {
        messages.push(message);
    }
    Ok(messages)
}

// --- what to call ----------------------------------------------------------

/// The gRPC services the server behind `channel` serves, from reflection.
pub async fn served_services(channel: &Channel) -> Vec<String> {
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
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a reflection answer")
        .expect("a reflection answer");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("reflection answered {other:?}"),
    }
}

/// One declared method the server serves, and the string fields of its
/// request message.
#[derive(Clone)]
pub struct Target {
    /// "/custodian.identity.v1.ContactService/GetContact".
    pub path: String,
    pub input: MessageDescriptor,
    pub slots: Vec<Slot>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// Every declared method of `services`, in path order.
pub fn targets(services: &[String]) -> Vec<Target> {
    let mut out: Vec<Target> = DECLARATIONS
        .methods()
        .filter(|(_, decl)| {
            services
                .iter()
                .any(|s| s == decl.desc.parent_service().full_name())
        })
        .map(|(path, decl)| Target {
            path: path.clone(),
            input: decl.desc.input(),
            slots: string_slots(&decl.desc.input()),
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Where a string sits in a map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Plain,
    MapKey,
    MapValue,
}

/// One string field of a request message, at any depth: the fields from
/// the message down to it. A repeated field on the way holds one item.
#[derive(Clone)]
pub struct Slot {
    path: Vec<FieldDescriptor>,
    leaf: Leaf,
    /// "contact.postal_address.address_lines[0]".
    pub dotted: String,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dotted)
    }
}

/// Messages are walked this deep at most (a recursive message type is
/// entered once per path anyway).
const MAX_DEPTH: usize = 6;

/// Every string field of `desc`, nested ones included.
pub fn string_slots(desc: &MessageDescriptor) -> Vec<Slot> {
    let mut out = Vec::new();
    walk(
        desc,
        &mut Vec::new(),
        &mut vec![desc.full_name().to_owned()],
        &mut out,
    );
    out
}

fn walk(
    desc: &MessageDescriptor,
    path: &mut Vec<FieldDescriptor>,
    seen: &mut Vec<String>,
    out: &mut Vec<Slot>,
) {
    if path.len() >= MAX_DEPTH {
        return;
    }
    for field in desc.fields() {
        path.push(field.clone());
        let slot = |leaf| Slot {
            path: path.clone(),
            leaf,
            dotted: dotted(path, leaf),
        };
        match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                if entry.map_entry_key_field().kind() == Kind::String {
                    out.push(slot(Leaf::MapKey));
                }
                if entry.map_entry_value_field().kind() == Kind::String {
                    out.push(slot(Leaf::MapValue));
                }
            }
            Kind::String => out.push(slot(Leaf::Plain)),
            Kind::Message(inner) if !seen.iter().any(|s| s == inner.full_name()) => {
                seen.push(inner.full_name().to_owned());
                walk(&inner, path, seen, out);
                seen.pop();
            }
            _ => {}
        }
        path.pop();
    }
}

fn dotted(path: &[FieldDescriptor], leaf: Leaf) -> String {
    let mut out = String::new();
    for (i, field) in path.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(field.name());
        let last = i + 1 == path.len();
        if field.is_map() && last {
            out.push_str(match leaf {
                Leaf::MapKey => "{key}",
                _ => "{value}",
            });
        } else if field.is_list() {
            out.push_str("[0]");
        }
    }
    out
}

impl Slot {
    /// The string field itself.
    fn field(&self) -> &FieldDescriptor {
        self.path.last().expect("a slot has a field")
    }

    /// The request message with only this field set to `value`.
    pub fn build(&self, input: &MessageDescriptor, value: &str) -> DynamicMessage {
        let mut message = DynamicMessage::new(input.clone());
        set(&mut message, &self.path, self.leaf, value);
        message
    }

    /// A legitimate value of the field's declared format, which the hostile
    /// spellings are made from: a resource name of its pattern, an email,
    /// a UUID, plain text.
    pub fn base_value(&self) -> String {
        let field = self.field();
        let policy = DECLARATIONS.field(field);
        let format = policy.map(|p| p.format()).unwrap_or(Format::Unspecified);
        const ID: &str = "0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f";
        match format {
            Format::ResourceName => {
                let pattern = policy
                    .map(|p| p.reference.as_str())
                    .filter(|r| !r.is_empty())
                    .and_then(|r| Pattern::parse(r).ok())
                    .or_else(|| {
                        (field.name() == "name")
                            .then(|| DECLARATIONS.resource(field.parent_message().full_name()))
                            .flatten()
                            .map(|spec| spec.pattern.clone())
                    })
                    .unwrap_or_else(|| {
                        Pattern::parse("tenants/{tenant}/contacts/{contact}").expect("pattern")
                    });
                if pattern.has_var("tenant") {
                    pattern.format(&["acme", ID, ID, ID])
                } else {
                    pattern.format(&[ID, ID, ID])
                }
            }
            Format::Email => "ann@example.com".into(),
            Format::Phone => "+4930901820".into(),
            Format::RegionCode => "DE".into(),
            Format::Uuid => ID.into(),
            Format::Id => "acme".into(),
            Format::FieldPath => "person_name.given_name".into(),
            Format::Token => "support".into(),
            Format::PageToken => "AbC-123_x".into(),
            _ => "Acme order notes".into(),
        }
    }
}

fn set(message: &mut DynamicMessage, path: &[FieldDescriptor], leaf: Leaf, s: &str) {
    let Some((field, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        let value = match (leaf, field.kind()) {
            (Leaf::MapKey, Kind::Message(entry)) => {
                let mut map = std::collections::HashMap::new();
                map.insert(
                    MapKey::String(s.to_owned()),
                    entry.map_entry_value_field().kind().default_value(),
                );
                Value::Map(map)
            }
            (Leaf::MapValue, Kind::Message(entry)) => {
                let mut map = std::collections::HashMap::new();
                map.insert(
                    MapKey::default_value(&entry.map_entry_key_field().kind()),
                    Value::String(s.to_owned()),
                );
                Value::Map(map)
            }
            _ if field.is_list() => Value::List(vec![Value::String(s.to_owned())]),
            _ => Value::String(s.to_owned()),
        };
        message.set_field(field, value);
        return;
    }
    let Kind::Message(inner_desc) = field.kind() else {
        return;
    };
    let mut inner = DynamicMessage::new(inner_desc);
    set(&mut inner, rest, leaf, s);
    let value = if field.is_list() {
        Value::List(vec![Value::Message(inner)])
    } else {
        Value::Message(inner)
    };
    message.set_field(field, value);
}

// --- hostile values ------------------------------------------------------------

/// The kinds of hostile strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostileKind {
    /// A NUL byte.
    Nul,
    /// Another control character (line breaks and tabs are text's).
    Control,
    /// Bytes that are not UTF-8 in a string field, on the wire.
    InvalidUtf8,
    /// A string of a megabyte or more.
    Huge,
    /// Letters buried under combining marks.
    Combining,
    /// Zero-width, joiner, byte-order, bidirectional and tag characters.
    Invisible,
    /// `../`, `//`, `%2F` and their friends.
    PathTrick,
    /// A resource name far longer than any real one, or nested too deep.
    OversizedName,
    /// A card or account number, spelled as the guard must still see it.
    Sensitive,
}

impl HostileKind {
    pub const ALL: [HostileKind; 9] = [
        HostileKind::Nul,
        HostileKind::Control,
        HostileKind::InvalidUtf8,
        HostileKind::Huge,
        HostileKind::Combining,
        HostileKind::Invisible,
        HostileKind::PathTrick,
        HostileKind::OversizedName,
        HostileKind::Sensitive,
    ];

    /// Whether every field must refuse it, whatever its format.
    pub fn always_refused(self) -> bool {
        matches!(
            self,
            HostileKind::Nul | HostileKind::Control | HostileKind::InvalidUtf8 | HostileKind::Huge
        )
    }
}

/// One hostile spelling, applied to a field's legitimate value by
/// [`Hostile::render`]. Every spelling carries a `needle`, a word of its
/// own ("zq" and six letters that are not hex digits) that must never come
/// back in an error or reach the audit trail.
#[derive(Clone)]
pub struct Hostile {
    pub kind: HostileKind,
    pub needle: String,
    /// Where in the legitimate value it goes, as a fraction of 65536.
    at: u16,
    /// What follows the needle: the hostile characters.
    text: String,
    /// For [`HostileKind::InvalidUtf8`]: the bytes that follow the needle.
    bytes: Vec<u8>,
    /// For [`HostileKind::Huge`] and [`HostileKind::OversizedName`]: how
    /// long (bytes; characters of a segment), and whether a name is nested
    /// too deep rather than too long.
    len: usize,
    deep: bool,
}

impl fmt::Debug for Hostile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short, whatever the value: a failing case is printed.
        write!(
            f,
            "{:?} needle={} at={} text={:?} bytes={:02x?} len={} deep={}",
            self.kind,
            self.needle,
            self.at,
            self.text.chars().take(40).collect::<String>(),
            self.bytes,
            self.len,
            self.deep
        )
    }
}

/// A hostile value as sent: a string, or bytes that are not UTF-8.
#[derive(Clone)]
pub enum Rendered {
    Text(String),
    Bytes(Vec<u8>),
}

impl Rendered {
    fn bytes(&self) -> &[u8] {
        match self {
            Rendered::Text(s) => s.as_bytes(),
            Rendered::Bytes(b) => b,
        }
    }

    /// The first characters (bytes read lossily), for the echo check.
    pub fn prefix(&self, chars: usize) -> String {
        String::from_utf8_lossy(&self.bytes()[..self.bytes().len().min(chars * 4)])
            .chars()
            .take(chars)
            .collect()
    }
}

/// The largest char boundary of `s` at or before `at`/65536 of its length.
fn boundary(s: &str, at: u16) -> usize {
    let mut i = s.len() * usize::from(at) / 65536;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Hostile {
    /// The hostile spelling of `base`, a legitimate value of the field.
    pub fn render(&self, base: &str) -> Rendered {
        let i = boundary(base, self.at);
        let (head, tail) = base.split_at(i);
        let needle = &self.needle;
        match self.kind {
            HostileKind::InvalidUtf8 => {
                let mut bytes = Vec::new();
                bytes.extend_from_slice(head.as_bytes());
                bytes.extend_from_slice(needle.as_bytes());
                bytes.extend_from_slice(&self.bytes);
                bytes.extend_from_slice(tail.as_bytes());
                Rendered::Bytes(bytes)
            }
            HostileKind::Huge => {
                let mut s = format!("{base}{needle}");
                let filler = self.text.chars().next().unwrap_or('x');
                while s.len() < self.len {
                    s.push(filler);
                }
                Rendered::Text(s)
            }
            HostileKind::OversizedName => {
                let last = base.rsplit('/').next().unwrap_or(base);
                Rendered::Text(if self.deep {
                    // Nested far deeper than any pattern.
                    let mut s = base.to_owned();
                    while s.len() < self.len {
                        s.push('/');
                        s.push_str(needle);
                        s.push('/');
                        s.push_str(last);
                    }
                    s
                } else {
                    // Its own segment far longer than any id.
                    let head = &base[..base.len() - last.len()];
                    format!("{head}{needle}{}", "a".repeat(self.len))
                })
            }
            HostileKind::Combining => {
                // Every letter of the needle carries the marks.
                let mut s = head.to_owned();
                for c in needle.chars() {
                    s.push(c);
                    s.push_str(&self.text);
                }
                s.push_str(tail);
                Rendered::Text(s)
            }
            // Apart from the words around it, so that it is a value of its
            // own and not the fragment of a longer token.
            HostileKind::Sensitive => {
                Rendered::Text(format!("{head}{needle} {} {tail}", self.text))
            }
            _ => Rendered::Text(format!("{head}{needle}{}{tail}", self.text)),
        }
    }

    /// The encoded request: `slot` of `input` set to this spelling of its
    /// legitimate value. Bytes that are not UTF-8 are put in place of a
    /// placeholder of the same length after encoding, so every length on
    /// the way stays right.
    pub fn encode(&self, input: &MessageDescriptor, slot: &Slot) -> Vec<u8> {
        let rendered = self.render(&slot.base_value());
        match &rendered {
            Rendered::Text(s) => slot.build(input, s).encode_to_vec(),
            Rendered::Bytes(b) => {
                let placeholder = "\u{7e}".repeat(b.len());
                let mut body = slot.build(input, &placeholder).encode_to_vec();
                // The last run: a length byte before it may be a '~' too.
                let at = body
                    .windows(b.len())
                    .rposition(|w| w == placeholder.as_bytes())
                    .expect("the placeholder is in the encoding");
                body[at..at + b.len()].copy_from_slice(b);
                body
            }
        }
    }
}

const CONTROLS: &[char] = &[
    '\u{1}', '\u{7}', '\u{8}', '\u{b}', '\u{c}', '\u{e}', '\u{1b}', '\u{1f}', '\u{7f}', '\u{80}',
    '\u{85}', '\u{9b}', '\u{9f}',
];

const INVISIBLES: &[char] = &[
    '\u{200b}',
    '\u{200c}',
    '\u{200d}',
    '\u{2060}',
    '\u{feff}',
    '\u{202e}',
    '\u{ad}',
    '\u{180e}',
    '\u{e0041}',
    '\u{2066}',
    '\u{34f}',
];

const INVALID_UTF8: &[&[u8]] = &[
    &[0xff],
    &[0xc0, 0xaf],             // an overlong '/'
    &[0xed, 0xa0, 0x80],       // a surrogate
    &[0xe2, 0x82],             // a truncated sequence
    &[0x80],                   // a lone continuation byte
    &[0xf8, 0x88, 0x80, 0x80], // a five-byte lead
    &[0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
    &[0xc3, 0x00],             // a lead byte before NUL
];

const PATH_TRICKS: &[&str] = &[
    "../",
    "..%2F",
    "%2F",
    "//",
    "/./",
    "%2e%2e%2f",
    "..\\",
    "/../../",
    "%00",
    "..;/",
    "\\/",
    "%252F",
    "/",
];

/// The needle: "zq" and six letters that are not hex digits, so it never
/// appears by chance in a hash, a UUID or English text.
fn needle() -> impl Strategy<Value = String> {
    "[g-y]{6}".prop_map(|s| format!("zq{s}"))
}

/// Hostile values of one kind.
pub fn hostile(kind: HostileKind) -> BoxedStrategy<Hostile> {
    let make = move |needle, at, text, bytes, len, deep| Hostile {
        kind,
        needle,
        at,
        text,
        bytes,
        len,
        deep,
    };
    let text: BoxedStrategy<String> = match kind {
        HostileKind::Nul => ("\u{0}{1,3}", "[a-z]{0,4}")
            .prop_map(|(n, s)| format!("{n}{s}"))
            .boxed(),
        HostileKind::Control => proptest::collection::vec(select(CONTROLS), 1..3)
            .prop_map(|c| c.into_iter().collect())
            .boxed(),
        HostileKind::Huge => select(&['x', 'é', '😀', '\u{301}', '\u{200b}', '/'][..])
            .prop_map(String::from)
            .boxed(),
        HostileKind::Combining => {
            proptest::collection::vec(proptest::char::range('\u{300}', '\u{36f}'), 1..12)
                .prop_map(|c| c.into_iter().collect())
                .boxed()
        }
        HostileKind::Invisible => proptest::collection::vec(select(INVISIBLES), 1..4)
            .prop_map(|c| c.into_iter().collect())
            .boxed(),
        HostileKind::PathTrick => (
            select(PATH_TRICKS),
            proptest::option::of(select(PATH_TRICKS)),
        )
            .prop_map(|(a, b)| format!("{a}{}", b.unwrap_or("")))
            .boxed(),
        HostileKind::Sensitive => sensitive_spelling().prop_map(|(_, text)| text).boxed(),
        HostileKind::InvalidUtf8 | HostileKind::OversizedName => Just(String::new()).boxed(),
    };
    let bytes: BoxedStrategy<Vec<u8>> = if kind == HostileKind::InvalidUtf8 {
        select(INVALID_UTF8).prop_map(<[u8]>::to_vec).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    let len: BoxedStrategy<usize> = match kind {
        HostileKind::Huge => (1_048_576usize..1_200_000).boxed(),
        HostileKind::OversizedName => (300usize..8192).boxed(),
        _ => Just(0).boxed(),
    };
    (needle(), any::<u16>(), text, bytes, len, any::<bool>())
        .prop_map(move |(n, at, text, bytes, len, deep)| make(n, at, text, bytes, len, deep))
        .boxed()
}

// --- card and account numbers, however they are spelled ------------------------

/// Card numbers the schemes publish for testing (Luhn-valid, each with a
/// known issuer prefix), laid out in blocks of four when printed.
const CARDS: &[&str] = &[
    "4111111111111111", // Visa
    "4012888888881881", // Visa
    "5555555555554444", // Mastercard
    "5500000000000004", // Mastercard
    "2223003122003222", // Mastercard, 2-series
    "6011111111111117", // Discover
    "3530111333300000", // JCB
];

/// Test numbers printed 4-6-5 (American Express) and 4-6-4 (Diners Club).
const PRINTED_CARDS: &[&str] = &["378282246310005", "30569309025904"];

/// Valid IBANs of several countries (the registry's examples).
const IBANS: &[&str] = &[
    "DE89370400440532013000",
    "GB29NWBK60161331926819",
    "GB82WEST12345698765432",
    "FR7630006000011234567890189",
    "NL91ABNA0417164300",
    "BE68539007547034",
];

/// What may join the groups of a value: each mark alone (and a hyphen or
/// slash with spaces too), Unicode spaces and dashes, and the line breaks
/// of a quoted reply, alone or after a mark. (A comma, bar or colon between
/// spaces separates the items of a list; the guard reads those apart.)
const SEPARATORS: &[&str] = &[
    " ", "-", ".", "/", "_", ",", "*", "|", ":", "~", " - ", " / ", "\u{a0}", "\u{2013}", "  ",
    "\t", "\n> ", "\n>> ", "\r\n> ", "-\n> ", ",\n> ",
];

/// The same separator where a lone `.` or `,` would read as a decimal or
/// thousands separator (so that a number before or after the card is a
/// number of its own).
fn outer(separator: &str) -> &str {
    if matches!(separator, "." | ",") {
        " "
    } else {
        separator
    }
}

/// `digits` in groups of the given sizes (the last takes what is left).
fn grouped(digits: &str, sizes: &[usize], separator: &str) -> String {
    let mut groups = Vec::new();
    let mut rest = digits;
    for &size in sizes {
        if rest.len() <= size {
            break;
        }
        let (group, tail) = rest.split_at(size);
        groups.push(group);
        rest = tail;
    }
    groups.push(rest);
    groups.join(separator)
}

/// How a card is laid out.
#[derive(Debug, Clone, Copy)]
enum CardLayout {
    Compact,
    Fours,
    Printed,
}

/// What is written after a card.
#[derive(Debug, Clone, Copy)]
enum CardTail {
    None,
    /// `MMYY`, joined like the card's groups.
    Expiry,
    /// `MM/YY CVV`.
    ExpirySlashCvv,
    /// `MMYY CVV`.
    ExpiryCvv,
}

/// A random spelling of a card or account number, as the guard must still
/// see it: `(what it is, the text)`. Cards: a test number compact, in
/// blocks of four or printed 4-6-5 / 4-6-4, joined throughout by one of
/// [`SEPARATORS`], optionally after a digit or a short number, before an
/// expiry date and security code, and before a second card. IBANs: an
/// example in any case, compact, in blocks of four, with the country code
/// apart or in shifted groups, joined by any separator. Either may be
/// written in full-width digits.
pub fn sensitive_spelling() -> BoxedStrategy<(String, String)> {
    let card = (
        0..CARDS.len(),
        0..PRINTED_CARDS.len(),
        select(&[CardLayout::Compact, CardLayout::Fours, CardLayout::Printed][..]),
        select(SEPARATORS),
        select(
            &[
                CardTail::None,
                CardTail::Expiry,
                CardTail::ExpirySlashCvv,
                CardTail::ExpiryCvv,
            ][..],
        ),
        (1u32..=12, 0u32..100, 100u32..10_000),
        select(&["", "1 ", "order 7 ", "ref 12345 "][..]),
        proptest::option::of(0..CARDS.len()),
    )
        .prop_map(
            |(i, p, layout, sep, tail, (month, year, cvv), before, second)| {
                let card = |digits: &str| match layout {
                    CardLayout::Compact => digits.to_owned(),
                    CardLayout::Fours => grouped(digits, &[4, 4, 4], sep),
                    CardLayout::Printed => grouped(digits, &[4, 6], sep),
                };
                let mut text = format!(
                    "{before}{}",
                    card(match layout {
                        CardLayout::Printed => PRINTED_CARDS[p],
                        _ => CARDS[i],
                    })
                );
                let join = outer(sep);
                // Four digits only on American Express and Diners cards, where
                // the groups are not all blocks of four.
                let cvv = match layout {
                    CardLayout::Printed => cvv,
                    _ => cvv % 900 + 100,
                };
                match tail {
                    CardTail::None => {}
                    CardTail::Expiry => text.push_str(&format!("{join}{month:02}{year:02}")),
                    CardTail::ExpirySlashCvv => {
                        text.push_str(&format!(" {month:02}/{year:02} {cvv}"));
                    }
                    CardTail::ExpiryCvv => text.push_str(&format!(" {month:02}{year:02} {cvv}")),
                }
                let mut what = format!("card, {layout:?}, joined by {sep:?}, tail {tail:?}");
                if let Some(second) = second
                    && !matches!(layout, CardLayout::Printed)
                {
                    text.push_str(join);
                    text.push_str(&card(CARDS[second]));
                    what.push_str(", then a second card");
                }
                (what, text)
            },
        );
    let iban = (
        0..IBANS.len(),
        select(&["compact", "fours", "country apart", "shifted"][..]),
        select(SEPARATORS),
        any::<bool>(),
        select(&["", "IBAN ", "iban: ", "account "][..]),
        proptest::collection::vec(2usize..=7, 8),
    )
        .prop_map(|(i, grouping, sep, lower, before, sizes)| {
            let iban = if lower {
                IBANS[i].to_ascii_lowercase()
            } else {
                IBANS[i].to_owned()
            };
            let spelled = match grouping {
                "compact" => iban,
                "fours" => grouped(&iban, &[4; 8], sep),
                "country apart" => format!(
                    "{}{sep}{}{sep}{}",
                    &iban[..2],
                    &iban[2..4],
                    grouped(&iban[4..], &[4; 8], sep)
                ),
                _ => grouped(&iban, &sizes, sep),
            };
            (
                format!("IBAN, {grouping}, joined by {sep:?}"),
                format!("{before}{spelled}"),
            )
        });
    (prop_oneof![card, iban], any::<bool>())
        .prop_map(|((what, text), wide)| {
            if wide {
                (format!("{what}, full-width digits"), full_width(&text))
            } else {
                (what, text)
            }
        })
        .boxed()
}

/// Digits in their full-width forms (`４１１１`), which NFKC folds back.
fn full_width(text: &str) -> String {
    text.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) if c.is_ascii_digit() => char::from_u32(0xFF10 + d).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// Every spelling of a card or account number the guard must see through,
/// once each, alone and in the text around it (notes, mail bodies, quoted
/// replies, a display name, a Message-ID): `(what it is, the text)`. A
/// refusing field must refuse each; redacted mail must keep none of its
/// digits ([`reveals`]).
pub fn sensitive_spellings() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("card and expiry, spaces", "4111 1111 1111 1111 1226"),
        ("card and expiry, hyphens", "4111-1111-1111-1111-1226"),
        ("card, expiry and CVV", "4111 1111 1111 1111 12/26 123"),
        ("compact card, expiry and CVV", "4111111111111111 1226 737"),
        (
            "card, hyphens, expiry and CVV",
            "4111-1111-1111-1111 12/26 123",
        ),
        (
            "two cards in a row",
            "4111 1111 1111 1111 5500 0000 0000 0004",
        ),
        (
            "two compact cards in a row",
            "4111111111111111 5500000000000004",
        ),
        ("a digit before the card", "1 4111 1111 1111 1111"),
        (
            "an order number before the card",
            "order 7 4111 1111 1111 1111",
        ),
        ("Amex with expiry", "3782 822463 10005 1226"),
        ("IBAN with dots", "DE89.3704.0044.0532.0130.00"),
        ("IBAN with slashes", "DE89/3704/0044/0532/0130/00"),
        ("IBAN, country code apart", "DE 89 3704 0044 0532 0130 00"),
        ("IBAN in shifted groups", "DE893 704004 405320 13000"),
        (
            "IBAN in lower case with hyphens",
            "gb29-nwbk-6016-1331-9268-19",
        ),
        ("card split over quoted lines", "> 4111 1111\n> 1111 1111"),
        (
            "card split over doubly quoted lines",
            ">> 4111 1111\n>> 1111 1111",
        ),
        (
            "card and expiry split over quoted lines",
            "> my card is 4111-1111-1111-\n> 1111-1226, thanks",
        ),
        (
            "IBAN split over quoted lines",
            "> IBAN DE89 3704 0044\n> 0532 0130 00",
        ),
        (
            "card in a display name",
            "\"Card 4111 1111 1111 1111\" <ann@example.com>",
        ),
        (
            "card in a Message-ID",
            "<4111111111111111@mail.example.com>",
        ),
    ]
    .into_iter()
    .map(|(what, text)| (what.to_owned(), text.to_owned()))
    .collect();
    for mark in ["_", ",", "*", "|", ":", "~", " - "] {
        out.push((
            format!("card joined by {mark:?}"),
            ["4111", "1111", "1111", "1111"].join(mark),
        ));
    }
    // The same in mail: a body that states them among ordinary words and
    // numbers, and a reply that quotes it.
    let values: Vec<(String, String)> = out.clone();
    for (what, value) in values {
        out.push((
            format!("{what}, in a mail body"),
            format!(
                "Hello,\n\norder 4411-2233 of 07.12.2026 was charged twice. \
                 Please refund to {value} by 12/26.\n\nThanks, Ann\n+49 30 901820"
            ),
        ));
        let quoted: String = format!("Please refund to {value} by Friday.")
            .lines()
            .map(|line| {
                if line.starts_with('>') {
                    format!(">{line}\n")
                } else {
                    format!("> {line}\n")
                }
            })
            .collect();
        out.push((
            format!("{what}, quoted in a reply"),
            format!("Done, see below.\n\nOn 07.12.2026 14:30, Ann wrote:\n{quoted}"),
        ));
    }
    out
}

/// Business notes heavy in digits (dates, times, amounts, order, phone,
/// invoice, tracking and version numbers) that hold no sensitive value: a
/// refusing field must take each, and redaction must leave each as it is.
pub const BUSINESS_NOTES: &[&str] = &[
    "Invoice 2026-0012345, order 4411-2233, call +1 (555) 123-4567 before 12/26",
    "Meeting 2026-12-07 at 14:30, room 4.12, dial-in +49 30 901820",
    "Delivery 07.12.2026 between 08:00 and 12:00, 3 pallets, 1,250 kg",
    "Total EUR 1,234.56 incl. 19% VAT (EUR 197.10), due 31.12.2026",
    "Amounts: 1,234.56, 2,345.67, 3,456.78, 4,567.89, 5,678.90",
    "PO 4500012345, 4500012346 and 4500012347 shipped 2026-12-07",
    "Orders 4411-2233, 4411-2234, 4411-2235, 4411-2236, 4411-2237",
    "Call (555) 123-4567 or (555) 765-4321, fax (555) 123-4568",
    "Tel. +49 30 901820, mobile +49 151 2345 6789, fax +49 30 901821",
    "Phone +1 415 555 2671 / +44 20 7946 0958 / +33 1 42 68 53 00",
    "Support hours 08:00-18:00 CET, Mon-Fri; hotline 0800 123 4567",
    "Tracking 9405 5036 9930 0012 3456 78 (USPS), 1Z 999 AA1 01 2345 6784 (UPS)",
    "DHL 00340434161094042557, FedEx 7489 1234 5678",
    "Version 2.14.3 (build 20261207.1432), API v1.2.3.4",
    "Upgrade from 1.9.12 to 2.0.1 on 2026/12/07 at 23:00 UTC",
    "Invoice INV-2026-000123 / customer 100234 / contract 2024-118",
    "Quote Q-4411-2233-5566 valid until 2026-12-31",
    "Serial numbers 4111 4112 4113 4110 4115 returned",
    "Parts 1234-5678, 2345-6789, 3456-7890, 4567-8901",
    "Server 192.168.100.200:8443, backup 10.0.0.1/24, port 5432",
    "ISBN 978-3-16-148410-0 and 978-0-306-40615-7, 12 copies each",
    "Account manager ext. 4411, team 22, floor 3, desk 4-112",
    "Shipment 3 of 5: 12 x 24 x 36 cm, 4.5 kg, 2 boxes",
    "Budget 2026: Q1 125,000; Q2 130,000; Q3 128,500; Q4 140,250",
    "Timesheet 07.12.2026 08:15-12:30, 13:00-17:45 (8.75 h)",
    "Dates 01.05.2024 - 31.05.2024 and 01.06.2024 - 30.06.2024",
    "Postcodes 10115, 20095, 80331, 50667 and 60311",
    "Ticket #48213 merged into #48190; see also #48222",
    "Reference 2026-12-07/4411/2233 for the December run",
    "Batch 20261207-001 to 20261207-048 produced, lot 4411",
    "Coordinates 52.5200, 13.4050 (Berlin office)",
    "Password policy: 12 characters, rotation every 90 days, 5 attempts",
    "Customer 10023, contract 2024-118, renewal 2026-12-31, 36 months",
    "Sizes 38, 40, 42, 44, 46, 48, 50, 52 in stock",
    "Rooms 101 102 103 104 105 106 booked for 12/26-12/28",
    "Line items: 10 x 4411, 20 x 4412, 30 x 4413, 40 x 4414",
    "Card ending 1111, expires 12/26, paid EUR 49.00",
    "Last four digits 4444 only, as asked",
    "Call +1 (555) 123-4567 ext. 89, then +1 (555) 987-6543",
    "Wire of EUR 12,345.67 on 2026-12-07, ref 4411223344",
    "ids 1234 5678 9012 3456 7890",
    "order 12345678, shipped 2024-05-01, invoice 2024-000123",
    "NHS number 943 476 5919",
    "VAT DE123456789, company reg. HRB 12345 B",
    "Meter reading 004411.2 kWh on 07.12.2026, previous 004102.7",
    "> On 07.12.2026 14:30, Ann wrote:\n> order 4411-2233\n> 12 units",
    "Times 09:15:30.250 and 09:15:31.500, drift 1.25 s",
    "IPv6 2001:db8:85a3:0:0:8a2e:370:7334 and 2001:db8::1",
];

/// Whether `text` shows eight digits in a row of those in `value`, however
/// they are separated (by anything but letters, digits and long gaps): how
/// a test tells that a card or account number came back, however it was
/// respelled.
pub fn reveals(value: &str, text: &str) -> bool {
    let value: Vec<u8> = full_width_to_ascii(value)
        .bytes()
        .filter(u8::is_ascii_digit)
        .collect();
    digit_runs(&full_width_to_ascii(text)).iter().any(|run| {
        value
            .windows(8)
            .any(|window| run.windows(8).any(|w| w == window))
    })
}

/// The digits of `text` in runs: digits stay in one run across up to six
/// other characters that are not letters (separators, quote markers, line
/// breaks), never across a letter.
fn digit_runs(text: &str) -> Vec<Vec<u8>> {
    let mut runs = vec![Vec::new()];
    let mut gap = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if gap > 6 {
                runs.push(Vec::new());
            }
            gap = 0;
            runs.last_mut().expect("a run").push(c as u8);
        } else if c.is_alphanumeric() {
            runs.push(Vec::new());
            gap = 0;
        } else {
            gap += 1;
        }
    }
    runs
}

fn full_width_to_ascii(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{FF10}'..='\u{FF19}' => char::from(b'0' + (u32::from(c) - 0xFF10) as u8),
            c => c,
        })
        .collect()
}

/// One case of the sweep: a spelling of every kind, and which service's
/// implementation of a shared contract the calls name.
#[derive(Clone, Debug)]
pub struct Case {
    pub service: &'static str,
    pub values: Vec<Hostile>,
}

/// A value of every kind, and a service for the shared contracts.
pub fn case() -> impl Strategy<Value = Case> {
    let values: Vec<BoxedStrategy<Hostile>> =
        HostileKind::ALL.iter().map(|k| hostile(*k)).collect();
    (select(&["identity", "tickets"][..]), values)
        .prop_map(|(service, values)| Case { service, values })
}

// --- what a call left behind -----------------------------------------------------

/// Row counts of every table that holds records, and the head of each
/// service's audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub rows: BTreeMap<String, i64>,
    pub audit_heads: BTreeMap<String, i64>,
}

/// Calls every declared method with hostile values and checks what came
/// back and what was left behind.
pub struct Prober {
    channel: Channel,
    token: String,
    raw: AnyPool,
    tables: Vec<String>,
    count_sql: String,
    last: Snapshot,
    pub targets: Vec<Target>,
    /// Calls made, refused, and answered OK (by kind), for the report.
    pub calls: usize,
    pub refused: usize,
    pub accepted: BTreeMap<String, usize>,
    /// The fields that took a card or account number (calls that store
    /// nothing: reads, filters), for the report.
    pub accepted_sensitive: std::collections::BTreeSet<String>,
}

/// A status message longer than this is not "short".
pub const MAX_MESSAGE: usize = 1024;
/// A refusal may repeat at most this many leading characters of a value.
pub const ECHO_PREFIX: usize = 16;

impl Prober {
    /// Every table of the server's database except the migration histories
    /// and the audit trail (whose growth is checked event by event).
    pub async fn new(app: &TestApp) -> Self {
        let sql = if app.db.url.starts_with("sqlite") {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        } else {
            "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.tables \
             WHERE table_schema = current_schema() ORDER BY table_name"
        };
        let tables: Vec<String> = sqlx::query(sql)
            .fetch_all(&app.raw)
            .await
            .expect("listing tables")
            .iter()
            .map(|r| r.try_get::<String, _>("name").expect("name"))
            .filter(|t| {
                !t.ends_with("_migrations")
                    && !matches!(t.as_str(), "audit_events" | "audit_chain" | "audit_pending")
            })
            .collect();
        for expected in ["subject_keys", "kit_idempotency"] {
            assert!(
                tables.iter().any(|t| t == expected),
                "{expected} in {tables:?}"
            );
        }
        assert!(
            tables.iter().any(|t| t.starts_with("identity_")),
            "{tables:?}"
        );
        assert!(
            tables.iter().any(|t| t.starts_with("tickets_")),
            "{tables:?}"
        );
        // Table names come from the database's own catalogue.
        let count_sql = format!(
            "SELECT {}",
            tables
                .iter()
                .enumerate()
                .map(|(i, t)| format!("(SELECT COUNT(*) FROM {t}) AS c{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let services = served_services(&app.channel).await;
        let mut prober = Self {
            channel: app.channel.clone(),
            token: app.root_token.clone(),
            raw: app.raw.clone(),
            tables,
            count_sql,
            last: Snapshot {
                rows: BTreeMap::new(),
                audit_heads: BTreeMap::new(),
            },
            targets: targets(&services),
            calls: 0,
            refused: 0,
            accepted: BTreeMap::new(),
            accepted_sensitive: std::collections::BTreeSet::new(),
        };
        prober.last = prober.snapshot().await;
        prober
    }

    /// The row counts and audit heads now.
    pub async fn snapshot(&self) -> Snapshot {
        // Changes made just before stage their events; once sealed, new
        // events show only as chain heads moving.
        crate::sealed(&self.channel, &self.token).await;
        let row = sqlx::query(sqlx::AssertSqlSafe(self.count_sql.clone()))
            .fetch_one(&self.raw)
            .await
            .expect("counting rows");
        let rows = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), row.try_get::<i64, _>(i).expect("a count")))
            .collect();
        let audit_heads = sqlx::query("SELECT service, seq FROM audit_chain")
            .fetch_all(&self.raw)
            .await
            .expect("audit heads")
            .iter()
            .map(|r| {
                (
                    r.try_get::<String, _>("service").expect("service"),
                    r.try_get::<i64, _>("seq").expect("seq"),
                )
            })
            .collect();
        Snapshot { rows, audit_heads }
    }

    /// Takes the snapshot the next probe is compared with (after calls
    /// made around the prober).
    pub async fn snapshot_now(&mut self) {
        self.last = self.snapshot().await;
    }

    /// The text of every audit event written since `before`, with its
    /// outcome.
    async fn new_events(&self, before: &Snapshot, after: &Snapshot) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        for (service, head) in &after.audit_heads {
            let from = before.audit_heads.get(service).copied().unwrap_or(0);
            if *head == from {
                continue;
            }
            let rows = sqlx::query(
                "SELECT caller, on_behalf_of, purpose, method, resource, subject_ref, fields, \
                 detail, outcome FROM audit_events WHERE service = $1 AND seq > $2",
            )
            .bind(service)
            .bind(from)
            .fetch_all(&self.raw)
            .await
            .expect("new audit events");
            for r in rows {
                let text = [
                    "caller",
                    "on_behalf_of",
                    "purpose",
                    "method",
                    "resource",
                    "subject_ref",
                    "fields",
                    "detail",
                ]
                .iter()
                .map(|c| r.try_get::<String, _>(*c).expect("text column"))
                .collect::<Vec<_>>()
                .join("\u{1f}");
                out.push((r.try_get::<i64, _>("outcome").expect("outcome"), text));
            }
        }
        out
    }

    /// Sends `value` in `slot` of `target` and checks the outcome. Errors
    /// name the method, the field and the kind, never more of the value.
    pub async fn probe(
        &mut self,
        target: &Target,
        slot: &Slot,
        value: &Hostile,
        service: &str,
    ) -> Result<(), String> {
        let body = value.encode(&target.input, slot);
        let metadata = [
            ("authorization", format!("Bearer {}", self.token)),
            ("custodian-service", service.to_owned()),
        ];
        let answer = call_raw(&self.channel, &target.path, body, &metadata).await;
        self.calls += 1;
        let before = self.last.clone();
        let after = self.snapshot().await;
        self.last = after.clone();
        let at = || format!("{} {} ({:?})", target.path, slot.dotted, value.kind);
        // What the caller made up: the needle, and the start of the hostile
        // part (the needle with whatever surrounds it). A refusal may name
        // the field's form, never these.
        let made_up = value.render("").prefix(ECHO_PREFIX + 1);
        let leaks = |text: &str| {
            text.contains(&value.needle)
                || text.contains(&made_up)
                || (value.kind == HostileKind::Sensitive && reveals(&value.text, text))
        };
        // Whatever the answer, the value never reaches the audit trail.
        let events = self.new_events(&before, &after).await;
        for (outcome, text) in &events {
            if leaks(text) || text.contains('\0') {
                return Err(format!("{}: the value reached the audit trail", at()));
            }
            if answer.is_err() && *outcome == custodian_proto::audit::v1::AuditOutcome::Ok as i64 {
                return Err(format!(
                    "{}: a refused call left an audit event of success",
                    at()
                ));
            }
        }
        let status = match answer {
            Ok(_) => {
                if value.kind.always_refused() {
                    return Err(format!("{}: accepted", at()));
                }
                *self
                    .accepted
                    .entry(format!("{:?}", value.kind))
                    .or_default() += 1;
                if value.kind == HostileKind::Sensitive {
                    // Guard-scanned fields refuse it; a field that takes it
                    // must not keep it.
                    if before.rows != after.rows {
                        return Err(format!("{}: accepted and stored", at()));
                    }
                    self.accepted_sensitive
                        .insert(format!("{} {}", target.path, slot.dotted));
                }
                return Ok(());
            }
            Err(status) => status,
        };
        self.refused += 1;
        let code = status.code();
        if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
            return Err(format!("{}: answered {code:?}", at()));
        }
        if value.kind.always_refused() && code != Code::InvalidArgument {
            return Err(format!("{}: answered {code:?}, not INVALID_ARGUMENT", at()));
        }
        let message = status.message();
        if message.len() > MAX_MESSAGE {
            return Err(format!(
                "{}: a message of {} bytes ({code:?})",
                at(),
                message.len()
            ));
        }
        if leaks(message) || message.chars().any(char::is_control) {
            return Err(format!("{}: the message echoes the value ({code:?})", at()));
        }
        let details = String::from_utf8_lossy(status.details());
        if leaks(&details) {
            return Err(format!("{}: the details echo the value ({code:?})", at()));
        }
        for entry in status.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(_, v) = entry
                && leaks(v.to_str().unwrap_or_default())
            {
                return Err(format!("{}: metadata echoes the value ({code:?})", at()));
            }
        }
        if before.rows != after.rows {
            let changed: Vec<String> = after
                .rows
                .iter()
                .filter(|(t, n)| before.rows.get(*t) != Some(n))
                .map(|(t, n)| format!("{t}: {} -> {n}", before.rows.get(t).unwrap_or(&0)))
                .collect();
            return Err(format!(
                "{}: refused ({code:?}) but stored: {}",
                at(),
                changed.join(", ")
            ));
        }
        Ok(())
    }

    /// Every method, every string field, every value of `case`.
    pub async fn sweep(&mut self, case: &Case) -> Result<(), String> {
        let targets = self.targets.clone();
        for target in &targets {
            for slot in &target.slots {
                for value in &case.values {
                    self.probe(target, slot, value, case.service).await?;
                }
            }
        }
        Ok(())
    }
}

/// The message of `target` with no field set, encoded: a call that must
/// never be the server's fault either.
pub fn empty_request(target: &Target) -> Vec<u8> {
    DynamicMessage::new(target.input.clone()).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reveals_a_value_however_it_is_respelled() {
        let card = "4111 1111 1111 1111";
        assert!(reveals(card, "card 4111-1111-1111-1111 ok"));
        assert!(reveals(card, "４１１１１１１１１１１１１１１１"));
        assert!(reveals(card, "> 4111 1111\n> 1111 1111"));
        assert!(!reveals(card, "card [redacted payment card number] ok"));
        // Half a card is eight digits of it; its last four are not.
        assert!(reveals(card, "starts 4111 1111"));
        assert!(!reveals(card, "ends in 1111, 12/26"));
        // Small numbers scattered through a text are not a value.
        assert!(!reveals(
            "5500 0000 0000 0004",
            "a[0].b[0]: x; a[0].b[0]: y; a[0].b[0]: z; a[0].b[0]: w"
        ));
    }

    #[test]
    fn every_listed_spelling_is_made_of_a_value() {
        let spellings = sensitive_spellings();
        assert!(spellings.len() > 80, "{}", spellings.len());
        for (what, text) in &spellings {
            let digits = text.bytes().filter(u8::is_ascii_digit).count();
            assert!(digits >= 13, "{what}: {text:?}");
        }
        for note in BUSINESS_NOTES {
            assert!(!note.is_empty());
        }
        assert!(BUSINESS_NOTES.len() >= 40);
    }
}
