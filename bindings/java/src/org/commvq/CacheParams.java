package org.commvq;

/**
 * Settings of a new Cache (commvq_cache_params_t), starting at the library's
 * defaults. Setters return this, so settings chain:
 * {@code new CacheParams().window(128).maxTokens(1 << 16)}. Values are checked
 * against their C type when set (IllegalArgumentException naming the field).
 */
public final class CacheParams {
  private int device;
  private long maxSeqs;
  private long maxTokens;
  private long blockTokens;
  private long window;
  private long sinkTokens;
  private DType ioDtype;
  private int keyConvention;
  private float attnScale;
  private long nThreads;

  public CacheParams() {
    NativeCacheParams d = new NativeCacheParams();
    try {
      device = d.getDevice();
      maxSeqs = d.getMaxSeqs();
      maxTokens = d.getMaxTokens();
      blockTokens = d.getBlockTokens();
      window = d.getWindow();
      sinkTokens = d.getSinkTokens();
      ioDtype = DType.of(d.getIoDtype());
      keyConvention = d.getKeyConvention();
      attnScale = d.getAttnScale();
      nThreads = d.getNThreads();
    } finally {
      d.delete();
    }
  }

  /** Commvq.DEVICE_CPU (the default) or a CUDA ordinal. */
  public CacheParams device(int device) { this.device = device; return this; }
  /** Sequence ids are 0 .. maxSeqs-1; default 1. */
  public CacheParams maxSeqs(long maxSeqs) { this.maxSeqs = Commvq.u32(maxSeqs, "maxSeqs"); return this; }
  /** Compressed tokens the block pool holds, all sequences together; default 65536. */
  public CacheParams maxTokens(long maxTokens) { this.maxTokens = Commvq.u64(maxTokens, "maxTokens"); return this; }
  /** Tokens per block of the pool; default 64. */
  public CacheParams blockTokens(long blockTokens) { this.blockTokens = Commvq.u32(blockTokens, "blockTokens"); return this; }
  /** Recent tokens kept uncompressed; default 128, 0 allowed. */
  public CacheParams window(long window) { this.window = Commvq.u32(window, "window"); return this; }
  /** First tokens kept uncompressed; default 0. */
  public CacheParams sinkTokens(long sinkTokens) { this.sinkTokens = Commvq.u32(sinkTokens, "sinkTokens"); return this; }
  /** Element type of keys, values, queries and outputs; default F32. */
  public CacheParams ioDtype(DType ioDtype) {
    if (ioDtype == null) {
      throw new NullPointerException("ioDtype");
    }
    this.ioDtype = ioDtype;
    return this;
  }
  /** Commvq.KEYS_PRE_ROPE (default) or KEYS_POST_ROPE. */
  public CacheParams keyConvention(int keyConvention) { this.keyConvention = keyConvention; return this; }
  /** 0 = 1/sqrt(headDim). */
  public CacheParams attnScale(float attnScale) { this.attnScale = attnScale; return this; }
  /** CPU worker threads; 0 = all cores. */
  public CacheParams nThreads(long nThreads) { this.nThreads = Commvq.u32(nThreads, "nThreads"); return this; }

  public int device() { return device; }
  public long maxSeqs() { return maxSeqs; }
  public long maxTokens() { return maxTokens; }
  public long blockTokens() { return blockTokens; }
  public long window() { return window; }
  public long sinkTokens() { return sinkTokens; }
  public DType ioDtype() { return ioDtype; }
  public int keyConvention() { return keyConvention; }
  public float attnScale() { return attnScale; }
  public long nThreads() { return nThreads; }

  /** A native copy; the caller deletes it. */
  NativeCacheParams toNative() {
    NativeCacheParams p = new NativeCacheParams();
    p.setDevice(device);
    p.setMaxSeqs(maxSeqs);
    p.setMaxTokens(maxTokens);
    p.setBlockTokens(blockTokens);
    p.setWindow(window);
    p.setSinkTokens(sinkTokens);
    p.setIoDtype(ioDtype.code());
    p.setKeyConvention(keyConvention);
    p.setAttnScale(attnScale);
    p.setNThreads(nThreads);
    return p;
  }
}
