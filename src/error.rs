//! The small, shared classification of errors (moonfire's ErrorKind, Greptime's StatusCode).
//!
//! Every module error maps itself to one `ErrorKind` with `kind()`. Each kind is mapped
//! once per boundary: to an HTTP status in `api/error.rs`, to a SIP response in the
//! gb28181 source, to a retry decision in sinks. Imports nothing else of ours.

/// What went wrong, as far as the caller needs to know to react.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input (a request, a file, a message) is malformed or breaks a rule.
    InvalidInput,
    /// Credentials missing or wrong.
    Unauthorized,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    /// The thing named does not exist.
    NotFound,
    /// The request conflicts with the current state (a duplicate, a parent with children).
    Conflict,
    /// A dependency (the database, an upstream) is not reachable now; try again later.
    Unavailable,
    /// A deadline passed.
    Timeout,
    /// A bug or an invariant broken: an operator should look.
    Internal,
}
