#pragma once
// Private to the cuda wing: the launcher of the kernel library (device_kernels.h: the launches,
// shared with the HIP wing; bodies in backends/kernels/*.cuh) for the CUDA executor's work that is
// not a cuDNN convolution or a cuBLAS GEMM. nvcc builds backends/cuda/kernels/sliceserve_kernels.cu
// into a fatbin (SLICESERVE_CUDA_ARCHS) that the library embeds, and CudaKernels::load() loads it
// once with cuLibraryLoadData: context-independent kernels that run in the context of the stream
// they are launched on (the primary context's or a green context's).
//
// Each launch method fills its launch (device_kernels.h; an invalid one launches nothing and
// returns its error) and launches it on `stream`. A launch only records work: no
// synchronisation, allocation or host memory read by the device, so every method may be called
// while `stream` is being captured into a CUDA graph.

#include <cuda.h>

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <type_traits>

#include "cuda_driver_api.h"
#include "device_kernels.h"
#include "sliceserve/backends/plan.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

static_assert(std::is_same_v<DeviceAddress, CUdeviceptr>, "device_kernels.h carries CUdeviceptrs");

// The embedded fatbin (generated from the nvcc output at build time) and the architectures it
// holds SASS for ("90", or "80,90" with SLICESERVE_CUDA_ARCHS widened).
std::span<const unsigned char> cuda_kernels_fatbin();
const char* cuda_kernels_archs();

// ---- the launcher --------------------------------------------------------------------------

class CudaKernels {
 public:
  // Loads the embedded fatbin as a library (cuLibraryLoadData) and resolves every kernel
  // (cuLibraryGetKernel). Errors name the kernel (or the fatbin and its architectures) and the
  // driver's text.
  static Result<std::unique_ptr<CudaKernels>> load(const CudaDriverApi& api);
  ~CudaKernels();
  CudaKernels(const CudaKernels&) = delete;
  CudaKernels& operator=(const CudaKernels&) = delete;

  Status unary(CUstream stream, const PlanOp& op, const DeviceTensor& x,
               const DeviceTensor& y) const;
  Status epilogue(CUstream stream, std::span<const PostOp> post_ops, CUdeviceptr bias,
                  std::span<const CUdeviceptr> sums, const DeviceTensor& y) const;
  Status batch_norm(CUstream stream, const PlanOp& op, CUdeviceptr scale, CUdeviceptr shift,
                    const DeviceTensor& x, const DeviceTensor& y) const;
  Status binary(CUstream stream, const PlanOp& op, const DeviceTensor& a, const DeviceTensor& b,
                const DeviceTensor& y) const;
  // op.kind kMaxPool or kAveragePool.
  Status pool(CUstream stream, const PlanOp& op, const DeviceTensor& x,
              const DeviceTensor& y) const;
  Status global_average_pool(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                             const DeviceTensor& y) const;
  Status reduce_mean(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                     const DeviceTensor& y) const;
  Status softmax(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                 const DeviceTensor& y) const;
  Status lrn(CUstream stream, const PlanOp& op, const DeviceTensor& x, const DeviceTensor& y) const;
  Status transpose(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                   const DeviceTensor& y) const;
  Status slice(CUstream stream, const PlanOp& op, const DeviceTensor& x,
               const DeviceTensor& y) const;
  Status concat(CUstream stream, const PlanOp& op, std::span<const DeviceTensor> inputs,
                const DeviceTensor& y) const;
  Status split(CUstream stream, const PlanOp& op, const DeviceTensor& x,
               std::span<const DeviceTensor> outputs) const;
  Status pad(CUstream stream, const PlanOp& op, const DeviceTensor& x, const DeviceTensor& y) const;
  // Indices are read on the device: one out of range gives zeros (check constant ones first).
  Status gather(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                const DeviceTensor& indices, const DeviceTensor& y) const;
  Status cast(CUstream stream, const PlanOp& op, const DeviceTensor& x,
              const DeviceTensor& y) const;
  Status fill(CUstream stream, const PlanOp& op, const DeviceTensor& y) const;

  // Launches `launch.kernel` with its params as the one by-value argument (its error when it
  // failed to fill); nothing when launch.blocks is 0.
  template <typename Params>
  Status launch(CUstream stream, const Result<KernelLaunch<Params>>& launch) const;

 private:
  CudaKernels(const CudaDriverApi& api, CUlibrary library) : api_(api), library_(library) {}
  Status launch_params(CUstream stream, DeviceKernel kernel, unsigned blocks, void* params) const;

  const CudaDriverApi& api_;
  CUlibrary library_ = nullptr;
  std::array<CUfunction, kDeviceKernelCount> functions_{};
};

template <typename Params>
Status CudaKernels::launch(CUstream stream, const Result<KernelLaunch<Params>>& launch) const {
  static_assert(std::is_trivially_copyable_v<Params>);
  static_assert(sizeof(Params) <= 4096, "the driver's classic limit for kernel parameters");
  RETURN_IF_ERROR(launch.status());
  if (launch->blocks == 0) return Status::ok();
  Params params = launch->params;
  return launch_params(stream, launch->kernel, launch->blocks, &params);
}

}  // namespace sliceserve::backends
