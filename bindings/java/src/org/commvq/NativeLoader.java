package org.commvq;

/**
 * Loads the JNI wrapper (libcommvq_java.so), which links libcommvq.so.
 * The wrapper is found at the path in the system property org.commvq.jni,
 * else in $COMMVQ_JNI_LIBRARY, else by name on java.library.path; libcommvq
 * itself is found by the dynamic loader (the wrapper's RUNPATH,
 * LD_LIBRARY_PATH, the system's library directories).
 */
final class NativeLoader {
  private NativeLoader() {}

  static void load() {
    String path = System.getProperty("org.commvq.jni");
    if (path == null || path.isEmpty()) {
      path = System.getenv("COMMVQ_JNI_LIBRARY");
    }
    if (path != null && !path.isEmpty()) {
      System.load(path);
    } else {
      System.loadLibrary("commvq_java");
    }
    long found = CommvqNativeJNI.version_number();
    if (found / 10000 != CommvqNativeConstants.VERSION_MAJOR) {
      throw new UnsatisfiedLinkError("libcommvq has version " + found + "; these bindings need major version "
          + CommvqNativeConstants.VERSION_MAJOR);
    }
  }
}
