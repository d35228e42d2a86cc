package org.commvq;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Locale;

/**
 * Loads the JNI wrapper (libcommvq_java.so) and libcommvq.so.
 *
 * <p>By default both come from the jar: commvq.jar carries them under
 * org/commvq/native/OS-ARCH/ (e.g. linux-amd64). They are copied to a
 * temporary directory, loaded (libcommvq first, so that the wrapper's
 * dependency on its soname is the copy already loaded) and the copies
 * deleted at once, which the loaded code survives. The system property
 * org.commvq.jni (a path), else $COMMVQ_JNI_LIBRARY, names a wrapper to
 * load instead; that wrapper finds libcommvq.so through its RUNPATH,
 * LD_LIBRARY_PATH or the system's library directories. A jar without a
 * wrapper for this platform falls back to System.loadLibrary("commvq_java").
 */
final class NativeLoader {
  private NativeLoader() {}

  static final String WRAPPER = "libcommvq_java.so";
  static final String LIBRARY = "libcommvq.so.0";

  /** The jar's directory of native libraries for this JVM's platform. */
  static String platformDirectory() {
    String os = System.getProperty("os.name", "").toLowerCase(Locale.ROOT).replaceAll("[^a-z0-9]", "");
    String arch = System.getProperty("os.arch", "").toLowerCase(Locale.ROOT);
    if (arch.equals("x86_64")) {
      arch = "amd64";
    }
    return "/org/commvq/native/" + os + "-" + arch + "/";
  }

  static void load() {
    String path = System.getProperty("org.commvq.jni");
    if (path == null || path.isEmpty()) {
      path = System.getenv("COMMVQ_JNI_LIBRARY");
    }
    if (path != null && !path.isEmpty()) {
      System.load(path);
    } else if (!loadFromJar()) {
      System.loadLibrary("commvq_java");
    }
    long found = CommvqNativeJNI.version_number();
    if (found / 10000 != CommvqNativeConstants.VERSION_MAJOR) {
      throw new UnsatisfiedLinkError("libcommvq has version " + found + "; these bindings need major version "
          + CommvqNativeConstants.VERSION_MAJOR);
    }
  }

  private static boolean loadFromJar() {
    String dir = platformDirectory();
    if (NativeLoader.class.getResource(dir + WRAPPER) == null) {
      return false;
    }
    Path temp = null;
    try {
      temp = Files.createTempDirectory("commvq-jni");
      if (NativeLoader.class.getResource(dir + LIBRARY) != null) {
        System.load(extract(dir + LIBRARY, temp.resolve(LIBRARY)).toString());
      }
      System.load(extract(dir + WRAPPER, temp.resolve(WRAPPER)).toString());
    } catch (IOException e) {
      UnsatisfiedLinkError error = new UnsatisfiedLinkError("cannot copy the native libraries out of the jar: " + e);
      error.initCause(e);
      throw error;
    } finally {
      if (temp != null) {
        deleteQuietly(temp.resolve(WRAPPER));
        deleteQuietly(temp.resolve(LIBRARY));
        deleteQuietly(temp);
      }
    }
    return true;
  }

  private static Path extract(String resource, Path target) throws IOException {
    try (InputStream in = NativeLoader.class.getResourceAsStream(resource)) {
      if (in == null) {
        throw new IOException("no " + resource + " in the jar");
      }
      Files.copy(in, target, StandardCopyOption.REPLACE_EXISTING);
    }
    return target;
  }

  private static void deleteQuietly(Path path) {
    try {
      Files.deleteIfExists(path);
    } catch (IOException ignored) {
      // a leftover file in the temporary directory is harmless
    }
  }
}
