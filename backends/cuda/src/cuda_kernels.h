#pragma once
// Private to the cuda wing: the CUDA executor's own kernels, everything that is not a cuDNN
// convolution or a cuBLAS GEMM. Their bodies are in backends/cuda/kernels/*.cuh; nvcc builds
// sliceserve_kernels.cu into a fatbin (SLICESERVE_CUDA_ARCHS) that the library embeds, and
// CudaKernels::load() loads it once with cuLibraryLoadData: context-independent kernels that run
// in the context of the stream they are launched on (the primary context's or a green context's).
//
// Each launch method takes the plan's parameters as the executor has them (the PlanOp, and each
// operand's device address, dtype and dims), checks them (kInvalidArgument naming the op's label:
// nothing is launched then), fills the kernel's params struct and launches it on `stream`, 256
// threads a block, the grid capped with the kernels looping grid-stride. A launch only records
// work: no synchronisation, allocation or host memory read by the device, so every method may be
// called while `stream` is being captured into a CUDA graph. The *_launch functions are the
// launch methods' first half, for the tests' host emulation: run on host addresses, the kernel
// bodies compute what the GPU would.
//
// Operands are dense row-major tensors in device memory, aligned for their dtype. Unless said
// otherwise the math is fp32; data movement (Transpose, Concat, Split, Slice, Pad, Gather, Fill)
// takes any dtype of 1, 2, 4 or 8 bytes, and Cast converts between fp32, fp16, int32, int64,
// int8, uint8 and bool with the reference kernels' semantics.

#include <cuda.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "cuda_driver_api.h"
#include "kernels/elementwise.cuh"
#include "kernels/movement.cuh"
#include "kernels/pooling.cuh"
#include "kernels/reductions.cuh"
#include "sliceserve/backends/plan.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// Every kernel of the fatbin, by its extern "C" name. X(name) for each.
#define SS_CUDA_KERNELS(X) \
  X(ss_unary)              \
  X(ss_channel_epilogue)   \
  X(ss_binary)             \
  X(ss_lrn)                \
  X(ss_cast)               \
  X(ss_fill)               \
  X(ss_max_pool)           \
  X(ss_average_pool)       \
  X(ss_strided_copy)       \
  X(ss_pad)                \
  X(ss_gather)             \
  X(ss_reduce_mean_rows)   \
  X(ss_reduce_mean_block)  \
  X(ss_softmax_rows)       \
  X(ss_softmax_block)

enum class CudaKernel {
#define SS_CUDA_KERNEL_ENUM(name) name,
  SS_CUDA_KERNELS(SS_CUDA_KERNEL_ENUM)
#undef SS_CUDA_KERNEL_ENUM
};

inline constexpr size_t kCudaKernelCount = 0
#define SS_CUDA_KERNEL_COUNT(name) +1
    SS_CUDA_KERNELS(SS_CUDA_KERNEL_COUNT)
#undef SS_CUDA_KERNEL_COUNT
    ;

// "ss_unary", ...
const char* cuda_kernel_name(CudaKernel kernel);

// The embedded fatbin (generated from the nvcc output at build time) and the architectures it
// holds SASS for ("90", or "80,90" with SLICESERVE_CUDA_ARCHS widened).
std::span<const unsigned char> cuda_kernels_fatbin();
const char* cuda_kernels_archs();

// A dense row-major tensor in device memory, as the executor has it.
struct CudaTensor {
  CUdeviceptr data = 0;
  DataType dtype = DataType::kInvalid;
  std::span<const int64_t> dims;
};

// One launch: the kernel, its grid of 256-thread blocks (0: nothing to do) and its params.
template <typename Params>
struct CudaLaunch {
  CudaKernel kernel;
  unsigned blocks;
  Params params;
};

// The most blocks a launch uses; the kernels' grid-stride loops cover the rest. Enough to fill
// a Hopper GPU (132 SMs x 8 resident blocks of 256 threads) several times over.
inline constexpr unsigned kCudaMaxBlocks = 4096;
// Rows at least this long get a block each (ss_*_block); shorter ones a thread each (ss_*_rows).
inline constexpr int64_t kCudaBlockRowLength = 128;

// BatchNorm at inference as the per-channel scale/shift the batch_norm launch takes, computed in
// double as the reference does: scale = gamma / sqrt(var + epsilon), shift = beta - mean * scale.
// All spans the channel count.
void fold_batch_norm(float epsilon, std::span<const float> gamma, std::span<const float> beta,
                     std::span<const float> mean, std::span<const float> var,
                     std::span<float> scale, std::span<float> shift);

// ---- the launches, checked and filled in (host only, no driver) --------------------------

Result<CudaLaunch<kernels::UnaryParams>> unary_launch(const PlanOp& op, const CudaTensor& x,
                                                      const CudaTensor& y);
// A Conv's or Gemm's result y (NCHW or [M, N]) in place: + bias[c] (bias 0: none), then
// post_ops in order, the k-th kSum adding sums[k] (y's shape).
Result<CudaLaunch<kernels::ChannelEpilogueParams>> epilogue_launch(
    std::span<const PostOp> post_ops, CUdeviceptr bias, std::span<const CUdeviceptr> sums,
    const CudaTensor& y);
// y = x * scale[c] + shift[c] (fold_batch_norm's, fp32 on the device), then op.post_ops (unary).
Result<CudaLaunch<kernels::ChannelEpilogueParams>> batch_norm_launch(const PlanOp& op,
                                                                     CUdeviceptr scale,
                                                                     CUdeviceptr shift,
                                                                     const CudaTensor& x,
                                                                     const CudaTensor& y);
Result<CudaLaunch<kernels::BinaryParams>> binary_launch(const PlanOp& op, const CudaTensor& a,
                                                        const CudaTensor& b, const CudaTensor& y);
// MaxPool (no Indices output) and AveragePool, 1-d or 2-d (rank 3 or 4).
Result<CudaLaunch<kernels::Pool2dParams>> pool_launch(const PlanOp& op, const CudaTensor& x,
                                                      const CudaTensor& y);
Result<CudaLaunch<kernels::ReduceMeanParams>> global_average_pool_launch(const PlanOp& op,
                                                                         const CudaTensor& x,
                                                                         const CudaTensor& y);
Result<CudaLaunch<kernels::ReduceMeanParams>> reduce_mean_launch(const PlanOp& op,
                                                                 const CudaTensor& x,
                                                                 const CudaTensor& y);
Result<CudaLaunch<kernels::SoftmaxParams>> softmax_launch(const PlanOp& op, const CudaTensor& x,
                                                          const CudaTensor& y);
Result<CudaLaunch<kernels::LrnParams>> lrn_launch(const PlanOp& op, const CudaTensor& x,
                                                  const CudaTensor& y);
Result<CudaLaunch<kernels::StridedCopyParams>> transpose_launch(const PlanOp& op,
                                                                const CudaTensor& x,
                                                                const CudaTensor& y);
Result<CudaLaunch<kernels::StridedCopyParams>> slice_launch(const PlanOp& op, const CudaTensor& x,
                                                            const CudaTensor& y);
// Concat is one copy per input: input `part` into its block of y along op.axis.
Result<CudaLaunch<kernels::StridedCopyParams>> concat_launch(const PlanOp& op,
                                                             std::span<const CudaTensor> inputs,
                                                             size_t part, const CudaTensor& y);
// Split likewise: output `part`'s block of x.
Result<CudaLaunch<kernels::StridedCopyParams>> split_launch(const PlanOp& op, const CudaTensor& x,
                                                            std::span<const CudaTensor> outputs,
                                                            size_t part);
Result<CudaLaunch<kernels::PadParams>> pad_launch(const PlanOp& op, const CudaTensor& x,
                                                  const CudaTensor& y);
Result<CudaLaunch<kernels::GatherParams>> gather_launch(const PlanOp& op, const CudaTensor& x,
                                                        const CudaTensor& indices,
                                                        const CudaTensor& y);
Result<CudaLaunch<kernels::CastParams>> cast_launch(const PlanOp& op, const CudaTensor& x,
                                                    const CudaTensor& y);
Result<CudaLaunch<kernels::FillParams>> fill_launch(const PlanOp& op, const CudaTensor& y);

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

  Status unary(CUstream stream, const PlanOp& op, const CudaTensor& x, const CudaTensor& y) const;
  Status epilogue(CUstream stream, std::span<const PostOp> post_ops, CUdeviceptr bias,
                  std::span<const CUdeviceptr> sums, const CudaTensor& y) const;
  Status batch_norm(CUstream stream, const PlanOp& op, CUdeviceptr scale, CUdeviceptr shift,
                    const CudaTensor& x, const CudaTensor& y) const;
  Status binary(CUstream stream, const PlanOp& op, const CudaTensor& a, const CudaTensor& b,
                const CudaTensor& y) const;
  // op.kind kMaxPool or kAveragePool.
  Status pool(CUstream stream, const PlanOp& op, const CudaTensor& x, const CudaTensor& y) const;
  Status global_average_pool(CUstream stream, const PlanOp& op, const CudaTensor& x,
                             const CudaTensor& y) const;
  Status reduce_mean(CUstream stream, const PlanOp& op, const CudaTensor& x,
                     const CudaTensor& y) const;
  Status softmax(CUstream stream, const PlanOp& op, const CudaTensor& x, const CudaTensor& y) const;
  Status lrn(CUstream stream, const PlanOp& op, const CudaTensor& x, const CudaTensor& y) const;
  Status transpose(CUstream stream, const PlanOp& op, const CudaTensor& x,
                   const CudaTensor& y) const;
  Status slice(CUstream stream, const PlanOp& op, const CudaTensor& x, const CudaTensor& y) const;
  Status concat(CUstream stream, const PlanOp& op, std::span<const CudaTensor> inputs,
                const CudaTensor& y) const;
  Status split(CUstream stream, const PlanOp& op, const CudaTensor& x,
               std::span<const CudaTensor> outputs) const;
  Status pad(CUstream stream, const PlanOp& op, const CudaTensor& x, const CudaTensor& y) const;
  // Indices are read on the device: one out of range gives zeros (check constant ones first).
  Status gather(CUstream stream, const PlanOp& op, const CudaTensor& x, const CudaTensor& indices,
                const CudaTensor& y) const;
  Status cast(CUstream stream, const PlanOp& op, const CudaTensor& x, const CudaTensor& y) const;
  Status fill(CUstream stream, const PlanOp& op, const CudaTensor& y) const;

 private:
  CudaKernels(const CudaDriverApi& api, CUlibrary library) : api_(api), library_(library) {}

  // Launches `launch.kernel` with its params as the one by-value argument; nothing when
  // launch.blocks is 0.
  template <typename Params>
  Status launch(CUstream stream, const Result<CudaLaunch<Params>>& launch) const;

  const CudaDriverApi& api_;
  CUlibrary library_ = nullptr;
  std::array<CUfunction, kCudaKernelCount> functions_{};
};

}  // namespace sliceserve::backends
