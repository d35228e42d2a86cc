// A program outside the source tree using the installed C# binding
// (tests/install/check_csharp.sh): the library is found from the installed
// assembly's location, attention runs from codes through Span overloads,
// and failures carry their status.
//
//   mono Consumer.exe CODEBOOK
using System;
using Commvq;

static class Consumer
{
    static void Check(bool condition, string what)
    {
        if (!condition)
            throw new Exception("check failed: " + what);
    }

    static int Main(string[] args)
    {
        Library lib = Library.Open();
        Check(lib.VersionNumber / 10000 == Constants.COMMVQ_VERSION_MAJOR, "major version");
        Check(lib.Path.EndsWith("libcommvq.so.0") && lib.Path.StartsWith("/"),
              "the library found beside the install, as a path: " + lib.Path);
        using (Codebook cb = Codebook.Load(lib, args[0]))
        {
            commvq_codebook_info_t info = cb.Info();
            commvq_cache_params_t p = lib.DefaultCacheParams();
            p.window = 4;
            p.max_tokens = 256;
            int kvRow = (int)(info.n_kv_heads * info.head_dim), qRow = (int)(info.n_q_heads * info.head_dim);
            const int tokens = 16;
            var k = new float[tokens * kvRow];
            var v = new float[tokens * kvRow];
            for (int i = 0; i < k.Length; i++)
            {
                k[i] = (float)Math.Sin(i);
                v[i] = (float)Math.Cos(3 * i);
            }
            using (var cache = new Cache(cb, p))
            {
                // Spans: two slices of one buffer.
                cache.Append(0, 0, new ReadOnlySpan<float>(k, 0, 8 * kvRow), new ReadOnlySpan<float>(v, 0, 8 * kvRow));
                cache.Append(0, 0, new ReadOnlySpan<float>(k, 8 * kvRow, 8 * kvRow),
                             new ReadOnlySpan<float>(v, 8 * kvRow, 8 * kvRow));
                Check(cache.SeqLength(0) == tokens, "length after append");
                var q = new float[qRow];
                for (int i = 0; i < q.Length; i++)
                    q[i] = (float)Math.Sin(7 * i);
                Span<float> lse = new float[info.n_q_heads];
                var outSpan = new float[qRow];
                cache.Attend(0, 0, q, outSpan.AsSpan(), lse, Constants.COMMVQ_ATTEND_CAUSAL);
                var outArray = new float[qRow];
                cache.Attend(0, 0, q, outArray, null, Constants.COMMVQ_ATTEND_CAUSAL);
                for (int i = 0; i < qRow; i++)
                    Check(!float.IsNaN(outSpan[i]) && !float.IsInfinity(outSpan[i]) && outSpan[i] == outArray[i],
                          "span and array attention agree and are finite");
                try
                {
                    cache.Attend(info.n_layers, 0, q, outArray, null, Constants.COMMVQ_ATTEND_CAUSAL);
                    throw new Exception("a layer past the end was accepted");
                }
                catch (CommvqException e)
                {
                    Check(e.Status == Constants.COMMVQ_ERR_OUT_OF_RANGE, "status " + e.StatusName);
                }
                try
                {
                    cache.Attend(0, 0, q, new float[1], null, Constants.COMMVQ_ATTEND_CAUSAL);
                    throw new Exception("a short output was accepted");
                }
                catch (ArgumentException)
                {
                }
            }
        }
        Console.WriteLine("libcommvq " + lib.Version + " from " + lib.Path +
                          ": attention from codes (spans and arrays), ERR_OUT_OF_RANGE ok");
        return 0;
    }
}
