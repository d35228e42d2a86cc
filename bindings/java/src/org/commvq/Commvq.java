package org.commvq;

/**
 * The library as a whole: the constants of commvq.h (Commvq.ERR_CAPACITY,
 * Commvq.DTYPE_F16, ...) and version and capability queries. Codebook and
 * Cache own the handles.
 */
public final class Commvq implements CommvqNativeConstants {
  private Commvq() {}

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
}
