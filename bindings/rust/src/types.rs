//! The header's enumerations as Rust types; `code()` gives the C value.

use crate::sys;

/// A `commvq_status_t` other than `COMMVQ_OK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    InvalidArgument,
    ShapeMismatch,
    OutOfRange,
    InvalidState,
    Capacity,
    OutOfMemory,
    Io,
    Format,
    Corrupt,
    CodebookMismatch,
    NotSupported,
    Cuda,
    Cancelled,
    Internal,
    /// A status this crate does not know (from a newer library).
    Other(i32),
}

impl Status {
    pub fn from_code(code: sys::commvq_status_t) -> Status {
        match code {
            sys::COMMVQ_ERR_INVALID_ARGUMENT => Status::InvalidArgument,
            sys::COMMVQ_ERR_SHAPE_MISMATCH => Status::ShapeMismatch,
            sys::COMMVQ_ERR_OUT_OF_RANGE => Status::OutOfRange,
            sys::COMMVQ_ERR_INVALID_STATE => Status::InvalidState,
            sys::COMMVQ_ERR_CAPACITY => Status::Capacity,
            sys::COMMVQ_ERR_OUT_OF_MEMORY => Status::OutOfMemory,
            sys::COMMVQ_ERR_IO => Status::Io,
            sys::COMMVQ_ERR_FORMAT => Status::Format,
            sys::COMMVQ_ERR_CORRUPT => Status::Corrupt,
            sys::COMMVQ_ERR_CODEBOOK_MISMATCH => Status::CodebookMismatch,
            sys::COMMVQ_ERR_NOT_SUPPORTED => Status::NotSupported,
            sys::COMMVQ_ERR_CUDA => Status::Cuda,
            sys::COMMVQ_ERR_CANCELLED => Status::Cancelled,
            sys::COMMVQ_ERR_INTERNAL => Status::Internal,
            other => Status::Other(other),
        }
    }

    pub fn code(self) -> sys::commvq_status_t {
        match self {
            Status::InvalidArgument => sys::COMMVQ_ERR_INVALID_ARGUMENT,
            Status::ShapeMismatch => sys::COMMVQ_ERR_SHAPE_MISMATCH,
            Status::OutOfRange => sys::COMMVQ_ERR_OUT_OF_RANGE,
            Status::InvalidState => sys::COMMVQ_ERR_INVALID_STATE,
            Status::Capacity => sys::COMMVQ_ERR_CAPACITY,
            Status::OutOfMemory => sys::COMMVQ_ERR_OUT_OF_MEMORY,
            Status::Io => sys::COMMVQ_ERR_IO,
            Status::Format => sys::COMMVQ_ERR_FORMAT,
            Status::Corrupt => sys::COMMVQ_ERR_CORRUPT,
            Status::CodebookMismatch => sys::COMMVQ_ERR_CODEBOOK_MISMATCH,
            Status::NotSupported => sys::COMMVQ_ERR_NOT_SUPPORTED,
            Status::Cuda => sys::COMMVQ_ERR_CUDA,
            Status::Cancelled => sys::COMMVQ_ERR_CANCELLED,
            Status::Internal => sys::COMMVQ_ERR_INTERNAL,
            Status::Other(code) => code,
        }
    }
}

/// Element type of keys, values, queries and outputs (a cache's io dtype),
/// and of a codebook file's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DType {
    #[default]
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn code(self) -> i32 {
        match self {
            DType::F32 => sys::COMMVQ_DTYPE_F32,
            DType::F16 => sys::COMMVQ_DTYPE_F16,
            DType::BF16 => sys::COMMVQ_DTYPE_BF16,
        }
    }

    pub fn from_code(code: i32) -> Option<DType> {
        match code {
            sys::COMMVQ_DTYPE_F32 => Some(DType::F32),
            sys::COMMVQ_DTYPE_F16 => Some(DType::F16),
            sys::COMMVQ_DTYPE_BF16 => Some(DType::BF16),
            _ => None,
        }
    }
}

/// Whether keys handed to `append` are before or after RoPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KeyConvention {
    #[default]
    PreRope,
    PostRope,
}

impl KeyConvention {
    pub fn code(self) -> i32 {
        match self {
            KeyConvention::PreRope => sys::COMMVQ_KEYS_PRE_ROPE,
            KeyConvention::PostRope => sys::COMMVQ_KEYS_POST_ROPE,
        }
    }
}

/// How RoPE pairs the elements of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PairLayout {
    /// pair j = (x[j], x[j + d/2]): HF LLaMA, Qwen, Mistral.
    #[default]
    RotateHalf,
    /// pair j = (x[2j], x[2j + 1]): GPT-J, Meta LLaMA.
    Interleaved,
}

impl PairLayout {
    pub fn code(self) -> i32 {
        match self {
            PairLayout::RotateHalf => sys::COMMVQ_PAIRS_ROTATE_HALF,
            PairLayout::Interleaved => sys::COMMVQ_PAIRS_INTERLEAVED,
        }
    }
}

/// Key scales: one per token, or one per token and KV head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ScaleMode {
    #[default]
    Token,
    Head,
}

impl ScaleMode {
    pub fn code(self) -> i32 {
        match self {
            ScaleMode::Token => sys::COMMVQ_SCALE_TOKEN,
            ScaleMode::Head => sys::COMMVQ_SCALE_HEAD,
        }
    }
}

/// Where a cache lives or training runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(u32),
}

impl Device {
    pub fn code(self) -> i32 {
        match self {
            Device::Cpu => sys::COMMVQ_DEVICE_CPU,
            Device::Cuda(ordinal) => ordinal as i32,
        }
    }

    pub fn from_code(code: i32) -> Device {
        if code < 0 { Device::Cpu } else { Device::Cuda(code as u32) }
    }
}

/// Flags of `attend` (`COMMVQ_ATTEND_*`), combined with `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AttendFlags(u32);

impl AttendFlags {
    /// Query i of n sees the tokens up to position length - n + i (decode, chunked prefill).
    pub const CAUSAL: AttendFlags = AttendFlags(sys::COMMVQ_ATTEND_CAUSAL);
    /// Every query sees every token of the sequence.
    pub const NON_CAUSAL: AttendFlags = AttendFlags(sys::COMMVQ_ATTEND_NON_CAUSAL);

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn contains(self, other: AttendFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for AttendFlags {
    type Output = AttendFlags;
    fn bitor(self, rhs: AttendFlags) -> AttendFlags {
        AttendFlags(self.0 | rhs.0)
    }
}
