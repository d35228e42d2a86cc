package org.commvq;

/** Element types of keys, values, queries and outputs (a cache's io dtype) and of codebook files. */
public enum DType {
  F32(Commvq.DTYPE_F32, 4),
  F16(Commvq.DTYPE_F16, 2),
  BF16(Commvq.DTYPE_BF16, 2);

  private final int code;
  private final int bytes;

  DType(int code, int bytes) {
    this.code = code;
    this.bytes = bytes;
  }

  /** The COMMVQ_DTYPE_* value. */
  public int code() {
    return code;
  }

  /** Bytes of one element. */
  public int bytes() {
    return bytes;
  }

  public static DType of(int code) {
    for (DType t : values()) {
      if (t.code == code) {
        return t;
      }
    }
    throw new IllegalArgumentException("unknown dtype " + code);
  }
}
