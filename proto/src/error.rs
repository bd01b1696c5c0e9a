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
}

/// Result with the mesh's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
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
            _ => ErrorKind::Internal,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.kind.code(), e.message)
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::new(ErrorKind::from_code(s.code()), s.message().to_string())
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
}
