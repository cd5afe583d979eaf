#pragma once
// Private to the hip wing: the launcher of the kernel library (device_kernels.h: the launches,
// shared with the CUDA wing; bodies in backends/kernels/*.cuh) for the HIP executor, which runs
// every op on it (Conv and Gemm/MatMul too: Debian has no MIOpen or rocBLAS). hipcc builds
// backends/hip/kernels/sliceserve_kernels.hip into a code object (SLICESERVE_HIP_ARCHS, gfx906 by
// default) that the library embeds; HipKernels::load() loads it with hipModuleLoadData and
// resolves every kernel with hipModuleGetFunction. A build whose hipcc cannot make a code object
// (no device libraries) embeds none and says why (hip_kernels_missing()).

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "device_kernels.h"
#include "hip_runtime_api.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// The embedded code object (an offload bundle with one image per architecture; empty when the
// build has none), its architectures ("gfx906"), and why it is missing ("" when it is not).
std::span<const unsigned char> hip_kernels_code_object();
const char* hip_kernels_archs();
const char* hip_kernels_missing();

class HipKernels {
 public:
  // Loads `code_object` (hipModuleLoadData) and resolves every kernel of SS_DEVICE_KERNELS.
  // Errors name the kernel (or the code object and its architectures) and the runtime's text;
  // an empty code object is kUnavailable with hip_kernels_missing()'s reason.
  static Result<std::unique_ptr<HipKernels>> load(const HipRuntimeApi& api,
                                                  std::span<const unsigned char> code_object);
  ~HipKernels();
  HipKernels(const HipKernels&) = delete;
  HipKernels& operator=(const HipKernels&) = delete;

  // Launches `launch.kernel` on `stream` with its params as the one by-value argument (its error
  // when it failed to fill); nothing when launch.blocks is 0.
  template <typename Params>
  Status launch(hipStream_t stream, const Result<KernelLaunch<Params>>& launch) const {
    static_assert(std::is_trivially_copyable_v<Params>);
    static_assert(sizeof(Params) <= 4096, "the runtime's limit for kernel arguments");
    RETURN_IF_ERROR(launch.status());
    if (launch->blocks == 0) return Status::ok();
    Params params = launch->params;  // the runtime copies it when the launch is enqueued
    return launch_params(stream, launch->kernel, launch->blocks, &params);
  }

 private:
  HipKernels(const HipRuntimeApi& api, hipModule_t module) : api_(api), module_(module) {}
  Status launch_params(hipStream_t stream, DeviceKernel kernel, unsigned blocks,
                       void* params) const;

  const HipRuntimeApi& api_;
  hipModule_t module_ = nullptr;
  std::array<hipFunction_t, kDeviceKernelCount> functions_{};
};

}  // namespace sliceserve::backends
