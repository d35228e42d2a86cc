//! dlopen/dlsym from libc, declared here because the crate uses the standard
//! library only.

use std::ffi::{c_void, CStr, CString};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::Error;

#[link(name = "dl")]
extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *mut c_char;
    fn dlclose(handle: *mut c_void) -> c_int;
}

const RTLD_NOW: c_int = 2;

/// A dlopen handle, closed when dropped.
pub(crate) struct DynamicLibrary {
    handle: *mut c_void,
    pub(crate) path: PathBuf,
}

// The handle is only passed to dlsym and dlclose, both thread-safe.
unsafe impl Send for DynamicLibrary {}
unsafe impl Sync for DynamicLibrary {}

fn last_dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string.
    unsafe {
        let message = dlerror();
        if message.is_null() {
            "unknown dlopen error".to_string()
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        }
    }
}

impl DynamicLibrary {
    /// Opens `name`: a path, or a bare file name looked up on the loader's
    /// search path (LD_LIBRARY_PATH, the ld.so cache, /usr/lib...).
    pub(crate) fn open(path: &Path) -> Result<DynamicLibrary, Error> {
        let c_name = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::Load(format!("{}: NUL in path", path.display())))?;
        // SAFETY: c_name is NUL-terminated.
        let handle = unsafe { dlopen(c_name.as_ptr(), RTLD_NOW) };
        if handle.is_null() {
            return Err(Error::Load(last_dl_error()));
        }
        Ok(DynamicLibrary { handle, path: path.to_path_buf() })
    }

    pub(crate) fn symbol(&self, symbol: &str) -> Result<*mut c_void, Error> {
        let c_symbol = CString::new(symbol).expect("symbol names have no NUL");
        // SAFETY: handle is open; c_symbol is NUL-terminated.
        let address = unsafe { dlsym(self.handle, c_symbol.as_ptr()) };
        if address.is_null() {
            return Err(Error::MissingSymbol { library: self.path.clone(), symbol: symbol.to_string() });
        }
        Ok(address)
    }
}

impl Drop for DynamicLibrary {
    fn drop(&mut self) {
        // SAFETY: opened by dlopen; every Codebook and Cache holds an Arc of
        // the Library, so no handle outlives the code that frees it.
        unsafe { dlclose(self.handle) };
    }
}
