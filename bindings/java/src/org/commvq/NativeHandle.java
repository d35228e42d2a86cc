package org.commvq;

import java.lang.ref.Cleaner;
import java.lang.ref.Reference;
import java.util.function.LongConsumer;
import java.util.function.LongFunction;

/**
 * Owns one library handle and frees it exactly once: on close(), or through
 * a Cleaner once the owner is unreachable. Every call through apply()/run()
 * keeps this object reachable until the native call returns, so the Cleaner
 * can never free a handle that is in use.
 */
final class NativeHandle implements AutoCloseable {
  private static final Cleaner CLEANER = Cleaner.create();

  /** The release action; holds no reference to the owner, or it would never become unreachable. */
  private static final class Release implements Runnable {
    private long handle;
    private final LongConsumer free;

    Release(long handle, LongConsumer free) {
      this.handle = handle;
      this.free = free;
    }

    @Override
    public void run() {
      long h = handle;
      handle = 0;
      if (h != 0) {
        free.accept(h);
      }
    }
  }

  private final Release release;
  private final Cleaner.Cleanable cleanable;
  private final String what;

  NativeHandle(long handle, LongConsumer free, String what) {
    this.release = new Release(handle, free);
    this.cleanable = CLEANER.register(this, release);
    this.what = what;
  }

  <T> T apply(LongFunction<T> call) {
    long h = release.handle;
    if (h == 0) {
      throw new IllegalStateException("the " + what + " is closed");
    }
    try {
      return call.apply(h);
    } finally {
      Reference.reachabilityFence(this);
    }
  }

  void run(LongConsumer call) {
    apply(h -> {
      call.accept(h);
      return null;
    });
  }

  /** Frees the handle now; later calls throw IllegalStateException. Closing twice is fine. */
  @Override
  public void close() {
    cleanable.clean();
  }
}
