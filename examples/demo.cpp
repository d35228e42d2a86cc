// libcommvq demo: real keys, values and queries of bytellama-13m compressed
// at 1 and 2 bits through the public C API, attention computed from the
// codes, and compared with exact float64 attention over the original tensors.
//
// usage: commvq_demo FIXTURE.safetensors CODEBOOK.safetensors [CODEBOOK...]
//
// Every number printed is computed here from what the library returns.
#include <commvq/commvq.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

// ---- a minimal safetensors reader (F32 and F16 tensors) ------------------
struct Tensor {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h >> 15) << 31;
    const uint32_t exponent = (h >> 10) & 0x1f;
    const uint32_t mantissa = h & 0x3ff;
    float magnitude;
    if (exponent == 0) magnitude = std::ldexp(float(mantissa), -24);
    else if (exponent == 31) magnitude = mantissa ? NAN : INFINITY;
    else magnitude = std::ldexp(float(mantissa | 0x400), int(exponent) - 25);
    uint32_t bits;
    std::memcpy(&bits, &magnitude, 4);
    bits |= sign;
    std::memcpy(&magnitude, &bits, 4);
    return magnitude;
}

std::map<std::string, Tensor> read_safetensors(const std::string& path,
                                               std::map<std::string, std::string>* metadata) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.size() < 8) throw std::runtime_error(path + ": too short");
    uint64_t header_len;
    std::memcpy(&header_len, bytes.data(), 8);
    if (header_len > bytes.size() - 8) throw std::runtime_error(path + ": bad header");
    const auto header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + long(header_len));
    const char* base = bytes.data() + 8 + header_len;
    std::map<std::string, Tensor> tensors;
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            if (metadata)
                for (const auto& [k, v] : entry.items()) (*metadata)[k] = v.get<std::string>();
            continue;
        }
        Tensor t;
        t.shape = entry.at("shape").get<std::vector<int64_t>>();
        const auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
        const std::string dtype = entry.at("dtype");
        const uint64_t begin = offsets.at(0), end = offsets.at(1);
        if (end > bytes.size() - 8 - header_len || begin > end)
            throw std::runtime_error(path + ": bad offsets for " + name);
        size_t count = 1;
        for (int64_t s : t.shape) count *= size_t(s);
        t.data.resize(count);
        if (dtype == "F32" && end - begin == count * 4) {
            std::memcpy(t.data.data(), base + begin, count * 4);
        } else if (dtype == "F16" && end - begin == count * 2) {
            for (size_t i = 0; i < count; ++i) {
                uint16_t h;
                std::memcpy(&h, base + begin + 2 * i, 2);
                t.data[i] = half_to_float(h);
            }
        } else {
            throw std::runtime_error(path + ": unsupported tensor " + name);
        }
        tensors[name] = std::move(t);
    }
    return tensors;
}

void check(commvq_status_t status, const char* what) {
    if (status != COMMVQ_OK)
        throw std::runtime_error(std::string(what) + ": " + commvq_status_string(status) + ": " +
                                 commvq_last_error());
}

// ---- exact attention in float64 ----------------------------------------------
// Queries are post-RoPE; keys pre-RoPE in the rotate-half layout, rotated here
// by their position. Query i sits at position n_tokens - n_queries + i.
std::vector<double> exact_attention(const std::vector<float>& q, const std::vector<float>& k,
                                    const std::vector<float>& v, uint32_t n_tokens,
                                    uint32_t n_queries, uint32_t hq, uint32_t hkv, uint32_t d,
                                    double theta) {
    const uint32_t half = d / 2, group = hq / hkv;
    std::vector<double> k_rot(size_t(n_tokens) * hkv * d);
    for (uint32_t m = 0; m < n_tokens; ++m)
        for (uint32_t h = 0; h < hkv; ++h)
            for (uint32_t j = 0; j < half; ++j) {
                const double w = std::pow(theta, -2.0 * j / d), c = std::cos(m * w),
                             s = std::sin(m * w);
                const float* x = &k[(size_t(m) * hkv + h) * d];
                double* y = &k_rot[(size_t(m) * hkv + h) * d];
                y[j] = x[j] * c - x[j + half] * s;
                y[j + half] = x[j + half] * c + x[j] * s;
            }
    std::vector<double> out(size_t(n_queries) * hq * d, 0.0);
    std::vector<double> p(n_tokens);
    for (uint32_t i = 0; i < n_queries; ++i) {
        const uint32_t visible = n_tokens - n_queries + i + 1;
        for (uint32_t h = 0; h < hq; ++h) {
            const uint32_t g = h / group;
            const float* qv = &q[(size_t(i) * hq + h) * d];
            double best = -INFINITY;
            for (uint32_t m = 0; m < visible; ++m) {
                double s = 0;
                for (uint32_t x = 0; x < d; ++x) s += qv[x] * k_rot[(size_t(m) * hkv + g) * d + x];
                p[m] = s / std::sqrt(double(d));
                best = std::max(best, p[m]);
            }
            double total = 0;
            for (uint32_t m = 0; m < visible; ++m) total += (p[m] = std::exp(p[m] - best));
            double* o = &out[(size_t(i) * hq + h) * d];
            for (uint32_t m = 0; m < visible; ++m)
                for (uint32_t x = 0; x < d; ++x) o[x] += p[m] / total * v[(size_t(m) * hkv + g) * d + x];
        }
    }
    return out;
}

double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        diff += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
    }
    return std::sqrt(diff / norm);
}

struct Fixture {
    uint32_t n_layers = 0, n_tokens = 0, n_queries = 0, hkv = 0, hq = 0, d = 0;
    double theta = 0;
    std::map<std::string, Tensor> tensors;
    const std::vector<float>& get(const char* kind, uint32_t layer) const {
        return tensors.at(std::string(kind) + "." + std::to_string(layer)).data;
    }
};

Fixture load_fixture(const std::string& path) {
    Fixture f;
    std::map<std::string, std::string> meta;
    f.tensors = read_safetensors(path, &meta);
    f.theta = std::stod(meta.at("rope_theta"));
    while (f.tensors.count("keys." + std::to_string(f.n_layers))) ++f.n_layers;
    const Tensor& k = f.tensors.at("keys.0");
    const Tensor& q = f.tensors.at("queries.0");
    f.n_tokens = uint32_t(k.shape[0]);
    f.hkv = uint32_t(k.shape[1]);
    f.d = uint32_t(k.shape[2]);
    f.n_queries = uint32_t(q.shape[0]);
    f.hq = uint32_t(q.shape[1]);
    return f;
}

// One codebook, one window size: compress the fixture and attend from codes.
void run_setting(const Fixture& f, commvq_codebook_t* cb, const commvq_codebook_info_t& info,
                 uint32_t window, int32_t device) {
    commvq_cache_params_t params;
    commvq_cache_params_init(&params);
    params.device = device;
    params.max_seqs = 1;
    params.max_tokens = f.n_tokens;
    params.window = window;
    commvq_cache_t* cache = nullptr;
    check(commvq_cache_create(cb, &params, &cache), "cache_create");

    // The prompt arrives as an engine would send it: a long prefill chunk,
    // then the last n_queries tokens whose queries we have.
    const uint32_t prefix = f.n_tokens - f.n_queries;
    const size_t token_floats = size_t(f.hkv) * f.d;
    for (uint32_t layer = 0; layer < f.n_layers; ++layer) {
        const auto& k = f.get("keys", layer);
        const auto& v = f.get("values", layer);
        check(commvq_cache_append(cache, layer, 0, prefix, k.data(), v.data()), "append");
    }
    std::printf("  window %3u:", window);
    double worst = 0, sum = 0;
    for (uint32_t layer = 0; layer < f.n_layers; ++layer) {
        const auto& k = f.get("keys", layer);
        const auto& v = f.get("values", layer);
        const auto& q = f.get("queries", layer);
        check(commvq_cache_append(cache, layer, 0, f.n_queries, k.data() + prefix * token_floats,
                                  v.data() + prefix * token_floats),
              "append");
        std::vector<float> out(q.size(), NAN);
        check(commvq_cache_attend(cache, layer, 0, f.n_queries, q.data(), out.data(), nullptr,
                                  COMMVQ_ATTEND_CAUSAL),
              "attend");
        check(commvq_cache_synchronize(cache), "synchronize");
        const double err = relative_error(
            out, exact_attention(q, k, v, f.n_tokens, f.n_queries, f.hq, f.hkv, f.d, f.theta));
        std::printf("  L%u %.4f", layer, err);
        worst = std::max(worst, err);
        sum += err;
    }
    commvq_cache_stats_t stats;
    commvq_cache_stats_init(&stats);
    check(commvq_cache_get_stats(cache, &stats), "get_stats");
    std::printf("  | mean %.4f  (%llu of %llu tokens read from codes)\n", sum / f.n_layers,
                (unsigned long long)stats.compressed_tokens, (unsigned long long)stats.tokens);
    commvq_cache_destroy(cache);
}

void run_codebook(const Fixture& f, const std::string& path, int32_t device) {
    commvq_codebook_t* cb = nullptr;
    check(commvq_codebook_load(path.c_str(), &cb), "codebook_load");
    commvq_codebook_info_t info;
    commvq_codebook_info_init(&info);
    check(commvq_codebook_get_info(cb, &info), "codebook_get_info");
    if (info.n_kv_heads != f.hkv || info.head_dim != f.d || info.n_layers != f.n_layers ||
        info.n_q_heads != f.hq)
        throw std::runtime_error(path + " was made for another model shape");

    // Storage per compressed token and layer, from the cache's own accounting.
    commvq_cache_params_t params;
    commvq_cache_params_init(&params);
    params.device = device;
    params.max_tokens = f.n_tokens;
    commvq_cache_t* probe = nullptr;
    check(commvq_cache_create(cb, &params, &probe), "cache_create");
    commvq_cache_stats_t stats;
    commvq_cache_stats_init(&stats);
    check(commvq_cache_get_stats(probe, &stats), "get_stats");
    commvq_cache_destroy(probe);
    const double per_layer = stats.bytes_per_compressed_token / info.n_layers;
    const double dense16 = stats.bytes_per_token_16bit / info.n_layers;
    std::printf("\n%u-bit codebook (%u key stages, value encoder width %u): %s\n", info.value_bits,
                info.key_stages, info.value_hidden, path.c_str());
    std::printf("  bytes per compressed token and layer: %.1f (codebook's packed size %u)"
                "  vs %.0f at 16 bits: %.2fx smaller\n",
                per_layer, info.compressed_token_bytes, dense16, dense16 / per_layer);
    std::printf("  attention-output relative error vs exact float64 attention, per layer:\n");
    for (uint32_t window : {128u, 0u}) run_setting(f, cb, info, window, device);
    commvq_codebook_free(cb);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s FIXTURE.safetensors CODEBOOK.safetensors [CODEBOOK...]\n",
                     argv[0]);
        return 2;
    }
    try {
        const Fixture f = load_fixture(argv[1]);
        const int32_t device = commvq_cuda_available() ? 0 : COMMVQ_DEVICE_CPU;
        std::printf("libcommvq %s demo on %s\n", commvq_version_string(),
                    device == COMMVQ_DEVICE_CPU ? "the CPU" : "CUDA device 0");
        std::printf("fixture: bytellama-13m, %u layers, %u tokens, %u queries (positions %u..%u), "
                    "%u KV heads, %u query heads, head_dim %u\n",
                    f.n_layers, f.n_tokens, f.n_queries, f.n_tokens - f.n_queries, f.n_tokens - 1,
                    f.hkv, f.hq, f.d);
        for (int i = 2; i < argc; ++i) run_codebook(f, argv[i], device);
        std::printf("\nLayer 0 of bytellama-13m sees only the current byte: its keys take at most "
                    "256 values per head, so its error is not representative.\n");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "demo failed: %s\n", e.what());
        return 1;
    }
    return 0;
}
