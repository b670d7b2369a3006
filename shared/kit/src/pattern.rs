//! Resource names (AIP-122): "tenants/{tenant}/contacts/{contact}".
//!
//! A name is checked segment by segment before anything else happens to
//! it: a tenant id by the rules tenant ids follow, every other id as a UUID
//! in canonical form. A name that does not fit is refused without being
//! echoed, so a 4 MB name or an email pasted where an id belongs never
//! reaches a log, an error message or the audit trail.

use std::fmt;

/// One piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(String),
}

/// The form of a kind of resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

/// The variables of a parsed name, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vars(Vec<(String, String)>);

impl Vars {
    pub fn get(&self, var: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.as_str())
    }

    /// The last variable: the record's own id.
    pub fn id(&self) -> &str {
        self.0.last().map_or("", |(_, v)| v.as_str())
    }

    /// The tenant id, when the name holds one.
    pub fn tenant(&self) -> Option<&str> {
        self.get("tenant")
    }

    /// The id of the parent record (the variable before the last, unless it
    /// is the tenant).
    pub fn parent(&self) -> Option<&str> {
        let n = self.0.len();
        (n >= 2 && self.0[n - 2].0 != "tenant").then(|| self.0[n - 2].1.as_str())
    }
}

/// The id in a tenant's own name, "tenants/{tenant}"; `None` for any other
/// form.
pub fn tenant_id(name: &str) -> Option<&str> {
    name.strip_prefix("tenants/")
        .filter(|t| !t.is_empty() && !t.contains('/'))
}

/// Why a pattern could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(&'static str);

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError("is empty"));
        }
        let mut segments = Vec::new();
        for part in text.split('/') {
            if let Some(var) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if var.is_empty() {
                    return Err(PatternError("has an empty variable"));
                }
                segments.push(Segment::Var(var.to_owned()));
            } else if part.is_empty() || part.contains(['{', '}']) {
                return Err(PatternError("has an empty or malformed segment"));
            } else {
                segments.push(Segment::Literal(part.to_owned()));
            }
        }
        if !matches!(segments.last(), Some(Segment::Var(_))) {
            return Err(PatternError("must end with a variable"));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn has_var(&self, var: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Var(v) if v == var))
    }

    /// The collection: the literal before the last variable ("contacts").
    pub fn collection(&self) -> &str {
        self.segments
            .iter()
            .rev()
            .find_map(|s| match s {
                Segment::Literal(l) => Some(l.as_str()),
                Segment::Var(_) => None,
            })
            .unwrap_or("")
    }

    /// Reads `name`; `None` when it does not have this form or a segment
    /// breaks its rules.
    pub fn parse_name(&self, name: &str) -> Option<Vars> {
        // A cheap bound first: a name is short, whatever it holds.
        if name.len() > 512 {
            return None;
        }
        let mut parts = name.split('/');
        let mut vars = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Var(var) => {
                    if !valid_id(var, part) {
                        return None;
                    }
                    vars.push((var.clone(), part.to_owned()));
                }
            }
        }
        parts.next().is_none().then_some(Vars(vars))
    }

    /// The name with these values, in order of the variables.
    pub fn format(&self, values: &[&str]) -> String {
        let mut values = values.iter();
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Var(_) => values.next().copied().unwrap_or(""),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The error to answer for a name of the wrong form, naming the form
    /// and never the value.
    pub fn describe(&self) -> String {
        format!(
            "must have the form {} (tenant ids are lower-case letters, digits and hyphens; other ids are UUIDs)",
            self.text
        )
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `value` may stand for `var`: a tenant id by its own rules (or a
/// UUID, which tenants get when they choose no id), anything else a UUID.
fn valid_id(var: &str, value: &str) -> bool {
    if var == "tenant" {
        custodian_privacy::normalize::tenant_id(value).is_ok() || is_uuid(value)
    } else {
        is_uuid(value)
    }
}

/// A UUID in canonical lower-case hyphenated form.
pub fn is_uuid(value: &str) -> bool {
    custodian_privacy::normalize::record_id(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0190f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f";

    #[test]
    fn names_are_checked_segment_by_segment() {
        let p = Pattern::parse("tenants/{tenant}/contacts/{contact}").unwrap();
        let vars = p
            .parse_name(&format!("tenants/acme/contacts/{ID}"))
            .unwrap();
        assert_eq!(vars.tenant(), Some("acme"));
        assert_eq!(vars.id(), ID);
        assert_eq!(vars.parent(), None);
        assert_eq!(p.collection(), "contacts");
        assert_eq!(
            p.format(&["acme", ID]),
            format!("tenants/acme/contacts/{ID}")
        );
        // A tenant created without an id of its choosing has a UUID.
        assert!(
            p.parse_name(&format!("tenants/{ID}/contacts/{ID}"))
                .is_some()
        );
        for bad in [
            String::new(),
            "tenants/acme/contacts".into(),
            format!("tenants/acme/contacts/{ID}/x"),
            format!("tenants//contacts/{ID}"),
            "tenants/acme/contacts/john.doe.private@gmail.com".into(),
            format!("tenants/ac\u{0}me/contacts/{ID}"),
            format!("tenants/ACME/contacts/{ID}"),
            format!("tenants/acme/contacts/{}", ID.to_uppercase()),
            format!("tenants/acme/users/{ID}"),
            format!("tenants/../contacts/{ID}"),
            format!("tenants/acme/contacts/{}", "a".repeat(4_000_000)),
        ] {
            assert!(
                p.parse_name(&bad).is_none(),
                "{:?} accepted",
                &bad[..bad.len().min(60)]
            );
        }
        assert!(!p.describe().contains("gmail"));
    }

    #[test]
    fn children_know_their_parent() {
        let p = Pattern::parse("tickets/{ticket}/messages/{message}").unwrap();
        let other = "0190f3c4-5b6a-7c8d-9e0f-000000000001";
        let vars = p
            .parse_name(&format!("tickets/{ID}/messages/{other}"))
            .unwrap();
        assert_eq!(vars.parent(), Some(ID));
        assert_eq!(vars.id(), other);
        assert_eq!(vars.tenant(), None);
    }

    #[test]
    fn patterns_are_checked() {
        for bad in [
            "",
            "tenants/{tenant}/contacts",
            "a//{b}",
            "a/{}",
            "a/b{c}/{d}",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
