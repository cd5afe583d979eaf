#pragma once
// Private to the cuda wing: the CUDA executor over given driver and library tables, so that the
// executor's host code runs in tests against a fake device (create_cuda_executor in
// cuda_executor.h passes the real ones).

#include <cuda.h>

#include <memory>

#include "cuda_driver_api.h"
#include "cuda_libraries.h"
#include "sliceserve/backends/executor.h"

namespace sliceserve::backends {

// `api` and `libs` must outlive the executor.
std::unique_ptr<Executor> create_cuda_executor(const CudaDriverApi& api, const CudaLibraries& libs,
                                               CUdevice device);

}  // namespace sliceserve::backends
