//! What an engine does with libcommvq, in Rust: load the library at run time,
//! make a cache for a model's codebook, then for each layer append the new
//! tokens' keys and values and attend with the queries.
//!
//!   cargo run --example decode -- CODEBOOK [LIBRARY]
//!
//! LIBRARY defaults to $COMMVQ_LIBRARY, then libcommvq.so.0 on the loader's path.

use commvq::{AttendFlags, Cache, Codebook, Library};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        return Err("usage: decode CODEBOOK [LIBRARY]".into());
    }
    let lib = match args.get(2) {
        Some(path) => Library::open(path)?,
        None => Library::open_default()?,
    };
    println!("libcommvq {}", lib.version());

    let codebook = Codebook::load(&lib, &args[1])?;
    let info = codebook.info()?;
    let params = lib.cache_params().max_tokens(4096).window(16);
    let mut cache = Cache::new(&codebook, &params)?;

    // Stand-in activations; an engine passes its own k, v and q buffers.
    let kv_row = (info.n_kv_heads * info.head_dim) as usize;
    let q_row = (info.n_q_heads * info.head_dim) as usize;
    let prompt = 48;
    let signal = |i: usize| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
    let k: Vec<f32> = (0..prompt * kv_row).map(signal).collect();
    let v: Vec<f32> = (0..prompt * kv_row).map(|i| signal(i + 1)).collect();
    let q: Vec<f32> = (0..q_row).map(|i| signal(i + 2)).collect();
    let mut out = vec![0f32; q_row];
    let mut lse = vec![0f32; info.n_q_heads as usize];
    for layer in 0..info.n_layers {
        cache.append(layer, 0, &k, &v)?;
        cache.attend(layer, 0, &q, &mut out, Some(&mut lse), AttendFlags::CAUSAL)?;
        println!("layer {layer}: out[0] = {:.6}, lse[0] = {:.6}", out[0], lse[0]);
    }
    let stats = cache.stats()?;
    println!("{} tokens, {} compressed, {:.1} bytes per compressed token",
             stats.tokens, stats.compressed_tokens, stats.bytes_per_compressed_token);
    Ok(())
}
