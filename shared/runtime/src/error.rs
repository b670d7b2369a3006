//! The one error type of the suite's gRPC handlers, mapped to `tonic::Status`
//! in one place.
//!
//! Messages name fields, resource names and kinds of problem, never a
//! personal or refused value. Internal errors are logged (without values) and
//! answered as INTERNAL with no detail. A database that is away is not
//! internal: every error that reaches [`ApiError`] is classified on the way
//! in (see [`crate::database::fault`]), and answered UNAVAILABLE.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

use crate::database::fault::{self, Unavailable};

/// How long a caller is told to wait before retrying a call the database
/// refused (the readiness probe looks every second).
const DATABASE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: one violation per offending field.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// The named resource does not exist (or the caller may not know it does).
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// A concurrent change won; the caller may retry.
    #[error("{0}")]
    Aborted(String),
    /// The database is away (refused, lost, locked): the caller may retry.
    #[error(transparent)]
    Database(Unavailable),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A single field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(resource_name: impl Into<String>) -> Self {
        Self::NotFound(resource_name.into())
    }

    /// An error the call cannot be blamed for: INTERNAL, unless it is (or
    /// wraps) a database fault, which is UNAVAILABLE.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        let err = err.into();
        let err = match err.downcast::<ApiError>() {
            Ok(api) => return api,
            Err(err) => err,
        };
        match fault::of_error(err.as_ref()) {
            Some(unavailable) => Self::unavailable(unavailable),
            None => Self::Internal(err),
        }
    }

    /// A database fault met by a call; remembered, so that connections it
    /// may have broken are checked and readiness looks at once.
    pub fn unavailable(unavailable: Unavailable) -> Self {
        fault::seen(unavailable.fault);
        tracing::debug!(fault = ?unavailable.fault, "database fault");
        Self::Database(unavailable)
    }

    /// The fault, when this is a database fault.
    pub fn fault(&self) -> Option<Unavailable> {
        match self {
            Self::Database(unavailable) => Some(*unavailable),
            _ => None,
        }
    }

    /// Marks an error met before the transaction committed: whatever the
    /// fault, nothing was stored (a transaction whose connection is lost is
    /// rolled back).
    pub fn uncommitted(self) -> Self {
        match self {
            Self::Database(unavailable) => Self::Database(Unavailable {
                nothing_stored: true,
                ..unavailable
            }),
            other => other,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match fault::of_sqlx(&err) {
            Some(found) => Self::unavailable(Unavailable::new(found)),
            None => Self::Internal(err.into()),
        }
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(err: rusqlite::Error) -> Self {
        match fault::of_rusqlite(&err) {
            Some(found) => Self::unavailable(Unavailable::new(found)),
            None => Self::Internal(err.into()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::InvalidArgument(violations) => {
                let message = match violations.as_slice() {
                    [one] => format!("invalid {}: {}", one.field, one.description),
                    many => format!(
                        "invalid fields: {}",
                        many.iter()
                            .map(|v| v.field.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ApiError::NotFound(name) => Status::not_found(format!("{name} not found")),
            ApiError::AlreadyExists(msg) => Status::already_exists(msg),
            ApiError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            ApiError::Unavailable(msg) => Status::unavailable(msg),
            ApiError::Aborted(msg) => Status::aborted(msg),
            ApiError::Database(unavailable) => Status::with_error_details(
                Code::Unavailable,
                unavailable.message(),
                ErrorDetails::with_retry_info(Some(DATABASE_RETRY_DELAY)),
            ),
            ApiError::Internal(err) => {
                // sqlx and anyhow messages describe the failure, not row values;
                // the status the caller sees carries nothing at all.
                tracing::error!(error = %err, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Collects field violations so a caller learns every bad field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the error of `result` under `field`, keeping its value if any.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.add(field, err.to_string());
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}
