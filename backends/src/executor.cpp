#include "sliceserve/backends/executor.h"

namespace sliceserve::backends {

Status Executor::run_items(size_t /*index*/, std::span<const ItemBuffers> /*items*/,
                           ComputeContext& /*ctx*/) {
  return {ErrorCode::kInternal,
          "this executor runs contiguous batches only (runs_items() is false)"};
}

Status Executor::register_host_memory(std::span<std::byte> /*memory*/) { return Status::ok(); }

Result<std::vector<Executor::OpTiming>> Executor::profile_run(
    size_t /*index*/, std::span<const std::byte* const> /*inputs*/,
    std::span<std::byte* const> /*outputs*/, ComputeContext& /*ctx*/) {
  return Status(ErrorCode::kUnavailable, "this executor cannot time single ops");
}

}  // namespace sliceserve::backends
