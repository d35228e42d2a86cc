// Per-sequence state of the cache, kept on the host whatever the back end:
// the block table and, per layer, how many tokens there are and how many of
// them are compressed.
//
// A layer's tokens, by position:
//   [0, sinks)                        sink tokens, uncompressed forever
//   [sinks, sinks + compressed)       codes in the block pool
//   [sinks + compressed, length)      the window, uncompressed (at most W)
// where sinks = min(length, S). Compressed token i (position S + i) sits in
// block blocks[i / block_tokens], slot i % block_tokens; a block holds the
// same slots for every layer, so one table serves all layers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace commvq {

struct LayerState {
    uint64_t length = 0;
    uint64_t compressed = 0;
};

// What a back end needs to know about one layer of one sequence.
struct LayerView {
    uint32_t seq = 0;
    uint64_t length = 0;
    uint64_t sinks = 0;       // positions [0, sinks)
    uint64_t compressed = 0;  // positions [sinks, sinks + compressed)
    uint64_t window = 0;      // positions [sinks + compressed, length)
    const uint32_t* blocks = nullptr;  // the sequence's block table
    uint64_t first_window_position() const { return sinks + compressed; }
};

struct Sequence {
    std::vector<uint32_t> blocks;
    std::vector<LayerState> layers;

    // The furthest layer's length: the sequence's length.
    uint64_t frontier() const {
        uint64_t f = 0;
        for (const auto& l : layers) f = std::max(f, l.length);
        return f;
    }
    bool in_step() const {
        for (const auto& l : layers)
            if (l.length != layers[0].length) return false;
        return true;
    }
    // Compressed tokens of the layer furthest ahead in compression: the
    // block table covers exactly these.
    uint64_t max_compressed() const {
        uint64_t c = 0;
        for (const auto& l : layers) c = std::max(c, l.compressed);
        return c;
    }
    LayerView view(uint32_t seq, uint32_t layer, uint32_t sink_tokens) const {
        const LayerState& s = layers[layer];
        LayerView v;
        v.seq = seq;
        v.length = s.length;
        v.sinks = std::min<uint64_t>(s.length, sink_tokens);
        v.compressed = s.compressed;
        v.window = s.length - v.sinks - s.compressed;
        v.blocks = blocks.data();
        return v;
    }
};

// Blocks that hold this many compressed tokens (no overflow near 2^64).
inline uint64_t blocks_for(uint64_t compressed_tokens, uint32_t block_tokens) {
    return compressed_tokens / block_tokens + (compressed_tokens % block_tokens != 0);
}

}  // namespace commvq
