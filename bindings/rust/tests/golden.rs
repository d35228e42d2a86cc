//! The bindings' golden test (tests/data/golden/golden.txt describes it).
//! Environment: COMMVQ_LIBRARY (the library), COMMVQ_GOLDEN_DIR, COMMVQ_SCRATCH_DIR.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use commvq::sys::*;
use commvq::{AttendFlags, Cache, Codebook, Error, Library, Status};

struct Golden {
    dir: PathBuf,
    values: HashMap<String, String>,
}

impl Golden {
    fn read(dir: &Path) -> Golden {
        let text = std::fs::read_to_string(dir.join("golden.txt")).expect("golden.txt");
        let values = text
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (key, value) = line.split_once('=').expect("key = value");
                (key.trim().to_string(), value.trim().to_string())
            })
            .collect();
        Golden { dir: dir.to_path_buf(), values }
    }

    fn text(&self, key: &str) -> &str {
        self.values.get(key).unwrap_or_else(|| panic!("golden.txt lacks {key}"))
    }

    fn int(&self, key: &str) -> u32 {
        self.text(key).parse().expect("an integer")
    }

    fn floats(&self, key: &str, count: usize) -> Vec<f32> {
        let bytes = std::fs::read(self.dir.join(self.text(key))).expect("golden array");
        assert_eq!(bytes.len(), count * 4, "{key}: wrong size");
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

fn expect_error<T>(result: commvq::Result<T>, want: i32, fragment: &str, lib: &Library) {
    match result {
        Err(Error::Status { status, name, message }) => {
            assert_eq!(status, Status::from_code(want), "got {name}, want {}", lib.status_string(want));
            assert_eq!(name, lib.status_string(want));
            assert!(!message.is_empty() && message.contains(fragment), "message {message:?} lacks {fragment:?}");
            println!("{name}: {message}");
        }
        Err(other) => panic!("got {other}, want {}", lib.status_string(want)),
        Ok(_) => panic!("no error, want {}", lib.status_string(want)),
    }
}

fn count_mismatches(name: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) -> usize {
    let mut bad = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let diff = (g as f64 - w as f64).abs();
        if !(diff <= atol + rtol * (w as f64).abs()) {
            if bad < 5 {
                println!("  {name}[{i}]: got {g:.9}, want {w:.9}");
            }
            bad += 1;
        }
    }
    bad
}

fn main() -> ExitCode {
    let dir = PathBuf::from(std::env::var_os("COMMVQ_GOLDEN_DIR").expect("COMMVQ_GOLDEN_DIR"));
    let scratch = PathBuf::from(std::env::var_os("COMMVQ_SCRATCH_DIR").expect("COMMVQ_SCRATCH_DIR"));
    let g = Golden::read(&dir);
    let (n_tokens, n_queries) = (g.int("n_tokens") as usize, g.int("n_queries") as usize);
    let (kv_heads, q_heads, head_dim) = (g.int("n_kv_heads"), g.int("n_q_heads"), g.int("head_dim"));
    let kv = n_tokens * (kv_heads * head_dim) as usize;
    let qo = n_queries * (q_heads * head_dim) as usize;
    let keys = g.floats("keys", kv);
    let values = g.floats("values", kv);
    let queries = g.floats("queries", qo);
    let want_out = g.floats("out", qo);
    let want_lse = g.floats("lse", n_queries * q_heads as usize);

    let lib = Library::open_default().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lib.version_number() / 10000, COMMVQ_VERSION_MAJOR);
    println!("libcommvq {} from {}", lib.version(), lib.path().display());

    let codebook = Codebook::load(&lib, dir.join(g.text("codebook"))).unwrap_or_else(|e| panic!("{e}"));
    let info = codebook.info().unwrap();
    assert_eq!((info.n_layers, info.n_kv_heads, info.n_q_heads, info.head_dim),
               (g.int("n_layers"), kv_heads, q_heads, head_dim));
    let params = lib.cache_params()
        .max_seqs(g.int("max_seqs"))
        .max_tokens(g.int("max_tokens") as u64)
        .block_tokens(g.int("block_tokens"))
        .window(g.int("window"))
        .n_threads(g.int("n_threads"));
    let mut cache = Cache::new(&codebook, &params).unwrap_or_else(|e| panic!("{e}"));
    drop(codebook); // the cache keeps what it needs

    let (layer, seq) = (g.int("layer"), g.int("seq"));
    cache.append(layer, seq, &keys, &values).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cache.seq_length(seq).unwrap(), n_tokens as u64);
    let mut out = vec![f32::NAN; qo];
    let mut lse = vec![f32::NAN; n_queries * q_heads as usize];
    cache.attend(layer, seq, &queries, &mut out, Some(&mut lse), AttendFlags::CAUSAL)
        .unwrap_or_else(|e| panic!("{e}"));

    let atol: f64 = g.text("atol").parse().unwrap();
    let rtol: f64 = g.text("rtol").parse().unwrap();
    let bad = count_mismatches("out", &out, &want_out, atol, rtol) + count_mismatches("lse", &lse, &want_lse, atol, rtol);
    if bad > 0 {
        println!("golden mismatch: {bad} values differ");
        return ExitCode::FAILURE;
    }

    let n_layers = g.int("n_layers");
    expect_error(cache.attend(n_layers, seq, &queries, &mut out, None, AttendFlags::CAUSAL),
                 COMMVQ_ERR_OUT_OF_RANGE, "layer", &lib);
    let extra = g.int("overflow_tokens") as usize * (kv_heads * head_dim) as usize;
    expect_error(cache.append(layer, seq, &keys[..extra], &values[..extra]), COMMVQ_ERR_CAPACITY, "", &lib);
    assert_eq!(cache.seq_length(seq).unwrap(), n_tokens as u64, "a failed append changed the sequence");
    // A batch that names the sequence twice is refused whole.
    let two = 2 * (kv_heads * head_dim) as usize;
    expect_error(cache.append_batch(layer, &[seq, seq], &keys[..two], &values[..two]), COMMVQ_ERR_INVALID_ARGUMENT,
                 "both name sequence", &lib);
    assert_eq!(cache.seq_length(seq).unwrap(), n_tokens as u64, "a refused batch changed the sequence");
    let missing = scratch.join("no-such-codebook.safetensors");
    expect_error(Codebook::load(&lib, &missing), COMMVQ_ERR_IO, &missing.display().to_string(), &lib);

    // Checked before the call: a buffer of the wrong length never reaches C.
    let short = cache.attend(layer, seq, &queries, &mut out[..1], None, AttendFlags::CAUSAL);
    assert!(matches!(short, Err(Error::InvalidArgument(_))));
    // A missing library is reported by dlopen, not a crash.
    assert!(matches!(Library::open(scratch.join("libnothing.so")), Err(Error::Load(_))));

    // Wrong libraries are refused at load time, with the reason.
    match std::env::var_os("COMMVQ_STUB_PARTIAL") {
        Some(stub) => match Library::open(&stub) {
            Err(e @ Error::MissingSymbol { .. }) => println!("{e}"),
            Err(e) => panic!("{e}: want a missing symbol"),
            Ok(_) => panic!("{stub:?} was accepted"),
        },
        None => println!("COMMVQ_STUB_PARTIAL not set: that check is skipped"),
    }
    match std::env::var_os("COMMVQ_STUB_OTHER_MAJOR") {
        Some(stub) => match Library::open(&stub) {
            Err(e @ Error::Version { .. }) => println!("{e}"),
            Err(e) => panic!("{e}: want a version error"),
            Ok(_) => panic!("{stub:?} was accepted"),
        },
        None => println!("COMMVQ_STUB_OTHER_MAJOR not set: that check is skipped"),
    }

    println!("golden test passed");
    ExitCode::SUCCESS
}
