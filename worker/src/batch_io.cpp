#include "batch_io.h"

#include <string>

namespace sliceserve::worker {

Status check_batch(std::span<const ItemIO> batch, const shm::ModelSpec& spec) {
  for (size_t i = 0; i < batch.size(); ++i) {
    const ItemIO& item = batch[i];
    if (item.inputs.size() != spec.n_inputs || item.outputs.size() != spec.n_outputs) {
      return Status(ErrorCode::kInvalidArgument,
                    "batch item " + std::to_string(i) + " has " +
                        std::to_string(item.inputs.size()) + " inputs and " +
                        std::to_string(item.outputs.size()) + " outputs, the model declares " +
                        std::to_string(spec.n_inputs) + " and " + std::to_string(spec.n_outputs));
    }
    for (const std::byte* input : item.inputs) {
      if (input == nullptr) {
        return Status(ErrorCode::kInvalidArgument,
                      "batch item " + std::to_string(i) + " has a null input");
      }
    }
    for (std::byte* output : item.outputs) {
      if (output == nullptr) {
        return Status(ErrorCode::kInvalidArgument,
                      "batch item " + std::to_string(i) + " has a null output");
      }
    }
  }
  return Status::ok();
}

ZeroItem::ZeroItem(const shm::ModelSpec& spec) {
  // Reserve first: the pointers taken below must stay valid.
  buffers_.reserve(spec.n_inputs + spec.n_outputs);
  for (const shm::TensorSpec& input : spec.input_specs()) {
    buffers_.emplace_back(input.byte_size());
    input_ptrs_.push_back(buffers_.back().data());
  }
  for (const shm::TensorSpec& output : spec.output_specs()) {
    buffers_.emplace_back(output.byte_size());
    output_ptrs_.push_back(buffers_.back().data());
  }
}

}  // namespace sliceserve::worker
