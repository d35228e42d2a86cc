#include "fixture.h"

#include <cstdlib>
#include <mutex>

#include "error.h"
#include "safetensors.h"

namespace commvq {
namespace test {

namespace {

uint32_t meta_u32(const safetensors::File& f, const std::string& key) {
    auto it = f.metadata.find(key);
    require(it != f.metadata.end(), COMMVQ_ERR_FORMAT, "fixture: metadata '" + key + "' missing");
    return uint32_t(std::stoul(it->second));
}

std::vector<float> tensor(const safetensors::File& f, const std::string& name, const std::vector<uint64_t>& shape) {
    const safetensors::TensorView& t = f.tensor(name);
    require(t.shape == shape, COMMVQ_ERR_FORMAT, "fixture: tensor '" + name + "' has an unexpected shape");
    return t.to_float();
}

KvFixture load() {
    const std::vector<uint8_t> bytes = safetensors::read_file(kv_fixture_path());
    const safetensors::File f = safetensors::parse(bytes.data(), bytes.size());
    KvFixture fx;
    fx.metadata = f.metadata;
    fx.n_layers = meta_u32(f, "n_layers");
    fx.n_kv_heads = meta_u32(f, "n_kv_heads");
    fx.n_q_heads = meta_u32(f, "n_q_heads");
    fx.head_dim = meta_u32(f, "head_dim");
    fx.n_tokens = meta_u32(f, "n_tokens");
    fx.n_queries = meta_u32(f, "n_queries");
    fx.query_start = meta_u32(f, "query_start");
    fx.rope.theta = std::stod(f.metadata.at("rope_theta"));
    require(f.metadata.at("rope_scaling") == "none", COMMVQ_ERR_FORMAT, "fixture: expected no RoPE scaling");
    require(f.metadata.at("rope_layout") == "rotate_half", COMMVQ_ERR_FORMAT, "fixture: expected rotate-half pairs");
    fx.model = f.metadata.count("model") ? f.metadata.at("model") : "";
    for (uint32_t l = 0; l < fx.n_layers; ++l) {
        const std::string s = std::to_string(l);
        fx.keys.push_back(tensor(f, "keys." + s, {fx.n_tokens, fx.n_kv_heads, fx.head_dim}));
        fx.values.push_back(tensor(f, "values." + s, {fx.n_tokens, fx.n_kv_heads, fx.head_dim}));
        fx.queries.push_back(tensor(f, "queries." + s, {fx.n_queries, fx.n_q_heads, fx.head_dim}));
    }
    return fx;
}

}  // namespace

std::string kv_fixture_path() { return std::string(COMMVQ_TEST_DATA) + "/bytellama_kv.safetensors"; }

const KvFixture& kv_fixture() {
    static std::once_flag once;
    static KvFixture fx;
    std::call_once(once, [] { fx = load(); });
    return fx;
}

}  // namespace test
}  // namespace commvq
