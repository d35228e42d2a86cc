/* The whole public API from a C99 translation unit (-std=c99 -pedantic
 * -Werror), against the shared library. argv[1] is tests/data, which holds
 * test_codebook_small.safetensors: 2 layers, 1 KV head, 2 query heads,
 * head_dim 16, 1 bit, rotate-half pairs (made by tests/unit/test_capi_basics.cpp).
 *
 * Numbers: while every token is still in the window, attention must equal a
 * dense float64 attention computed here (RoPE on the keys, GQA, softmax) to
 * 1e-5 relative; with compressed tokens, outputs must be fully written and
 * finite, and a saved and reloaded sequence must attend bit for bit alike. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commvq/commvq.h"

static int failures = 0;

#define EXPECT(cond)                                                                         \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: EXPECT(%s) failed (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, commvq_last_error());                                             \
            ++failures;                                                                      \
        }                                                                                    \
    } while (0)

#define EXPECT_STATUS(call, want)                                                            \
    do {                                                                                     \
        commvq_status_t got_ = (call);                                                       \
        if (got_ != (want)) {                                                                \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (last error: %s)\n", __FILE__, \
                    __LINE__, #call, commvq_status_string(got_), commvq_status_string(want), \
                    commvq_last_error());                                                    \
            ++failures;                                                                      \
        }                                                                                    \
    } while (0)

#define EXPECT_OK(call) EXPECT_STATUS(call, COMMVQ_OK)

enum { L = 2, HKV = 1, HQ = 2, D = 16, P = D / 2, MAX_TOKENS = 160 };

static uint64_t rng_state = 12345;
static float uniform(void) { /* in [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Dense attention of n_q queries (post-RoPE) over the first n_tok pre-RoPE
 * keys and values of one layer, causal, in double: the reference while no
 * token is compressed. */
static void dense_attention(const float* keys, const float* values, uint32_t n_tok, const float* q,
                            uint32_t n_q, double theta, double* out, double* lse) {
    static double rotated[MAX_TOKENS][D];
    double scores[MAX_TOKENS];
    uint32_t m, i, h, j, c;
    for (m = 0; m < n_tok; ++m)
        for (j = 0; j < P; ++j) { /* rotate-half: pair j = (x[j], x[j + P]) */
            double w = pow(theta, -2.0 * j / D), a = (double)m * w;
            double x = keys[m * D + j], y = keys[m * D + j + P];
            rotated[m][j] = x * cos(a) - y * sin(a);
            rotated[m][j + P] = x * sin(a) + y * cos(a);
        }
    for (i = 0; i < n_q; ++i) {
        uint32_t visible = n_tok - n_q + i + 1;
        for (h = 0; h < HQ; ++h) {
            double max = -1e300, sum = 0;
            double* o = out + (i * HQ + h) * D;
            for (m = 0; m < visible; ++m) {
                double s = 0;
                for (c = 0; c < D; ++c) s += q[(i * HQ + h) * D + c] * rotated[m][c];
                scores[m] = s / sqrt((double)D);
                if (scores[m] > max) max = scores[m];
            }
            for (c = 0; c < D; ++c) o[c] = 0;
            for (m = 0; m < visible; ++m) {
                double p = exp(scores[m] - max);
                sum += p;
                for (c = 0; c < D; ++c) o[c] += p * values[m * D + c]; /* one KV head: group 0 */
            }
            for (c = 0; c < D; ++c) o[c] /= sum;
            lse[i * HQ + h] = max + log(sum);
        }
    }
}

static double relative_error(const float* out, const double* ref, size_t n) {
    double diff = 0, norm = 0;
    size_t i;
    for (i = 0; i < n; ++i) {
        diff += (out[i] - ref[i]) * (out[i] - ref[i]);
        norm += ref[i] * ref[i];
    }
    return sqrt(diff / norm);
}

static int all_finite(const float* x, size_t n) {
    size_t i;
    for (i = 0; i < n; ++i)
        if (!(x[i] == x[i]) || fabs(x[i]) > 1e30) return 0;
    return 1;
}

static void poison(float* x, size_t n) {
    size_t i;
    for (i = 0; i < n; ++i) x[i] = (float)NAN;
}

static int32_t progress_calls = 0;
static int32_t count_progress(void* user, const char* stage, double fraction) {
    (void)user;
    EXPECT(stage != NULL && fraction >= 0.0 && fraction <= 1.0);
    ++progress_calls;
    return 0;
}
static int32_t cancel_progress(void* user, const char* stage, double fraction) {
    (void)user;
    (void)stage;
    (void)fraction;
    return 1;
}

static void test_versions_and_status(void) {
    char expect[32];
    sprintf(expect, "%d.%d.%d", COMMVQ_VERSION_MAJOR, COMMVQ_VERSION_MINOR, COMMVQ_VERSION_PATCH);
    EXPECT(commvq_version_number() == COMMVQ_VERSION_NUMBER);
    EXPECT(strcmp(commvq_version_string(), expect) == 0);
    EXPECT(strcmp(commvq_status_string(COMMVQ_ERR_CAPACITY), "COMMVQ_ERR_CAPACITY") == 0);
    EXPECT(commvq_status_string(777) != NULL);
    EXPECT(commvq_last_error() != NULL);
    EXPECT(commvq_cuda_available() == 0 || commvq_cuda_available() == 1);
    EXPECT((commvq_device_count() > 0) == (commvq_cuda_available() == 1));
}

static commvq_codebook_t* test_codebook(const char* data_dir) {
    char path[4096];
    commvq_codebook_t *cb = NULL, *from_memory = NULL, *reloaded = NULL;
    commvq_codebook_info_t info, info2;
    FILE* f;
    long size;
    void* bytes;
    sprintf(path, "%.4000s/test_codebook_small.safetensors", data_dir);
    EXPECT_OK(commvq_codebook_load(path, &cb));
    if (!cb) return NULL;
    commvq_codebook_info_init(&info);
    EXPECT_OK(commvq_codebook_get_info(cb, &info));
    EXPECT(info.n_layers == L && info.n_kv_heads == HKV && info.n_q_heads == HQ && info.head_dim == D);
    EXPECT(info.pair_layout == COMMVQ_PAIRS_ROTATE_HALF && info.rope.scaling == COMMVQ_ROPE_SCALING_NONE);
    EXPECT(info.value_bits == 1 && info.key_stages == 11 && info.compressed_token_bytes > 0);

    f = fopen(path, "rb");
    EXPECT(f != NULL);
    if (f) {
        fseek(f, 0, SEEK_END);
        size = ftell(f);
        fseek(f, 0, SEEK_SET);
        bytes = malloc((size_t)size);
        EXPECT(fread(bytes, 1, (size_t)size, f) == (size_t)size);
        fclose(f);
        EXPECT_OK(commvq_codebook_load_memory(bytes, (size_t)size, &from_memory));
        free(bytes);
        commvq_codebook_info_init(&info2);
        EXPECT_OK(commvq_codebook_get_info(from_memory, &info2));
        EXPECT(info2.fingerprint == info.fingerprint);
        commvq_codebook_free(from_memory);
    }
    EXPECT_OK(commvq_codebook_save(cb, "c_api_test_codebook.safetensors"));
    EXPECT_OK(commvq_codebook_load("c_api_test_codebook.safetensors", &reloaded));
    commvq_codebook_info_init(&info2);
    EXPECT_OK(commvq_codebook_get_info(reloaded, &info2));
    EXPECT(info2.fingerprint == info.fingerprint);
    commvq_codebook_free(reloaded);
    remove("c_api_test_codebook.safetensors");
    EXPECT_STATUS(commvq_codebook_load("no/such/file.safetensors", &reloaded), COMMVQ_ERR_IO);
    EXPECT(strlen(commvq_last_error()) > 0);
    return cb;
}

static long file_size(const char* path) {
    long size = -1;
    FILE* f = fopen(path, "rb");
    if (f) {
        fseek(f, 0, SEEK_END);
        size = ftell(f);
        fclose(f);
    }
    return size;
}

/* commvq_codebook_save_as: an F16 copy is smaller, loads with the fingerprint
 * of its rounded values, and saved again as F16 or F32 keeps that identity. */
static commvq_codebook_t* test_half_storage(const commvq_codebook_t* cb) {
    commvq_codebook_t *half = NULL, *again = NULL;
    commvq_codebook_info_t info, info_half, info_again;
    FILE* f;
    commvq_codebook_info_init(&info);
    commvq_codebook_info_init(&info_half);
    commvq_codebook_info_init(&info_again);
    EXPECT_OK(commvq_codebook_get_info(cb, &info));
    EXPECT_OK(commvq_codebook_save(cb, "c_api_test_f32.safetensors"));
    EXPECT_OK(commvq_codebook_save_as(cb, "c_api_test_f16.safetensors", COMMVQ_DTYPE_F16));
    EXPECT(file_size("c_api_test_f16.safetensors") > 0);
    EXPECT(file_size("c_api_test_f16.safetensors") < file_size("c_api_test_f32.safetensors") * 2 / 3);
    EXPECT_OK(commvq_codebook_load("c_api_test_f16.safetensors", &half));
    EXPECT_OK(commvq_codebook_get_info(half, &info_half));
    EXPECT(info_half.fingerprint != info.fingerprint); /* the rounded values are another codebook */
    EXPECT(info_half.key_stages == info.key_stages && info_half.value_hidden == info.value_hidden);
    EXPECT_OK(commvq_codebook_save_as(half, "c_api_test_f16_f32.safetensors", COMMVQ_DTYPE_F32));
    EXPECT_OK(commvq_codebook_load("c_api_test_f16_f32.safetensors", &again));
    EXPECT_OK(commvq_codebook_get_info(again, &info_again));
    EXPECT(info_again.fingerprint == info_half.fingerprint);
    commvq_codebook_free(again);
    again = NULL;
    EXPECT_OK(commvq_codebook_save_as(half, "c_api_test_f16_f16.safetensors", COMMVQ_DTYPE_F16));
    EXPECT_OK(commvq_codebook_load("c_api_test_f16_f16.safetensors", &again));
    EXPECT_OK(commvq_codebook_get_info(again, &info_again));
    EXPECT(info_again.fingerprint == info_half.fingerprint);
    commvq_codebook_free(again);
    EXPECT_STATUS(commvq_codebook_save_as(cb, "c_api_test_bad.safetensors", 9), COMMVQ_ERR_INVALID_ARGUMENT);
    EXPECT(strlen(commvq_last_error()) > 0);
    f = fopen("c_api_test_bad.safetensors", "rb");
    EXPECT(f == NULL);
    if (f) fclose(f);
    remove("c_api_test_f32.safetensors");
    remove("c_api_test_f16.safetensors");
    remove("c_api_test_f16_f32.safetensors");
    remove("c_api_test_f16_f16.safetensors");
    return half;
}

static void test_codebook_tools(const commvq_codebook_t* cb) {
    float k[4 * D], v[4 * D], k_out[4 * D], v_out[4 * D], scales[4];
    uint16_t codes[4 * 11];
    int i;
    for (i = 0; i < 4 * D; ++i) {
        k[i] = uniform();
        v[i] = uniform();
    }
    EXPECT_OK(commvq_codebook_encode_keys(cb, 1, 4, k, codes, scales));
    for (i = 0; i < 4 * 11; ++i) EXPECT(codes[i] < 64 * 64);
    poison(k_out, 4 * D);
    poison(v_out, 4 * D);
    EXPECT_OK(commvq_codebook_reconstruct(cb, 1, 4, k, v, k_out, v_out));
    EXPECT(all_finite(k_out, 4 * D) && all_finite(v_out, 4 * D));
    EXPECT_STATUS(commvq_codebook_encode_keys(cb, 2, 4, k, codes, scales), COMMVQ_ERR_OUT_OF_RANGE);
}

static void test_cache(const commvq_codebook_t* cb, double theta) {
    static float keys[L][MAX_TOKENS * D], values[L][MAX_TOKENS * D];
    float q[4 * HQ * D], out[4 * HQ * D], out2[4 * HQ * D], lse[4 * HQ];
    double ref[4 * HQ * D], ref_lse[4 * HQ];
    uint32_t ids[3] = {0, 2, 0};
    commvq_cache_params_t params;
    commvq_cache_t* cache = NULL;
    commvq_cache_stats_t stats;
    uint64_t length = 0;
    uint32_t l, i;

    for (l = 0; l < L; ++l)
        for (i = 0; i < MAX_TOKENS * D; ++i) {
            keys[l][i] = uniform();
            values[l][i] = uniform();
        }
    for (i = 0; i < 4 * HQ * D; ++i) q[i] = 2.0f * uniform();

    commvq_cache_params_init(&params);
    params.max_seqs = 3;
    params.max_tokens = 128;
    params.block_tokens = 16;
    params.window = 64;
    params.n_threads = 2;
    EXPECT_OK(commvq_cache_create(cb, &params, &cache));
    if (!cache) return;

    /* 20 tokens, all in the window: dense attention exactly. */
    for (l = 0; l < L; ++l) EXPECT_OK(commvq_cache_append(cache, l, 0, 20, keys[l], values[l]));
    for (l = 0; l < L; ++l) {
        poison(out, 4 * HQ * D);
        EXPECT_OK(commvq_cache_attend(cache, l, 0, 4, q, out, lse, COMMVQ_ATTEND_CAUSAL));
        dense_attention(keys[l], values[l], 20, q, 4, theta, ref, ref_lse);
        EXPECT(relative_error(out, ref, 4 * HQ * D) <= 1e-5);
        for (i = 0; i < 4 * HQ; ++i) EXPECT(fabs(lse[i] - ref_lse[i]) <= 1e-5);
    }

    /* 100 more: 56 tokens leave the window and are compressed. */
    for (l = 0; l < L; ++l) EXPECT_OK(commvq_cache_append(cache, l, 0, 100, keys[l] + 20 * D, values[l] + 20 * D));
    EXPECT_OK(commvq_cache_seq_length(cache, 0, &length));
    EXPECT(length == 120);
    poison(out, 4 * HQ * D);
    EXPECT_OK(commvq_cache_attend(cache, 1, 0, 4, q, out, lse, COMMVQ_ATTEND_NON_CAUSAL));
    EXPECT(all_finite(out, 4 * HQ * D) && all_finite(lse, 4 * HQ));

    commvq_cache_stats_init(&stats);
    EXPECT_OK(commvq_cache_get_stats(cache, &stats));
    EXPECT(stats.n_seqs_used == 1 && stats.tokens == 120 && stats.compressed_tokens == 56);
    EXPECT(stats.blocks_used == 4 && stats.blocks_total == 8 && stats.tokens_free == 64);
    EXPECT(stats.bytes_per_compressed_token < stats.bytes_per_token_16bit);

    /* Fork, truncate, clear. */
    EXPECT_OK(commvq_cache_seq_fork(cache, 0, 1));
    EXPECT_OK(commvq_cache_get_stats(cache, &stats));
    EXPECT(stats.blocks_used == 4 && stats.tokens == 240);
    EXPECT_OK(commvq_cache_seq_truncate(cache, 1, 50));
    EXPECT_OK(commvq_cache_seq_length(cache, 1, &length));
    EXPECT(length == 50);
    for (l = 0; l < L; ++l) EXPECT_OK(commvq_cache_append(cache, l, 1, 10, keys[l] + 50 * D, values[l] + 50 * D));
    poison(out, HQ * D);
    EXPECT_OK(commvq_cache_attend(cache, 0, 1, 1, q, out, NULL, COMMVQ_ATTEND_CAUSAL));
    EXPECT(all_finite(out, HQ * D));
    EXPECT_OK(commvq_cache_seq_clear(cache, 1));
    EXPECT_OK(commvq_cache_seq_length(cache, 1, &length));
    EXPECT(length == 0);

    /* Save and load: bit for bit. */
    EXPECT_OK(commvq_cache_seq_save(cache, 0, "c_api_test_seq.cvqseq"));
    EXPECT_OK(commvq_cache_seq_load(cache, 2, "c_api_test_seq.cvqseq"));
    EXPECT_OK(commvq_cache_attend(cache, 0, 0, 3, q, out, NULL, COMMVQ_ATTEND_CAUSAL));
    EXPECT_OK(commvq_cache_attend(cache, 0, 2, 3, q, out2, NULL, COMMVQ_ATTEND_CAUSAL));
    EXPECT(memcmp(out, out2, sizeof(float) * 3 * HQ * D) == 0);
    EXPECT_STATUS(commvq_cache_seq_load(cache, 2, "c_api_test_seq.cvqseq"), COMMVQ_ERR_INVALID_STATE);
    remove("c_api_test_seq.cvqseq");

    /* One decode query per sequence, duplicates allowed. */
    poison(out, 3 * HQ * D);
    EXPECT_OK(commvq_cache_attend_batch(cache, 0, 3, ids, q, out, lse, COMMVQ_ATTEND_CAUSAL));
    EXPECT(all_finite(out, 3 * HQ * D));
    EXPECT_OK(commvq_cache_attend(cache, 0, 0, 1, q, out2, NULL, COMMVQ_ATTEND_CAUSAL));
    for (i = 0; i < HQ * D; ++i) EXPECT(fabs(out[i] - out2[i]) <= 1e-5 * (1 + fabs(out2[i])));

    /* Failures: status, message, nothing changed. */
    EXPECT_STATUS(commvq_cache_append(cache, L, 0, 1, keys[0], values[0]), COMMVQ_ERR_OUT_OF_RANGE);
    EXPECT(strlen(commvq_last_error()) > 0);
    EXPECT_STATUS(commvq_cache_append(NULL, 0, 0, 1, keys[0], values[0]), COMMVQ_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(commvq_cache_append(cache, 0, 0, 1, keys[0], values[0]), COMMVQ_OK);
    EXPECT_STATUS(commvq_cache_append(cache, 0, 0, 1, keys[0], values[0]), COMMVQ_ERR_INVALID_STATE);
    EXPECT_STATUS(commvq_cache_append(cache, 1, 0, 200, keys[1], values[1]), COMMVQ_ERR_INVALID_STATE);
    EXPECT_OK(commvq_cache_seq_length(cache, 0, &length));
    EXPECT(length == 121);

    /* Batched append: sequence 2 gains a token in layer 0, then layer 1 of
     * sequences 2 and 0 catches up in one call; each id at most once. */
    {
        const uint32_t rows[2] = {2, 0}, twice[2] = {2, 2};
        EXPECT_OK(commvq_cache_append_batch(cache, 0, 1, rows, 1, keys[0] + 120 * D, values[0] + 120 * D));
        EXPECT_OK(commvq_cache_append_batch(cache, 1, 2, rows, 1, keys[1] + 120 * D, values[1] + 120 * D));
        EXPECT_STATUS(commvq_cache_append_batch(cache, 0, 2, twice, 1, keys[0], values[0]), COMMVQ_ERR_INVALID_ARGUMENT);
        EXPECT_STATUS(commvq_cache_append_batch(cache, 0, 2, NULL, 1, keys[0], values[0]), COMMVQ_ERR_INVALID_ARGUMENT);
        EXPECT_OK(commvq_cache_seq_length(cache, 0, &length));
        EXPECT(length == 121);
        EXPECT_OK(commvq_cache_seq_length(cache, 2, &length));
        EXPECT(length == 121);
        poison(out, 2 * HQ * D);
        EXPECT_OK(commvq_cache_attend_batch(cache, 1, 2, rows, q, out, NULL, COMMVQ_ATTEND_CAUSAL));
        EXPECT(all_finite(out, 2 * HQ * D));
    }

    /* A CPU cache: no stream, nothing to wait for. */
    EXPECT_STATUS(commvq_cache_set_stream(cache, NULL), COMMVQ_ERR_NOT_SUPPORTED);
    EXPECT_OK(commvq_cache_synchronize(cache));
    commvq_cache_destroy(cache);

    if (!commvq_cuda_available()) {
        cache = NULL;
        params.device = 0;
        EXPECT_STATUS(commvq_cache_create(cb, &params, &cache), COMMVQ_ERR_NOT_SUPPORTED);
        EXPECT(cache == NULL);
    }
}

static void test_training(void) {
    enum { N = 256 };
    static float k[N * HKV * D], v[N * HKV * D], weights[N];
    commvq_train_params_t params;
    commvq_codebook_t* cb = NULL;
    commvq_codebook_info_t info;
    uint32_t i;
    for (i = 0; i < N * HKV * D; ++i) {
        k[i] = uniform();
        v[i] = uniform();
    }
    commvq_train_params_init(&params);
    params.key_max_steps = 2;
    params.value_steps = 4;
    params.value_batch = 32;
    params.n_threads = 1;
    params.progress = count_progress;
    EXPECT_OK(commvq_train(&params, 1, HKV, D, N, k, v, &cb));
    EXPECT(progress_calls > 0);
    commvq_codebook_info_init(&info);
    EXPECT_OK(commvq_codebook_get_info(cb, &info));
    EXPECT(info.n_layers == 1 && info.head_dim == D);
    commvq_codebook_free(cb);

    /* The fields at the end: value_hidden, model_name, value_weights. */
    for (i = 0; i < N; ++i) weights[i] = (float)(i % 3);
    params.progress = NULL;
    params.value_hidden = 8;
    params.model_name = "c-api-test";
    params.value_weights = weights;
    cb = NULL;
    EXPECT_OK(commvq_train(&params, 1, HKV, D, N, k, v, &cb));
    commvq_codebook_info_init(&info);
    EXPECT_OK(commvq_codebook_get_info(cb, &info));
    EXPECT(info.value_hidden == 8);
    commvq_codebook_free(cb);
    weights[5] = -1.0f;
    cb = NULL;
    EXPECT_STATUS(commvq_train(&params, 1, HKV, D, N, k, v, &cb), COMMVQ_ERR_INVALID_ARGUMENT);
    EXPECT(cb == NULL);
    /* A caller built against the older header: its struct ends before them. */
    params.struct_size = (uint32_t)offsetof(commvq_train_params_t, value_hidden);
    params.value_hidden = 123456789;
    EXPECT_OK(commvq_train(&params, 1, HKV, D, N, k, v, &cb));
    EXPECT_OK(commvq_codebook_get_info(cb, &info));
    EXPECT(info.value_hidden == 32); /* the default min(4096, 4n), n = 16 * 1 / 2 */
    commvq_codebook_free(cb);
    params.struct_size = (uint32_t)sizeof params;
    params.value_hidden = 0;
    params.value_weights = NULL;

    cb = NULL;
    params.progress = cancel_progress;
    EXPECT_STATUS(commvq_train(&params, 1, HKV, D, N, k, v, &cb), COMMVQ_ERR_CANCELLED);
    EXPECT(cb == NULL);
}

int main(int argc, char** argv) {
    commvq_codebook_t *cb, *half = NULL;
    commvq_codebook_info_t info;
    if (argc < 2) {
        fprintf(stderr, "usage: %s <tests/data directory>\n", argv[0]);
        return 2;
    }
    test_versions_and_status();
    cb = test_codebook(argv[1]);
    if (cb) {
        commvq_codebook_info_init(&info);
        EXPECT_OK(commvq_codebook_get_info(cb, &info));
        test_codebook_tools(cb);
        test_cache(cb, info.rope.theta);
        half = test_half_storage(cb);
        if (half) test_cache(half, info.rope.theta); /* a cache from an F16 file attends as well */
        commvq_codebook_free(half);
    }
    commvq_codebook_free(cb);
    test_training();
    commvq_cache_destroy(NULL);
    commvq_codebook_free(NULL);
    if (failures) fprintf(stderr, "%d failure(s)\n", failures);
    else printf("c_api_test: all checks passed\n");
    return failures ? 1 : 0;
}
