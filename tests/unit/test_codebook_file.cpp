// Codebook files: round trip, fingerprint, and refusal of every kind of
// damaged or foreign file with a clear status (never a crash).
#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "codebook_file.h"
#include "error.h"
#include "random_codebook.h"
#include "safetensors.h"
#include "safetensors_edit.h"

using namespace commvq;

namespace {

Codebook small_codebook(uint64_t seed = 1) {
    test::RandomCodebookSpec spec;
    spec.n_layers = 2;
    spec.n_kv_heads = 2;
    spec.n_q_heads = 4;
    spec.head_dim = 16;
    spec.key_stages = 3;
    spec.sub_centers = 8;
    spec.value_bits = 2;
    spec.pair_layout = COMMVQ_PAIRS_INTERLEAVED;
    spec.scale_mode = COMMVQ_SCALE_HEAD;
    spec.rope.theta = 500000;
    spec.rope.scaling = COMMVQ_ROPE_SCALING_LLAMA3;
    spec.rope.factor = 8;
    spec.rope.low_freq_factor = 1;
    spec.rope.high_freq_factor = 4;
    spec.rope.original_max_position = 8192.5;  // not an integer: doubles must round-trip
    spec.seed = seed;
    return test::random_codebook(spec);
}

commvq_status_t status_of_parse(const std::vector<uint8_t>& bytes) {
    try {
        parse_codebook(bytes.data(), bytes.size());
    } catch (const Error& e) {
        CHECK(std::strlen(e.what()) > 10);  // a message that says something
        return e.status();
    }
    return COMMVQ_OK;
}

// A file's header as JSON, and a file rebuilt from an edited header and the original data.
using Split = test::SafetensorsSplit;
Split split(const std::vector<uint8_t>& file) { return test::split_safetensors(file); }
std::vector<uint8_t> join(const nlohmann::json& header, const std::vector<uint8_t>& data) {
    return test::join_safetensors(header, data);
}

}  // namespace

TEST_CASE("codebook file: round trip is bit-identical, keeps every field and the fingerprint") {
    const Codebook cb = small_codebook();
    const std::vector<uint8_t> bytes = serialize_codebook(cb);
    // 8-byte aligned data, as the header promises.
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
    CHECK(n % 8 == 0);
    const Codebook back = parse_codebook(bytes.data(), bytes.size());
    CHECK(back.fingerprint == cb.fingerprint);
    CHECK(back.n_layers == cb.n_layers);
    CHECK(back.n_kv_heads == cb.n_kv_heads);
    CHECK(back.n_q_heads == cb.n_q_heads);
    CHECK(back.head_dim == cb.head_dim);
    CHECK(back.key_stages == cb.key_stages);
    CHECK(back.sub_centers == cb.sub_centers);
    CHECK(back.value_bits == cb.value_bits);
    CHECK(back.value_hidden == cb.value_hidden);
    CHECK(back.pair_layout == cb.pair_layout);
    CHECK(back.scale_mode == cb.scale_mode);
    CHECK(back.rope.theta == cb.rope.theta);
    CHECK(back.rope.scaling == cb.rope.scaling);
    CHECK(back.rope.factor == cb.rope.factor);
    CHECK(back.rope.low_freq_factor == cb.rope.low_freq_factor);
    CHECK(back.rope.high_freq_factor == cb.rope.high_freq_factor);
    CHECK(back.rope.original_max_position == cb.rope.original_max_position);
    CHECK(back.model_name == cb.model_name);
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const auto a = layer_tensor_data(cb.layers[l]);
        const auto b = layer_tensor_data(back.layers[l]);
        for (size_t t = 0; t < a.size(); ++t) {
            REQUIRE(a[t]->size() == b[t]->size());
            CHECK(std::memcmp(a[t]->data(), b[t]->data(), a[t]->size() * 4) == 0);
        }
    }
    CHECK(back.cross == cb.cross);
    CHECK(back.norms == cb.norms);
    CHECK(serialize_codebook(back) == bytes);

    // Through a file as well.
    const std::string path =
        (std::filesystem::temp_directory_path() / ("commvq-test-codebook-" + std::to_string(cb.fingerprint))).string();
    save_codebook(cb, path);
    const Codebook loaded = load_codebook(path);
    CHECK(loaded.fingerprint == cb.fingerprint);
    std::remove(path.c_str());
}

TEST_CASE("codebook fingerprint covers every parameter and the shape metadata") {
    const Codebook cb = small_codebook();
    CHECK(cb.fingerprint == small_codebook().fingerprint);  // deterministic
    CHECK(cb.fingerprint != small_codebook(2).fingerprint);
    // One changed value in any tensor changes the fingerprint.
    for (size_t t = 0; t < 9; ++t) {
        Codebook changed = cb;
        std::vector<float>& v = *layer_tensor_data(changed.layers[1])[t];
        v[v.size() / 2] = std::nextafter(v[v.size() / 2], 1e9f);
        changed.finalize();
        CAPTURE(t);
        CHECK(changed.fingerprint != cb.fingerprint);
    }
    Codebook theta = cb;
    theta.rope.theta = std::nextafter(theta.rope.theta, 1e9);
    theta.finalize();
    CHECK(theta.fingerprint != cb.fingerprint);
    Codebook layout = cb;
    layout.pair_layout = COMMVQ_PAIRS_ROTATE_HALF;
    layout.finalize();
    CHECK(layout.fingerprint != cb.fingerprint);
    // The model name is a description, not part of the codebook's identity.
    Codebook renamed = cb;
    renamed.model_name = "another name";
    renamed.finalize();
    CHECK(renamed.fingerprint == cb.fingerprint);
}

TEST_CASE("codebook fingerprint matches its documented definition (FNV-1a 64)") {
    // docs/FORMATS.md: FNV-1a over "commvq-codebook\n", then "key=value\n"
    // for the shape metadata in file order, then every tensor's bytes.
    const Codebook cb = small_codebook();
    uint64_t h = 0xcbf29ce484222325ull;
    auto add = [&h](const void* p, size_t n) {
        for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 0x100000001b3ull;
    };
    std::string text = "commvq-codebook\n";
    const std::vector<std::string> keys = {"n_layers", "n_kv_heads", "n_q_heads", "head_dim", "key_stages",
                                           "sub_centers", "value_bits", "value_hidden", "pair_layout",
                                           "scale_mode", "rope_theta", "rope_scaling", "rope_factor",
                                           "rope_low_freq_factor", "rope_high_freq_factor",
                                           "rope_original_max_position"};
    const std::vector<uint8_t> bytes = serialize_codebook(cb);
    const safetensors::File f = safetensors::parse(bytes.data(), bytes.size());
    for (const std::string& k : keys) text += k + "=" + f.metadata.at(k) + "\n";
    CHECK(f.metadata.at("rope_original_max_position") == "8192.5");
    CHECK(f.metadata.at("pair_layout") == "interleaved");
    add(text.data(), text.size());
    const char* names[] = {"keys.sub_centers", "values.lambda", "values.norm.weight", "values.norm.bias",
                           "values.enc1.weight", "values.enc1.bias", "values.enc2.weight", "values.enc2.bias",
                           "values.codebook"};
    for (uint32_t l = 0; l < cb.n_layers; ++l)
        for (const char* name : names) {
            const safetensors::TensorView& t = f.tensor("layers." + std::to_string(l) + "." + name);
            add(t.data, t.bytes);
        }
    CHECK(h == cb.fingerprint);
    char hex[20];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    CHECK(f.metadata.at("fingerprint") == hex);
    CHECK(f.metadata.at("format") == "commvq-codebook");
    CHECK(f.metadata.at("format_version") == "1");
    CHECK(f.tensor("layers.0.keys.sub_centers").shape == std::vector<uint64_t>{2, 3, 8, 16});
    CHECK(f.tensor("layers.1.values.enc2.weight").shape ==
          std::vector<uint64_t>{4 * cb.value_groups(), cb.value_hidden});
}

TEST_CASE("codebook file: missing file is an IO error") {
    try {
        load_codebook("/nonexistent/dir/codebook.safetensors");
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(e.status() == COMMVQ_ERR_IO);
    }
}

TEST_CASE("codebook file: every truncation is refused") {
    const std::vector<uint8_t> bytes = serialize_codebook(small_codebook());
    // Every length up to the end of the header, then a spread of lengths into the data.
    std::vector<size_t> lengths;
    for (size_t n = 0; n < 600 && n < bytes.size(); ++n) lengths.push_back(n);
    for (size_t n = 600; n < bytes.size(); n += 997) lengths.push_back(n);
    lengths.push_back(bytes.size() - 1);
    for (size_t n : lengths) {
        const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + long(n));
        const commvq_status_t s = status_of_parse(cut);
        CAPTURE(n);
        CHECK((s == COMMVQ_ERR_CORRUPT || s == COMMVQ_ERR_FORMAT));
    }
}

TEST_CASE("codebook file: damaged headers and foreign files are refused") {
    const std::vector<uint8_t> good = serialize_codebook(small_codebook());
    CHECK(status_of_parse(good) == COMMVQ_OK);
    auto expect = [&](const std::vector<uint8_t>& bytes, commvq_status_t status, const char* what) {
        CAPTURE(what);
        CHECK(status_of_parse(bytes) == status);
    };
    {
        std::vector<uint8_t> b = good;
        b[7] = 0x40;  // header length far beyond the file
        expect(b, COMMVQ_ERR_CORRUPT, "header length beyond the file");
    }
    {
        std::vector<uint8_t> b = good;
        b[8] = '[';
        b[9] = '{';  // no longer valid JSON
        expect(b, COMMVQ_ERR_FORMAT, "bad JSON");
    }
    const Split s = split(good);
    auto edited = [&](auto edit, commvq_status_t status, const char* what) {
        Split e = s;
        edit(e);
        expect(join(e.header, e.data), status, what);
    };
    edited([](Split& e) { e.header["__metadata__"]["format_version"] = "2"; }, COMMVQ_ERR_FORMAT, "unknown version");
    edited([](Split& e) { e.header["__metadata__"].erase("format"); }, COMMVQ_ERR_FORMAT, "no format");
    edited([](Split& e) { e.header["__metadata__"]["format"] = "other"; }, COMMVQ_ERR_FORMAT, "other format");
    edited([](Split& e) { e.header["__metadata__"].erase("key_stages"); }, COMMVQ_ERR_FORMAT, "missing metadata");
    edited([](Split& e) { e.header["__metadata__"]["head_dim"] = "sixteen"; }, COMMVQ_ERR_FORMAT, "bad number");
    edited([](Split& e) { e.header["__metadata__"]["head_dim"] = "-16"; }, COMMVQ_ERR_FORMAT, "negative number");
    edited([](Split& e) { e.header["__metadata__"]["rope_theta"] = "inf"; }, COMMVQ_ERR_FORMAT, "infinite theta");
    edited([](Split& e) { e.header["__metadata__"]["scale_mode"] = "layer"; }, COMMVQ_ERR_FORMAT, "bad enum");
    edited([](Split& e) { e.header["__metadata__"]["n_layers"] = "3"; }, COMMVQ_ERR_FORMAT, "n_layers too big");
    edited([](Split& e) { e.header["__metadata__"]["n_layers"] = "1"; }, COMMVQ_ERR_FORMAT, "extra layer's tensors");
    edited([](Split& e) { e.header["__metadata__"]["value_bits"] = "1"; }, COMMVQ_ERR_FORMAT, "shape vs metadata");
    edited([](Split& e) { e.header["__metadata__"]["head_dim"] = "4294967295"; }, COMMVQ_ERR_FORMAT, "huge dim");
    edited([](Split& e) { e.header["__metadata__"]["n_layers"] = "0"; }, COMMVQ_ERR_FORMAT, "zero layers");
    edited([](Split& e) { e.header["__metadata__"]["fingerprint"] = "0123456789abcdef"; }, COMMVQ_ERR_CORRUPT,
           "wrong fingerprint");
    edited([](Split& e) { e.header["__metadata__"].erase("fingerprint"); }, COMMVQ_ERR_FORMAT, "no fingerprint");
    edited([](Split& e) { e.header["__metadata__"]["n_kv_heads"] = 2; }, COMMVQ_ERR_FORMAT, "metadata not a string");
    edited([](Split& e) { e.header.erase("layers.1.values.enc1.bias"); }, COMMVQ_ERR_FORMAT, "missing tensor");
    edited(
        [](Split& e) {
            e.header["layers.0.extra"] = {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {e.data.size(), e.data.size() + 4}}};
            e.data.resize(e.data.size() + 4);
        },
        COMMVQ_ERR_FORMAT, "extra tensor");
    edited([](Split& e) { e.header["layers.0.values.lambda"]["dtype"] = "F16"; }, COMMVQ_ERR_FORMAT,
           "wrong dtype (byte count no longer matches)");
    edited(
        [](Split& e) {
            auto& t = e.header["layers.0.values.lambda"];
            t["dtype"] = "I32";
        },
        COMMVQ_ERR_FORMAT, "wrong dtype, same size");
    edited([](Split& e) { e.header["layers.0.values.lambda"]["dtype"] = "Q4"; }, COMMVQ_ERR_FORMAT, "unknown dtype");
    edited(
        [](Split& e) {
            auto& t = e.header["layers.0.values.lambda"];
            const uint64_t n = t["shape"][0].get<uint64_t>();
            t["shape"] = {n / 2, 2};
        },
        COMMVQ_ERR_FORMAT, "mis-shaped tensor (same size)");
    edited([](Split& e) { e.header["layers.0.values.lambda"]["shape"] = {1}; }, COMMVQ_ERR_FORMAT,
           "shape disagrees with byte count");
    edited([](Split& e) { e.header["layers.0.values.lambda"]["shape"] = {-32}; }, COMMVQ_ERR_FORMAT, "negative dim");
    edited([](Split& e) { e.header["layers.0.values.lambda"]["data_offsets"] = {0}; }, COMMVQ_ERR_FORMAT,
           "offsets not a pair");
    edited(
        [](Split& e) {
            auto& t = e.header["layers.0.values.lambda"];
            const uint64_t b = t["data_offsets"][0].get<uint64_t>(), en = t["data_offsets"][1].get<uint64_t>();
            t["data_offsets"] = {en, b};
        },
        COMMVQ_ERR_CORRUPT, "begin > end");
    edited(
        [](Split& e) {
            auto& t = e.header["layers.1.values.codebook"];
            const uint64_t size = t["data_offsets"][1].get<uint64_t>() - t["data_offsets"][0].get<uint64_t>();
            t["data_offsets"] = {e.data.size() - size + 4, e.data.size() + 4};
        },
        COMMVQ_ERR_CORRUPT, "offsets past the end");
    edited(
        [](Split& e) {
            auto& t = e.header["layers.1.values.codebook"];
            const uint64_t big = ~uint64_t(0) - 3;
            t["data_offsets"] = {big, big + 2};
        },
        COMMVQ_ERR_CORRUPT, "offsets near 2^64");
    edited(
        [](Split& e) {
            // lambda moved onto norm.weight (same size): overlap
            e.header["layers.0.values.lambda"]["data_offsets"] = e.header["layers.0.values.norm.weight"]["data_offsets"];
        },
        COMMVQ_ERR_CORRUPT, "overlapping tensors");
    {
        Split e = s;
        // A NaN in a tensor (fingerprint recomputed would differ anyway; the
        // value check comes first and says what is wrong).
        const auto& t = e.header["layers.0.values.lambda"];
        const uint64_t at = t["data_offsets"][0].get<uint64_t>();
        const float nan = NAN;
        std::memcpy(e.data.data() + at, &nan, 4);
        expect(join(e.header, e.data), COMMVQ_ERR_FORMAT, "NaN in a tensor");
    }
    {
        Split e = s;
        e.data[e.data.size() / 2] ^= 0x10;  // a flipped bit: caught by the fingerprint
        const commvq_status_t st = status_of_parse(join(e.header, e.data));
        CHECK((st == COMMVQ_ERR_CORRUPT || st == COMMVQ_ERR_FORMAT));
    }
    expect(std::vector<uint8_t>{}, COMMVQ_ERR_CORRUPT, "empty file");
    {
        const std::string text = "{\"a\": 1}";
        std::vector<uint8_t> b(8);
        b[0] = uint8_t(text.size());
        b.insert(b.end(), text.begin(), text.end());
        expect(b, COMMVQ_ERR_FORMAT, "JSON that is not a safetensors header");
    }
}

TEST_CASE("codebook finalize rejects inconsistent codebooks") {
    auto status_of = [](Codebook cb) {
        try {
            cb.finalize();
        } catch (const Error& e) {
            return e.status();
        }
        return commvq_status_t(COMMVQ_OK);
    };
    const Codebook good = small_codebook();
    CHECK(status_of(good) == COMMVQ_OK);
    Codebook c = good;
    c.head_dim = 15;
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    c = good;
    c.head_dim = 0;
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    c = good;
    c.value_bits = 3;
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    c = good;
    c.sub_centers = 0;
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    c = good;
    c.layers.pop_back();
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    c = good;
    c.layers[1].values.enc2_bias.pop_back();
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    c = good;
    c.layers[0].keys.sub_centers[5] = INFINITY;
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    c = good;
    c.layers[0].values.lambda[2] = -0.5f;
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    c = good;
    c.n_q_heads = 3;
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    c = good;
    c.rope.high_freq_factor = c.rope.low_freq_factor;
    CHECK(status_of(c) == COMMVQ_ERR_FORMAT);
    // D * b must fill whole bytes: 1 head of 2 dims at 1 bit is 2 bits.
    test::RandomCodebookSpec spec;
    spec.n_layers = 1;
    spec.n_kv_heads = 1;
    spec.n_q_heads = 1;
    spec.head_dim = 4;
    spec.value_bits = 1;
    CHECK_THROWS_AS(test::random_codebook(spec), Error);
    // Derived values.
    CHECK(good.code_bits() == 6);  // C = 8: 64 codes
    Codebook c64 = good;
    c64.sub_centers = 64;
    CHECK(c64.code_bits() == 12);
    CHECK(key_stages_for_bits(1) == 11);
    CHECK(key_stages_for_bits(2) == 21);
    CHECK(value_hidden_for(1024, 1) == 2048);
    CHECK(value_hidden_for(1024, 2) == 4096);
    CHECK(value_hidden_for(8192, 2) == 4096);
}

TEST_CASE("codebook cross and norm tables hold gamma and ||z||^2") {
    const Codebook cb = small_codebook();
    const uint32_t C = cb.sub_centers, d = cb.head_dim, R = cb.key_stages;
    for (uint32_t h = 0; h < cb.n_kv_heads; ++h)
        for (uint32_t r = 0; r < R; ++r)
            for (uint32_t a = 0; a < C; ++a) {
                const float* za = cb.sub_center(1, h, r, a);
                double nn = 0;
                for (uint32_t k = 0; k < d; ++k) nn += double(za[k]) * za[k];
                CHECK(cb.norms[1][(h * R + r) * C + a] == doctest::Approx(nn).epsilon(1e-6));
                for (uint32_t b = 0; b < C; ++b) {
                    const float* zb = cb.sub_center(1, h, r, b);
                    double g = 0;  // <z_a, i z_b>, i (x, y) = (-y, x)
                    for (uint32_t j = 0; j < d / 2; ++j) g += za[2 * j] * -double(zb[2 * j + 1]) + za[2 * j + 1] * double(zb[2 * j]);
                    CHECK(cb.cross[1][((h * R + r) * C + a) * C + b] == doctest::Approx(2 * g).epsilon(1e-5).scale(1e-6));
                }
            }
}

TEST_CASE("safetensors: memory parse of f16/bf16/f32 tensors and metadata") {
    safetensors::Writer w;
    w.set_metadata("k", "v");
    const std::vector<float> x = {1.0f, -2.5f, 65504.0f, 1e-3f};
    w.add_f32("a", {2, 2}, x.data());
    w.add_f16("b", {4}, x.data());
    w.add_f32("empty", {0, 3}, nullptr);
    const std::vector<uint8_t> bytes = w.serialize();
    // Parse at an odd address: tensor data need not be aligned.
    std::vector<uint8_t> shifted(bytes.size() + 1);
    std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
    const safetensors::File f = safetensors::parse(shifted.data() + 1, bytes.size());
    CHECK(f.metadata.at("k") == "v");
    CHECK(f.tensor("a").to_float() == x);
    CHECK(f.tensor("a").shape == std::vector<uint64_t>{2, 2});
    const std::vector<float> b = f.tensor("b").to_float();
    CHECK(b[0] == 1.0f);
    CHECK(b[2] == 65504.0f);
    CHECK(b[3] == doctest::Approx(1e-3).epsilon(1e-3));
    CHECK(f.tensor("empty").numel() == 0);
    CHECK_THROWS_AS(f.tensor("missing"), Error);
}
