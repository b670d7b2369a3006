//! Keyset pagination (AIP-158): a page token is an opaque cursor holding the
//! last id served, bound to the query it came from so it cannot be replayed
//! against another parent or filter.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};

use crate::ApiError;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 1000;

/// One page to fetch: rows with an id greater than `after`, at most `size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub size: i64,
    pub after: Option<String>,
    scope: String,
}

impl Page {
    /// Reads `page_size` and `page_token`. `scope` describes the query (parent,
    /// filter); it is hashed into the token, never stored in it, since a
    /// filter can be personal (an email).
    pub fn parse(page_size: i32, page_token: &str, scope: &str) -> Result<Self, ApiError> {
        let size = match i64::from(page_size) {
            n if n < 0 => return Err(ApiError::invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let scope = fingerprint(scope);
        let after = if page_token.is_empty() {
            None
        } else {
            let bad = || ApiError::invalid("page_token", "not a token from this query");
            let raw = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| bad())?;
            let raw = String::from_utf8(raw).map_err(|_| bad())?;
            let (token_scope, after) = raw.split_once(':').ok_or_else(bad)?;
            if token_scope != scope || after.is_empty() {
                return Err(bad());
            }
            Some(after.to_owned())
        };
        Ok(Self { size, after, scope })
    }

    /// How many rows to ask the database for: one more than the page, to
    /// know whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        self.size + 1
    }

    /// The token of the page that starts after `last_id`.
    pub fn token_after(&self, last_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{last_id}", self.scope))
    }

    /// Cuts the fetched rows to the page and returns the next token.
    pub fn finish<T>(&self, mut rows: Vec<T>, id_of: impl Fn(&T) -> &str) -> (Vec<T>, String) {
        let more = rows.len() as i64 > self.size;
        rows.truncate(self.size as usize);
        let token = match (more, rows.last()) {
            (true, Some(last)) => URL_SAFE_NO_PAD.encode(format!("{}:{}", self.scope, id_of(last))),
            _ => String::new(),
        };
        (rows, token)
    }
}

fn fingerprint(scope: &str) -> String {
    hex::encode(&Sha256::digest(scope.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_through_with_tokens_bound_to_their_query() {
        let first = Page::parse(2, "", "tenants/a").unwrap();
        assert_eq!(first.fetch_limit(), 3);
        let (rows, token) = first.finish(vec!["1", "2", "3"], |s| s);
        assert_eq!(rows, ["1", "2"]);
        assert!(!token.is_empty());

        let second = Page::parse(2, &token, "tenants/a").unwrap();
        assert_eq!(second.after.as_deref(), Some("2"));
        let (rows, token) = second.finish(vec!["3"], |s| s);
        assert_eq!(rows, ["3"]);
        assert!(token.is_empty());

        let first = Page::parse(2, "", "tenants/a").unwrap();
        let (_, token) = first.finish(vec!["1", "2", "3"], |s| s);
        assert!(Page::parse(2, &token, "tenants/b").is_err());
        assert!(Page::parse(2, "garbage!", "tenants/a").is_err());
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(Page::parse(0, "", "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(Page::parse(100_000, "", "").unwrap().size, MAX_PAGE_SIZE);
        assert!(Page::parse(-1, "", "").is_err());
    }
}
