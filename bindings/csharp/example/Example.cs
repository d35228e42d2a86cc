// What an engine does with libcommvq, in C#: load the library at run time,
// make a cache for a model's codebook, then for each layer append the new
// tokens' keys and values and attend with the queries.
//
//   mono Example.exe CODEBOOK [LIBRARY]
//
// LIBRARY defaults to $COMMVQ_LIBRARY, then libcommvq.so.0 on the loader's path.
using System;
using Commvq;

static class Example
{
    static int Main(string[] args)
    {
        if (args.Length < 1)
        {
            Console.Error.WriteLine("usage: Example.exe CODEBOOK [LIBRARY]");
            return 2;
        }
        Library lib = Library.Open(args.Length > 1 ? args[1] : null);
        Console.WriteLine("libcommvq " + lib.Version);

        using (Codebook codebook = Codebook.Load(lib, args[0]))
        {
            commvq_codebook_info_t info = codebook.Info();
            commvq_cache_params_t p = lib.DefaultCacheParams();
            p.max_tokens = 4096;
            p.window = 16;
            using (var cache = new Cache(codebook, p))
            {
                // Stand-in activations; an engine passes its own k, v and q buffers.
                int kvRow = (int)(info.n_kv_heads * info.head_dim), qRow = (int)(info.n_q_heads * info.head_dim);
                const int prompt = 48;
                Func<int, float> signal = i => (i * 7919 % 1000) / 1000f - 0.5f;
                var k = new float[prompt * kvRow];
                var v = new float[prompt * kvRow];
                var q = new float[qRow];
                for (int i = 0; i < k.Length; i++) { k[i] = signal(i); v[i] = signal(i + 1); }
                for (int i = 0; i < q.Length; i++) q[i] = signal(i + 2);
                var output = new float[qRow];
                var lse = new float[info.n_q_heads];
                for (uint layer = 0; layer < info.n_layers; layer++)
                {
                    cache.Append(layer, 0, k, v);
                    cache.Attend(layer, 0, q, output, lse, Constants.COMMVQ_ATTEND_CAUSAL);
                    Console.WriteLine("layer {0}: out[0] = {1:F6}, lse[0] = {2:F6}", layer, output[0], lse[0]);
                }
                commvq_cache_stats_t stats = cache.Stats();
                Console.WriteLine("{0} tokens, {1} compressed, {2:F1} bytes per compressed token",
                                  stats.tokens, stats.compressed_tokens, stats.bytes_per_compressed_token);
            }
        }
        return 0;
    }
}
