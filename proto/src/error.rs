//! One error kind set for every hop, mapped to gRPC status codes (and back)
//! here and nowhere else.

use std::fmt;

/// What went wrong, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The module, version or file does not exist.
    NotFound,
    /// It existed once, or will never be served.
    Gone,
    /// The request is malformed (bad path, bad version, bad argument).
    Invalid,
    /// A create-only write found the object already there.
    AlreadyExists,
    /// A dependency (upstream, backend, peer service) could not be reached.
    Unavailable,
    /// The operation ran out of time.
    Timeout,
    /// The caller may not do this.
    Permission,
    /// Anything else: a bug or an unexpected failure.
    Internal,
}

impl ErrorKind {
    /// The gRPC status code for this kind.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Gone => Code::FailedPrecondition,
            ErrorKind::Invalid => Code::InvalidArgument,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Timeout => Code::DeadlineExceeded,
            ErrorKind::Permission => Code::PermissionDenied,
            ErrorKind::Internal => Code::Internal,
        }
    }

    /// The kind for a gRPC status code.
    pub fn from_code(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::NotFound => ErrorKind::NotFound,
            Code::FailedPrecondition => ErrorKind::Gone,
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::Invalid,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
                ErrorKind::Unavailable
            }
            Code::DeadlineExceeded => ErrorKind::Timeout,
            Code::PermissionDenied | Code::Unauthenticated => ErrorKind::Permission,
            Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
                ErrorKind::Internal
            }
        }
    }

    /// A short lowercase name, for logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Gone => "gone",
            ErrorKind::Invalid => "invalid",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Permission => "permission denied",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a kind and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Details for a person; safe to show to clients.
    pub message: String,
    /// Whether the failure is the upstream's (where modules come from)
    /// rather than a service of the mesh's. Set by the caller that knows
    /// ([`Error::from_upstream`]); it does not cross a gRPC hop.
    pub upstream: bool,
}

/// Result with the mesh's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            upstream: false,
        }
    }
    /// `e`, marked as the upstream's failure (see [`Error::upstream`]).
    pub fn from_upstream(mut e: Error) -> Self {
        e.upstream = true;
        e
    }
    /// [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// [`ErrorKind::Gone`].
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Gone, message)
    }
    /// [`ErrorKind::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    /// [`ErrorKind::AlreadyExists`].
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }
    /// [`ErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    /// [`ErrorKind::Timeout`].
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }
    /// [`ErrorKind::Permission`].
    pub fn permission(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permission, message)
    }
    /// [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// Whether this error is of `kind`.
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::PermissionDenied => ErrorKind::Permission,
            K::TimedOut => ErrorKind::Timeout,
            K::InvalidInput | K::InvalidData => ErrorKind::Invalid,
            K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                ErrorKind::Unavailable
            }
            // A full disk is a fault of the store, not of the request.
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        Error::new(kind, e.to_string())
    }
}

/// The metadata key that carries the exact [`ErrorKind`] across a gRPC hop,
/// so kinds that share a status code (or that a peer's library could send
/// for other reasons) are never confused.
pub const KIND_METADATA: &str = "modmesh-error-kind";

impl ErrorKind {
    const ALL: [ErrorKind; 8] = [
        ErrorKind::NotFound,
        ErrorKind::Gone,
        ErrorKind::Invalid,
        ErrorKind::AlreadyExists,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Permission,
        ErrorKind::Internal,
    ];

    fn from_name(name: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind for a status that carries no [`KIND_METADATA`] (a peer that
    /// is not ours, the transport itself): as [`ErrorKind::from_code`], except
    /// that a failed precondition is never "gone" (only our own servers say
    /// gone, with the metadata), a connection broken mid-call (`Unknown`) is
    /// `Unavailable`, and a client-side deadline (`Cancelled`, "Timeout
    /// expired") is `Timeout`.
    fn from_foreign_status(s: &tonic::Status) -> ErrorKind {
        use tonic::Code;
        match s.code() {
            Code::FailedPrecondition => ErrorKind::Internal,
            Code::Unknown => ErrorKind::Unavailable,
            Code::Cancelled if s.message().to_ascii_lowercase().contains("timeout") => {
                ErrorKind::Timeout
            }
            code => ErrorKind::from_code(code),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let mut status = tonic::Status::new(e.kind.code(), e.message);
        if let Ok(v) = e.kind.as_str().parse() {
            status.metadata_mut().insert(KIND_METADATA, v);
        }
        status
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let kind = s
            .metadata()
            .get(KIND_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorKind::from_name)
            .unwrap_or_else(|| ErrorKind::from_foreign_status(&s));
        Error::new(kind, s.message().to_string())
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_a_grpc_hop() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::Gone,
            ErrorKind::Invalid,
            ErrorKind::AlreadyExists,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Permission,
            ErrorKind::Internal,
        ] {
            let status: tonic::Status = Error::new(kind, "m").into();
            let back: Error = status.into();
            assert_eq!(back.kind, kind);
            assert_eq!(back.message, "m");
        }
    }

    #[test]
    fn foreign_statuses_are_never_gone_nor_internal_for_transport_faults() {
        use tonic::{Code, Status};
        let e: Error = Status::new(Code::FailedPrecondition, "bucket precondition").into();
        assert_eq!(e.kind, ErrorKind::Internal);
        let e: Error = Status::new(Code::Unknown, "connection reset mid-call").into();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        let e: Error = Status::new(Code::Cancelled, "Timeout expired").into();
        assert_eq!(e.kind, ErrorKind::Timeout);
        let e: Error = Status::new(Code::NotFound, "x").into();
        assert_eq!(e.kind, ErrorKind::NotFound);
        // Our own "gone" survives.
        let s: Status = Error::gone("retracted").into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(Error::from(s).kind, ErrorKind::Gone);
    }
}
