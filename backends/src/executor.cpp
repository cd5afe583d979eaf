#include "sliceserve/backends/executor.h"

namespace sliceserve::backends {

Status Executor::run_items(size_t /*index*/, std::span<const ItemBuffers> /*items*/,
                           ComputeContext& /*ctx*/) {
  return {ErrorCode::kInternal,
          "this executor runs contiguous batches only (runs_items() is false)"};
}

Status Executor::register_host_memory(std::span<std::byte> /*memory*/) { return Status::ok(); }

}  // namespace sliceserve::backends
