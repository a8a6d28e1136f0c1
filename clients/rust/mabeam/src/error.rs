//! The SDK's errors: one enum variant per gRPC code, each with the server's rich details.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use crate::v1::ErrorReason;

/// What the server said: its message and the google.rpc details it attached.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    /// The server's message, written for a person.
    pub message: String,
    /// The mabeam.v1.ErrorReason name from ErrorInfo ("NAME_TAKEN", "WRONG_NODE", ...).
    pub reason: String,
    /// ErrorInfo metadata (e.g. "leader" on a WRONG_NODE answer from a standby).
    pub metadata: HashMap<String, String>,
    /// Each bad field and what is wrong with it (BadRequest).
    pub field_violations: HashMap<String, String>,
    /// The server's suggested delay before a retry (RetryInfo).
    pub retry_after: Option<Duration>,
}

/// Every failure of a mabeam call, by gRPC status code.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    InvalidArgument(Details),
    NotFound(Details),
    AlreadyExists(Details),
    FailedPrecondition(Details),
    ResourceExhausted(Details),
    Unavailable(Details),
    DeadlineExceeded(Details),
    Aborted(Details),
    PermissionDenied(Details),
    Cancelled(Details),
    Unimplemented(Details),
    Internal(Details),
    /// Any other code (UNKNOWN, OUT_OF_RANGE, DATA_LOSS, UNAUTHENTICATED).
    Other(Code, Details),
}

/// `Result` with the SDK's error.
pub type Result<T> = std::result::Result<T, Error>;

/// gRPC code names as agentd's payloads carry them ("NOT_FOUND"), indexed by code.
pub const CODE_NAMES: [&str; 17] = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

impl Error {
    /// The error for a code and its details.
    pub fn new(code: Code, details: Details) -> Error {
        match code {
            Code::InvalidArgument => Error::InvalidArgument(details),
            Code::NotFound => Error::NotFound(details),
            Code::AlreadyExists => Error::AlreadyExists(details),
            Code::FailedPrecondition => Error::FailedPrecondition(details),
            Code::ResourceExhausted => Error::ResourceExhausted(details),
            Code::Unavailable => Error::Unavailable(details),
            Code::DeadlineExceeded => Error::DeadlineExceeded(details),
            Code::Aborted => Error::Aborted(details),
            Code::PermissionDenied => Error::PermissionDenied(details),
            Code::Cancelled => Error::Cancelled(details),
            Code::Unimplemented => Error::Unimplemented(details),
            Code::Internal => Error::Internal(details),
            other => Error::Other(other, details),
        }
    }

    /// An error with just a code and a message.
    pub fn msg(code: Code, message: impl Into<String>) -> Error {
        Error::new(code, Details { message: message.into(), ..Details::default() })
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Aborted(_) => Code::Aborted,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Internal(_) => Code::Internal,
            Error::Other(code, _) => *code,
        }
    }

    /// The upper-case code name ("NOT_FOUND").
    pub fn code_name(&self) -> &'static str {
        code_name(self.code())
    }

    /// The server's message and rich details.
    pub fn details(&self) -> &Details {
        match self {
            Error::InvalidArgument(d) | Error::NotFound(d) | Error::AlreadyExists(d) | Error::FailedPrecondition(d)
            | Error::ResourceExhausted(d) | Error::Unavailable(d) | Error::DeadlineExceeded(d) | Error::Aborted(d)
            | Error::PermissionDenied(d) | Error::Cancelled(d) | Error::Unimplemented(d) | Error::Internal(d)
            | Error::Other(_, d) => d,
        }
    }

    /// The ErrorInfo reason ("" when the server gave none).
    pub fn reason(&self) -> &str {
        &self.details().reason
    }

    /// The reason as the contract's enum (None when the server gave none or one this SDK does not know):
    /// `matches!(e.error_reason(), Some(ErrorReason::ApprovalDecided))`.
    pub fn error_reason(&self) -> Option<ErrorReason> {
        ErrorReason::from_str_name(self.reason())
    }
}

/// The upper-case name of a code ("NOT_FOUND").
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The code for an upper-case name (UNKNOWN for others).
pub fn code_from_name(name: &str) -> Code {
    CODE_NAMES.iter().position(|n| *n == name).map(|i| Code::from(i as i32)).unwrap_or(Code::Unknown)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.details();
        if d.reason.is_empty() {
            write!(f, "{}: {}", self.code_name(), d.message)
        } else {
            write!(f, "{} ({}): {}", self.code_name(), d.reason, d.message)
        }
    }
}

impl std::error::Error for Error {}

impl From<tonic::Status> for Error {
    /// The one place the SDK decodes google.rpc details.
    fn from(status: tonic::Status) -> Error {
        let mut details = Details { message: status.message().to_string(), ..Details::default() };
        if let Ok(rich) = status.check_error_details() {
            if let Some(info) = rich.error_info() {
                details.reason = info.reason.clone();
                details.metadata = info.metadata.clone();
            }
            if let Some(bad) = rich.bad_request() {
                for v in &bad.field_violations {
                    details.field_violations.insert(v.field.clone(), v.description.clone());
                }
            }
            if let Some(retry) = rich.retry_info() {
                details.retry_after = retry.retry_delay;
            }
        }
        // tonic reports its own client-side deadline as CANCELLED "Timeout expired": it is a deadline.
        // A connection that failed below gRPC (the server hung up on a TLS or HTTP/2 handshake: a plaintext
        // client at a TLS server, a certificate refused) is UNKNOWN "transport error" or, when hyper gave up
        // the request with the connection, CANCELLED "operation was canceled" in tonic (a caller's own
        // cancellation never surfaces: it drops the future). gRPC's own clients call that UNAVAILABLE, and
        // so does every other SDK.
        let transport_failed = matches!((status.code(), status.message()),
            (Code::Unknown, "transport error") | (Code::Cancelled, "operation was canceled"));
        let code = if status.code() == Code::Cancelled && status.message() == "Timeout expired" {
            Code::DeadlineExceeded
        } else if transport_failed && details.reason.is_empty() {
            Code::Unavailable
        } else {
            status.code()
        };
        Error::new(code, details)
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Error {
        Error::msg(Code::Unavailable, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn status_details_become_typed_fields() {
        let mut rich = ErrorDetails::with_error_info("WRONG_NODE", "mabeam.io", [("leader".to_string(), "127.0.0.1:7118".to_string())]);
        rich.set_retry_info(Some(Duration::from_millis(250)));
        rich.add_bad_request_violation("name", "bad");
        let status = tonic::Status::with_error_details(Code::Unavailable, "standby", rich);
        let error = Error::from(status);
        assert!(matches!(error, Error::Unavailable(_)));
        let d = error.details();
        assert_eq!((d.message.as_str(), d.reason.as_str()), ("standby", "WRONG_NODE"));
        assert_eq!(d.metadata["leader"], "127.0.0.1:7118");
        assert_eq!(d.field_violations["name"], "bad");
        assert_eq!(d.retry_after, Some(Duration::from_millis(250)));
    }

    #[test]
    fn the_reason_reads_as_the_contract_enum() {
        let rich = ErrorDetails::with_error_info("APPROVAL_DECIDED", "mabeam.io", []);
        let error = Error::from(tonic::Status::with_error_details(Code::FailedPrecondition, "denied already", rich));
        assert!(matches!(error, Error::FailedPrecondition(_)));
        assert_eq!(error.error_reason(), Some(ErrorReason::ApprovalDecided));
        assert_eq!(Error::msg(Code::NotFound, "no reason").error_reason(), None);
    }

    #[test]
    fn a_failed_transport_is_unavailable() {
        for (code, message) in [(Code::Unknown, "transport error"), (Code::Cancelled, "operation was canceled")] {
            let error = Error::from(tonic::Status::new(code, message));
            assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
        }
        assert!(matches!(Error::from(tonic::Status::new(Code::Unknown, "the handler said so")), Error::Other(Code::Unknown, _)));
    }

    #[test]
    fn code_names_round_trip() {
        for (i, name) in CODE_NAMES.iter().enumerate() {
            assert_eq!(code_from_name(name) as usize, i);
            assert_eq!(code_name(Code::from(i as i32)), *name);
        }
        assert_eq!(code_from_name("NOPE"), Code::Unknown);
    }
}
