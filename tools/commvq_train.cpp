// commvq-train: trains a codebook from a KV file written by
// tools/collect_kv.py (per layer l: keys.{l} [T, Hkv, d] before RoPE,
// values.{l} [T, Hkv, d]) and writes it as a codebook file. With --eval it
// also measures the codebook on other KV files (held-out data), encoding
// tokens exactly as the cache does. See docs/TRAINING.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "codebook_file.h"
#include "error.h"
#include "key_encoder.h"
#include "model_settings.h"
#include "pair_layout.h"
#include "safetensors.h"
#include "train/attention_weights.h"
#include "train/parallel.h"
#include "train/train.h"
#include "value_encoder.h"

namespace {

using commvq::Error;

const char* kUsage =
    "usage: commvq-train -i KV.safetensors -o CODEBOOK.safetensors [options]\n"
    "       commvq-train --codebook CODEBOOK.safetensors --eval KV.safetensors [--calib CALIB.safetensors]\n"
    "       commvq-train --codebook IN.safetensors -o OUT.safetensors --storage f16\n"
    "\n"
    "  -i, --input FILE        keys.{l} / values.{l} per layer (tools/collect_kv.py)\n"
    "\n"
    "  A codebook fits the text its calibration KV came from, and only that: the\n"
    "  calibration text must cover every domain the model will read (prose, code,\n"
    "  JSON, other languages), or attention on the rest degrades badly. Check a\n"
    "  codebook on your own text with --eval (docs/TRAINING.md, \"Calibration text\").\n"
    "\n"
    "  -o, --output FILE       the codebook file to write\n"
    "  --bits 1|2              value bits; key stages R = 11 or 21 (default 1)\n"
    "  --stages R              key residual stages (default from --bits)\n"
    "  --sub-centers C         sub-centers per stage (default 64: 12-bit codes)\n"
    "  --scale token|head      key scale: per token over all heads, or per head (default token)\n"
    "  The model's settings default to those the KV file records (tools/collect_kv.py\n"
    "  writes them); a flag that contradicts the file is refused:\n"
    "  --pairs rotate-half|interleaved   the model's RoPE pair layout (else rotate-half)\n"
    "  --q-heads N             query heads of the model (else = KV heads)\n"
    "  --rope-theta X          (else 10000)\n"
    "  --rope-scaling none|linear|llama3, --rope-factor X, --rope-low-freq-factor X,\n"
    "  --rope-high-freq-factor X, --rope-original-max-position X\n"
    "  --model-name NAME       recorded in the codebook (may differ from the file's)\n"
    "  --max-samples N         tokens per layer to train on (default 1048576)\n"
    "  --key-steps N           EM steps per key stage at most (default 100)\n"
    "  --value-steps N         value optimizer steps per layer (default 2000)\n"
    "  --value-batch N         tokens per value step (default 256)\n"
    "  --value-hidden I        value encoder width (default min(4096, 4n))\n"
    "  --value-lr X            (default 1e-3)\n"
    "  --no-gumbel             train the value encoder without Gumbel noise\n"
    "  --attention-weight BETA value loss = MSE + BETA * attention-weighted MSE, the\n"
    "                          attention mass from the file's queries.{l} (default 0 = off)\n"
    "  --seed N                (default 0)\n"
    "  --threads N             (default 0 = all cores)\n"
    "  --device cpu|N          where EM and the value trainer run: the CPU (default)\n"
    "                          or CUDA device N (needs a library built with CUDA)\n"
    "  --codebook FILE         use this codebook instead of training one: evaluate it\n"
    "                          (--eval) and/or write it again (-o, e.g. with --storage)\n"
    "  --storage f32|f16|bf16  dtype of the written file's key sub-centers and value\n"
    "                          matrices (default f32, exact; f16 halves the file, see\n"
    "                          docs/FORMATS.md); --eval then measures the file as written\n"
    "  --eval FILE             after training (or for --codebook), report key and value\n"
    "                          MSE on this KV file (e.g. tools/collect_kv.py on your own\n"
    "                          text), and its relative error next to the calibration\n"
    "                          data's, flagged when out of domain; may be repeated\n"
    "  --calib FILE            with --codebook: the calibration KV the --eval files are\n"
    "                          compared with (after training: the --input)\n"
    "  --ood-ratio X           flag an --eval file whose relative key or value error in\n"
    "                          a layer is above X times the calibration data's (default 1.5)\n"
    "  -q, --quiet             no progress (a bar on a terminal, else a line per 5%)\n";

[[noreturn]] void usage_error(const std::string& message) {
    std::fprintf(stderr, "commvq-train: %s\n\n%s", message.c_str(), kUsage);
    std::exit(2);
}

struct KvFile {
    uint32_t n_layers = 0, n_kv_heads = 0, head_dim = 0;
    uint64_t n_tokens = 0;
    std::vector<float> keys, values;  // [L][T][Hkv][d]
    uint32_t n_q_heads = 0, n_queries = 0;  // queries.{l} [Tq][Hq][d], post-RoPE (0: none)
    std::vector<float> queries;             // [L][Tq][Hq][d]
    std::map<std::string, std::string> metadata;
};

KvFile read_kv(const std::string& path) {
    std::vector<uint8_t> bytes = commvq::safetensors::read_file(path);
    commvq::safetensors::File file = commvq::safetensors::parse(bytes.data(), bytes.size());
    KvFile kv;
    while (file.tensors.count("keys." + std::to_string(kv.n_layers))) ++kv.n_layers;
    commvq::require(kv.n_layers > 0, COMMVQ_ERR_FORMAT, path + ": no tensor keys.0");
    for (uint32_t l = 0; l < kv.n_layers; ++l) {
        for (const char* kind : {"keys", "values"}) {
            const auto& t = file.tensor(std::string(kind) + "." + std::to_string(l));
            commvq::require(t.shape.size() == 3, COMMVQ_ERR_FORMAT,
                            path + ": " + kind + "." + std::to_string(l) + " is not [T, Hkv, d]");
            if (kv.n_tokens == 0) {
                kv.n_tokens = t.shape[0];
                kv.n_kv_heads = uint32_t(t.shape[1]);
                kv.head_dim = uint32_t(t.shape[2]);
            }
            commvq::require(t.shape[0] == kv.n_tokens && t.shape[1] == kv.n_kv_heads && t.shape[2] == kv.head_dim,
                            COMMVQ_ERR_FORMAT, path + ": " + kind + "." + std::to_string(l) + " has another shape");
            std::vector<float> x = t.to_float();
            std::vector<float>& dst = std::strcmp(kind, "keys") == 0 ? kv.keys : kv.values;
            dst.insert(dst.end(), x.begin(), x.end());
        }
    }
    kv.metadata = file.metadata;
    if (file.tensors.count("queries.0"))
        for (uint32_t l = 0; l < kv.n_layers; ++l) {
            const auto& t = file.tensor("queries." + std::to_string(l));
            if (l == 0 && t.shape.size() == 3) {
                kv.n_queries = uint32_t(t.shape[0]);
                kv.n_q_heads = uint32_t(t.shape[1]);
            }
            commvq::require(t.shape.size() == 3 && t.shape[0] == kv.n_queries && t.shape[1] == kv.n_q_heads &&
                                t.shape[0] <= kv.n_tokens && t.shape[2] == kv.head_dim,
                            COMMVQ_ERR_FORMAT, path + ": queries." + std::to_string(l) + " is not [Tq <= T, Hq, d]");
            std::vector<float> x = t.to_float();
            kv.queries.insert(kv.queries.end(), x.begin(), x.end());
        }
    return kv;
}

// Training progress on stderr: on a terminal a bar redrawn in place at most
// every 0.2 s; elsewhere (a log, a pipe, CI) plain lines, one per 5% of the
// job, since carriage returns and escape codes only garble a file.
class Progress {
public:
    explicit Progress(bool quiet) : quiet_(quiet), bar_(isatty(fileno(stderr)) == 1), start_(Clock::now()),
                                    last_(start_) {}
    bool update(const std::string& phase, double fraction, double detail) {
        if (quiet_) return true;
        auto now = Clock::now();
        const double elapsed = std::chrono::duration<double>(now - start_).count();
        const double left = fraction > 0 ? elapsed * (1.0 - fraction) / fraction : 0.0;
        const char* measure = phase.rfind("keys", 0) == 0 ? "mse" : "loss";
        if (!bar_) {
            const int step = int(fraction * 20.0);  // 5% steps
            if (step <= lines_) return true;
            lines_ = step;
            std::fprintf(stderr, "%5.1f%% %s %s %.3e  elapsed %s  left %s\n", 100.0 * fraction, phase.c_str(),
                         measure, detail, clock(elapsed).c_str(), clock(left).c_str());
            return true;
        }
        if (fraction < 1.0 && phase == phase_ && now - last_ < std::chrono::milliseconds(200)) return true;
        phase_ = phase;
        last_ = now;
        constexpr int kWidth = 30;
        int filled = int(fraction * kWidth);
        std::fprintf(stderr, "\r[%-*s] %5.1f%% %-32s %s %.3e  elapsed %s  left %s\x1b[K", kWidth,
                     std::string(size_t(filled), '#').c_str(), 100.0 * fraction, phase.c_str(), measure, detail,
                     clock(elapsed).c_str(), clock(left).c_str());
        if (fraction >= 1.0) std::fputc('\n', stderr);
        return true;
    }
    void finish() {
        if (!quiet_ && bar_) std::fputc('\n', stderr);
    }

private:
    using Clock = std::chrono::steady_clock;
    static std::string clock(double seconds) {
        char buf[32];
        long s = long(seconds + 0.5);
        std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
        return buf;
    }
    bool quiet_, bar_;
    Clock::time_point start_, last_;
    std::string phase_;
    int lines_ = 0;  // 5% steps reported (plain lines)
};

// Key MSE after each stage and value MSE, per layer, of a codebook on a KV
// file, through the library's own encoders (what the cache stores).
// Per layer: the key MSE after the last stage (over all heads) and value MSE,
// per element, and the data's own mean square (the scale they are judged by).
struct EvalSummary {
    uint64_t tokens = 0;
    std::vector<double> key_mse, value_mse, key_ms, value_ms;
    double key_rel(uint32_t l) const { return key_ms[l] > 0 ? key_mse[l] / key_ms[l] : 0.0; }
    double value_rel(uint32_t l) const { return value_ms[l] > 0 ? value_mse[l] / value_ms[l] : 0.0; }
};

// Every row, or at most max_rows evenly spaced ones.
std::vector<uint64_t> spread_rows(uint64_t n_tokens, uint64_t max_rows) {
    std::vector<uint64_t> rows;
    const uint64_t n = std::min(n_tokens, max_rows);
    rows.reserve(n);
    for (uint64_t i = 0; i < n; ++i) rows.push_back(n == n_tokens ? i : (2 * i + 1) * n_tokens / (2 * n));
    return rows;
}

EvalSummary evaluate(const commvq::Codebook& cb, const KvFile& kv, const std::string& name,
                     const std::vector<uint64_t>& rows, bool print) {
    commvq::require(kv.n_layers >= cb.n_layers && kv.n_kv_heads == cb.n_kv_heads && kv.head_dim == cb.head_dim,
                    COMMVQ_ERR_SHAPE_MISMATCH, name + ": shape differs from the codebook's");
    const uint32_t H = cb.n_kv_heads, d = cb.head_dim, R = cb.key_stages, C = cb.sub_centers, D = cb.value_dim();
    EvalSummary summary;
    summary.tokens = rows.size();
    if (print) std::printf("evaluation on %s (%llu tokens)\n", name.c_str(), (unsigned long long)rows.size());
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        commvq::KeyEncoder keys(cb, l);
        commvq::ValueEncoder values(cb, l);
        std::vector<double> stage_err(size_t(H) * R, 0.0);
        double value_err = 0, key_ss = 0, value_ss = 0;
        std::vector<float> canonical(size_t(H) * d), approx(d), scratch(values.scratch_floats()), vhat(D);
        std::vector<uint16_t> codes(size_t(H) * R);
        std::vector<float> scales(cb.n_key_scales());
        std::vector<uint8_t> bits(cb.value_code_bits() / 8);
        for (uint64_t t : rows) {
            const float* k = kv.keys.data() + (size_t(l) * kv.n_tokens + t) * H * d;
            for (size_t e = 0; e < size_t(H) * d; ++e) key_ss += double(k[e]) * k[e];
            for (uint32_t h = 0; h < H; ++h)
                commvq::to_canonical(k + size_t(h) * d, d, cb.pair_layout, canonical.data() + size_t(h) * d);
            keys.encode(canonical.data(), codes.data(), scales.data());
            for (uint32_t h = 0; h < H; ++h) {
                float s = scales[cb.scale_mode == COMMVQ_SCALE_HEAD ? h : 0];
                std::fill(approx.begin(), approx.end(), 0.0f);
                for (uint32_t r = 0; r < R; ++r) {
                    uint16_t code = codes[size_t(h) * R + r];
                    const float* za = cb.sub_center(l, h, r, code / C);
                    const float* zb = cb.sub_center(l, h, r, code % C);
                    double err = 0;
                    for (uint32_t j = 0; j < d; j += 2) {
                        approx[j] += za[j] - zb[j + 1];  // z_A + i z_B
                        approx[j + 1] += za[j + 1] + zb[j];
                        for (uint32_t e = j; e < j + 2; ++e) {
                            double diff = double(canonical[size_t(h) * d + e]) - double(s) * approx[e];
                            err += diff * diff;
                        }
                    }
                    stage_err[size_t(h) * R + r] += err;
                }
            }
            const float* v = kv.values.data() + (size_t(l) * kv.n_tokens + t) * D;
            float w = 0;
            for (uint32_t c = 0; c < D; ++c) value_ss += double(v[c]) * v[c];
            values.encode(v, bits.data(), &w, scratch.data());
            values.decode(bits.data(), w, vhat.data());
            for (uint32_t c = 0; c < D; ++c) value_err += (double(vhat[c]) - v[c]) * (double(vhat[c]) - v[c]);
        }
        const double count = double(rows.size()) * d;
        double last = 0;
        for (uint32_t h = 0; h < H; ++h) {
            if (print) {
                std::printf("  layer %u head %u key MSE by stage:", l, h);
                for (uint32_t r = 0; r < R; ++r) std::printf(" %.3e", stage_err[size_t(h) * R + r] / count);
                std::printf("\n");
            }
            last += stage_err[size_t(h) * R + R - 1];
        }
        const double n_elements = double(rows.size()) * D;  // D = H * d
        summary.key_mse.push_back(last / n_elements);
        summary.value_mse.push_back(value_err / n_elements);
        summary.key_ms.push_back(key_ss / n_elements);
        summary.value_ms.push_back(value_ss / n_elements);
        if (print) std::printf("  layer %u value MSE: %.4e\n", l, value_err / n_elements);
    }
    return summary;
}

// Relative errors (MSE / the data's mean square) below this, in the file
// and the calibration data alike, are too small to call a codebook out of
// domain by: bytellama's degenerate layer 0 keys have 1e-7 and its layer 1
// values 2e-3 to 4e-3 on held-out prose, where a ratio of 2 means little.
constexpr double kNegligibleRelError = 1e-2;
// Calibration tokens per layer the --eval files are compared with.
constexpr uint64_t kCalibrationRows = 8192;

// An --eval file's relative errors next to the calibration data's, per
// layer; a layer whose key or value error is above ood_ratio times the
// calibration's flags the file as out of the codebook's domain.
void compare_with_calibration(const EvalSummary& eval, const EvalSummary& calib, const std::string& name,
                              const std::string& calib_name, double ood_ratio) {
    std::printf("domain check of %s against the calibration data (%s, %llu tokens):\n", name.c_str(),
                calib_name.c_str(), (unsigned long long)calib.tokens);
    std::printf("  relative error = MSE / the data's mean square; ratio = this file's / calibration's "
                "(negligible: both below %g)\n", kNegligibleRelError);
    double worst = 0;
    std::string worst_where;
    for (size_t l = 0; l < eval.key_mse.size(); ++l) {
        std::printf("  layer %zu", l);
        for (int kind = 0; kind < 2; ++kind) {
            const double e = kind == 0 ? eval.key_rel(uint32_t(l)) : eval.value_rel(uint32_t(l));
            const double c = kind == 0 ? calib.key_rel(uint32_t(l)) : calib.value_rel(uint32_t(l));
            const bool negligible = std::max(e, c) < kNegligibleRelError;
            const double ratio = c > 0 ? e / c : (e > 0 ? INFINITY : 1.0);
            std::printf("  %s %.3e (calibration %.3e, ", kind == 0 ? "keys" : "values", e, c);
            if (negligible) std::printf("negligible)");
            else std::printf("%.3gx)", ratio);
            if (!negligible && ratio > worst) {
                worst = ratio;
                worst_where = std::string(kind == 0 ? "keys" : "values") + " of layer " + std::to_string(l);
            }
        }
        std::printf("\n");
    }
    if (worst > ood_ratio)
        std::printf("  WARNING: %s is OUT OF DOMAIN for this codebook: the error on its %s is %.3gx the "
                    "calibration data's (above %.2gx). Attention on text like it will be much worse than on "
                    "the calibration text; calibrate on a mix that includes text like it (docs/TRAINING.md, "
                    "\"Calibration text\").\n",
                    name.c_str(), worst_where.c_str(), worst, ood_ratio);
    else
        std::printf("  within the calibration data's domain: worst ratio %.3gx (%s; flagged above %.2gx)\n", worst,
                    worst_where.empty() ? "no layer above negligible error" : worst_where.c_str(), ood_ratio);
}

// --attention-weight: per layer, the attention mass a_t of every token from
// the file's queries (train/attention_weights.h) and the weights
// w_t = 1 + beta * a_t / mean(a), [L][T] as TrainOptions::value_weights.
// Queries are the last Tq rows (tools/collect_kv.py); each sees its own
// chunk up to itself, positions restart at 0 per chunk.
std::vector<float> attention_value_weights(const KvFile& kv, const commvq::train::TrainOptions& options, double beta,
                                           const std::string& path) {
    if (kv.n_queries == 0)
        usage_error("--attention-weight needs queries, and " + path +
                    " has no queries.{l} (collect them with tools/collect_kv.py --queries-last N)");
    // The mass needs the model's RoPE and query heads: options carries the
    // file's (resolve_model_settings refused flags that contradict them).
    auto meta = [&](const char* key) -> std::string {
        auto it = kv.metadata.find(key);
        return it == kv.metadata.end() ? std::string() : it->second;
    };

    const uint64_t T = kv.n_tokens, Tq = kv.n_queries;
    std::vector<uint64_t> chunk_rows = {0};
    const std::string chunks = meta("chunks");
    if (!chunks.empty()) {
        nlohmann::json j = nlohmann::json::parse(chunks, nullptr, /*allow_exceptions=*/false);
        commvq::require(j.is_array() && !j.empty(), COMMVQ_ERR_FORMAT, path + ": metadata 'chunks' is not a list");
        chunk_rows.clear();
        for (const auto& c : j) {
            commvq::require(c.is_object() && c.contains("row") && c["row"].is_number_unsigned(), COMMVQ_ERR_FORMAT,
                            path + ": a chunk in the metadata has no row");
            chunk_rows.push_back(c["row"].get<uint64_t>());
        }
    }
    std::vector<uint64_t> query_rows(Tq);
    for (uint64_t i = 0; i < Tq; ++i) query_rows[i] = T - Tq + i;
    const std::vector<commvq::train::QuerySpan> spans = commvq::train::causal_query_spans(chunk_rows, T, query_rows);
    const std::vector<uint64_t> positions = commvq::train::chunk_positions(chunk_rows, T);
    const std::string query_start = meta("query_start");
    commvq::require(query_start.empty() || std::to_string(spans[0].position) == query_start, COMMVQ_ERR_FORMAT,
                    path + ": query_start " + query_start + " disagrees with the chunks (first query at position " +
                        std::to_string(spans[0].position) + ")");

    commvq::train::AttentionShape shape;
    shape.n_kv_heads = kv.n_kv_heads;
    shape.n_q_heads = kv.n_q_heads;
    shape.head_dim = kv.head_dim;
    shape.pair_layout = options.pair_layout;
    shape.rope = options.rope;
    const uint32_t threads = commvq::train::resolve_threads(options.n_threads);
    std::vector<float> weights;
    weights.reserve(size_t(kv.n_layers) * T);
    std::printf("attention weight %g: %llu queries x %u heads per layer; mass a_t summed over them\n", beta,
                (unsigned long long)Tq, kv.n_q_heads);
    for (uint32_t l = 0; l < kv.n_layers; ++l) {
        const size_t key_floats = size_t(T) * kv.n_kv_heads * kv.head_dim;
        const size_t query_floats = size_t(Tq) * kv.n_q_heads * kv.head_dim;
        const std::vector<double> mass = commvq::train::attention_mass(
            shape, kv.keys.data() + l * key_floats, positions.data(), T, kv.queries.data() + l * query_floats,
            spans.data(), Tq, threads);
        const std::vector<float> w = commvq::train::attention_token_weights(mass, beta);
        weights.insert(weights.end(), w.begin(), w.end());
        // How concentrated the mass is: tokens that get any, the share of the
        // top 1% of tokens, and of the first token of each chunk (position 0).
        uint64_t seen = 0;
        double total = 0, first = 0;
        for (uint64_t t = 0; t < T; ++t) {
            seen += mass[t] > 0;
            total += mass[t];
            if (positions[t] == 0) first += mass[t];
        }
        std::vector<double> sorted = mass;
        const size_t top = std::max<size_t>(1, T / 100);
        std::partial_sort(sorted.begin(), sorted.begin() + top, sorted.end(), std::greater<double>());
        double top_mass = 0;
        for (size_t k = 0; k < top; ++k) top_mass += sorted[k];
        std::printf("  layer %u: %llu of %llu tokens get mass (%.1f%%); top 1%% of tokens hold %.1f%% of it, "
                    "position-0 tokens %.1f%%; largest weight %.3g (mean %.3g)\n",
                    l, (unsigned long long)seen, (unsigned long long)T, 100.0 * seen / T, 100.0 * top_mass / total,
                    100.0 * first / total, double(*std::max_element(w.begin(), w.end())), 1.0 + beta);
    }
    std::fflush(stdout);
    return weights;
}

// Writes cb with the storage dtype and returns the codebook the file holds
// (its values rounded as stored), so that --eval measures what was written.
commvq::Codebook write_codebook(const commvq::Codebook& cb, const std::string& path, int32_t storage) {
    const std::vector<uint8_t> bytes = commvq::serialize_codebook(cb, storage);
    commvq::safetensors::write_file(path, bytes);
    commvq::Codebook written = commvq::parse_codebook(bytes.data(), bytes.size());
    std::printf("%s: %s storage, %llu bytes, fingerprint %016llx", path.c_str(), commvq::codebook_storage_name(storage),
                (unsigned long long)bytes.size(), (unsigned long long)written.fingerprint);
    if (written.fingerprint != cb.fingerprint)
        std::printf(" (of the rounded values; %016llx before)", (unsigned long long)cb.fingerprint);
    std::printf("\n");
    return written;
}

double parse_number(const std::string& flag, const char* text) {
    char* end = nullptr;
    double v = std::strtod(text, &end);
    if (end == text || *end != '\0' || !std::isfinite(v)) usage_error(flag + " needs a number, got '" + text + "'");
    return v;
}

uint64_t parse_count(const std::string& flag, const char* text) {
    double v = parse_number(flag, text);
    if (v < 0 || v != std::floor(v) || v > 1e18) usage_error(flag + " needs a non-negative integer, got '" + text + "'");
    return uint64_t(v);
}

int run(int argc, char** argv) {
    commvq::train::TrainOptions options;
    train_tool::ModelFlags model;
    std::string input, output, codebook_path;
    int32_t storage = COMMVQ_DTYPE_F32;
    std::vector<std::string> evals;
    std::string calib_path;
    double ood_ratio = 1.5;
    bool quiet = false;
    double attention_beta = 0;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) usage_error(a + " needs a value");
            return argv[++i];
        };
        if (a == "-h" || a == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        } else if (a == "-i" || a == "--input") input = value();
        else if (a == "-o" || a == "--output") output = value();
        else if (a == "--codebook") codebook_path = value();
        else if (a == "--storage") {
            std::string s = value();
            if (s == "f32") storage = COMMVQ_DTYPE_F32;
            else if (s == "f16") storage = COMMVQ_DTYPE_F16;
            else if (s == "bf16") storage = COMMVQ_DTYPE_BF16;
            else usage_error("--storage must be f32, f16 or bf16");
        }
        else if (a == "--eval") evals.push_back(value());
        else if (a == "--calib") calib_path = value();
        else if (a == "--ood-ratio") {
            ood_ratio = parse_number(a, value());
            if (ood_ratio <= 0) usage_error("--ood-ratio must be positive");
        }
        else if (a == "-q" || a == "--quiet") quiet = true;
        else if (a == "--bits") {
            options.value_bits = uint32_t(parse_count(a, value()));
            if (options.value_bits != 1 && options.value_bits != 2) usage_error("--bits must be 1 or 2");
        } else if (a == "--stages") options.key_stages = uint32_t(parse_count(a, value()));
        else if (a == "--sub-centers") options.sub_centers = uint32_t(parse_count(a, value()));
        else if (a == "--pairs") {
            std::string p = value();
            if (p == "rotate-half") model.pair_layout = COMMVQ_PAIRS_ROTATE_HALF;
            else if (p == "interleaved") model.pair_layout = COMMVQ_PAIRS_INTERLEAVED;
            else usage_error("--pairs must be rotate-half or interleaved");
        } else if (a == "--scale") {
            std::string s = value();
            if (s == "token") options.scale_mode = COMMVQ_SCALE_TOKEN;
            else if (s == "head") options.scale_mode = COMMVQ_SCALE_HEAD;
            else usage_error("--scale must be token or head");
        } else if (a == "--q-heads") model.n_q_heads = uint32_t(parse_count(a, value()));
        else if (a == "--rope-theta") model.rope_theta = parse_number(a, value());
        else if (a == "--rope-scaling") {
            std::string s = value();
            if (s == "none") model.rope_scaling = COMMVQ_ROPE_SCALING_NONE;
            else if (s == "linear") model.rope_scaling = COMMVQ_ROPE_SCALING_LINEAR;
            else if (s == "llama3") model.rope_scaling = COMMVQ_ROPE_SCALING_LLAMA3;
            else usage_error("--rope-scaling must be none, linear or llama3");
        } else if (a == "--rope-factor") model.rope_factor = parse_number(a, value());
        else if (a == "--rope-low-freq-factor") model.rope_low_freq_factor = parse_number(a, value());
        else if (a == "--rope-high-freq-factor") model.rope_high_freq_factor = parse_number(a, value());
        else if (a == "--rope-original-max-position") model.rope_original_max_position = parse_number(a, value());
        else if (a == "--model-name") model.model_name = value();
        else if (a == "--max-samples") options.max_samples = parse_count(a, value());
        else if (a == "--key-steps") options.key_max_steps = uint32_t(parse_count(a, value()));
        else if (a == "--value-steps") options.value_steps = uint32_t(parse_count(a, value()));
        else if (a == "--value-batch") options.value_batch = uint32_t(parse_count(a, value()));
        else if (a == "--value-hidden") options.value_hidden = uint32_t(parse_count(a, value()));
        else if (a == "--value-lr") options.value_lr = float(parse_number(a, value()));
        else if (a == "--no-gumbel") options.value_gumbel = false;
        else if (a == "--attention-weight") {
            attention_beta = parse_number(a, value());
            if (attention_beta < 0) usage_error("--attention-weight must be >= 0");
        }
        else if (a == "--seed") options.seed = parse_count(a, value());
        else if (a == "--threads") options.n_threads = uint32_t(parse_count(a, value()));
        else if (a == "--device") {
            std::string d = value();
            options.device = d == "cpu" ? COMMVQ_DEVICE_CPU : int32_t(parse_count(a, d.c_str()));
        }
        else usage_error("unknown option " + a);
    }

    commvq::Codebook cb;
    EvalSummary calib;  // the calibration data's errors, what --eval files are compared with
    std::string calib_name;
    if (!calib_path.empty() && codebook_path.empty())
        usage_error("--calib goes with --codebook (after training the --input is the calibration data)");
    if (!calib_path.empty() && evals.empty()) usage_error("--calib needs --eval FILE to compare with it");
    if (!codebook_path.empty()) {
        if (!input.empty()) usage_error("--codebook evaluates or re-saves a codebook; it takes no --input");
        if (evals.empty() && output.empty()) usage_error("--codebook needs --eval FILE or -o FILE");
        if (attention_beta > 0) usage_error("--attention-weight applies to training, not to --codebook");
        cb = commvq::load_codebook(codebook_path);
        if (!output.empty()) cb = write_codebook(cb, output, storage);
        if (!calib_path.empty()) {
            const KvFile kv = read_kv(calib_path);
            calib = evaluate(cb, kv, calib_path, spread_rows(kv.n_tokens, kCalibrationRows), false);
            calib_name = calib_path;
        }
    } else {
        if (input.empty() || output.empty()) usage_error("--input and --output are required");
        KvFile kv = read_kv(input);
        std::fprintf(stderr, "%s: %u layers, %llu tokens, %u KV heads, head_dim %u\n", input.c_str(), kv.n_layers,
                     (unsigned long long)kv.n_tokens, kv.n_kv_heads, kv.head_dim);
        try {
            const train_tool::KvModel file{input, kv.metadata, kv.n_layers, kv.n_kv_heads, kv.head_dim, kv.n_q_heads};
            for (const std::string& note : train_tool::resolve_model_settings(model, file, options))
                std::fprintf(stderr, "  %s\n", note.c_str());
        } catch (const train_tool::SettingsConflict& e) {
            std::fprintf(stderr, "commvq-train: %s\n", e.what());
            return 2;
        }
        std::vector<float> value_weights;  // [L][T], kept alive through training
        if (attention_beta > 0) {
            value_weights = attention_value_weights(kv, options, attention_beta, input);
            options.value_weights = value_weights.data();
        }
        Progress bar(quiet);
        commvq::train::TrainReport report;
        auto start = std::chrono::steady_clock::now();
        cb = commvq::train::train_codebook(
            options, kv.n_layers, kv.n_kv_heads, kv.head_dim, kv.n_tokens, kv.keys.data(), kv.values.data(),
            [&](const std::string& phase, double fraction, double detail) { return bar.update(phase, fraction, detail); },
            &report);
        bar.finish();
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        cb = write_codebook(cb, output, storage);
        std::printf("wrote %s: %u layers, R=%u, C=%u, value bits %u, I=%u, trained on %llu tokens per layer in %.0f s\n",
                    output.c_str(), cb.n_layers, cb.key_stages, cb.sub_centers, cb.value_bits, cb.value_hidden,
                    (unsigned long long)report.samples, seconds);
        std::printf("training data (dead sub-centers re-seeded: %llu)\n", (unsigned long long)report.reseeded);
        for (uint32_t l = 0; l < cb.n_layers; ++l) {
            for (uint32_t h = 0; h < cb.n_kv_heads; ++h) {
                std::printf("  layer %u head %u key MSE by stage:", l, h);
                for (double m : report.key_mse[l][h]) std::printf(" %.3e", m);
                std::printf("  (EM steps:");
                for (uint32_t s : report.key_steps[l][h]) std::printf(" %u", s);
                std::printf(")\n");
            }
            std::printf("  layer %u value MSE: %.4e\n", l, report.value_mse[l]);
        }
        if (!evals.empty()) {
            // Measured as the --eval files are (the encoders of the file as written).
            calib = evaluate(cb, kv, input, spread_rows(kv.n_tokens, kCalibrationRows), false);
            calib_name = input;
        }
        std::fprintf(stderr,
                     "note: this codebook fits text like its calibration data only; if the model will read "
                     "other kinds of text (code, JSON, other languages), calibrate on them too, and check with "
                     "--eval on a KV file of your own text (docs/TRAINING.md, \"Calibration text\")\n");
    }
    for (const std::string& path : evals) {
        const KvFile kv = read_kv(path);
        const EvalSummary summary = evaluate(cb, kv, path, spread_rows(kv.n_tokens, kv.n_tokens), true);
        if (calib.tokens)
            compare_with_calibration(summary, calib, path, calib_name, ood_ratio);
        else
            std::printf("no calibration data to compare %s with: pass --calib CALIB_KV.safetensors (the KV file "
                        "the codebook was trained on) to see whether it is out of the codebook's domain\n",
                        path.c_str());
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const Error& e) {
        std::fprintf(stderr, "\ncommvq-train: %s (status %d)\n", e.what(), int(e.status()));
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "\ncommvq-train: %s\n", e.what());
        return 1;
    }
}
