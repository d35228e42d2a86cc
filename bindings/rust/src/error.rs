use std::fmt;
use std::path::PathBuf;

use crate::Status;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// dlopen failed (its message).
    Load(String),
    /// The library lacks a function this crate needs.
    MissingSymbol { library: PathBuf, symbol: String },
    /// The library's major version is not the one this crate was written for.
    Version { library: PathBuf, found: u32, major: u32 },
    /// A call returned a status: which one, its name (`COMMVQ_ERR_CAPACITY`)
    /// and the thread's last error message.
    Status { status: Status, name: String, message: String },
    /// Rejected before calling the library (wrong buffer length or type, a
    /// NUL in a string).
    InvalidArgument(String),
}

impl Error {
    /// The status of a failed call, if the library returned one:
    /// `err.status() == Some(Status::Capacity)`.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Load(message) => write!(f, "cannot load libcommvq: {message}"),
            Error::MissingSymbol { library, symbol } => write!(f, "{} lacks the symbol {symbol}", library.display()),
            Error::Version { library, found, major } => {
                write!(f, "{} has version {found}; this crate needs major version {major}", library.display())
            }
            Error::Status { name, message, .. } => write!(f, "{name}: {message}"),
            Error::InvalidArgument(message) => write!(f, "invalid argument: {message}"),
        }
    }
}

impl std::error::Error for Error {}
