package org.commvq;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.nio.file.Path;

/**
 * The quantization tables of one model; owns a commvq_codebook_t, freed by
 * close() or, failing that, once the Codebook is unreachable. Caches keep
 * their own copy of what they need, so a codebook may be closed once they
 * are created. Not for use by two threads at once.
 */
public final class Codebook implements AutoCloseable {
  final NativeHandle handle;

  private Codebook(long handle) {
    this.handle = new NativeHandle(handle, CommvqNative::codebook_free, "codebook");
  }

  public static Codebook load(String path) {
    long[] out = new long[1];
    CommvqNative.codebook_load(path, out);
    return new Codebook(out[0]);
  }

  public static Codebook load(Path path) {
    return load(path.toString());
  }

  /** A codebook from the bytes of a codebook file (copied). */
  public static Codebook fromBytes(byte[] data) {
    ByteBuffer direct = ByteBuffer.allocateDirect(data.length);
    direct.put(data).flip();
    long[] out = new long[1];
    CommvqNative.codebook_load_memory(direct, data.length, out);
    return new Codebook(out[0]);
  }

  /**
   * Trains a codebook from pre-RoPE keys and values, each float32
   * [nLayers][nTokens][nKvHeads][headDim] in a direct buffer of native order.
   */
  public static Codebook train(TrainParams params, int nLayers, int nKvHeads, int headDim, FloatBuffer keys,
      FloatBuffer values) {
    long perToken = (long) nLayers * nKvHeads * headDim;
    if (perToken <= 0 || keys.remaining() % perToken != 0 || keys.remaining() != values.remaining()) {
      throw new IllegalArgumentException("keys and values must hold nTokens x " + perToken + " floats");
    }
    long nTokens = keys.remaining() / perToken;
    long[] out = new long[1];
    NativeTrainParams p = params.toNative();
    try {
      CommvqNative.train(p, nLayers, nKvHeads, headDim, nTokens, Buffers.direct(keys, "keys"),
          Buffers.direct(values, "values"), out);
    } finally {
      p.delete();
    }
    return new Codebook(out[0]);
  }

  /** train() from arrays (copied to direct buffers). */
  public static Codebook train(TrainParams params, int nLayers, int nKvHeads, int headDim, float[] keys,
      float[] values) {
    return train(params, nLayers, nKvHeads, headDim, Buffers.copy(keys), Buffers.copy(values));
  }

  public void save(String path) {
    handle.run(h -> CommvqNative.codebook_save(h, path));
  }

  /**
   * Writes the codebook file with a storage dtype: DType.F32 (as
   * save(path)), F16 or BF16, which round the key sub-centers and
   * value matrices to that type (about half the file; the file's fingerprint
   * is then that of the rounded values).
   */
  public void save(String path, DType dtype) {
    handle.run(h -> CommvqNative.codebook_save_as(h, path, dtype.code()));
  }

  public void save(Path path) {
    save(path.toString());
  }

  public void save(Path path, DType dtype) {
    save(path.toString(), dtype);
  }

  public CodebookInfo info() {
    NativeCodebookInfo info = new NativeCodebookInfo();
    try {
      handle.run(h -> CommvqNative.codebook_get_info(h, info));
      return new CodebookInfo(info);
    } finally {
      info.delete();
    }
  }

  /** Frees the codebook; later calls throw IllegalStateException. Closing twice is fine. */
  @Override
  public void close() {
    handle.close();
  }
}
