#pragma once
// Activation memory shared by buffers whose lifetimes do not overlap: every executor keeps its
// intermediate tensors in one arena and places them with the same first-fit rule.

#include <cstddef>
#include <vector>

namespace sliceserve::backends {

struct ArenaBlock {
  size_t bytes = 0;
  int first = 0;      // the first and last step that touch the block, inclusive
  int last = -1;      // < first: never used, left at offset 0 and out of the arena
  size_t offset = 0;  // set by assign_arena_offsets
};

// Places the blocks largest first, each at the lowest `alignment`-aligned offset free of every
// already placed block whose lifetime overlaps its own; returns the arena's size (aligned).
size_t assign_arena_offsets(std::vector<ArenaBlock>& blocks, size_t alignment);

}  // namespace sliceserve::backends
