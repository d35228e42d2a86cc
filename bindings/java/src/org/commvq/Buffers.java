package org.commvq;

import java.nio.Buffer;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.nio.ShortBuffer;

/** Checks of the buffers handed to the library, which reads them by address. */
final class Buffers {
  private Buffers() {}

  /**
   * The buffer from its position on (a slice, whose address the wrapper
   * reads), after checking it is direct and, for views wider than a byte,
   * in the platform's byte order.
   */
  static Buffer direct(Buffer buffer, String name) {
    if (buffer == null) {
      throw new NullPointerException(name);
    }
    if (!buffer.isDirect()) {
      throw new IllegalArgumentException(name + " must be a direct buffer (or use the array overload)");
    }
    ByteOrder order = buffer instanceof FloatBuffer ? ((FloatBuffer) buffer).order()
        : buffer instanceof ShortBuffer ? ((ShortBuffer) buffer).order()
        : buffer instanceof IntBuffer ? ((IntBuffer) buffer).order()
        : ByteOrder.nativeOrder();
    if (order != ByteOrder.nativeOrder()) {
      throw new IllegalArgumentException(name + " must be in native byte order (ByteBuffer.order(ByteOrder.nativeOrder()))");
    }
    return buffer.slice();
  }

  static FloatBuffer allocateFloats(int count) {
    return ByteBuffer.allocateDirect(4 * count).order(ByteOrder.nativeOrder()).asFloatBuffer();
  }

  static FloatBuffer copy(float[] values) {
    FloatBuffer buffer = allocateFloats(values.length);
    buffer.put(values).flip();
    return buffer;
  }

  static IntBuffer copy(int[] values) {
    IntBuffer buffer = ByteBuffer.allocateDirect(4 * values.length).order(ByteOrder.nativeOrder()).asIntBuffer();
    buffer.put(values).flip();
    return buffer;
  }
}
