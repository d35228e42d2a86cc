//! Builders of the parameter structs: start at the library's defaults
//! (`lib.cache_params()`, `lib.train_params()`), chain setters, pass to
//! `Cache::new` / `Codebook::train`. `raw()` gives the C struct.

use std::ffi::CString;
use std::ptr;

use crate::sys;
use crate::types::{DType, Device, KeyConvention, PairLayout, ScaleMode};
use crate::{Error, Result};

/// Settings of a new cache (`commvq_cache_params_t`).
///
/// ```no_run
/// # let lib = commvq::Library::open_default()?;
/// let params = lib.cache_params().window(128).max_tokens(1 << 16).io_dtype(commvq::DType::F16);
/// # Ok::<(), commvq::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct CacheParams {
    raw: sys::commvq_cache_params_t,
}

impl CacheParams {
    pub(crate) fn from_defaults(raw: sys::commvq_cache_params_t) -> CacheParams {
        CacheParams { raw }
    }

    /// The C struct, as `commvq_cache_create` reads it.
    pub fn raw(&self) -> &sys::commvq_cache_params_t {
        &self.raw
    }

    /// Device::Cpu (the default) or a CUDA device.
    pub fn device(mut self, device: Device) -> Self {
        self.raw.device = device.code();
        self
    }
    /// Sequence ids are 0 .. max_seqs-1; default 1.
    pub fn max_seqs(mut self, max_seqs: u32) -> Self {
        self.raw.max_seqs = max_seqs;
        self
    }
    /// Compressed tokens the block pool holds, all sequences together; default 65536.
    pub fn max_tokens(mut self, max_tokens: u64) -> Self {
        self.raw.max_tokens = max_tokens;
        self
    }
    /// Tokens per block of the pool; default 64.
    pub fn block_tokens(mut self, block_tokens: u32) -> Self {
        self.raw.block_tokens = block_tokens;
        self
    }
    /// Recent tokens kept uncompressed; default 128, 0 allowed.
    pub fn window(mut self, window: u32) -> Self {
        self.raw.window = window;
        self
    }
    /// First tokens kept uncompressed; default 0.
    pub fn sink_tokens(mut self, sink_tokens: u32) -> Self {
        self.raw.sink_tokens = sink_tokens;
        self
    }
    /// Element type of keys, values, queries and outputs; default F32.
    pub fn io_dtype(mut self, dtype: DType) -> Self {
        self.raw.io_dtype = dtype.code();
        self
    }
    pub fn key_convention(mut self, convention: KeyConvention) -> Self {
        self.raw.key_convention = convention.code();
        self
    }
    /// 0 = 1/sqrt(head_dim).
    pub fn attn_scale(mut self, scale: f32) -> Self {
        self.raw.attn_scale = scale;
        self
    }
    /// CPU worker threads; 0 = all cores.
    pub fn n_threads(mut self, n_threads: u32) -> Self {
        self.raw.n_threads = n_threads;
        self
    }

    pub fn get_io_dtype(&self) -> Option<DType> {
        DType::from_code(self.raw.io_dtype)
    }
}

/// Settings of `Codebook::train` (`commvq_train_params_t`), including the
/// model name and value weights, which it owns (the C struct only points at
/// them during the call).
#[derive(Clone, Debug)]
pub struct TrainParams {
    raw: sys::commvq_train_params_t,
    model_name: Option<CString>,
    value_weights: Option<Vec<f32>>,
}

impl TrainParams {
    pub(crate) fn from_defaults(raw: sys::commvq_train_params_t) -> TrainParams {
        TrainParams { raw, model_name: None, value_weights: None }
    }

    /// 1 or 2 bits per value element; default 1.
    pub fn value_bits(mut self, v: u32) -> Self {
        self.raw.value_bits = v;
        self
    }
    /// 0 = from value_bits.
    pub fn key_stages(mut self, v: u32) -> Self {
        self.raw.key_stages = v;
        self
    }
    pub fn sub_centers(mut self, v: u32) -> Self {
        self.raw.sub_centers = v;
        self
    }
    pub fn pair_layout(mut self, v: PairLayout) -> Self {
        self.raw.pair_layout = v.code();
        self
    }
    pub fn scale_mode(mut self, v: ScaleMode) -> Self {
        self.raw.scale_mode = v.code();
        self
    }
    /// For the model description; 0 = n_kv_heads.
    pub fn n_q_heads(mut self, v: u32) -> Self {
        self.raw.n_q_heads = v;
        self
    }
    pub fn rope(mut self, v: sys::commvq_rope_info_t) -> Self {
        self.raw.rope = v;
        self
    }
    pub fn max_samples(mut self, v: u64) -> Self {
        self.raw.max_samples = v;
        self
    }
    pub fn key_max_steps(mut self, v: u32) -> Self {
        self.raw.key_max_steps = v;
        self
    }
    pub fn value_steps(mut self, v: u32) -> Self {
        self.raw.value_steps = v;
        self
    }
    pub fn value_batch(mut self, v: u32) -> Self {
        self.raw.value_batch = v;
        self
    }
    pub fn value_lr(mut self, v: f32) -> Self {
        self.raw.value_lr = v;
        self
    }
    pub fn seed(mut self, v: u64) -> Self {
        self.raw.seed = v;
        self
    }
    pub fn n_threads(mut self, v: u32) -> Self {
        self.raw.n_threads = v;
        self
    }
    pub fn device(mut self, v: Device) -> Self {
        self.raw.device = v.code();
        self
    }
    /// The value encoder's width; 0 = the library's choice.
    pub fn value_hidden(mut self, v: u32) -> Self {
        self.raw.value_hidden = v;
        self
    }
    /// Recorded in the codebook (UTF-8). A NUL in the name is an InvalidArgument error.
    pub fn model_name(mut self, name: &str) -> Result<Self> {
        self.model_name = Some(CString::new(name)
            .map_err(|_| Error::InvalidArgument("model_name contains a NUL".to_string()))?);
        Ok(self)
    }
    /// Weight (finite, >= 0) of each token's value reconstruction error,
    /// [n_layers][n_tokens]; its length is checked by `Codebook::train`.
    pub fn value_weights(mut self, weights: Vec<f32>) -> Self {
        self.value_weights = Some(weights);
        self
    }

    pub(crate) fn weights_len(&self) -> Option<usize> {
        self.value_weights.as_ref().map(Vec::len)
    }

    /// The C struct, pointing into self: valid while self is.
    pub fn raw(&self) -> sys::commvq_train_params_t {
        let mut raw = self.raw;
        raw.model_name = self.model_name.as_ref().map_or(ptr::null(), |n| n.as_ptr());
        raw.value_weights = self.value_weights.as_ref().map_or(ptr::null(), |w| w.as_ptr());
        raw
    }
}
