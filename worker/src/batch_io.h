#pragma once
// Helpers shared by the model kinds: batch shape checks and zero-filled buffers for warm-up.

#include <cstddef>
#include <span>
#include <vector>

#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"
#include "sliceserve/worker/model.h"

namespace sliceserve::worker {

// kInvalidArgument unless every item carries one non-null pointer per declared tensor.
Status check_batch(std::span<const ItemIO> batch, const shm::ModelSpec& spec);

// One item's worth of zero inputs and scratch outputs, laid out as the spec declares.
class ZeroItem {
 public:
  explicit ZeroItem(const shm::ModelSpec& spec);
  ZeroItem(const ZeroItem&) = delete;
  ZeroItem& operator=(const ZeroItem&) = delete;

  // Valid while this object lives.
  ItemIO item() const { return {input_ptrs_, output_ptrs_}; }

 private:
  std::vector<std::vector<std::byte>> buffers_;
  std::vector<const std::byte*> input_ptrs_;
  std::vector<std::byte*> output_ptrs_;
};

}  // namespace sliceserve::worker
