#pragma once
// Private to the hip wing: the HIP executor over a given runtime table and code object, so that
// the executor's host code runs in tests against a fake runtime whose "device" is host memory
// (create_hip_executor in hip_executor.h passes the real ones).

#include <memory>
#include <span>

#include "hip_runtime_api.h"
#include "sliceserve/backends/executor.h"

namespace sliceserve::backends {

// Selects `device` (hipSetDevice), creates the executor's own stream (for contexts without a
// device queue) and loads `code_object`. `api` must outlive the executor.
Result<std::unique_ptr<Executor>> create_hip_executor(const HipRuntimeApi& api, int device,
                                                      std::span<const unsigned char> code_object);

}  // namespace sliceserve::backends
