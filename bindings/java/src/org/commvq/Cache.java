package org.commvq;

import java.nio.Buffer;
import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;

/**
 * A compressed KV cache; owns a commvq_cache_t.
 *
 * <p>Buffer overloads pass direct buffers (native byte order) to the library
 * by address, without a copy, from their position on: FloatBuffer for an F32
 * cache, ByteBuffer for any io dtype. Array overloads copy through direct
 * buffers. Sizes are checked before the call. close() frees the cache (or,
 * failing that, it is freed once unreachable). A cache must not be used by
 * two threads at once.
 */
public final class Cache implements AutoCloseable {
  private final NativeHandle handle;
  private final DType ioDtype;
  private final int elementBytes;
  private final int kvRow;    // elements of one token's keys: nKvHeads * headDim
  private final int qRow;     // elements of one query: nQHeads * headDim
  private final int nQHeads;

  public Cache(Codebook codebook, CacheParams params) {
    CodebookInfo info = codebook.info();
    long[] out = new long[1];
    NativeCacheParams p = params.toNative();
    try {
      codebook.handle.run(h -> CommvqNative.cache_create(h, p, out));
    } finally {
      p.delete();
    }
    handle = new NativeHandle(out[0], CommvqNative::cache_destroy, "cache");
    ioDtype = params.ioDtype();
    elementBytes = ioDtype.bytes();
    kvRow = (int) (info.nKvHeads() * info.headDim());
    qRow = (int) (info.nQHeads() * info.headDim());
    nQHeads = (int) info.nQHeads();
  }

  private static long rows(long elements, int row, String name) {
    if (elements == 0 || elements % row != 0) {
      throw new IllegalArgumentException(name + " has " + elements + " elements, not a positive multiple of " + row);
    }
    return elements / row;
  }

  private static void expect(long elements, long needed, String name) {
    if (elements != needed) {
      throw new IllegalArgumentException(name + " has " + elements + " elements, needs " + needed);
    }
  }

  private void requireFloat() {
    if (ioDtype != DType.F32) {
      throw new IllegalArgumentException("float data needs io dtype F32; this cache has " + ioDtype);
    }
  }

  private static long unsigned(int value) {
    return Integer.toUnsignedLong(value);
  }

  // ---- append --------------------------------------------------------------

  /** Appends tokens to one layer of a sequence: k, v [n][nKvHeads][headDim] (F32). */
  public void append(int layer, int seq, FloatBuffer k, FloatBuffer v) {
    requireFloat();
    long n = rows(k.remaining(), kvRow, "k");
    expect(v.remaining(), k.remaining(), "v");
    handle.run(h -> CommvqNative.cache_append(h, unsigned(layer), unsigned(seq), n, Buffers.direct(k, "k"),
        Buffers.direct(v, "v")));
  }

  /** append() of raw bytes in the cache's io dtype. */
  public void append(int layer, int seq, ByteBuffer k, ByteBuffer v) {
    long n = rows(k.remaining(), kvRow * elementBytes, "k (bytes)");
    expect(v.remaining(), k.remaining(), "v (bytes)");
    handle.run(h -> CommvqNative.cache_append(h, unsigned(layer), unsigned(seq), n, Buffers.direct(k, "k"),
        Buffers.direct(v, "v")));
  }

  public void append(int layer, int seq, float[] k, float[] v) {
    append(layer, seq, Buffers.copy(k), Buffers.copy(v));
  }

  private static long batchTokens(long elements, int row, int nSeqs, String name) {
    long tokens = rows(elements, row, name);
    if (nSeqs == 0 || tokens % nSeqs != 0) {
      throw new IllegalArgumentException(name + " holds " + tokens + " tokens, not a positive multiple of " + nSeqs
          + " sequences");
    }
    return tokens / nSeqs;
  }

  /**
   * Appends to one layer of several sequences in one call: k, v
   * [seqIds.remaining()][n][nKvHeads][headDim] (F32; n = 1: one decode step),
   * the ids distinct. As append() for each sequence in turn, but all or nothing.
   */
  public void appendBatch(int layer, IntBuffer seqIds, FloatBuffer k, FloatBuffer v) {
    requireFloat();
    int nSeqs = seqIds.remaining();
    long n = batchTokens(k.remaining(), kvRow, nSeqs, "k");
    expect(v.remaining(), k.remaining(), "v");
    handle.run(h -> CommvqNative.cache_append_batch(h, unsigned(layer), nSeqs, Buffers.direct(seqIds, "seqIds"), n,
        Buffers.direct(k, "k"), Buffers.direct(v, "v")));
  }

  /** appendBatch() of raw bytes in the cache's io dtype. */
  public void appendBatch(int layer, IntBuffer seqIds, ByteBuffer k, ByteBuffer v) {
    int nSeqs = seqIds.remaining();
    long n = batchTokens(k.remaining(), kvRow * elementBytes, nSeqs, "k (bytes)");
    expect(v.remaining(), k.remaining(), "v (bytes)");
    handle.run(h -> CommvqNative.cache_append_batch(h, unsigned(layer), nSeqs, Buffers.direct(seqIds, "seqIds"), n,
        Buffers.direct(k, "k"), Buffers.direct(v, "v")));
  }

  public void appendBatch(int layer, int[] seqIds, float[] k, float[] v) {
    appendBatch(layer, Buffers.copy(seqIds), Buffers.copy(k), Buffers.copy(v));
  }

  // ---- attend --------------------------------------------------------------

  /**
   * Attention of post-RoPE queries q [n][nQHeads][headDim] into out (q's
   * layout); lse [n][nQHeads] may be null. flags: Commvq.ATTEND_*.
   */
  public void attend(int layer, int seq, FloatBuffer q, FloatBuffer out, FloatBuffer lse, int flags) {
    requireFloat();
    long n = rows(q.remaining(), qRow, "q");
    expect(out.remaining(), n * qRow, "out");
    attendChecked(layer, seq, n, q, out, lse, flags);
  }

  /** attend() of raw bytes in the cache's io dtype; lse stays float. */
  public void attend(int layer, int seq, ByteBuffer q, ByteBuffer out, FloatBuffer lse, int flags) {
    long n = rows(q.remaining(), qRow * elementBytes, "q (bytes)");
    expect(out.remaining(), n * qRow * elementBytes, "out (bytes)");
    attendChecked(layer, seq, n, q, out, lse, flags);
  }

  private void attendChecked(int layer, int seq, long n, Buffer q, Buffer out, FloatBuffer lse, int flags) {
    if (lse != null) {
      expect(lse.remaining(), n * nQHeads, "lse");
    }
    Buffer lseSlice = lse == null ? null : Buffers.direct(lse, "lse");
    handle.run(h -> CommvqNative.cache_attend(h, unsigned(layer), unsigned(seq), n, Buffers.direct(q, "q"),
        Buffers.direct(out, "out"), lseSlice, Integer.toUnsignedLong(flags)));
  }

  /** attend() from arrays; out and lse (may be null) receive the results. */
  public void attend(int layer, int seq, float[] q, float[] out, float[] lse, int flags) {
    FloatBuffer outBuffer = Buffers.allocateFloats(out.length);
    FloatBuffer lseBuffer = lse == null ? null : Buffers.allocateFloats(lse.length);
    attend(layer, seq, Buffers.copy(q), outBuffer, lseBuffer, flags);
    outBuffer.get(out);
    if (lse != null) {
      lseBuffer.get(lse);
    }
  }

  /** One decode query per sequence: q [seqIds.remaining()][nQHeads][headDim]. */
  public void attendBatch(int layer, IntBuffer seqIds, FloatBuffer q, FloatBuffer out, FloatBuffer lse, int flags) {
    requireFloat();
    long n = rows(q.remaining(), qRow, "q");
    expect(seqIds.remaining(), n, "seqIds");
    expect(out.remaining(), n * qRow, "out");
    if (lse != null) {
      expect(lse.remaining(), n * nQHeads, "lse");
    }
    Buffer lseSlice = lse == null ? null : Buffers.direct(lse, "lse");
    handle.run(h -> CommvqNative.cache_attend_batch(h, unsigned(layer), n, Buffers.direct(seqIds, "seqIds"),
        Buffers.direct(q, "q"), Buffers.direct(out, "out"), lseSlice, Integer.toUnsignedLong(flags)));
  }

  // ---- sequences -----------------------------------------------------------

  public long seqLength(int seq) {
    long[] length = new long[1];
    handle.run(h -> CommvqNative.cache_seq_length(h, unsigned(seq), length));
    return length[0];
  }

  public void seqClear(int seq) {
    handle.run(h -> CommvqNative.cache_seq_clear(h, unsigned(seq)));
  }

  public void seqTruncate(int seq, long newLength) {
    handle.run(h -> CommvqNative.cache_seq_truncate(h, unsigned(seq), newLength));
  }

  public void seqFork(int src, int dst) {
    handle.run(h -> CommvqNative.cache_seq_fork(h, unsigned(src), unsigned(dst)));
  }

  public void seqSave(int seq, String path) {
    handle.run(h -> CommvqNative.cache_seq_save(h, unsigned(seq), path));
  }

  public void seqSave(int seq, java.nio.file.Path path) {
    seqSave(seq, path.toString());
  }

  public void seqLoad(int seq, String path) {
    handle.run(h -> CommvqNative.cache_seq_load(h, unsigned(seq), path));
  }

  public void seqLoad(int seq, java.nio.file.Path path) {
    seqLoad(seq, path.toString());
  }

  public CacheStats stats() {
    NativeCacheStats stats = new NativeCacheStats();
    try {
      handle.run(h -> CommvqNative.cache_get_stats(h, stats));
      return new CacheStats(stats);
    } finally {
      stats.delete();
    }
  }

  /** The io dtype the cache was made with. */
  public DType ioDtype() {
    return ioDtype;
  }

  // ---- GPU -----------------------------------------------------------------

  /** Queues the cache's work on a CUDA stream, given as its address. */
  public void setStream(long cudaStream) {
    handle.run(h -> CommvqNative.cache_set_stream(h, cudaStream));
  }

  public void synchronize() {
    handle.run(CommvqNative::cache_synchronize);
  }

  // ---- ownership -----------------------------------------------------------

  /** Destroys the cache; later calls throw IllegalStateException. Closing twice is fine. */
  @Override
  public void close() {
    handle.close();
  }
}
