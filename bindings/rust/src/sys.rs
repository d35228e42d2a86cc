//! The C API of `include/commvq/commvq.h`, declared for a library loaded at
//! run time: types with the header's names and layout, and `Api`, one
//! function pointer per public function, all resolved when the library is
//! loaded. Copied from the header by hand, so
//! `bindings/tools/check_declarations.py` compares this file with the header
//! in CI; keep the header's names, order and types.
#![allow(non_camel_case_types)]

use std::ffi::c_void;
use std::os::raw::c_char;

use crate::dl::DynamicLibrary;
use crate::Error;

pub const COMMVQ_VERSION_MAJOR: u32 = 0;

pub type commvq_status_t = i32;
pub const COMMVQ_OK: commvq_status_t = 0;
pub const COMMVQ_ERR_INVALID_ARGUMENT: commvq_status_t = 1;
pub const COMMVQ_ERR_SHAPE_MISMATCH: commvq_status_t = 2;
pub const COMMVQ_ERR_OUT_OF_RANGE: commvq_status_t = 3;
pub const COMMVQ_ERR_INVALID_STATE: commvq_status_t = 4;
pub const COMMVQ_ERR_CAPACITY: commvq_status_t = 10;
pub const COMMVQ_ERR_OUT_OF_MEMORY: commvq_status_t = 11;
pub const COMMVQ_ERR_IO: commvq_status_t = 20;
pub const COMMVQ_ERR_FORMAT: commvq_status_t = 21;
pub const COMMVQ_ERR_CORRUPT: commvq_status_t = 22;
pub const COMMVQ_ERR_CODEBOOK_MISMATCH: commvq_status_t = 23;
pub const COMMVQ_ERR_NOT_SUPPORTED: commvq_status_t = 30;
pub const COMMVQ_ERR_CUDA: commvq_status_t = 31;
pub const COMMVQ_ERR_CANCELLED: commvq_status_t = 32;
pub const COMMVQ_ERR_INTERNAL: commvq_status_t = 99;

pub const COMMVQ_DEVICE_CPU: i32 = -1;
pub const COMMVQ_DTYPE_F32: i32 = 0;
pub const COMMVQ_DTYPE_F16: i32 = 1;
pub const COMMVQ_DTYPE_BF16: i32 = 2;
pub const COMMVQ_KEYS_PRE_ROPE: i32 = 0;
pub const COMMVQ_KEYS_POST_ROPE: i32 = 1;
pub const COMMVQ_PAIRS_ROTATE_HALF: i32 = 0;
pub const COMMVQ_PAIRS_INTERLEAVED: i32 = 1;
pub const COMMVQ_SCALE_TOKEN: i32 = 0;
pub const COMMVQ_SCALE_HEAD: i32 = 1;
pub const COMMVQ_ROPE_SCALING_NONE: i32 = 0;
pub const COMMVQ_ROPE_SCALING_LINEAR: i32 = 1;
pub const COMMVQ_ROPE_SCALING_LLAMA3: i32 = 2;
pub const COMMVQ_ATTEND_CAUSAL: u32 = 0;
pub const COMMVQ_ATTEND_NON_CAUSAL: u32 = 1;

/// Opaque codebook handle.
#[repr(C)]
pub struct commvq_codebook_t {
    _private: [u8; 0],
}

/// Opaque cache handle.
#[repr(C)]
pub struct commvq_cache_t {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct commvq_rope_info_t {
    pub theta: f64,
    pub scaling: i32,
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position: f64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct commvq_codebook_info_t {
    pub struct_size: u32,
    pub n_layers: u32,
    pub n_kv_heads: u32,
    pub n_q_heads: u32,
    pub head_dim: u32,
    pub key_stages: u32,
    pub sub_centers: u32,
    pub value_bits: u32,
    pub value_hidden: u32,
    pub pair_layout: i32,
    pub scale_mode: i32,
    pub format_version: u32,
    pub rope: commvq_rope_info_t,
    pub fingerprint: u64,
    pub compressed_token_bytes: u32,
    pub reserved_: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct commvq_cache_params_t {
    pub struct_size: u32,
    pub device: i32,
    pub max_seqs: u32,
    pub max_tokens: u64,
    pub block_tokens: u32,
    pub window: u32,
    pub sink_tokens: u32,
    pub io_dtype: i32,
    pub key_convention: i32,
    pub attn_scale: f32,
    pub n_threads: u32,
    pub kv_head_begin: u32,
    pub kv_head_count: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct commvq_cache_stats_t {
    pub struct_size: u32,
    pub n_seqs_used: u32,
    pub tokens: u64,
    pub compressed_tokens: u64,
    pub blocks_used: u64,
    pub blocks_total: u64,
    pub tokens_free: u64,
    pub bytes_compressed: u64,
    pub bytes_window: u64,
    pub bytes_codebook: u64,
    pub bytes_reserved: u64,
    pub bytes_per_compressed_token: f64,
    pub bytes_per_token_16bit: f64,
}

pub type commvq_progress_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, stage: *const c_char, fraction: f64) -> i32>;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct commvq_train_params_t {
    pub struct_size: u32,
    pub value_bits: u32,
    pub key_stages: u32,
    pub sub_centers: u32,
    pub pair_layout: i32,
    pub scale_mode: i32,
    pub n_q_heads: u32,
    pub rope: commvq_rope_info_t,
    pub max_samples: u64,
    pub key_max_steps: u32,
    pub value_steps: u32,
    pub value_batch: u32,
    pub value_lr: f32,
    pub seed: u64,
    pub n_threads: u32,
    pub device: i32,
    pub progress: commvq_progress_fn,
    pub progress_user: *mut c_void,
    pub value_hidden: u32,
    pub model_name: *const c_char,
    pub value_weights: *const f32,
}

// One list of the functions generates both the table and its resolution, so
// a function cannot be declared without being resolved up front.
macro_rules! declare_api {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {
        /// Every public function of the library, resolved at load time.
        #[allow(non_snake_case)]
        pub struct Api {
            $(pub $name: unsafe extern "C" fn($($arg: $ty),*) $(-> $ret)?,)*
        }

        impl Api {
            pub(crate) fn resolve(lib: &DynamicLibrary) -> Result<Api, Error> {
                // SAFETY: each symbol is the function of that name in commvq.h,
                // whose signature the declaration above repeats (checked in CI).
                unsafe {
                    Ok(Api {
                        $($name: std::mem::transmute::<*mut c_void,
                              unsafe extern "C" fn($($ty),*) $(-> $ret)?>(
                            lib.symbol(stringify!($name))?),)*
                    })
                }
            }
        }
    };
}

declare_api! {
    fn commvq_version_number() -> u32;
    fn commvq_version_string() -> *const c_char;
    fn commvq_status_string(status: commvq_status_t) -> *const c_char;
    fn commvq_last_error() -> *const c_char;
    fn commvq_cuda_available() -> i32;
    fn commvq_device_count() -> i32;
    fn commvq_codebook_info_init(info: *mut commvq_codebook_info_t);
    fn commvq_codebook_load(path: *const c_char, out: *mut *mut commvq_codebook_t) -> commvq_status_t;
    fn commvq_codebook_load_memory(data: *const c_void, size: usize,
                                   out: *mut *mut commvq_codebook_t) -> commvq_status_t;
    fn commvq_codebook_save(cb: *const commvq_codebook_t, path: *const c_char) -> commvq_status_t;
    fn commvq_codebook_save_as(cb: *const commvq_codebook_t, path: *const c_char,
                               dtype: i32) -> commvq_status_t;
    fn commvq_codebook_free(cb: *mut commvq_codebook_t);
    fn commvq_codebook_get_info(cb: *const commvq_codebook_t,
                                info: *mut commvq_codebook_info_t) -> commvq_status_t;
    fn commvq_codebook_encode_keys(cb: *const commvq_codebook_t, layer: u32, n_tokens: u32, k: *const f32,
                                   codes: *mut u16, scales: *mut f32) -> commvq_status_t;
    fn commvq_codebook_reconstruct(cb: *const commvq_codebook_t, layer: u32, n_tokens: u32, k: *const f32,
                                   v: *const f32, k_out: *mut f32, v_out: *mut f32) -> commvq_status_t;
    fn commvq_cache_params_init_size(params: *mut commvq_cache_params_t, size: usize);
    fn commvq_cache_params_init(params: *mut commvq_cache_params_t);
    fn commvq_cache_create(cb: *const commvq_codebook_t, params: *const commvq_cache_params_t,
                           out: *mut *mut commvq_cache_t) -> commvq_status_t;
    fn commvq_cache_destroy(cache: *mut commvq_cache_t);
    fn commvq_cache_append(cache: *mut commvq_cache_t, layer: u32, seq: u32, n_tokens: u32,
                           k: *const c_void, v: *const c_void) -> commvq_status_t;
    fn commvq_cache_append_batch(cache: *mut commvq_cache_t, layer: u32, n_seqs: u32, seq_ids: *const u32,
                                 n_tokens: u32, k: *const c_void, v: *const c_void) -> commvq_status_t;
    fn commvq_cache_key_norms2(cache: *const commvq_cache_t, layer: u32, n_seqs: u32, seq_ids: *const u32,
                               n_tokens: u32, k: *const c_void, norms2: *mut f64) -> commvq_status_t;
    fn commvq_cache_append_norms2(cache: *mut commvq_cache_t, layer: u32, n_seqs: u32, seq_ids: *const u32,
                                  n_tokens: u32, k: *const c_void, v: *const c_void,
                                  key_norms2: *const f64) -> commvq_status_t;
    fn commvq_cache_attend(cache: *mut commvq_cache_t, layer: u32, seq: u32, n_queries: u32,
                           q: *const c_void, out: *mut c_void, lse: *mut f32,
                           flags: u32) -> commvq_status_t;
    fn commvq_cache_attend_batch(cache: *mut commvq_cache_t, layer: u32, n_seqs: u32,
                                 seq_ids: *const u32, q: *const c_void, out: *mut c_void,
                                 lse: *mut f32, flags: u32) -> commvq_status_t;
    fn commvq_cache_seq_length(cache: *const commvq_cache_t, seq: u32,
                               length: *mut u64) -> commvq_status_t;
    fn commvq_cache_seq_clear(cache: *mut commvq_cache_t, seq: u32) -> commvq_status_t;
    fn commvq_cache_seq_truncate(cache: *mut commvq_cache_t, seq: u32,
                                 new_length: u64) -> commvq_status_t;
    fn commvq_cache_seq_fork(cache: *mut commvq_cache_t, src: u32, dst: u32) -> commvq_status_t;
    fn commvq_cache_stats_init(stats: *mut commvq_cache_stats_t);
    fn commvq_cache_get_stats(cache: *const commvq_cache_t,
                              stats: *mut commvq_cache_stats_t) -> commvq_status_t;
    fn commvq_cache_seq_save(cache: *const commvq_cache_t, seq: u32,
                             path: *const c_char) -> commvq_status_t;
    fn commvq_cache_seq_load(cache: *mut commvq_cache_t, seq: u32,
                             path: *const c_char) -> commvq_status_t;
    fn commvq_cache_set_stream(cache: *mut commvq_cache_t, cuda_stream: *mut c_void) -> commvq_status_t;
    fn commvq_cache_synchronize(cache: *mut commvq_cache_t) -> commvq_status_t;
    fn commvq_train_params_init(params: *mut commvq_train_params_t);
    fn commvq_train(params: *const commvq_train_params_t, n_layers: u32, n_kv_heads: u32,
                    head_dim: u32, n_tokens: u64, keys: *const f32, values: *const f32,
                    out: *mut *mut commvq_codebook_t) -> commvq_status_t;
}
