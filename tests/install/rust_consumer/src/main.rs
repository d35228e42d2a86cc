//! A crate outside the source tree that depends on the commvq crate by path
//! and runs against the installed libcommvq (tests/install/check_rust_crate.sh):
//! the library is found through the run path build.rs records, the params
//! builder and enums work, failures carry their Status, and Codebook is
//! shared across threads.
//!
//!   consumer CODEBOOK

use std::path::PathBuf;
use std::sync::Arc;

use commvq::{AttendFlags, Cache, Codebook, DType, Error, Library, Status};

fn assert_send_sync<T: Send + Sync>() {}

fn run(codebook_path: PathBuf) -> Result<(), Error> {
    assert_send_sync::<Codebook>();
    let lib = Library::open_default()?;
    assert!(lib.path().ends_with("libcommvq.so.0"));
    let codebook = Arc::new(Codebook::load(&lib, &codebook_path)?);
    let info = codebook.info()?;
    let (kv_row, q_row) = ((info.n_kv_heads * info.head_dim) as usize, (info.n_q_heads * info.head_dim) as usize);
    let tokens = 16;
    let k: Vec<f32> = (0..tokens * kv_row).map(|i| (i as f32).sin()).collect();
    let v: Vec<f32> = (0..tokens * kv_row).map(|i| (3.0 * i as f32).cos()).collect();
    let q: Vec<f32> = (0..q_row).map(|i| (7.0 * i as f32).sin()).collect();

    // Two threads, each with its own cache made from the one shared codebook.
    let outputs: Vec<Vec<f32>> = (0..2)
        .map(|_| {
            let (codebook, k, v, q) = (Arc::clone(&codebook), k.clone(), v.clone(), q.clone());
            std::thread::spawn(move || -> Result<Vec<f32>, Error> {
                let lib = Library::open_default()?;
                let params = lib.cache_params().window(4).max_tokens(256).io_dtype(DType::F32);
                let mut cache = Cache::new(&codebook, &params)?;
                cache.append(0, 0, &k, &v)?;
                let mut out = vec![0f32; q_row];
                cache.attend(0, 0, &q, &mut out, None, AttendFlags::CAUSAL)?;
                Ok(out)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect::<Result<_, _>>()?;
    assert!(outputs[0].iter().all(|x| x.is_finite()), "finite attention output");
    assert_eq!(outputs[0], outputs[1], "the same result on both threads");

    let mut cache = Cache::new(&codebook, &lib.cache_params().window(4).max_tokens(256))?;
    cache.append(0, 0, &k, &v)?;
    let mut out = vec![0f32; q_row];
    let err = cache.attend(info.n_layers, 0, &q, &mut out, None, AttendFlags::CAUSAL).unwrap_err();
    assert_eq!(err.status(), Some(Status::OutOfRange), "{err}");
    let missing = codebook_path.with_file_name("no-such-codebook.safetensors");
    assert_eq!(Codebook::load(&lib, &missing).err().and_then(|e| e.status()), Some(Status::Io));
    println!("libcommvq {} from {}: attention from codes on two threads, Status::OutOfRange and Status::Io ok",
             lib.version(), lib.path().display());
    Ok(())
}

fn main() {
    let path = PathBuf::from(std::env::args_os().nth(1).expect("usage: consumer CODEBOOK"));
    if let Err(e) = run(path) {
        eprintln!("consumer: {e}");
        std::process::exit(1);
    }
}
