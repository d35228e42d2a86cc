// The bindings' golden test (tests/data/golden/golden.txt describes it).
// Usage: COMMVQ_LIBRARY=... mono GoldenTest.exe GOLDEN_DIR SCRATCH_DIR
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using Commvq;

static class GoldenTest
{
    static Dictionary<string, string> ReadManifest(string path)
    {
        var values = new Dictionary<string, string>();
        foreach (string raw in File.ReadAllLines(path))
        {
            string line = raw.Trim();
            if (line.Length == 0 || line.StartsWith("#"))
                continue;
            int eq = line.IndexOf('=');
            values[line.Substring(0, eq).Trim()] = line.Substring(eq + 1).Trim();
        }
        return values;
    }

    static float[] ReadFloats(string path, int count)
    {
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length != 4 * count)
            throw new Exception(path + ": " + bytes.Length + " bytes, want " + 4 * count);
        if (!BitConverter.IsLittleEndian)
            throw new Exception("golden arrays are little-endian");
        var values = new float[count];
        Buffer.BlockCopy(bytes, 0, values, 0, bytes.Length);
        return values;
    }

    static int Mismatches(string name, float[] got, float[] want, double atol, double rtol)
    {
        int bad = 0;
        for (int i = 0; i < want.Length; i++)
        {
            double diff = Math.Abs((double)got[i] - want[i]);
            if (!(diff <= atol + rtol * Math.Abs((double)want[i])))
            {
                if (bad < 5)
                    Console.WriteLine("  {0}[{1}]: got {2:R}, want {3:R}", name, i, got[i], want[i]);
                bad++;
            }
        }
        return bad;
    }

    static void Require(bool condition, string what)
    {
        if (!condition)
            throw new Exception("check failed: " + what);
    }

    static void ExpectError(Library lib, int status, string fragment, Action call)
    {
        try
        {
            call();
        }
        catch (CommvqException e)
        {
            Require(e.Status == status, "got " + e.StatusName + ", want " + lib.StatusString(status));
            Require(e.StatusName == lib.StatusString(status), "status name " + e.StatusName);
            Require(e.LibraryMessage.Length > 0 && e.LibraryMessage.Contains(fragment),
                    "message \"" + e.LibraryMessage + "\" mentions \"" + fragment + "\"");
            Console.WriteLine(e.Message);
            return;
        }
        throw new Exception("no error, want " + lib.StatusString(status));
    }

    static int Main(string[] args)
    {
        if (args.Length != 2)
        {
            Console.Error.WriteLine("usage: GoldenTest.exe GOLDEN_DIR SCRATCH_DIR");
            return 2;
        }
        string dir = args[0], scratch = args[1];
        var m = ReadManifest(Path.Combine(dir, "golden.txt"));
        Func<string, uint> integer = key => uint.Parse(m[key], CultureInfo.InvariantCulture);
        int nTokens = (int)integer("n_tokens"), nQueries = (int)integer("n_queries");
        uint kvHeads = integer("n_kv_heads"), qHeads = integer("n_q_heads"), headDim = integer("head_dim");
        int kv = nTokens * (int)(kvHeads * headDim), qo = nQueries * (int)(qHeads * headDim);
        float[] keys = ReadFloats(Path.Combine(dir, m["keys"]), kv);
        float[] values = ReadFloats(Path.Combine(dir, m["values"]), kv);
        float[] queries = ReadFloats(Path.Combine(dir, m["queries"]), qo);
        float[] wantOut = ReadFloats(Path.Combine(dir, m["out"]), qo);
        float[] wantLse = ReadFloats(Path.Combine(dir, m["lse"]), nQueries * (int)qHeads);

        Library lib = Library.Open();
        Require(lib.VersionNumber / 10000 == Constants.COMMVQ_VERSION_MAJOR, "major version");
        Console.WriteLine("libcommvq " + lib.Version + " from " + lib.Path);

        Cache cache;
        using (Codebook cb = Codebook.Load(lib, Path.Combine(dir, m["codebook"])))
        {
            commvq_codebook_info_t info = cb.Info();
            Require(info.n_layers == integer("n_layers") && info.n_kv_heads == kvHeads && info.n_q_heads == qHeads &&
                    info.head_dim == headDim, "codebook shape agrees with golden.txt");
            commvq_cache_params_t p = lib.DefaultCacheParams();
            p.max_seqs = integer("max_seqs");
            p.max_tokens = integer("max_tokens");
            p.block_tokens = integer("block_tokens");
            p.window = integer("window");
            p.n_threads = integer("n_threads");
            cache = new Cache(cb, p);
        }
        using (cache)
        {
            uint layer = integer("layer"), seq = integer("seq");
            cache.Append(layer, seq, keys, values);
            Require(cache.SeqLength(seq) == (ulong)nTokens, "length after append");
            var got = new float[qo];
            var lse = new float[nQueries * qHeads];
            for (int i = 0; i < got.Length; i++)
                got[i] = float.NaN;
            cache.Attend(layer, seq, queries, got, lse, Constants.COMMVQ_ATTEND_CAUSAL);

            double atol = double.Parse(m["atol"], CultureInfo.InvariantCulture);
            double rtol = double.Parse(m["rtol"], CultureInfo.InvariantCulture);
            int bad = Mismatches("out", got, wantOut, atol, rtol) + Mismatches("lse", lse, wantLse, atol, rtol);
            if (bad > 0)
            {
                Console.WriteLine("golden mismatch: " + bad + " values differ");
                return 1;
            }

            ExpectError(lib, Constants.COMMVQ_ERR_OUT_OF_RANGE, "layer",
                        () => cache.Attend(integer("n_layers"), seq, queries, got, null, Constants.COMMVQ_ATTEND_CAUSAL));
            int extra = (int)(integer("overflow_tokens") * kvHeads * headDim);
            float[] moreKeys = new float[extra], moreValues = new float[extra];
            Array.Copy(keys, moreKeys, extra);
            Array.Copy(values, moreValues, extra);
            ExpectError(lib, Constants.COMMVQ_ERR_CAPACITY, "", () => cache.Append(layer, seq, moreKeys, moreValues));
            Require(cache.SeqLength(seq) == (ulong)nTokens, "a failed append changes nothing");
            int two = (int)(2 * kvHeads * headDim);
            float[] twoKeys = new float[two], twoValues = new float[two];
            Array.Copy(keys, twoKeys, two);
            Array.Copy(values, twoValues, two);
            ExpectError(lib, Constants.COMMVQ_ERR_INVALID_ARGUMENT, "both name sequence",
                        () => cache.AppendBatch(layer, new uint[] { seq, seq }, twoKeys, twoValues));
            Require(cache.SeqLength(seq) == (ulong)nTokens, "a refused batch changes nothing");
            string missing = Path.Combine(scratch, "no-such-codebook.safetensors");
            ExpectError(lib, Constants.COMMVQ_ERR_IO, missing, () => Codebook.Load(lib, missing).Dispose());

            bool refused = false;
            try { cache.Attend(layer, seq, queries, new float[1], null, Constants.COMMVQ_ATTEND_CAUSAL); }
            catch (ArgumentException) { refused = true; }
            Require(refused, "a short output buffer is refused");
        }
        cache.Dispose();
        bool closed = false;
        try { cache.SeqLength(0); }
        catch (ObjectDisposedException) { closed = true; }
        Require(closed, "a disposed cache refuses calls");
        bool missingLibrary = false;
        try { Library.Open(Path.Combine(scratch, "libnothing.so")); }
        catch (LoadException) { missingLibrary = true; }
        Require(missingLibrary, "a missing library is a LoadException");
        // Wrong libraries are refused at load time, with the reason.
        foreach (var check in new[] { new[] { "COMMVQ_STUB_PARTIAL", "lacks the symbol commvq_" },
                                      new[] { "COMMVQ_STUB_OTHER_MAJOR", "needs major version" } })
        {
            string stub = Environment.GetEnvironmentVariable(check[0]);
            if (string.IsNullOrEmpty(stub))
            {
                Console.WriteLine(check[0] + " not set: that check is skipped");
                continue;
            }
            bool refused = false;
            try { Library.Open(stub); }
            catch (LoadException e)
            {
                Require(e.Message.Contains(check[1]), e.Message + " says \"" + check[1] + "\"");
                Console.WriteLine(e.Message);
                refused = true;
            }
            Require(refused, stub + " is refused");
        }

        Console.WriteLine("golden test passed");
        return 0;
    }
}
