//! What stops vigil from starting: each subsystem's own error, with the kind `main` turns into
//! an exit code.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::Error),
    #[error("presence: {0}")]
    Presence(sqlx::Error),
    #[error("cascade ids: {0}")]
    CascadeIds(sqlx::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Gb28181(#[from] crate::sources::gb28181::Error),
    #[error(transparent)]
    Mqtt(#[from] crate::sources::mqtt::Error),
    #[error(transparent)]
    Gat1400(#[from] crate::sources::gat1400::Error),
    #[error(transparent)]
    Link(#[from] crate::link::hub::Error),
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::Db(e) => e.kind(),
            Error::Registry(e) => e.kind(),
            Error::Presence(e) | Error::CascadeIds(e) => crate::db::sqlx_kind(e),
            Error::Bind { .. } => crate::error::ErrorKind::Unavailable,
            Error::Config(_) => crate::error::ErrorKind::InvalidInput,
            Error::Gb28181(e) => e.kind(),
            Error::Mqtt(e) => e.kind(),
            Error::Gat1400(e) => e.kind(),
            Error::Link(e) => e.kind(),
        }
    }
}
