//! libcommvq from Rust, loaded at run time.
//!
//! ```no_run
//! use commvq::{AttendFlags, Cache, Codebook, DType, Library};
//! let lib = Library::open_default()?;                      // $COMMVQ_LIBRARY or libcommvq.so.0
//! let codebook = Codebook::load(&lib, "model.cvq.safetensors")?;
//! let params = lib.cache_params().window(128).max_tokens(1 << 16).io_dtype(DType::F32);
//! let mut cache = Cache::new(&codebook, &params)?;
//! # let (k, v, q) = (vec![0f32; 0], vec![0f32; 0], vec![0f32; 0]);
//! cache.append(0, 0, &k, &v)?;                             // [n][n_kv_heads][head_dim]
//! let mut out = vec![0f32; q.len()];
//! cache.attend(0, 0, &q, &mut out, None, AttendFlags::CAUSAL)?;
//! # Ok::<(), commvq::Error>(())
//! ```
//!
//! The library is checked against the major version this crate was written
//! for and every symbol is resolved when it is opened. `Codebook` and `Cache`
//! free their handle exactly once, in `Drop`. A `Codebook` is `Send + Sync`:
//! the C API lets several threads read one codebook at once (nothing that
//! takes a `const commvq_codebook_t*` changes it, docs/API.md), and every
//! method here takes `&self`. A `Cache` is `Send` but not `Sync`: one cache
//! must not be used by two threads at once.

mod dl;
mod error;
mod params;
pub mod sys;
mod types;

use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::sync::Arc;

pub use error::Error;
pub use params::{CacheParams, TrainParams};
pub use types::{AttendFlags, DType, Device, KeyConvention, PairLayout, ScaleMode, Status};

/// What a codebook describes (`commvq_codebook_info_t`).
pub type CodebookInfo = sys::commvq_codebook_info_t;
/// A cache's occupancy (`commvq_cache_stats_t`).
pub type CacheStats = sys::commvq_cache_stats_t;

pub type Result<T> = std::result::Result<T, Error>;

/// The loaded library: its dlopen handle and every function of the C API.
pub struct Library {
    api: sys::Api,
    dl: dl::DynamicLibrary,
}

impl Library {
    /// Loads libcommvq from `path` (a file, or a name for the loader's search path).
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<Library>> {
        let name = path.as_ref().to_path_buf();
        let dl = dl::DynamicLibrary::open(&name)?;
        // The version symbol first: a library of another major may lack others.
        let version_number: unsafe extern "C" fn() -> u32 =
            unsafe { std::mem::transmute(dl.symbol("commvq_version_number")?) };
        let found = unsafe { version_number() };
        if found / 10000 != sys::COMMVQ_VERSION_MAJOR {
            return Err(Error::Version { library: name, found, major: sys::COMMVQ_VERSION_MAJOR });
        }
        let api = sys::Api::resolve(&dl)?;
        Ok(Arc::new(Library { api, dl }))
    }

    /// Loads the library named by $COMMVQ_LIBRARY, else `libcommvq.so.<major>`
    /// from the loader's search path.
    pub fn open_default() -> Result<Arc<Library>> {
        match std::env::var_os("COMMVQ_LIBRARY") {
            Some(path) if !path.is_empty() => Library::open(path),
            _ => Library::open(format!("libcommvq.so.{}", sys::COMMVQ_VERSION_MAJOR)),
        }
    }

    /// The raw C API, for calls this crate does not wrap.
    pub fn api(&self) -> &sys::Api {
        &self.api
    }

    /// Where the library was loaded from, as given to `open`.
    pub fn path(&self) -> &Path {
        &self.dl.path
    }

    pub fn version_number(&self) -> u32 {
        unsafe { (self.api.commvq_version_number)() }
    }

    pub fn version(&self) -> String {
        unsafe { CStr::from_ptr((self.api.commvq_version_string)()) }.to_string_lossy().into_owned()
    }

    /// The name of a status code, e.g. "COMMVQ_ERR_CAPACITY".
    pub fn status_string(&self, status: sys::commvq_status_t) -> String {
        unsafe { CStr::from_ptr((self.api.commvq_status_string)(status)) }.to_string_lossy().into_owned()
    }

    pub fn cuda_available(&self) -> bool {
        unsafe { (self.api.commvq_cuda_available)() != 0 }
    }

    pub fn device_count(&self) -> i32 {
        unsafe { (self.api.commvq_device_count)() }
    }

    /// Cache settings at the library's defaults; setters chain.
    pub fn cache_params(&self) -> CacheParams {
        let mut params = sys::commvq_cache_params_t::default();
        unsafe {
            (self.api.commvq_cache_params_init_size)(&mut params, std::mem::size_of::<sys::commvq_cache_params_t>())
        };
        CacheParams::from_defaults(params)
    }

    /// Training settings at the library's defaults; setters chain.
    pub fn train_params(&self) -> TrainParams {
        let mut params = sys::commvq_train_params_t {
            struct_size: 0,
            value_bits: 0,
            key_stages: 0,
            sub_centers: 0,
            pair_layout: 0,
            scale_mode: 0,
            n_q_heads: 0,
            rope: sys::commvq_rope_info_t::default(),
            max_samples: 0,
            key_max_steps: 0,
            value_steps: 0,
            value_batch: 0,
            value_lr: 0.0,
            seed: 0,
            n_threads: 0,
            device: 0,
            progress: None,
            progress_user: ptr::null_mut(),
            value_hidden: 0,
            model_name: ptr::null(),
            value_weights: ptr::null(),
        };
        unsafe { (self.api.commvq_train_params_init)(&mut params) };
        TrainParams::from_defaults(params)
    }

    /// Turns a status into a Result; must run right after the failed call,
    /// on the same thread (the message is the thread's last error).
    fn check(&self, status: sys::commvq_status_t) -> Result<()> {
        if status == sys::COMMVQ_OK {
            return Ok(());
        }
        let message = unsafe { CStr::from_ptr((self.api.commvq_last_error)()) }.to_string_lossy().into_owned();
        Err(Error::Status { status: Status::from_code(status), name: self.status_string(status), message })
    }
}

/// A path as the C API takes it: its bytes as they are (no UTF-8 round trip).
fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("{}: NUL in path", path.display())))
}

/// A codebook: the quantization tables of one model.
pub struct Codebook {
    lib: Arc<Library>,
    raw: NonNull<sys::commvq_codebook_t>,
}

// SAFETY: the library allows a handle on any thread (docs/API.md, threads),
// and a codebook handle may be read by several threads at once: every
// method of Codebook takes &self and calls a function that takes a
// `const commvq_codebook_t*`, which does not change it. Drop frees it with
// exclusive access. The Library it holds is Send + Sync.
unsafe impl Send for Codebook {}
unsafe impl Sync for Codebook {}

impl Codebook {
    pub fn load(lib: &Arc<Library>, path: impl AsRef<Path>) -> Result<Codebook> {
        let path = c_path(path.as_ref())?;
        let mut raw = ptr::null_mut();
        lib.check(unsafe { (lib.api.commvq_codebook_load)(path.as_ptr(), &mut raw) })?;
        Ok(Codebook::own(lib, raw))
    }

    /// A codebook from the bytes of a codebook file (copied).
    pub fn from_bytes(lib: &Arc<Library>, data: &[u8]) -> Result<Codebook> {
        let mut raw = ptr::null_mut();
        lib.check(unsafe {
            (lib.api.commvq_codebook_load_memory)(data.as_ptr() as *const c_void, data.len(), &mut raw)
        })?;
        Ok(Codebook::own(lib, raw))
    }

    /// Trains a codebook from pre-RoPE keys and values,
    /// each [n_layers][n_tokens][n_kv_heads][head_dim].
    pub fn train(lib: &Arc<Library>, params: &TrainParams, n_layers: u32, n_kv_heads: u32,
                 head_dim: u32, keys: &[f32], values: &[f32]) -> Result<Codebook> {
        let per_token = n_layers as usize * n_kv_heads as usize * head_dim as usize;
        if per_token == 0 || keys.len() % per_token != 0 || keys.len() != values.len() {
            return Err(Error::InvalidArgument(format!(
                "keys ({}) and values ({}) must hold n_tokens x {per_token} floats", keys.len(), values.len())));
        }
        let n_tokens = (keys.len() / per_token) as u64;
        if let Some(len) = params.weights_len() {
            if len as u64 != n_layers as u64 * n_tokens {
                return Err(Error::InvalidArgument(format!(
                    "value_weights has {len} elements, needs n_layers x n_tokens = {}", n_layers as u64 * n_tokens)));
            }
        }
        let raw_params = params.raw(); // points into params, which outlives the call
        let mut raw = ptr::null_mut();
        lib.check(unsafe {
            (lib.api.commvq_train)(&raw_params, n_layers, n_kv_heads, head_dim, n_tokens, keys.as_ptr(),
                                   values.as_ptr(), &mut raw)
        })?;
        Ok(Codebook::own(lib, raw))
    }

    fn own(lib: &Arc<Library>, raw: *mut sys::commvq_codebook_t) -> Codebook {
        Codebook { lib: Arc::clone(lib), raw: NonNull::new(raw).expect("a successful call returns a handle") }
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = c_path(path.as_ref())?;
        self.lib.check(unsafe { (self.lib.api.commvq_codebook_save)(self.raw.as_ptr(), path.as_ptr()) })
    }

    /// Writes the codebook file with a storage dtype: `DType::F32` (as
    /// `save`), `F16` or `BF16` (key sub-centers and value matrices rounded
    /// to that type, about half the file; the file's fingerprint is then
    /// that of the rounded values).
    pub fn save_as(&self, path: impl AsRef<Path>, dtype: DType) -> Result<()> {
        let path = c_path(path.as_ref())?;
        self.lib.check(unsafe {
            (self.lib.api.commvq_codebook_save_as)(self.raw.as_ptr(), path.as_ptr(), dtype.code())
        })
    }

    pub fn info(&self) -> Result<CodebookInfo> {
        let mut info = sys::commvq_codebook_info_t::default();
        unsafe { (self.lib.api.commvq_codebook_info_init)(&mut info) };
        self.lib.check(unsafe { (self.lib.api.commvq_codebook_get_info)(self.raw.as_ptr(), &mut info) })?;
        Ok(info)
    }

    pub fn as_ptr(&self) -> *mut sys::commvq_codebook_t {
        self.raw.as_ptr()
    }
}

impl Drop for Codebook {
    fn drop(&mut self) {
        unsafe { (self.lib.api.commvq_codebook_free)(self.raw.as_ptr()) };
    }
}

/// Element types the cache's io dtype can have: f32 for F32, u16 (the raw
/// bits) for F16 and BF16.
pub trait IoElement: Copy {
    fn matches(io_dtype: DType) -> bool;
}

impl IoElement for f32 {
    fn matches(io_dtype: DType) -> bool {
        io_dtype == DType::F32
    }
}

impl IoElement for u16 {
    fn matches(io_dtype: DType) -> bool {
        io_dtype == DType::F16 || io_dtype == DType::BF16
    }
}

/// A compressed KV cache. Buffer lengths are checked here, before the call.
pub struct Cache {
    lib: Arc<Library>,
    raw: NonNull<sys::commvq_cache_t>,
    io_dtype: DType,
    kv_row: usize, // elements of one token's keys: n_kv_heads * head_dim
    q_row: usize,  // elements of one query: n_q_heads * head_dim
    n_q_heads: usize,
}

// SAFETY: the library allows a cache handle on any thread, one thread at a
// time; not Sync, since the C API does not allow two threads on one cache.
unsafe impl Send for Cache {}

impl Cache {
    pub fn new(codebook: &Codebook, params: &CacheParams) -> Result<Cache> {
        let io_dtype = params.get_io_dtype()
            .ok_or_else(|| Error::InvalidArgument(format!("unknown io_dtype {}", params.raw().io_dtype)))?;
        let params = params.raw();
        let info = codebook.info()?;
        let lib = &codebook.lib;
        let mut raw = ptr::null_mut();
        lib.check(unsafe { (lib.api.commvq_cache_create)(codebook.raw.as_ptr(), params, &mut raw) })?;
        Ok(Cache {
            lib: Arc::clone(lib),
            raw: NonNull::new(raw).expect("a successful call returns a handle"),
            io_dtype,
            kv_row: info.n_kv_heads as usize * info.head_dim as usize,
            q_row: info.n_q_heads as usize * info.head_dim as usize,
            n_q_heads: info.n_q_heads as usize,
        })
    }

    fn rows<T: IoElement>(&self, data: &[T], row: usize, what: &str) -> Result<u32> {
        if !T::matches(self.io_dtype) {
            return Err(Error::InvalidArgument(format!("{what}: element type does not match io_dtype {:?}",
                                                      self.io_dtype)));
        }
        if data.len() % row != 0 {
            return Err(Error::InvalidArgument(format!("{what}: {} elements is not a multiple of {row}",
                                                      data.len())));
        }
        u32::try_from(data.len() / row).map_err(|_| Error::InvalidArgument(format!("{what}: too many rows")))
    }

    /// Appends tokens to one layer of a sequence; k and v are [n][n_kv_heads][head_dim].
    pub fn append<T: IoElement>(&mut self, layer: u32, seq: u32, k: &[T], v: &[T]) -> Result<()> {
        let n = self.rows(k, self.kv_row, "k")?;
        if v.len() != k.len() {
            return Err(Error::InvalidArgument(format!("k has {} elements, v {}", k.len(), v.len())));
        }
        self.lib.check(unsafe {
            (self.lib.api.commvq_cache_append)(self.raw.as_ptr(), layer, seq, n, k.as_ptr() as *const c_void,
                                               v.as_ptr() as *const c_void)
        })
    }

    /// Appends to one layer of several sequences in one call: k and v are
    /// [seq_ids.len()][n_tokens][n_kv_heads][head_dim] (n_tokens = 1: one decode
    /// step), the ids distinct. As `append` for each sequence in turn, but all
    /// or nothing.
    pub fn append_batch<T: IoElement>(&mut self, layer: u32, seq_ids: &[u32], k: &[T], v: &[T]) -> Result<()> {
        let rows = self.rows(k, self.kv_row, "k")?;
        if v.len() != k.len() {
            return Err(Error::InvalidArgument(format!("k has {} elements, v {}", k.len(), v.len())));
        }
        let n = u32::try_from(seq_ids.len())
            .map_err(|_| Error::InvalidArgument(format!("{} sequences is too many", seq_ids.len())))?;
        if n > 0 && rows % n != 0 {
            return Err(Error::InvalidArgument(format!("k holds {rows} tokens, not a multiple of {n} sequences")));
        }
        let n_tokens = if n == 0 { 0 } else { rows / n };
        self.lib.check(unsafe {
            (self.lib.api.commvq_cache_append_batch)(self.raw.as_ptr(), layer, n, seq_ids.as_ptr(), n_tokens,
                                                     k.as_ptr() as *const c_void, v.as_ptr() as *const c_void)
        })
    }

    fn outputs<T>(&self, n: u32, out: &[T], lse: &Option<&mut [f32]>) -> Result<()> {
        let n = n as usize;
        if out.len() != n * self.q_row {
            return Err(Error::InvalidArgument(format!("out has {} elements, needs {}", out.len(), n * self.q_row)));
        }
        if let Some(lse) = lse {
            if lse.len() != n * self.n_q_heads {
                return Err(Error::InvalidArgument(format!("lse has {} elements, needs {}", lse.len(),
                                                          n * self.n_q_heads)));
            }
        }
        Ok(())
    }

    /// Attention of post-RoPE queries q [n][n_q_heads][head_dim]; out has q's
    /// layout, lse (optional) is [n][n_q_heads].
    pub fn attend<T: IoElement>(&mut self, layer: u32, seq: u32, q: &[T], out: &mut [T],
                                lse: Option<&mut [f32]>, flags: AttendFlags) -> Result<()> {
        let flags = flags.bits();
        let n = self.rows(q, self.q_row, "q")?;
        self.outputs(n, out, &lse)?;
        let lse = lse.map_or(ptr::null_mut(), |l| l.as_mut_ptr());
        self.lib.check(unsafe {
            (self.lib.api.commvq_cache_attend)(self.raw.as_ptr(), layer, seq, n, q.as_ptr() as *const c_void,
                                               out.as_mut_ptr() as *mut c_void, lse, flags)
        })
    }

    /// One decode query per sequence: q [seq_ids.len()][n_q_heads][head_dim].
    pub fn attend_batch<T: IoElement>(&mut self, layer: u32, seq_ids: &[u32], q: &[T], out: &mut [T],
                                      lse: Option<&mut [f32]>, flags: AttendFlags) -> Result<()> {
        let flags = flags.bits();
        let n = self.rows(q, self.q_row, "q")?;
        if n as usize != seq_ids.len() {
            return Err(Error::InvalidArgument(format!("{} sequences, {n} queries", seq_ids.len())));
        }
        self.outputs(n, out, &lse)?;
        let lse = lse.map_or(ptr::null_mut(), |l| l.as_mut_ptr());
        self.lib.check(unsafe {
            (self.lib.api.commvq_cache_attend_batch)(self.raw.as_ptr(), layer, n, seq_ids.as_ptr(),
                                                     q.as_ptr() as *const c_void, out.as_mut_ptr() as *mut c_void,
                                                     lse, flags)
        })
    }

    pub fn seq_length(&self, seq: u32) -> Result<u64> {
        let mut length = 0;
        self.lib.check(unsafe { (self.lib.api.commvq_cache_seq_length)(self.raw.as_ptr(), seq, &mut length) })?;
        Ok(length)
    }

    pub fn seq_clear(&mut self, seq: u32) -> Result<()> {
        self.lib.check(unsafe { (self.lib.api.commvq_cache_seq_clear)(self.raw.as_ptr(), seq) })
    }

    pub fn seq_truncate(&mut self, seq: u32, new_length: u64) -> Result<()> {
        self.lib.check(unsafe { (self.lib.api.commvq_cache_seq_truncate)(self.raw.as_ptr(), seq, new_length) })
    }

    pub fn seq_fork(&mut self, src: u32, dst: u32) -> Result<()> {
        self.lib.check(unsafe { (self.lib.api.commvq_cache_seq_fork)(self.raw.as_ptr(), src, dst) })
    }

    pub fn seq_save(&self, seq: u32, path: impl AsRef<Path>) -> Result<()> {
        let path = c_path(path.as_ref())?;
        self.lib.check(unsafe { (self.lib.api.commvq_cache_seq_save)(self.raw.as_ptr(), seq, path.as_ptr()) })
    }

    pub fn seq_load(&mut self, seq: u32, path: impl AsRef<Path>) -> Result<()> {
        let path = c_path(path.as_ref())?;
        self.lib.check(unsafe { (self.lib.api.commvq_cache_seq_load)(self.raw.as_ptr(), seq, path.as_ptr()) })
    }

    /// The cache's io dtype.
    pub fn io_dtype(&self) -> DType {
        self.io_dtype
    }

    pub fn stats(&self) -> Result<CacheStats> {
        let mut stats = sys::commvq_cache_stats_t::default();
        unsafe { (self.lib.api.commvq_cache_stats_init)(&mut stats) };
        self.lib.check(unsafe { (self.lib.api.commvq_cache_get_stats)(self.raw.as_ptr(), &mut stats) })?;
        Ok(stats)
    }

    /// Queues the cache's work on a CUDA stream (a cudaStream_t).
    ///
    /// # Safety
    /// `cuda_stream` must be null or a live stream of the cache's device.
    pub unsafe fn set_stream(&mut self, cuda_stream: *mut c_void) -> Result<()> {
        self.lib.check((self.lib.api.commvq_cache_set_stream)(self.raw.as_ptr(), cuda_stream))
    }

    pub fn synchronize(&mut self) -> Result<()> {
        self.lib.check(unsafe { (self.lib.api.commvq_cache_synchronize)(self.raw.as_ptr()) })
    }

    pub fn as_ptr(&self) -> *mut sys::commvq_cache_t {
        self.raw.as_ptr()
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        unsafe { (self.lib.api.commvq_cache_destroy)(self.raw.as_ptr()) };
    }
}
