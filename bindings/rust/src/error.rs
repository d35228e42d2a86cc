use std::fmt;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// dlopen failed (its message).
    Load(String),
    /// The library lacks a function this crate needs.
    MissingSymbol { library: String, symbol: String },
    /// The library's major version is not the one this crate was written for.
    Version { library: String, found: u32, major: u32 },
    /// A call returned a status: its code, name and the thread's last error.
    Status { status: i32, name: String, message: String },
    /// Rejected before calling the library (wrong buffer length or type).
    InvalidArgument(String),
}

impl Error {
    /// The commvq_status_t of a failed call, if the library returned one.
    pub fn status(&self) -> Option<i32> {
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
            Error::MissingSymbol { library, symbol } => write!(f, "{library} lacks the symbol {symbol}"),
            Error::Version { library, found, major } => {
                write!(f, "{library} has version {found}; this crate needs major version {major}")
            }
            Error::Status { name, message, .. } => write!(f, "{name}: {message}"),
            Error::InvalidArgument(message) => write!(f, "invalid argument: {message}"),
        }
    }
}

impl std::error::Error for Error {}
