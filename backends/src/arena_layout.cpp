#include "sliceserve/backends/arena_layout.h"

#include <algorithm>
#include <utility>

namespace sliceserve::backends {

size_t assign_arena_offsets(std::vector<ArenaBlock>& blocks, size_t alignment) {
  auto align_up = [alignment](size_t n) { return (n + alignment - 1) / alignment * alignment; };
  std::vector<size_t> order;
  for (size_t i = 0; i < blocks.size(); ++i) {
    blocks[i].offset = 0;
    if (blocks[i].last >= blocks[i].first) order.push_back(i);
  }
  // Largest first: big blocks placed early leave holes small ones fill.
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return blocks[a].bytes > blocks[b].bytes; });
  std::vector<size_t> placed;
  size_t arena = 0;
  for (size_t i : order) {
    ArenaBlock& block = blocks[i];
    std::vector<std::pair<size_t, size_t>> busy;  // [begin, end) of overlapping lifetimes
    for (size_t j : placed) {
      const ArenaBlock& other = blocks[j];
      if (other.first <= block.last && block.first <= other.last) {
        busy.emplace_back(other.offset, other.offset + other.bytes);
      }
    }
    std::sort(busy.begin(), busy.end());
    size_t offset = 0;
    for (const auto& [begin, end] : busy) {
      if (offset + block.bytes <= begin) break;
      offset = std::max(offset, align_up(end));
    }
    block.offset = offset;
    arena = std::max(arena, align_up(offset + block.bytes));
    placed.push_back(i);
  }
  return arena;
}

}  // namespace sliceserve::backends
