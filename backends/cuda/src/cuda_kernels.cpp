#include "cuda_kernels.h"

#include <string>
#include <type_traits>

namespace sliceserve::backends {

namespace k = kernels;

// ---- the launcher --------------------------------------------------------------------------

namespace {

Status get_kernel(const CudaDriverApi& api, CUlibrary library, const char* name, CUkernel* kernel) {
  SS_CU_CHECK(api, api.cuLibraryGetKernel(kernel, library, name));
  return Status::ok();
}

Status load_library(const CudaDriverApi& api, const void* image, CUlibrary* library) {
  SS_CU_CHECK(api, api.cuLibraryLoadData(library, image, nullptr, nullptr, 0, nullptr, nullptr, 0));
  return Status::ok();
}

Status launch_kernel(const CudaDriverApi& api, CUfunction function, unsigned blocks,
                     CUstream stream, void** args) {
  SS_CU_CHECK(api, api.cuLaunchKernel(function, blocks, 1, 1, k::kThreadsPerBlock, 1, 1, 0, stream,
                                      args, nullptr));
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<CudaKernels>> CudaKernels::load(const CudaDriverApi& api) {
  CUlibrary library = nullptr;
  RETURN_IF_ERROR(load_library(api, cuda_kernels_fatbin().data(), &library)
                      .with_context(std::string("the CUDA kernels' fatbin (SASS for sm_") +
                                    cuda_kernels_archs() + ")"));
  // Owned from here: a failure below unloads the library.
  std::unique_ptr<CudaKernels> loaded(new CudaKernels(api, library));
  for (size_t i = 0; i < kDeviceKernelCount; ++i) {
    const char* name = device_kernel_name(DeviceKernel(i));
    CUkernel kernel = nullptr;
    RETURN_IF_ERROR(
        get_kernel(api, library, name, &kernel).with_context(std::string("CUDA kernel ") + name));
    // A CUkernel launches through cuLaunchKernel as a CUfunction, in the context of the stream
    // it is launched on: one load serves the primary context and every green context.
    loaded->functions_[i] = reinterpret_cast<CUfunction>(kernel);
  }
  return loaded;
}

CudaKernels::~CudaKernels() {
  // A destructor cannot report; the driver frees the library at exit in any case.
  if (library_ != nullptr) (void)api_.cuLibraryUnload(library_);
}

Status CudaKernels::launch_params(CUstream stream, DeviceKernel kernel, unsigned blocks,
                                  void* params) const {
  // The driver copies the argument when the launch is recorded (captured, too).
  void* args[] = {params};
  const Status launched = launch_kernel(api_, functions_[size_t(kernel)], blocks, stream, args);
  if (launched.is_ok()) return launched;
  return launched.with_context(std::string("CUDA kernel ") + device_kernel_name(kernel));
}

Status CudaKernels::unary(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                          const DeviceTensor& y) const {
  return launch(stream, unary_launch(op, x, y));
}

Status CudaKernels::epilogue(CUstream stream, std::span<const PostOp> post_ops, CUdeviceptr bias,
                             std::span<const CUdeviceptr> sums, const DeviceTensor& y) const {
  return launch(stream, epilogue_launch(post_ops, bias, sums, y));
}

Status CudaKernels::batch_norm(CUstream stream, const PlanOp& op, CUdeviceptr scale,
                               CUdeviceptr shift, const DeviceTensor& x,
                               const DeviceTensor& y) const {
  return launch(stream, batch_norm_launch(op, scale, shift, x, y));
}

Status CudaKernels::binary(CUstream stream, const PlanOp& op, const DeviceTensor& a,
                           const DeviceTensor& b, const DeviceTensor& y) const {
  return launch(stream, binary_launch(op, a, b, y));
}

Status CudaKernels::pool(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                         const DeviceTensor& y) const {
  return launch(stream, pool_launch(op, x, y));
}

Status CudaKernels::global_average_pool(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                                        const DeviceTensor& y) const {
  return launch(stream, global_average_pool_launch(op, x, y));
}

Status CudaKernels::reduce_mean(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                                const DeviceTensor& y) const {
  return launch(stream, reduce_mean_launch(op, x, y));
}

Status CudaKernels::softmax(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                            const DeviceTensor& y) const {
  return launch(stream, softmax_launch(op, x, y));
}

Status CudaKernels::lrn(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                        const DeviceTensor& y) const {
  return launch(stream, lrn_launch(op, x, y));
}

Status CudaKernels::transpose(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                              const DeviceTensor& y) const {
  return launch(stream, transpose_launch(op, x, y));
}

Status CudaKernels::slice(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                          const DeviceTensor& y) const {
  return launch(stream, slice_launch(op, x, y));
}

Status CudaKernels::concat(CUstream stream, const PlanOp& op, std::span<const DeviceTensor> inputs,
                           const DeviceTensor& y) const {
  for (size_t i = 0; i < inputs.size(); ++i) {
    RETURN_IF_ERROR(launch(stream, concat_launch(op, inputs, i, y)));
  }
  return Status::ok();
}

Status CudaKernels::split(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                          std::span<const DeviceTensor> outputs) const {
  for (size_t i = 0; i < outputs.size(); ++i) {
    RETURN_IF_ERROR(launch(stream, split_launch(op, x, outputs, i)));
  }
  return Status::ok();
}

Status CudaKernels::pad(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                        const DeviceTensor& y) const {
  return launch(stream, pad_launch(op, x, y));
}

Status CudaKernels::gather(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                           const DeviceTensor& indices, const DeviceTensor& y) const {
  return launch(stream, gather_launch(op, x, indices, y));
}

Status CudaKernels::cast(CUstream stream, const PlanOp& op, const DeviceTensor& x,
                         const DeviceTensor& y) const {
  return launch(stream, cast_launch(op, x, y));
}

Status CudaKernels::fill(CUstream stream, const PlanOp& op, const DeviceTensor& y) const {
  return launch(stream, fill_launch(op, y));
}

}  // namespace sliceserve::backends
