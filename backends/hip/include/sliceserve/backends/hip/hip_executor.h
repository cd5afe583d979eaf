#pragma once
// The HIP executor: the engine's plans on one AMD GPU (engine device "hip:<N>"), every op on the
// kernel library's own kernels (backends/kernels, compiled by hipcc; Conv and Gemm/MatMul too,
// since Debian has no MIOpen or rocBLAS). Per run: inputs copied in, steps launched one by one on
// the context's stream (a CuMaskSlice's CU-masked stream; per-layer streams with events where the
// context right-sizes layers), outputs copied back, one hipStreamSynchronize. See docs/amd.md.

#include <memory>

#include "sliceserve/backends/executor.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// Opens HIP device `device` (load_hip_runtime(), hipSetDevice) and loads the kernels. kUnavailable
// "no HIP device: ..." without ROCm or a GPU, or "this build has no HIP kernels: <why>" when hipcc
// could not build them; kInvalidArgument for a device the runtime does not have.
Result<std::unique_ptr<Executor>> create_hip_executor(int device);

}  // namespace sliceserve::backends
