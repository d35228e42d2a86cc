// Codebook files with half-precision tensors: F16 and BF16 storage round the
// four matrices of a layer and keep the vectors; loading widens them exactly;
// the fingerprint is that of the float32 values a reader gets; damaged F16
// files are refused; a cache made from an F16 file attends as its float64
// model says and refuses sequences saved under the float32 original.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cache.h"
#include "cache_reference.h"
#include "capi/guard.h"
#include "codebook_file.h"
#include "commvq/commvq.h"
#include "dtype.h"
#include "error.h"
#include "random_codebook.h"
#include "safetensors.h"
#include "safetensors_edit.h"

using namespace commvq;

namespace {

const char* kTensorNames[] = {"keys.sub_centers",   "values.lambda",      "values.norm.weight",
                              "values.norm.bias",   "values.enc1.weight", "values.enc1.bias",
                              "values.enc2.weight", "values.enc2.bias",   "values.codebook"};

Codebook storage_codebook(uint64_t seed = 5) {
    test::RandomCodebookSpec spec;
    spec.n_layers = 2;
    spec.n_kv_heads = 2;
    spec.n_q_heads = 4;
    spec.head_dim = 16;
    spec.key_stages = 3;
    spec.sub_centers = 8;
    spec.value_bits = 1;
    spec.seed = seed;
    Codebook cb = test::random_codebook(spec);
    // Values that test the rounding's edge cases, in rounded tensors of layer 1.
    std::vector<float>& z = cb.layers[1].keys.sub_centers;
    const float specials[] = {
        1.0f + 0x1p-11f,             // halfway between f16 1 and 1 + 2^-10: ties to even (1)
        1.0f + 3 * 0x1p-11f,         // halfway, rounds up to the even 1 + 2^-9
        1.0f + 0x1p-8f,              // halfway between bf16 1 and 1 + 2^-7: ties to even (1)
        -0.0f,                       // keeps its sign
        1e-6f,                       // an f16 subnormal
        -2e-8f,                      // below half the smallest f16 subnormal: -0 in f16
        6.1e-5f,                     // near the smallest f16 normal
        65504.0f,                    // the largest f16
        65519.0f,                    // just below the f16 overflow threshold: 65504
        1.0f / 3.0f,                 // an ordinary inexact value
        std::nextafter(2.0f, 0.0f),  // rounds up across a power of two
    };
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; ++i) z[7 + i] = specials[i];
    cb.layers[1].values.enc2_weight[3] = 0x1p-24f * 1.5f;  // between f16 subnormals: ties to even (2^-23)
    cb.finalize();
    return cb;
}

// The f16 value nearest to x, ties to the even bit pattern, from a sorted
// table of every finite positive f16 decoded with the textbook formula (in
// double; independent of the library's bit manipulation). x must not exceed
// 65520 in magnitude.
float reference_f16(float x) {
    static const std::vector<double> table = [] {
        std::vector<double> t;
        for (uint32_t h = 0; h < 0x7c00; ++h) {  // +0 .. 65504, increasing with the bit pattern
            const uint32_t e = h >> 10, m = h & 0x3ff;
            t.push_back(e == 0 ? std::ldexp(double(m), -24) : std::ldexp(1024.0 + m, int(e) - 25));
        }
        return t;
    }();
    const double a = std::fabs(double(x));
    REQUIRE(a < 65520.0);
    size_t hi = size_t(std::lower_bound(table.begin(), table.end(), a) - table.begin());
    if (hi == table.size()) hi = table.size() - 1;
    size_t best = hi;
    if (hi > 0) {
        const double below = a - table[hi - 1], above = table[hi] - a;
        if (below < above || (below == above && (hi - 1) % 2 == 0)) best = hi - 1;
    }
    const double v = table[best];
    return float(std::signbit(x) ? -v : v);
}

// The bf16 value nearest to x, ties to even: of the two floats around x whose
// low 16 bits are zero, the nearer (in double), the even one on a tie.
float reference_bf16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    const uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
    float flo, fhi;
    std::memcpy(&flo, &lo, 4);
    std::memcpy(&fhi, &hi, 4);
    const double dlo = std::fabs(double(x) - flo), dhi = std::fabs(double(fhi) - x);
    if (dlo < dhi || (dlo == dhi && ((lo >> 16) & 1) == 0)) return flo;
    return fhi;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

uint64_t fnv1a(const void* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 0x100000001b3ull;
    return h;
}

std::string hex64(uint64_t v) {
    char buf[20];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return buf;
}

using Split = test::SafetensorsSplit;
Split split(const std::vector<uint8_t>& file) { return test::split_safetensors(file); }
std::vector<uint8_t> join(const nlohmann::json& header, const std::vector<uint8_t>& data) {
    return test::join_safetensors(header, data);
}

// Loads bytes through the C API: the status, and checks that a failure
// leaves *out alone and says why.
commvq_status_t load_status(const std::vector<uint8_t>& bytes) {
    commvq_codebook_t* const sentinel = reinterpret_cast<commvq_codebook_t*>(0x1);
    commvq_codebook_t* out = sentinel;
    const commvq_status_t s = commvq_codebook_load_memory(bytes.data(), bytes.size(), &out);
    if (s == COMMVQ_OK) {
        commvq_codebook_free(out);
    } else {
        CHECK(out == sentinel);
        CHECK(std::strlen(commvq_last_error()) > 10);
    }
    return s;
}

std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() / ("commvq-test-storage-" + name + "-" + std::to_string(std::rand())))
        .string();
}

}  // namespace

TEST_CASE("codebook storage: F16 and BF16 round the four matrices to nearest even, keep the vectors") {
    const Codebook cb = storage_codebook();
    const size_t f32_size = serialize_codebook(cb).size();
    for (const int32_t storage : {COMMVQ_DTYPE_F16, COMMVQ_DTYPE_BF16}) {
        const char* name = storage == COMMVQ_DTYPE_F16 ? "F16" : "BF16";
        CAPTURE(name);
        const std::vector<uint8_t> bytes = serialize_codebook(cb, storage);
        const safetensors::File f = safetensors::parse(bytes.data(), bytes.size());
        // The matrices are stored in the half type, the vectors in F32.
        size_t half_elements = 0;
        for (uint32_t l = 0; l < cb.n_layers; ++l)
            for (size_t t = 0; t < 9; ++t) {
                const safetensors::TensorView& v = f.tensor("layers." + std::to_string(l) + "." + kTensorNames[t]);
                CAPTURE(kTensorNames[t]);
                CHECK(codebook_tensor_rounded(t) == (t == 0 || t == 4 || t == 6 || t == 8));
                CHECK(v.dtype == (codebook_tensor_rounded(t) ? name : "F32"));
                if (codebook_tensor_rounded(t)) half_elements += v.numel();
            }
        CHECK(bytes.size() < f32_size);
        CHECK(f32_size - bytes.size() >= 2 * half_elements - 64);  // header length may differ a little

        const Codebook back = parse_codebook(bytes.data(), bytes.size());
        size_t changed = 0;
        for (uint32_t l = 0; l < cb.n_layers; ++l) {
            const auto a = layer_tensor_data(cb.layers[l]);
            const auto b = layer_tensor_data(back.layers[l]);
            for (size_t t = 0; t < a.size(); ++t) {
                REQUIRE(a[t]->size() == b[t]->size());
                for (size_t i = 0; i < a[t]->size(); ++i) {
                    const float x = (*a[t])[i];
                    const float want = !codebook_tensor_rounded(t)          ? x
                                       : storage == COMMVQ_DTYPE_F16 ? reference_f16(x)
                                                                     : reference_bf16(x);
                    if (!same_bits((*b[t])[i], want)) {
                        CAPTURE(l);
                        CAPTURE(kTensorNames[t]);
                        CAPTURE(i);
                        CAPTURE(x);
                        CHECK((*b[t])[i] == want);
                    }
                    changed += !same_bits((*b[t])[i], x);
                }
            }
        }
        CHECK(changed > 100);  // the random values are not representable
        // The edge cases, spelled out (layer 1's sub-centers from element 7).
        const std::vector<float>& z = back.layers[1].keys.sub_centers;
        if (storage == COMMVQ_DTYPE_F16) {
            CHECK(z[7] == 1.0f);
            CHECK(z[8] == 1.0f + 0x1p-9f);
            CHECK(z[10] == 0.0f);
            CHECK(std::signbit(z[10]));
            CHECK(z[11] == std::ldexp(17.0f, -24));  // 1e-6 = 16.78 * 2^-24
            CHECK(z[12] == 0.0f);
            CHECK(std::signbit(z[12]));
            CHECK(z[14] == 65504.0f);
            CHECK(z[15] == 65504.0f);
            CHECK(z[17] == 2.0f);
            CHECK(back.layers[1].values.enc2_weight[3] == 0x1p-23f);
        } else {
            CHECK(z[9] == 1.0f);
            CHECK(z[17] == 2.0f);
        }

        // The fingerprint is that of the float32 values loaded: the stored
        // one, finalize()'s over the values in memory, and FNV-1a computed
        // here over the text and the widened values all agree.
        uint64_t h = fnv1a("commvq-codebook\n", 16);
        for (const auto& [key, value] : codebook_shape_metadata(back)) {
            const std::string line = key + "=" + value + "\n";
            h = fnv1a(line.data(), line.size(), h);
        }
        for (uint32_t l = 0; l < back.n_layers; ++l)
            for (const char* t : kTensorNames) {
                const std::vector<float> x = f.tensor("layers." + std::to_string(l) + "." + t).to_float();
                h = fnv1a(x.data(), x.size() * 4, h);
            }
        CHECK(h == back.fingerprint);
        CHECK(f.metadata.at("fingerprint") == hex64(h));
        Codebook refinalized = back;
        refinalized.finalize();
        CHECK(refinalized.fingerprint == back.fingerprint);
        CHECK(back.fingerprint != cb.fingerprint);  // the values changed, so did the identity

        // Saving again in the same dtype changes nothing; an F32 copy keeps
        // the values and so the fingerprint.
        CHECK(serialize_codebook(back, storage) == bytes);
        const std::vector<uint8_t> as_f32 = serialize_codebook(back, COMMVQ_DTYPE_F32);
        CHECK(parse_codebook(as_f32.data(), as_f32.size()).fingerprint == back.fingerprint);
        // F32 storage is what it always was: the in-memory fingerprint, exact values.
        const std::vector<uint8_t> f32 = serialize_codebook(cb, COMMVQ_DTYPE_F32);
        CHECK(f32 == serialize_codebook(cb));
        CHECK(parse_codebook(f32.data(), f32.size()).fingerprint == cb.fingerprint);
    }
    CHECK_THROWS_AS(serialize_codebook(cb, 7), Error);
    CHECK_THROWS_AS(serialize_codebook(cb, -1), Error);
}

TEST_CASE("codebook storage: a file may mix F32, F16 and BF16 tensors") {
    // A file written elsewhere (e.g. every tensor in BF16, or the vectors in
    // F16): the reader takes any of the three for any tensor.
    const Codebook cb = storage_codebook(9);
    safetensors::Writer w;
    uint64_t h = fnv1a("commvq-codebook\n", 16);
    for (const auto& [key, value] : codebook_shape_metadata(cb)) {
        const std::string line = key + "=" + value + "\n";
        h = fnv1a(line.data(), line.size(), h);
        w.set_metadata(key, value);
    }
    std::vector<std::vector<float>> expected;
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const auto specs = layer_tensor_specs(cb, l);
        const auto data = layer_tensor_data(cb.layers[l]);
        for (size_t t = 0; t < specs.size(); ++t) {
            const std::vector<float>& x = *data[t];
            const int kind = int((l * 9 + t) % 3);  // F32, F16, BF16 in turn
            std::vector<float> held(x.size());
            if (kind == 0) {
                w.add_f32(specs[t].name, specs[t].shape, x.data());
                held = x;
            } else {
                std::vector<uint8_t> bytes(x.size() * 2);
                for (size_t i = 0; i < x.size(); ++i) {
                    const float r = kind == 1 ? reference_f16(x[i]) : reference_bf16(x[i]);
                    uint16_t bits = 0;
                    if (kind == 1) {
                        bits = float_to_half(r);  // r is an f16 value: exact
                        REQUIRE(half_to_float(bits) == r);
                    } else {
                        uint32_t u;
                        std::memcpy(&u, &r, 4);
                        bits = uint16_t(u >> 16);
                    }
                    std::memcpy(bytes.data() + 2 * i, &bits, 2);
                    held[i] = r;
                }
                w.add_bytes(specs[t].name, kind == 1 ? "F16" : "BF16", specs[t].shape, std::move(bytes));
            }
            h = fnv1a(held.data(), held.size() * 4, h);
            expected.push_back(held);
        }
    }
    w.set_metadata("format", "commvq-codebook");
    w.set_metadata("format_version", "1");
    w.set_metadata("model", "mixed");
    w.set_metadata("fingerprint", hex64(h));
    const std::vector<uint8_t> bytes = w.serialize();
    const Codebook back = parse_codebook(bytes.data(), bytes.size());
    CHECK(back.fingerprint == h);
    size_t k = 0;
    for (uint32_t l = 0; l < back.n_layers; ++l)
        for (const std::vector<float>* t : layer_tensor_data(back.layers[l])) CHECK(*t == expected[k++]);
}

TEST_CASE("codebook storage: a value beyond F16's range is refused and nothing is written") {
    Codebook cb = storage_codebook();
    cb.layers[0].values.enc1_weight[3] = 70000.0f;
    cb.finalize();
    const uint64_t fingerprint = cb.fingerprint;
    try {
        serialize_codebook(cb, COMMVQ_DTYPE_F16);
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(e.status() == COMMVQ_ERR_INVALID_ARGUMENT);
        const std::string m = e.what();
        CHECK(m.find("layers.0.values.enc1.weight") != std::string::npos);
        CHECK(m.find("70000") != std::string::npos);
    }
    // BF16 and F32 hold it.
    const std::vector<uint8_t> bf16 = serialize_codebook(cb, COMMVQ_DTYPE_BF16);
    CHECK(parse_codebook(bf16.data(), bf16.size()).layers[0].values.enc1_weight[3] == reference_bf16(70000.0f));
    // Through the C API: status, message, no file (not even a temporary one), cb unchanged.
    const std::vector<uint8_t> bytes = serialize_codebook(cb);
    commvq_codebook_t* handle = nullptr;
    REQUIRE(commvq_codebook_load_memory(bytes.data(), bytes.size(), &handle) == COMMVQ_OK);
    const std::string path = temp_path("overflow");
    CHECK(commvq_codebook_save_as(handle, path.c_str(), COMMVQ_DTYPE_F16) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(std::string(commvq_last_error()).find("F16") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK_FALSE(std::filesystem::exists(path + ".tmp"));
    CHECK(handle->cb.fingerprint == fingerprint);
    commvq_codebook_free(handle);
}

TEST_CASE("codebook storage: damaged or truncated F16 files are refused with a status and a message") {
    const std::vector<uint8_t> good = serialize_codebook(storage_codebook(), COMMVQ_DTYPE_F16);
    CHECK(load_status(good) == COMMVQ_OK);

    // Every truncation: the header, then a spread of lengths into the data.
    std::vector<size_t> lengths;
    for (size_t n = 1; n < 700 && n < good.size(); ++n) lengths.push_back(n);  // 0: no data pointer
    for (size_t n = 700; n < good.size(); n += 331) lengths.push_back(n);
    lengths.push_back(good.size() - 1);
    lengths.push_back(good.size() - 2);
    for (size_t n : lengths) {
        const commvq_status_t s = load_status(std::vector<uint8_t>(good.begin(), good.begin() + long(n)));
        CAPTURE(n);
        CHECK((s == COMMVQ_ERR_CORRUPT || s == COMMVQ_ERR_FORMAT));
    }

    const Split s = split(good);
    auto edited = [&](auto edit, commvq_status_t status, const char* what, const char* message_part) {
        Split e = s;
        edit(e);
        CAPTURE(what);
        CHECK(load_status(join(e.header, e.data)) == status);
        if (message_part) CHECK(std::string(commvq_last_error()).find(message_part) != std::string::npos);
    };
    const char* z = "layers.1.keys.sub_centers";
    edited([&](Split& e) { e.header[z]["dtype"] = "F32"; }, COMMVQ_ERR_FORMAT,
           "F16 tensor relabelled F32 (byte count no longer matches)", z);
    edited([&](Split& e) { e.header[z]["dtype"] = "I16"; }, COMMVQ_ERR_FORMAT, "same size, not a float type",
           "F32, F16 or BF16");
    edited([&](Split& e) { e.header[z]["dtype"] = "BF16"; }, COMMVQ_ERR_CORRUPT,
           "F16 read as BF16: other values, so another fingerprint", "fingerprint");
    edited([&](Split& e) { e.header[z]["dtype"] = "F8_E4M3"; }, COMMVQ_ERR_FORMAT, "1-byte dtype", z);
    edited(
        [&](Split& e) {
            auto& t = e.header[z];
            std::vector<uint64_t> shape = t["shape"].get<std::vector<uint64_t>>();
            shape[0] *= 2;
            t["shape"] = shape;
        },
        COMMVQ_ERR_FORMAT, "shape twice the bytes", z);
    edited(
        [&](Split& e) {
            auto& t = e.header[z];
            const uint64_t b = t["data_offsets"][0].get<uint64_t>(), en = t["data_offsets"][1].get<uint64_t>();
            t["data_offsets"] = {b + 2, en + 2};  // one element later: overlaps the next tensor
        },
        COMMVQ_ERR_CORRUPT, "overlapping tensors", "overlap");
    edited(
        [&](Split& e) {
            auto& t = e.header["layers.1.values.codebook"];
            const uint64_t size = t["data_offsets"][1].get<uint64_t>() - t["data_offsets"][0].get<uint64_t>();
            t["data_offsets"] = {e.data.size() - size + 2, e.data.size() + 2};
        },
        COMMVQ_ERR_CORRUPT, "an F16 tensor past the end", "truncated");
    edited(
        [&](Split& e) {
            const uint64_t at = e.header[z]["data_offsets"][0].get<uint64_t>();
            e.data[at + 6] = 0x00;
            e.data[at + 7] = 0x7c;  // element 3 = +Inf in f16
        },
        COMMVQ_ERR_FORMAT, "Inf in an F16 tensor", "non-finite");
    edited(
        [&](Split& e) {
            const uint64_t at = e.header[z]["data_offsets"][0].get<uint64_t>();
            e.data[at + 1] = 0x7e;  // element 0 = NaN in f16
        },
        COMMVQ_ERR_FORMAT, "NaN in an F16 tensor", "non-finite");
    edited(
        [&](Split& e) {
            const uint64_t at = e.header["layers.0.values.enc1.weight"]["data_offsets"][0].get<uint64_t>();
            e.data[at + 10] ^= 0x01;  // the lowest mantissa bit of one f16 value
        },
        COMMVQ_ERR_CORRUPT, "one flipped bit in F16 data", "fingerprint");
    edited(
        [&](Split& e) {
            // The fingerprint of the unrounded float32 values (what a writer
            // that forgot the rounding would store) is not this file's.
            e.header["__metadata__"]["fingerprint"] = hex64(storage_codebook().fingerprint);
        },
        COMMVQ_ERR_CORRUPT, "fingerprint of the values before rounding", "does not match");
}

TEST_CASE("C API: commvq_codebook_save_as writes F32, F16 and BF16 files that load with their fingerprint") {
    const Codebook cb = storage_codebook();
    const std::vector<uint8_t> bytes = serialize_codebook(cb);
    commvq_codebook_t* handle = nullptr;
    REQUIRE(commvq_codebook_load_memory(bytes.data(), bytes.size(), &handle) == COMMVQ_OK);
    auto file_size = [](const std::string& p) { return std::filesystem::file_size(p); };
    auto fingerprint_of = [](const commvq_codebook_t* c) {
        commvq_codebook_info_t info;
        commvq_codebook_info_init(&info);
        REQUIRE(commvq_codebook_get_info(c, &info) == COMMVQ_OK);
        return info.fingerprint;
    };

    const std::string p32 = temp_path("f32"), p32b = temp_path("f32b"), p16 = temp_path("f16"),
                      pbf = temp_path("bf16"), p16b = temp_path("f16b");
    REQUIRE(commvq_codebook_save(handle, p32.c_str()) == COMMVQ_OK);
    REQUIRE(commvq_codebook_save_as(handle, p32b.c_str(), COMMVQ_DTYPE_F32) == COMMVQ_OK);
    REQUIRE(commvq_codebook_save_as(handle, p16.c_str(), COMMVQ_DTYPE_F16) == COMMVQ_OK);
    REQUIRE(commvq_codebook_save_as(handle, pbf.c_str(), COMMVQ_DTYPE_BF16) == COMMVQ_OK);
    CHECK(safetensors::read_file(p32) == safetensors::read_file(p32b));
    CHECK(safetensors::read_file(p16) == serialize_codebook(cb, COMMVQ_DTYPE_F16));
    CHECK(file_size(p16) < file_size(p32));
    CHECK(file_size(pbf) <= file_size(p16) + 64);  // "BF16" vs "F16" in the header

    commvq_codebook_t *c32 = nullptr, *c16 = nullptr, *cbf = nullptr, *c16b = nullptr;
    REQUIRE(commvq_codebook_load(p32.c_str(), &c32) == COMMVQ_OK);
    REQUIRE(commvq_codebook_load(p16.c_str(), &c16) == COMMVQ_OK);
    REQUIRE(commvq_codebook_load(pbf.c_str(), &cbf) == COMMVQ_OK);
    CHECK(fingerprint_of(c32) == fingerprint_of(handle));
    CHECK(fingerprint_of(c16) != fingerprint_of(handle));
    CHECK(fingerprint_of(cbf) != fingerprint_of(handle));
    CHECK(fingerprint_of(cbf) != fingerprint_of(c16));
    // An F16-loaded codebook saved as F16 again: the same file and identity.
    REQUIRE(commvq_codebook_save_as(c16, p16b.c_str(), COMMVQ_DTYPE_F16) == COMMVQ_OK);
    CHECK(safetensors::read_file(p16b) == safetensors::read_file(p16));
    REQUIRE(commvq_codebook_load(p16b.c_str(), &c16b) == COMMVQ_OK);
    CHECK(fingerprint_of(c16b) == fingerprint_of(c16));
    CHECK(c16->cb.model_name == cb.model_name);

    // Bad arguments: status, message, no file.
    const std::string bad = temp_path("bad");
    CHECK(commvq_codebook_save_as(handle, bad.c_str(), 3) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(std::string(commvq_last_error()).find("dtype") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(bad));
    CHECK(commvq_codebook_save_as(nullptr, bad.c_str(), COMMVQ_DTYPE_F16) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(commvq_codebook_save_as(handle, nullptr, COMMVQ_DTYPE_F16) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(commvq_codebook_save_as(handle, "/nonexistent/dir/cb.safetensors", COMMVQ_DTYPE_F16) == COMMVQ_ERR_IO);

    for (commvq_codebook_t* c : {handle, c32, c16, cbf, c16b}) commvq_codebook_free(c);
    for (const std::string& p : {p32, p32b, p16, pbf, p16b}) std::remove(p.c_str());
}

TEST_CASE("codebook storage: a cache from an F16 file attends as its float64 model says, and keeps to its fingerprint") {
    test::RandomCodebookSpec spec;
    spec.n_layers = 2;
    spec.n_kv_heads = 2;
    spec.n_q_heads = 4;
    spec.head_dim = 32;
    spec.seed = 11;
    const Codebook original = test::random_codebook(spec);
    const std::vector<uint8_t> f32_bytes = serialize_codebook(original);
    const std::vector<uint8_t> f16_bytes = serialize_codebook(original, COMMVQ_DTYPE_F16);
    commvq_codebook_t *c32 = nullptr, *c16 = nullptr, *c16_again = nullptr;
    REQUIRE(commvq_codebook_load_memory(f32_bytes.data(), f32_bytes.size(), &c32) == COMMVQ_OK);
    REQUIRE(commvq_codebook_load_memory(f16_bytes.data(), f16_bytes.size(), &c16) == COMMVQ_OK);
    REQUIRE(commvq_codebook_load_memory(f16_bytes.data(), f16_bytes.size(), &c16_again) == COMMVQ_OK);

    commvq_cache_params_t p;
    commvq_cache_params_init(&p);
    p.max_seqs = 2;
    p.max_tokens = 512;
    p.block_tokens = 16;
    p.window = 8;
    p.n_threads = 2;
    commvq_cache_t *cache16 = nullptr, *cache32 = nullptr, *cache16_again = nullptr;
    REQUIRE(commvq_cache_create(c16, &p, &cache16) == COMMVQ_OK);
    REQUIRE(commvq_cache_create(c32, &p, &cache32) == COMMVQ_OK);
    REQUIRE(commvq_cache_create(c16_again, &p, &cache16_again) == COMMVQ_OK);
    CHECK(cache16->cache.codebook().fingerprint == c16->cb.fingerprint);
    test::ReferenceCache ref(cache16->cache);

    const uint32_t n = 100, nq = 5, D = original.value_dim(), qrow = spec.n_q_heads * spec.head_dim;
    test::Rng rng(3);
    std::vector<float> out16(nq * qrow), out32(nq * qrow);
    double worst_ref = 0, worst_f32 = 0;
    for (uint32_t l = 0; l < spec.n_layers; ++l) {
        const std::vector<float> k = rng.normals(size_t(n) * D), v = rng.normals(size_t(n) * D);
        REQUIRE(commvq_cache_append(cache16, l, 0, n, k.data(), v.data()) == COMMVQ_OK);
        REQUIRE(commvq_cache_append(cache32, l, 0, n, k.data(), v.data()) == COMMVQ_OK);
        ref.append(l, 0, n, k.data(), v.data());
    }
    for (uint32_t l = 0; l < spec.n_layers; ++l) {
        const std::vector<float> q = rng.normals(size_t(nq) * qrow, 0.3);
        REQUIRE(commvq_cache_attend(cache16, l, 0, nq, q.data(), out16.data(), nullptr, COMMVQ_ATTEND_CAUSAL) ==
                COMMVQ_OK);
        REQUIRE(commvq_cache_attend(cache32, l, 0, nq, q.data(), out32.data(), nullptr, COMMVQ_ATTEND_CAUSAL) ==
                COMMVQ_OK);
        std::vector<double> want, lse;
        ref.attend_last(l, 0, nq, q.data(), true, want, lse);
        worst_ref = std::max(worst_ref, test::max_relative_error(out16, want, spec.head_dim));
        std::vector<double> as_double(out32.begin(), out32.end());
        worst_f32 = std::max(worst_f32, test::max_relative_error(out16, as_double, spec.head_dim));
    }
    INFO("F16 cache vs its float64 model: " << worst_ref << ", vs the F32 codebook's cache: " << worst_f32);
    CHECK(worst_ref < 1e-5);  // attention from codes is exact with respect to the decoded cache
    CHECK(worst_f32 > 0);     // the rounding is visible...
    CHECK(worst_f32 < 0.05);  // ...and small next to the quantization itself

    // Sequence files carry the fingerprint: one saved under the F16 file's
    // codebook loads into another cache of that file, not into the F32 one.
    const std::string path = temp_path("seq");
    REQUIRE(commvq_cache_seq_save(cache16, 0, path.c_str()) == COMMVQ_OK);
    CHECK(commvq_cache_seq_load(cache32, 1, path.c_str()) == COMMVQ_ERR_CODEBOOK_MISMATCH);
    uint64_t length = 1;
    REQUIRE(commvq_cache_seq_length(cache32, 1, &length) == COMMVQ_OK);
    CHECK(length == 0);
    CHECK(commvq_cache_seq_load(cache16_again, 1, path.c_str()) == COMMVQ_OK);
    REQUIRE(commvq_cache_seq_length(cache16_again, 1, &length) == COMMVQ_OK);
    CHECK(length == n);
    std::remove(path.c_str());

    commvq_cache_destroy(cache16);
    commvq_cache_destroy(cache32);
    commvq_cache_destroy(cache16_again);
    commvq_codebook_free(c16);
    commvq_codebook_free(c32);
    commvq_codebook_free(c16_again);
}
