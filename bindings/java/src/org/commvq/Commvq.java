package org.commvq;

/**
 * The library as a whole: the constants of commvq.h as {@code int}s
 * (statuses {@code ERR_*}, {@code DTYPE_*}, attention flags {@code ATTEND_*},
 * ...), and version and capability queries. Codebook and Cache own the
 * handles; {@link DType} is the enum form of the dtypes.
 */
public final class Commvq {
  private Commvq() {}

  public static final int VERSION_MAJOR = CommvqNativeConstants.VERSION_MAJOR;
  public static final int VERSION_MINOR = CommvqNativeConstants.VERSION_MINOR;
  public static final int VERSION_PATCH = CommvqNativeConstants.VERSION_PATCH;

  /** Statuses: {@link CommvqException#status()}. */
  public static final int OK = CommvqNativeConstants.OK;
  public static final int ERR_INVALID_ARGUMENT = CommvqNativeConstants.ERR_INVALID_ARGUMENT;
  public static final int ERR_SHAPE_MISMATCH = CommvqNativeConstants.ERR_SHAPE_MISMATCH;
  public static final int ERR_OUT_OF_RANGE = CommvqNativeConstants.ERR_OUT_OF_RANGE;
  public static final int ERR_INVALID_STATE = CommvqNativeConstants.ERR_INVALID_STATE;
  public static final int ERR_CAPACITY = CommvqNativeConstants.ERR_CAPACITY;
  public static final int ERR_OUT_OF_MEMORY = CommvqNativeConstants.ERR_OUT_OF_MEMORY;
  public static final int ERR_IO = CommvqNativeConstants.ERR_IO;
  public static final int ERR_FORMAT = CommvqNativeConstants.ERR_FORMAT;
  public static final int ERR_CORRUPT = CommvqNativeConstants.ERR_CORRUPT;
  public static final int ERR_CODEBOOK_MISMATCH = CommvqNativeConstants.ERR_CODEBOOK_MISMATCH;
  public static final int ERR_NOT_SUPPORTED = CommvqNativeConstants.ERR_NOT_SUPPORTED;
  public static final int ERR_CUDA = CommvqNativeConstants.ERR_CUDA;
  public static final int ERR_CANCELLED = CommvqNativeConstants.ERR_CANCELLED;
  public static final int ERR_INTERNAL = CommvqNativeConstants.ERR_INTERNAL;

  /** The device field: the CPU; 0, 1, ... are CUDA ordinals. */
  public static final int DEVICE_CPU = CommvqNativeConstants.DEVICE_CPU;
  public static final int DTYPE_F32 = CommvqNativeConstants.DTYPE_F32;
  public static final int DTYPE_F16 = CommvqNativeConstants.DTYPE_F16;
  public static final int DTYPE_BF16 = CommvqNativeConstants.DTYPE_BF16;
  public static final int KEYS_PRE_ROPE = CommvqNativeConstants.KEYS_PRE_ROPE;
  public static final int KEYS_POST_ROPE = CommvqNativeConstants.KEYS_POST_ROPE;
  public static final int PAIRS_ROTATE_HALF = CommvqNativeConstants.PAIRS_ROTATE_HALF;
  public static final int PAIRS_INTERLEAVED = CommvqNativeConstants.PAIRS_INTERLEAVED;
  public static final int SCALE_TOKEN = CommvqNativeConstants.SCALE_TOKEN;
  public static final int SCALE_HEAD = CommvqNativeConstants.SCALE_HEAD;
  public static final int ROPE_SCALING_NONE = CommvqNativeConstants.ROPE_SCALING_NONE;
  public static final int ROPE_SCALING_LINEAR = CommvqNativeConstants.ROPE_SCALING_LINEAR;
  public static final int ROPE_SCALING_LLAMA3 = CommvqNativeConstants.ROPE_SCALING_LLAMA3;

  /** Attention flags (Cache.attend's {@code flags}, OR-ed). */
  public static final int ATTEND_CAUSAL = 0;
  public static final int ATTEND_NON_CAUSAL = 1;

  static {
    if (ATTEND_CAUSAL != CommvqNative.ATTEND_CAUSAL || ATTEND_NON_CAUSAL != CommvqNative.ATTEND_NON_CAUSAL) {
      throw new IllegalStateException("the attention flags of libcommvq differ from these bindings'");
    }
  }

  /** The loaded library's version, MAJOR * 10000 + MINOR * 100 + PATCH. */
  public static long versionNumber() {
    return CommvqNative.version_number();
  }

  public static String version() {
    return CommvqNative.version_string();
  }

  /** The name of a status, e.g. "COMMVQ_ERR_CAPACITY". */
  public static String statusString(int status) {
    return CommvqNative.status_string(status);
  }

  public static boolean cudaAvailable() {
    return CommvqNative.cuda_available() != 0;
  }

  public static int deviceCount() {
    return CommvqNative.device_count();
  }

  // ---- checks of values bound for unsigned C fields ------------------------

  static long u32(long value, String name) {
    if (value < 0 || value > 0xFFFFFFFFL) {
      throw new IllegalArgumentException(name + " must be in [0, 4294967295], got " + value);
    }
    return value;
  }

  static long u64(long value, String name) {
    if (value < 0) {
      throw new IllegalArgumentException(name + " must not be negative, got " + value);
    }
    return value;
  }

  static int nonNegative(int value, String name) {
    if (value < 0) {
      throw new IllegalArgumentException(name + " must not be negative, got " + value);
    }
    return value;
  }
}
