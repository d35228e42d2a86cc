/*
 * How an inference engine drives libcommvq, in C99: prefill two sequences,
 * decode them together with one batched append and one batched attention
 * per layer, fork one for a second continuation, roll back rejected
 * speculative tokens, and report the memory held. Keys, values and queries
 * are random here; an engine passes the tensors its projections produced.
 *
 * usage: commvq_engine_loop CODEBOOK.safetensors
 */
#include <commvq/commvq.h>

#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                                       \
    do {                                                                                  \
        commvq_status_t s_ = (call);                                                      \
        if (s_ != COMMVQ_OK) {                                                            \
            fprintf(stderr, "%s failed: %s: %s\n", #call, commvq_status_string(s_),      \
                    commvq_last_error());                                                 \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

static void fill_random(float* x, size_t n) {
    size_t i;
    for (i = 0; i < n; ++i) x[i] = (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
}

int main(int argc, char** argv) {
    commvq_codebook_t* cb = NULL;
    commvq_codebook_info_t info;
    commvq_cache_params_t params;
    commvq_cache_t* cache = NULL;
    commvq_cache_stats_t stats;
    uint32_t layer, step, seq_ids[2] = {0, 1};
    uint64_t length;
    size_t token_floats, query_floats;
    float *k, *v, *q, *out;
    const uint32_t prompt = 300, steps = 20;

    if (argc != 2) {
        fprintf(stderr, "usage: %s CODEBOOK.safetensors\n", argv[0]);
        return 2;
    }
    if (commvq_version_number() / 10000 != COMMVQ_VERSION_MAJOR) {
        fprintf(stderr, "libcommvq %s has another major version\n", commvq_version_string());
        return 1;
    }
    CHECK(commvq_codebook_load(argv[1], &cb));
    commvq_codebook_info_init(&info);
    CHECK(commvq_codebook_get_info(cb, &info));

    commvq_cache_params_init(&params);
    params.device = commvq_cuda_available() ? 0 : COMMVQ_DEVICE_CPU;
    params.max_seqs = 3;
    params.max_tokens = 4096;
    params.window = 64;
    CHECK(commvq_cache_create(cb, &params, &cache));
    commvq_codebook_free(cb); /* the cache keeps what it needs */

    token_floats = (size_t)info.n_kv_heads * info.head_dim;
    query_floats = (size_t)info.n_q_heads * info.head_dim;
    k = malloc(sizeof(float) * token_floats * prompt);
    v = malloc(sizeof(float) * token_floats * prompt);
    q = malloc(sizeof(float) * query_floats * prompt);
    out = malloc(sizeof(float) * query_floats * prompt);
    if (!k || !v || !q || !out) return 1;

    /* Prefill: per layer, append the prompt's keys and values, then attend
     * with the prompt's queries (causal). */
    for (layer = 0; layer < info.n_layers; ++layer) {
        uint32_t s;
        for (s = 0; s < 2; ++s) {
            fill_random(k, token_floats * prompt);
            fill_random(v, token_floats * prompt);
            fill_random(q, query_floats * prompt);
            CHECK(commvq_cache_append(cache, layer, s, prompt, k, v));
            CHECK(commvq_cache_attend(cache, layer, s, prompt, q, out, NULL, COMMVQ_ATTEND_CAUSAL));
        }
    }

    /* Decode: one token per sequence per step; per layer, one call appends
     * both sequences' tokens (k, v [2][n_kv_heads][head_dim]) and one
     * attends both queries. */
    for (step = 0; step < steps; ++step) {
        for (layer = 0; layer < info.n_layers; ++layer) {
            fill_random(k, token_floats * 2);
            fill_random(v, token_floats * 2);
            CHECK(commvq_cache_append_batch(cache, layer, 2, seq_ids, 1, k, v));
            fill_random(q, query_floats * 2);
            CHECK(commvq_cache_attend_batch(cache, layer, 2, seq_ids, q, out, NULL, 0));
        }
    }

    /* A second continuation of sequence 0 shares its compressed blocks. */
    CHECK(commvq_cache_seq_fork(cache, 0, 2));
    /* Speculative decoding rejected the last 3 tokens of sequence 1. */
    CHECK(commvq_cache_seq_length(cache, 1, &length));
    CHECK(commvq_cache_seq_truncate(cache, 1, length - 3));
    CHECK(commvq_cache_synchronize(cache));

    commvq_cache_stats_init(&stats);
    CHECK(commvq_cache_get_stats(cache, &stats));
    printf("sequences %u, tokens %llu (compressed %llu), blocks used %llu of %llu\n",
           stats.n_seqs_used, (unsigned long long)stats.tokens,
           (unsigned long long)stats.compressed_tokens, (unsigned long long)stats.blocks_used,
           (unsigned long long)stats.blocks_total);
    printf("bytes per compressed token (all layers): %.1f, at 16 bits: %.1f\n",
           stats.bytes_per_compressed_token, stats.bytes_per_token_16bit);

    commvq_cache_destroy(cache);
    free(k);
    free(v);
    free(q);
    free(out);
    return 0;
}
