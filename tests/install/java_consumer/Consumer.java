import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import org.commvq.Cache;
import org.commvq.CacheParams;
import org.commvq.CacheStats;
import org.commvq.Codebook;
import org.commvq.CodebookInfo;
import org.commvq.Commvq;
import org.commvq.CommvqException;
import org.commvq.DType;

/**
 * A program outside the source tree using the installed commvq jar
 * (tests/install/check_java_jar.sh): the native code comes from the jar,
 * attention runs from codes, failures carry their status, and the public
 * classes show no SWIG plumbing.
 *
 *   java -cp commvq-VERSION.jar:. Consumer CODEBOOK
 */
public final class Consumer {
  private static void check(boolean condition, String what) {
    if (!condition) {
      throw new AssertionError(what);
    }
  }

  public static void main(String[] args) {
    check(Commvq.versionNumber() / 10000 == Commvq.VERSION_MAJOR, "major version");
    for (Class<?> c : new Class<?>[] {Codebook.class, Cache.class, CacheParams.class, CacheStats.class,
        CodebookInfo.class}) {
      for (Method m : c.getMethods()) {
        String name = m.getName();
        check(!name.equals("delete") && !name.equals("finalize") && !name.toLowerCase().contains("structsize")
            && !name.equals("getCPtr"), c.getSimpleName() + "." + name + " is public");
      }
      check(Modifier.isFinal(c.getModifiers()), c.getSimpleName() + " is final");
    }
    check(AutoCloseable.class.isAssignableFrom(Codebook.class) && AutoCloseable.class.isAssignableFrom(Cache.class),
        "Codebook and Cache are AutoCloseable");

    Cache cache;
    int kvRow;
    int qRow;
    int nQHeads;
    long nLayers;
    try (Codebook codebook = Codebook.load(java.nio.file.Paths.get(args[0]))) {
      CodebookInfo info = codebook.info();
      kvRow = (int) (info.nKvHeads() * info.headDim());
      qRow = (int) (info.nQHeads() * info.headDim());
      nQHeads = (int) info.nQHeads();
      nLayers = info.nLayers();
      CacheParams params = new CacheParams().window(4).maxTokens(256).ioDtype(DType.F32);
      check(params.maxSeqs() == 1 && params.blockTokens() > 0, "CacheParams start at the library's defaults");
      try {
        new CacheParams().maxSeqs(-1);
        throw new AssertionError("maxSeqs(-1) accepted");
      } catch (IllegalArgumentException e) {
        check(e.getMessage().contains("maxSeqs"), "the message names the field: " + e.getMessage());
      }
      cache = new Cache(codebook, params);
    }
    try (Cache c = cache) {
      int tokens = 16;
      float[] k = new float[tokens * kvRow];
      float[] v = new float[tokens * kvRow];
      float[] q = new float[qRow];
      for (int i = 0; i < k.length; i++) {
        k[i] = (float) Math.sin(i);
        v[i] = (float) Math.cos(3 * i);
      }
      for (int i = 0; i < q.length; i++) {
        q[i] = (float) Math.sin(7 * i);
      }
      c.append(0, 0, k, v);
      check(c.seqLength(0) == tokens, "length after append");
      float[] out = new float[qRow];
      float[] lse = new float[nQHeads];
      c.attend(0, 0, q, out, lse, Commvq.ATTEND_CAUSAL);
      for (float x : out) {
        check(Float.isFinite(x), "finite attention output");
      }
      CacheStats stats = c.stats();
      check(stats.tokens() == tokens, "stats: " + stats.tokens() + " tokens");
      try {
        c.attend((int) nLayers, 0, q, out, lse, Commvq.ATTEND_CAUSAL);
        throw new AssertionError("a layer past the end accepted");
      } catch (CommvqException e) {
        check(e.status() == Commvq.ERR_OUT_OF_RANGE, "status " + e.statusName());
      }
    }
    try {
      cache.seqLength(0);
      throw new AssertionError("a closed cache accepted a call");
    } catch (IllegalStateException expected) {
      // use after close is an error, not a crash
    }
    System.out.println("libcommvq " + Commvq.version() + " from the jar: attention from codes, ERR_OUT_OF_RANGE and"
        + " use after close ok");
  }
}
