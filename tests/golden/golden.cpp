// The golden test data every language binding is checked against, and the
// C API's own run of that test.
//
//   commvq_golden generate FIXTURE.safetensors OUTDIR
//       trains a small codebook on seeded pseudo-random data (the fixture is
//       eval text: it may test codebooks, never fit them), cuts a short
//       sequence of real keys and values and a few real queries from the
//       fixture (layer 1, KV head 0 and its two query heads), runs them
//       through the C API and writes everything to OUTDIR
//       (tests/data/golden when refreshing the stored set).
//   commvq_golden check GOLDENDIR SCRATCHDIR
//       replays the stored inputs through the C API, compares with the stored
//       outputs and provokes one error of each kind: what every binding does.
//
// Only one KV head is used so the codebook (whose value encoder grows with the
// square of the value width) stays small enough to keep in the repository.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commvq/commvq.h"

namespace {

// ---- the test's shape and cache settings (written to golden.txt) ----------
constexpr uint32_t kFixtureLayer = 1;  // layer 0 of bytellama is degenerate
constexpr uint32_t kFixtureKvHead = 0;  // query heads 0 and 1 form its group
constexpr uint32_t kQHeads = 2;
constexpr uint32_t kTokens = 192;       // taken from the end of the fixture
constexpr uint64_t kTrainTokens = 4096;  // synthetic training samples
constexpr uint32_t kQueries = 4;        // the sequence's last positions
constexpr uint32_t kWindow = 32;
constexpr uint32_t kBlockTokens = 16;
// 160 tokens leave the window; 11 blocks hold them, and 32 more overflow.
constexpr uint64_t kMaxTokens = 176;
constexpr uint32_t kOverflowTokens = 32;
constexpr double kAtol = 1e-5;
constexpr double kRtol = 1e-4;
constexpr double kPi = 3.14159265358979323846;

struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

void check_status(commvq_status_t status, const char* what) {
    if (status != COMMVQ_OK) {
        const std::string message = commvq_last_error();  // first: the next call may replace it
        throw Failure(std::string(what) + ": " + commvq_status_string(status) + ": " + message);
    }
}

std::vector<char> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Failure("cannot open " + path);
    return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const void* data, size_t size) {
    std::ofstream out(path, std::ios::binary);
    out.write(static_cast<const char*>(data), std::streamsize(size));
    if (!out) throw Failure("cannot write " + path);
}

// Golden arrays are raw little-endian float32 (this program runs on
// little-endian machines only, like the library's own file formats).
std::vector<float> read_f32(const std::string& path, size_t count) {
    std::vector<char> bytes = read_file(path);
    if (bytes.size() != count * sizeof(float))
        throw Failure(path + ": expected " + std::to_string(count * sizeof(float)) + " bytes, found " +
                      std::to_string(bytes.size()));
    std::vector<float> values(count);
    std::memcpy(values.data(), bytes.data(), bytes.size());
    return values;
}

float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h >> 15) << 31;
    const uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {  // subnormal: normalize
        int shift = 0;
        while (!(mantissa & 0x400)) {
            mantissa <<= 1;
            ++shift;
        }
        bits = sign | uint32_t(113 - shift) << 23 | ((mantissa & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// A tensor of the fixture, converted to float32.
struct Tensor {
    std::vector<size_t> shape;
    std::vector<float> data;
};

class Safetensors {
public:
    explicit Safetensors(const std::string& path) : bytes_(read_file(path)) {
        uint64_t header_size = 0;
        if (bytes_.size() < 8) throw Failure(path + ": not a safetensors file");
        std::memcpy(&header_size, bytes_.data(), 8);
        header_ = nlohmann::json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + long(header_size));
        data_offset_ = 8 + header_size;
    }

    const nlohmann::json& metadata() const {
        static const nlohmann::json empty = nlohmann::json::object();
        return header_.contains("__metadata__") ? header_["__metadata__"] : empty;
    }

    Tensor tensor(const std::string& name) const {
        const auto& entry = header_.at(name);
        Tensor t;
        t.shape = entry.at("shape").get<std::vector<size_t>>();
        const auto offsets = entry.at("data_offsets").get<std::vector<size_t>>();
        const char* begin = bytes_.data() + data_offset_ + offsets[0];
        const size_t size = offsets[1] - offsets[0];
        const std::string dtype = entry.at("dtype");
        if (dtype == "F32") {
            t.data.resize(size / 4);
            std::memcpy(t.data.data(), begin, size);
        } else if (dtype == "F16") {
            t.data.resize(size / 2);
            for (size_t i = 0; i < t.data.size(); ++i) {
                uint16_t h;
                std::memcpy(&h, begin + 2 * i, 2);
                t.data[i] = half_to_float(h);
            }
        } else {
            throw Failure(name + ": unsupported dtype " + dtype);
        }
        return t;
    }

private:
    std::vector<char> bytes_;
    nlohmann::json header_;
    size_t data_offset_ = 0;
};

// Seeded standard normal numbers (splitmix64 + Box-Muller): the same
// training data on every machine.
std::vector<float> synthetic_normal(size_t count, uint64_t seed) {
    auto next = [&seed]() {
        uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
    };
    std::vector<float> out(count);
    for (size_t i = 0; i < count; ++i) {
        const double u = 1.0 - next(), v = next();
        out[i] = float(std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * kPi * v));
    }
    return out;
}

// Rows [first, first + count) of head `head` of a [tokens][heads][dim] tensor.
std::vector<float> take_head(const Tensor& t, size_t first, size_t count, size_t head, size_t n_heads_out) {
    const size_t heads = t.shape[1], dim = t.shape[2];
    std::vector<float> out;
    out.reserve(count * n_heads_out * dim);
    for (size_t row = first; row < first + count; ++row)
        for (size_t h = head; h < head + n_heads_out; ++h)
            out.insert(out.end(), t.data.begin() + long((row * heads + h) * dim),
                       t.data.begin() + long((row * heads + h + 1) * dim));
    return out;
}

// Moves a post-RoPE rotate-half query vector by `shift` positions, so a
// query recorded at position p of the fixture sits at p + shift in the test
// sequence with the same relative offsets to its keys.
void shift_rope_rotate_half(float* x, uint32_t dim, double theta, double shift) {
    const uint32_t half = dim / 2;
    for (uint32_t j = 0; j < half; ++j) {
        const double angle = shift * std::pow(theta, -2.0 * j / dim);
        const double re = x[j], im = x[j + half];
        x[j] = float(re * std::cos(angle) - im * std::sin(angle));
        x[j + half] = float(re * std::sin(angle) + im * std::cos(angle));
    }
}

// ---- golden.txt: "key = value" lines, "#" comments ------------------------
using Manifest = std::map<std::string, std::string>;

Manifest read_manifest(const std::string& path) {
    const std::vector<char> bytes = read_file(path);
    std::istringstream in(std::string(bytes.begin(), bytes.end()));
    Manifest m;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        const size_t eq = line.find('=');
        if (eq == std::string::npos) throw Failure(path + ": bad line: " + line);
        auto trim = [](std::string s) {
            const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t\r");
            return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
        };
        m[trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
    }
    return m;
}

uint64_t manifest_uint(const Manifest& m, const std::string& key) {
    auto it = m.find(key);
    if (it == m.end()) throw Failure("golden.txt lacks " + key);
    return std::stoull(it->second);
}

// Everything one golden run needs, read from (or about to be written to) disk.
struct GoldenCase {
    uint32_t layer = 0, seq = 0, n_tokens = 0, n_queries = 0;
    uint32_t n_kv_heads = 0, n_q_heads = 0, head_dim = 0;
    uint32_t max_seqs = 1, block_tokens = 0, window = 0, n_threads = 1;
    uint64_t max_tokens = 0;
    std::vector<float> keys, values, queries;
};

commvq_cache_params_t cache_params(const GoldenCase& g) {
    commvq_cache_params_t p;
    commvq_cache_params_init(&p);
    p.max_seqs = g.max_seqs;
    p.max_tokens = g.max_tokens;
    p.block_tokens = g.block_tokens;
    p.window = g.window;
    p.n_threads = g.n_threads;
    return p;
}

// create -> append -> attend: the sequence of calls every binding repeats.
void run_case(const commvq_codebook_t* cb, const GoldenCase& g, commvq_cache_t** cache_out,
              std::vector<float>& out, std::vector<float>& lse) {
    const commvq_cache_params_t params = cache_params(g);
    commvq_cache_t* cache = nullptr;
    check_status(commvq_cache_create(cb, &params, &cache), "cache_create");
    *cache_out = cache;
    check_status(commvq_cache_append(cache, g.layer, g.seq, g.n_tokens, g.keys.data(), g.values.data()),
                 "cache_append");
    out.assign(size_t(g.n_queries) * g.n_q_heads * g.head_dim, NAN);
    lse.assign(size_t(g.n_queries) * g.n_q_heads, NAN);
    check_status(commvq_cache_attend(cache, g.layer, g.seq, g.n_queries, g.queries.data(), out.data(),
                                     lse.data(), COMMVQ_ATTEND_CAUSAL),
                 "cache_attend");
}

int generate(const std::string& fixture_path, const std::string& dir) {
    const Safetensors fixture(fixture_path);
    const std::string l = std::to_string(kFixtureLayer);
    const Tensor keys = fixture.tensor("keys." + l);
    const Tensor values = fixture.tensor("values." + l);
    const Tensor queries = fixture.tensor("queries." + l);
    const size_t total = keys.shape[0], dim = keys.shape[2];
    const uint32_t group = uint32_t(queries.shape[1] / keys.shape[1]);
    if (group != kQHeads) throw Failure("fixture: expected " + std::to_string(kQHeads) + " query heads per KV head");

    // A deliberately small codebook (2 residual stages, short training): the
    // golden test checks that bindings reproduce the C API, not quality.
    commvq_train_params_t tp;
    commvq_train_params_init(&tp);
    tp.value_bits = 1;
    tp.key_stages = 2;
    tp.n_q_heads = kQHeads;
    tp.rope.theta = 500000.0;  // bytellama-13m
    tp.key_max_steps = 10;
    tp.value_steps = 50;
    tp.seed = 1;
    tp.n_threads = 1;
    const std::vector<float> train_keys = synthetic_normal(kTrainTokens * dim, 1);
    const std::vector<float> train_values = synthetic_normal(kTrainTokens * dim, 2);
    commvq_codebook_t* cb = nullptr;
    check_status(commvq_train(&tp, 1, 1, uint32_t(dim), kTrainTokens, train_keys.data(), train_values.data(), &cb),
                 "train");
    check_status(commvq_codebook_save(cb, (dir + "/codebook.safetensors").c_str()), "codebook_save");

    GoldenCase g;
    g.n_tokens = kTokens;
    g.n_queries = kQueries;
    g.n_kv_heads = 1;
    g.n_q_heads = kQHeads;
    g.head_dim = uint32_t(dim);
    g.block_tokens = kBlockTokens;
    g.window = kWindow;
    g.max_tokens = kMaxTokens;
    const size_t first = total - kTokens;
    g.keys = take_head(keys, first, kTokens, kFixtureKvHead, 1);
    g.values = take_head(values, first, kTokens, kFixtureKvHead, 1);
    // The fixture's queries belong to its last positions; take the last ones.
    g.queries = take_head(queries, queries.shape[0] - kQueries, kQueries, kFixtureKvHead * kQHeads, kQHeads);
    for (size_t i = 0; i < size_t(kQueries) * kQHeads; ++i)
        shift_rope_rotate_half(g.queries.data() + i * dim, uint32_t(dim), tp.rope.theta, -double(first));

    commvq_cache_t* cache = nullptr;
    std::vector<float> out, lse;
    try {
        run_case(cb, g, &cache, out, lse);
    } catch (...) {
        commvq_cache_destroy(cache);
        commvq_codebook_free(cb);
        throw;
    }
    commvq_cache_destroy(cache);
    commvq_codebook_free(cb);

    write_file(dir + "/keys.f32", g.keys.data(), g.keys.size() * sizeof(float));
    write_file(dir + "/values.f32", g.values.data(), g.values.size() * sizeof(float));
    write_file(dir + "/queries.f32", g.queries.data(), g.queries.size() * sizeof(float));
    write_file(dir + "/out.f32", out.data(), out.size() * sizeof(float));
    write_file(dir + "/lse.f32", lse.data(), lse.size() * sizeof(float));

    std::ostringstream m;
    m << "# Golden test of the language bindings: written by tests/golden/golden.cpp\n"
         "# (commvq_golden generate), read by every binding's test. A small codebook\n"
         "# (1 layer, 1 KV head, 2 query heads, head_dim 128, 2 key stages) trained on\n"
         "# seeded synthetic data; real keys, values and queries of bytellama-13m\n"
         "# (tests/data/bytellama_kv.safetensors, layer "
      << kFixtureLayer << ", KV head " << kFixtureKvHead << " and its query heads,\n# last " << kTokens
      << " tokens) at positions 0.." << kTokens - 1 << ", the queries moved with them.\n"
         "# Arrays are raw little-endian float32, row-major:\n"
         "#   keys, values [n_tokens][n_kv_heads][head_dim]; queries, out\n"
         "#   [n_queries][n_q_heads][head_dim]; lse [n_queries][n_q_heads].\n"
         "# The run: cache_create with the settings below (io_dtype F32, other fields at\n"
         "# their defaults), one cache_append of all tokens to `layer` of `seq`, one\n"
         "# causal cache_attend of all queries with lse. Then the errors: attend to\n"
         "# layer n_layers (OUT_OF_RANGE), append overflow_tokens more tokens (CAPACITY,\n"
         "# length unchanged), load a codebook from a missing file (IO).\n"
         "# A value matches when |got - want| <= atol + rtol * |want|.\n";
    m << "version_number = " << commvq_version_number() << "\n";
    m << "codebook = codebook.safetensors\n";
    m << "n_layers = 1\n";
    m << "layer = " << g.layer << "\nseq = " << g.seq << "\n";
    m << "n_tokens = " << g.n_tokens << "\nn_queries = " << g.n_queries << "\n";
    m << "n_kv_heads = " << g.n_kv_heads << "\nn_q_heads = " << g.n_q_heads << "\nhead_dim = " << g.head_dim
      << "\n";
    m << "max_seqs = " << g.max_seqs << "\nmax_tokens = " << g.max_tokens << "\nblock_tokens = " << g.block_tokens
      << "\nwindow = " << g.window << "\nn_threads = " << g.n_threads << "\n";
    m << "overflow_tokens = " << kOverflowTokens << "\n";
    m << "keys = keys.f32\nvalues = values.f32\nqueries = queries.f32\nout = out.f32\nlse = lse.f32\n";
    m << "atol = " << kAtol << "\nrtol = " << kRtol << "\n";
    const std::string text = m.str();
    write_file(dir + "/golden.txt", text.data(), text.size());
    std::printf("golden data written to %s\n", dir.c_str());
    return 0;
}

// Counts mismatches; prints the first few.
size_t compare(const char* name, const std::vector<float>& got, const std::vector<float>& want, double atol,
               double rtol) {
    size_t bad = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double diff = std::fabs(double(got[i]) - double(want[i]));
        if (!(diff <= atol + rtol * std::fabs(double(want[i])))) {
            if (bad < 5) std::printf("  %s[%zu]: got %.9g, want %.9g\n", name, i, got[i], want[i]);
            ++bad;
        }
    }
    return bad;
}

void expect_error(commvq_status_t status, commvq_status_t want, const char* what, const std::string& in_message) {
    const std::string message = commvq_last_error();
    if (status != want)
        throw Failure(std::string(what) + ": got " + commvq_status_string(status) + ", want " +
                      commvq_status_string(want));
    if (message.empty() || message.find(in_message) == std::string::npos)
        throw Failure(std::string(what) + ": message \"" + message + "\" does not mention \"" + in_message + "\"");
    std::printf("%s: %s: %s\n", what, commvq_status_string(status), message.c_str());
}

int check(const std::string& dir, const std::string& scratch) {
    const Manifest m = read_manifest(dir + "/golden.txt");
    GoldenCase g;
    g.layer = uint32_t(manifest_uint(m, "layer"));
    g.seq = uint32_t(manifest_uint(m, "seq"));
    g.n_tokens = uint32_t(manifest_uint(m, "n_tokens"));
    g.n_queries = uint32_t(manifest_uint(m, "n_queries"));
    g.n_kv_heads = uint32_t(manifest_uint(m, "n_kv_heads"));
    g.n_q_heads = uint32_t(manifest_uint(m, "n_q_heads"));
    g.head_dim = uint32_t(manifest_uint(m, "head_dim"));
    g.max_seqs = uint32_t(manifest_uint(m, "max_seqs"));
    g.max_tokens = manifest_uint(m, "max_tokens");
    g.block_tokens = uint32_t(manifest_uint(m, "block_tokens"));
    g.window = uint32_t(manifest_uint(m, "window"));
    g.n_threads = uint32_t(manifest_uint(m, "n_threads"));
    const uint32_t n_layers = uint32_t(manifest_uint(m, "n_layers"));
    const uint32_t overflow = uint32_t(manifest_uint(m, "overflow_tokens"));
    const double atol = std::stod(m.at("atol")), rtol = std::stod(m.at("rtol"));
    const size_t kv = size_t(g.n_tokens) * g.n_kv_heads * g.head_dim;
    const size_t qo = size_t(g.n_queries) * g.n_q_heads * g.head_dim;
    g.keys = read_f32(dir + "/" + m.at("keys"), kv);
    g.values = read_f32(dir + "/" + m.at("values"), kv);
    g.queries = read_f32(dir + "/" + m.at("queries"), qo);
    const std::vector<float> want_out = read_f32(dir + "/" + m.at("out"), qo);
    const std::vector<float> want_lse = read_f32(dir + "/" + m.at("lse"), size_t(g.n_queries) * g.n_q_heads);

    commvq_codebook_t* cb = nullptr;
    check_status(commvq_codebook_load((dir + "/" + m.at("codebook")).c_str(), &cb), "codebook_load");
    commvq_cache_t* cache = nullptr;
    int failures = 0;
    try {
        commvq_codebook_info_t info;
        commvq_codebook_info_init(&info);
        check_status(commvq_codebook_get_info(cb, &info), "codebook_get_info");
        if (info.n_layers != n_layers || info.n_kv_heads != g.n_kv_heads || info.n_q_heads != g.n_q_heads ||
            info.head_dim != g.head_dim)
            throw Failure("the codebook's shape disagrees with golden.txt");
        std::vector<float> out, lse;
        run_case(cb, g, &cache, out, lse);
        const size_t bad = compare("out", out, want_out, atol, rtol) + compare("lse", lse, want_lse, atol, rtol);
        if (bad) {
            std::printf("golden mismatch: %zu values differ\n", bad);
            ++failures;
        }

        std::vector<float> scratch_out(qo), scratch_lse(size_t(g.n_queries) * g.n_q_heads);
        expect_error(commvq_cache_attend(cache, n_layers, g.seq, g.n_queries, g.queries.data(), scratch_out.data(),
                                         scratch_lse.data(), COMMVQ_ATTEND_CAUSAL),
                     COMMVQ_ERR_OUT_OF_RANGE, "bad layer", "layer");
        expect_error(commvq_cache_append(cache, g.layer, g.seq, overflow, g.keys.data(), g.values.data()),
                     COMMVQ_ERR_CAPACITY, "full cache", "");
        uint64_t length = 0;
        check_status(commvq_cache_seq_length(cache, g.seq, &length), "seq_length");
        if (length != g.n_tokens) throw Failure("a failed append changed the length to " + std::to_string(length));
        const std::string missing = scratch + "/no-such-codebook.safetensors";
        commvq_codebook_t* never = nullptr;
        expect_error(commvq_codebook_load(missing.c_str(), &never), COMMVQ_ERR_IO, "bad file", missing);
        if (never != nullptr) throw Failure("a failed load wrote its out-parameter");
    } catch (const Failure& f) {
        std::printf("FAIL: %s\n", f.what());
        ++failures;
    }
    commvq_cache_destroy(cache);
    commvq_codebook_free(cb);
    std::printf(failures ? "golden test FAILED\n" : "golden test passed\n");
    return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        if (argc == 4 && std::strcmp(argv[1], "generate") == 0) return generate(argv[2], argv[3]);
        if (argc == 4 && std::strcmp(argv[1], "check") == 0) return check(argv[2], argv[3]);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "commvq_golden: %s\n", e.what());
        return 1;
    }
    std::fprintf(stderr,
                 "usage: commvq_golden generate FIXTURE.safetensors OUTDIR\n"
                 "       commvq_golden check GOLDENDIR SCRATCHDIR\n");
    return 2;
}
