import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.HashMap;
import java.util.Map;
import org.commvq.Cache;
import org.commvq.CacheParams;
import org.commvq.Codebook;
import org.commvq.CodebookInfo;
import org.commvq.Commvq;
import org.commvq.CommvqException;

/**
 * The bindings' golden test (tests/data/golden/golden.txt describes it), in Java.
 * Usage: java -Dorg.commvq.jni=libcommvq_java.so GoldenTest GOLDEN_DIR SCRATCH_DIR
 */
public final class GoldenTest {
  private final Path dir;
  private final Map<String, String> values = new HashMap<>();

  private GoldenTest(Path dir) throws IOException {
    this.dir = dir;
    for (String raw : Files.readAllLines(dir.resolve("golden.txt"))) {
      String line = raw.trim();
      if (line.isEmpty() || line.startsWith("#")) {
        continue;
      }
      int eq = line.indexOf('=');
      values.put(line.substring(0, eq).trim(), line.substring(eq + 1).trim());
    }
  }

  private String text(String key) {
    String value = values.get(key);
    if (value == null) {
      throw new IllegalStateException("golden.txt lacks " + key);
    }
    return value;
  }

  private int integer(String key) {
    return Integer.parseInt(text(key));
  }

  /** A golden array in a direct buffer, as the zero-copy path takes it. */
  private FloatBuffer floats(String key, int count) throws IOException {
    byte[] bytes = Files.readAllBytes(dir.resolve(text(key)));
    check(bytes.length == 4 * count, key + ": " + bytes.length + " bytes, want " + 4 * count);
    FloatBuffer buffer = ByteBuffer.allocateDirect(bytes.length).order(ByteOrder.nativeOrder()).asFloatBuffer();
    buffer.put(ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()).flip();
    return buffer;
  }

  private static float[] array(FloatBuffer buffer) {
    float[] out = new float[buffer.remaining()];
    buffer.duplicate().get(out);
    return out;
  }

  private static void check(boolean condition, String what) {
    if (!condition) {
      throw new AssertionError(what);
    }
  }

  private static int mismatches(String name, float[] got, float[] want, double atol, double rtol) {
    int bad = 0;
    for (int i = 0; i < want.length; i++) {
      double diff = Math.abs((double) got[i] - want[i]);
      if (!(diff <= atol + rtol * Math.abs((double) want[i]))) {
        if (bad < 5) {
          System.out.printf("  %s[%d]: got %.9g, want %.9g%n", name, i, got[i], want[i]);
        }
        bad++;
      }
    }
    return bad;
  }

  private static void expectError(int status, String fragment, Runnable call) {
    try {
      call.run();
    } catch (CommvqException e) {
      check(e.status() == status, "got " + e.statusName() + ", want " + Commvq.statusString(status));
      check(e.statusName().equals(Commvq.statusString(status)), "status name " + e.statusName());
      check(!e.libraryMessage().isEmpty() && e.libraryMessage().contains(fragment),
          "message \"" + e.libraryMessage() + "\" mentions \"" + fragment + "\"");
      System.out.println(e.getMessage());
      return;
    }
    throw new AssertionError("no error, want " + Commvq.statusString(status));
  }

  private int run(Path scratch) throws IOException {
    int nTokens = integer("n_tokens");
    int nQueries = integer("n_queries");
    int kvHeads = integer("n_kv_heads");
    int qHeads = integer("n_q_heads");
    int headDim = integer("head_dim");
    int kv = nTokens * kvHeads * headDim;
    int qo = nQueries * qHeads * headDim;
    FloatBuffer keys = floats("keys", kv);
    FloatBuffer values = floats("values", kv);
    FloatBuffer queries = floats("queries", qo);
    float[] wantOut = array(floats("out", qo));
    float[] wantLse = array(floats("lse", nQueries * qHeads));
    double atol = Double.parseDouble(text("atol"));
    double rtol = Double.parseDouble(text("rtol"));

    check(Commvq.versionNumber() / 10000 == Commvq.VERSION_MAJOR, "major version");
    System.out.println("libcommvq " + Commvq.version());

    Cache cache;
    try (Codebook codebook = Codebook.load(dir.resolve(text("codebook")).toString())) {
      CodebookInfo info = codebook.info();
      check(info.nLayers() == integer("n_layers") && info.nKvHeads() == kvHeads
          && info.nQHeads() == qHeads && info.headDim() == headDim, "codebook shape agrees with golden.txt");
      CacheParams params = new CacheParams()
          .maxSeqs(integer("max_seqs"))
          .maxTokens(integer("max_tokens"))
          .blockTokens(integer("block_tokens"))
          .window(integer("window"))
          .nThreads(integer("n_threads"));
      cache = new Cache(codebook, params);
    }
    try (Cache c = cache) {
      int layer = integer("layer");
      int seq = integer("seq");
      c.append(layer, seq, keys, values);
      check(c.seqLength(seq) == nTokens, "length after append");

      // The zero-copy path (direct buffers) ...
      FloatBuffer out = ByteBuffer.allocateDirect(4 * qo).order(ByteOrder.nativeOrder()).asFloatBuffer();
      FloatBuffer lse = ByteBuffer.allocateDirect(4 * nQueries * qHeads).order(ByteOrder.nativeOrder()).asFloatBuffer();
      for (int i = 0; i < qo; i++) {
        out.put(i, Float.NaN);
      }
      c.attend(layer, seq, queries, out, lse, Commvq.ATTEND_CAUSAL);
      // ... and the array overloads give the same.
      float[] outArray = new float[qo];
      float[] lseArray = new float[nQueries * qHeads];
      c.attend(layer, seq, array(queries), outArray, lseArray, Commvq.ATTEND_CAUSAL);

      // ... and so do raw bytes in the io dtype (ByteBuffer, any dtype).
      ByteBuffer qBytes = ByteBuffer.allocateDirect(4 * qo).order(ByteOrder.nativeOrder());
      qBytes.asFloatBuffer().put(queries.duplicate());
      ByteBuffer outBytes = ByteBuffer.allocateDirect(4 * qo).order(ByteOrder.nativeOrder());
      c.attend(layer, seq, qBytes, outBytes, null, Commvq.ATTEND_CAUSAL);

      int bad = mismatches("out", array(out), wantOut, atol, rtol) + mismatches("lse", array(lse), wantLse, atol, rtol)
          + mismatches("out[]", outArray, wantOut, atol, rtol) + mismatches("lse[]", lseArray, wantLse, atol, rtol)
          + mismatches("out bytes", array(outBytes.asFloatBuffer()), wantOut, atol, rtol);
      if (bad > 0) {
        System.out.println("golden mismatch: " + bad + " values differ");
        return 1;
      }

      expectError(Commvq.ERR_OUT_OF_RANGE, "layer",
          () -> c.attend(integer("n_layers"), seq, queries, out, null, Commvq.ATTEND_CAUSAL));
      int extra = integer("overflow_tokens") * kvHeads * headDim;
      FloatBuffer moreKeys = keys.duplicate().limit(extra);
      FloatBuffer moreValues = values.duplicate().limit(extra);
      expectError(Commvq.ERR_CAPACITY, "", () -> c.append(layer, seq, moreKeys, moreValues));
      check(c.seqLength(seq) == nTokens, "a failed append changes nothing");
      int two = 2 * kvHeads * headDim;
      FloatBuffer twoKeys = keys.duplicate().limit(two);
      FloatBuffer twoValues = values.duplicate().limit(two);
      expectError(Commvq.ERR_INVALID_ARGUMENT, "both name sequence",
          () -> c.appendBatch(layer, new int[] {seq, seq}, array(twoKeys), array(twoValues)));
      check(c.seqLength(seq) == nTokens, "a refused batch changes nothing");
      String missing = scratch.resolve("no-such-codebook.safetensors").toString();
      expectError(Commvq.ERR_IO, missing, () -> Codebook.load(missing).close());

      boolean refused = false;
      try {
        c.attend(layer, seq, queries, FloatBuffer.allocate(qo), null, Commvq.ATTEND_CAUSAL);
      } catch (IllegalArgumentException e) {
        refused = true; // a heap buffer has no address to pass
      }
      check(refused, "a heap buffer is refused");
    }
    cache.close();
    boolean closed = false;
    try {
      cache.seqLength(0);
    } catch (IllegalStateException e) {
      closed = true;
    }
    check(closed, "a closed cache refuses calls");
    System.out.println("golden test passed");
    return 0;
  }

  public static void main(String[] args) throws IOException {
    if (args.length != 2) {
      System.err.println("usage: GoldenTest GOLDEN_DIR SCRATCH_DIR");
      System.exit(2);
    }
    System.exit(new GoldenTest(Paths.get(args[0])).run(Paths.get(args[1])));
  }
}
