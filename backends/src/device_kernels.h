#pragma once
// Private to the device wings: the launches of the kernel library shared by the CUDA and HIP
// executors (bodies in backends/kernels/*.cuh; nvcc builds backends/cuda/kernels/
// sliceserve_kernels.cu into a fatbin, hipcc backends/hip/kernels/sliceserve_kernels.hip into a
// code object, each embedded in the library and loaded by its wing's launcher: CudaKernels in
// cuda_kernels.h, HipKernels in hip_kernels.h). No vendor type appears here.
//
// Each *_launch function takes the plan's parameters as the executor has them (the PlanOp, and
// each operand's device address, dtype and dims), checks them (kInvalidArgument naming the op's
// label: nothing is launched then) and fills the kernel's params struct and its grid: 256 threads
// a block, the grid capped with the kernels looping grid-stride. A wing's launcher passes the
// struct as the kernel's one by-value argument; the tests' host emulation runs the bodies over the
// same struct on host addresses, computing what the GPU would.
//
// Operands are dense row-major tensors in device memory, aligned for their dtype. Unless said
// otherwise the math is fp32; data movement (Transpose, Concat, Split, Slice, Pad, Gather, Fill)
// takes any dtype of 1, 2, 4 or 8 bytes, and Cast converts between fp32, fp16, int32, int64,
// int8, uint8 and bool with the reference kernels' semantics.

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kernels/convolution.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/movement.cuh"
#include "kernels/pooling.cuh"
#include "kernels/reductions.cuh"
#include "sliceserve/backends/plan.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

// Every kernel of the library, by its extern "C" name (each wing's kernel file defines them all).
// X(name) for each.
#define SS_DEVICE_KERNELS(X) \
  X(ss_unary)                \
  X(ss_channel_epilogue)     \
  X(ss_binary)               \
  X(ss_lrn)                  \
  X(ss_cast)                 \
  X(ss_fill)                 \
  X(ss_max_pool)             \
  X(ss_average_pool)         \
  X(ss_strided_copy)         \
  X(ss_pad)                  \
  X(ss_gather)               \
  X(ss_reduce_mean_rows)     \
  X(ss_reduce_mean_block)    \
  X(ss_softmax_rows)         \
  X(ss_softmax_block)        \
  X(ss_conv)                 \
  X(ss_gemm)

enum class DeviceKernel {
#define SS_DEVICE_KERNEL_ENUM(name) name,
  SS_DEVICE_KERNELS(SS_DEVICE_KERNEL_ENUM)
#undef SS_DEVICE_KERNEL_ENUM
};

inline constexpr size_t kDeviceKernelCount = 0
#define SS_DEVICE_KERNEL_COUNT(name) +1
    SS_DEVICE_KERNELS(SS_DEVICE_KERNEL_COUNT)
#undef SS_DEVICE_KERNEL_COUNT
    ;

// "ss_unary", ...
const char* device_kernel_name(DeviceKernel kernel);

// A device address as the kernels' params carry it (CUdeviceptr's type; a HIP pointer cast).
using DeviceAddress = unsigned long long;

// A dense row-major tensor in device memory, as the executor has it.
struct DeviceTensor {
  DeviceAddress data = 0;
  DataType dtype = DataType::kInvalid;
  std::span<const int64_t> dims;
};

// One launch: the kernel, its grid of 256-thread blocks (0: nothing to do) and its params.
template <typename Params>
struct KernelLaunch {
  DeviceKernel kernel;
  unsigned blocks;
  Params params;
};

// The most blocks a launch uses; the kernels' grid-stride loops cover the rest. Enough to fill
// a Hopper GPU (132 SMs x 8 resident blocks of 256 threads) or an MI210 (104 CUs) several times
// over.
inline constexpr unsigned kDeviceMaxBlocks = 4096;
// Rows at least this long get a block each (ss_*_block); shorter ones a thread each (ss_*_rows).
inline constexpr int64_t kBlockRowLength = 128;

// BatchNorm at inference as the per-channel scale/shift the batch_norm launch takes, computed in
// double as the reference does: scale = gamma / sqrt(var + epsilon), shift = beta - mean * scale.
// All spans the channel count.
void fold_batch_norm(float epsilon, std::span<const float> gamma, std::span<const float> beta,
                     std::span<const float> mean, std::span<const float> var,
                     std::span<float> scale, std::span<float> shift);

// ---- the launches, checked and filled in (host only, no driver) --------------------------

Result<KernelLaunch<kernels::UnaryParams>> unary_launch(const PlanOp& op, const DeviceTensor& x,
                                                        const DeviceTensor& y);
// A Conv's or Gemm's result y (NCHW or [M, N]) in place: + bias[c] (bias 0: none), then
// post_ops in order, the k-th kSum adding sums[k] (y's shape).
Result<KernelLaunch<kernels::ChannelEpilogueParams>> epilogue_launch(
    std::span<const PostOp> post_ops, DeviceAddress bias, std::span<const DeviceAddress> sums,
    const DeviceTensor& y);
// y = x * scale[c] + shift[c] (fold_batch_norm's, fp32 on the device), then op.post_ops (unary).
Result<KernelLaunch<kernels::ChannelEpilogueParams>> batch_norm_launch(const PlanOp& op,
                                                                       DeviceAddress scale,
                                                                       DeviceAddress shift,
                                                                       const DeviceTensor& x,
                                                                       const DeviceTensor& y);
Result<KernelLaunch<kernels::BinaryParams>> binary_launch(const PlanOp& op, const DeviceTensor& a,
                                                          const DeviceTensor& b,
                                                          const DeviceTensor& y);
// MaxPool (no Indices output) and AveragePool, 1-d or 2-d (rank 3 or 4).
Result<KernelLaunch<kernels::Pool2dParams>> pool_launch(const PlanOp& op, const DeviceTensor& x,
                                                        const DeviceTensor& y);
Result<KernelLaunch<kernels::ReduceMeanParams>> global_average_pool_launch(const PlanOp& op,
                                                                           const DeviceTensor& x,
                                                                           const DeviceTensor& y);
Result<KernelLaunch<kernels::ReduceMeanParams>> reduce_mean_launch(const PlanOp& op,
                                                                   const DeviceTensor& x,
                                                                   const DeviceTensor& y);
Result<KernelLaunch<kernels::SoftmaxParams>> softmax_launch(const PlanOp& op, const DeviceTensor& x,
                                                            const DeviceTensor& y);
Result<KernelLaunch<kernels::LrnParams>> lrn_launch(const PlanOp& op, const DeviceTensor& x,
                                                    const DeviceTensor& y);
Result<KernelLaunch<kernels::StridedCopyParams>> transpose_launch(const PlanOp& op,
                                                                  const DeviceTensor& x,
                                                                  const DeviceTensor& y);
Result<KernelLaunch<kernels::StridedCopyParams>> slice_launch(const PlanOp& op,
                                                              const DeviceTensor& x,
                                                              const DeviceTensor& y);
// Concat is one copy per input: input `part` into its block of y along op.axis.
Result<KernelLaunch<kernels::StridedCopyParams>> concat_launch(const PlanOp& op,
                                                               std::span<const DeviceTensor> inputs,
                                                               size_t part, const DeviceTensor& y);
// Split likewise: output `part`'s block of x.
Result<KernelLaunch<kernels::StridedCopyParams>> split_launch(const PlanOp& op,
                                                              const DeviceTensor& x,
                                                              std::span<const DeviceTensor> outputs,
                                                              size_t part);
Result<KernelLaunch<kernels::PadParams>> pad_launch(const PlanOp& op, const DeviceTensor& x,
                                                    const DeviceTensor& y);
Result<KernelLaunch<kernels::GatherParams>> gather_launch(const PlanOp& op, const DeviceTensor& x,
                                                          const DeviceTensor& indices,
                                                          const DeviceTensor& y);
Result<KernelLaunch<kernels::CastParams>> cast_launch(const PlanOp& op, const DeviceTensor& x,
                                                      const DeviceTensor& y);
Result<KernelLaunch<kernels::FillParams>> fill_launch(const PlanOp& op, const DeviceTensor& y);

// A Conv (1-D to 3-D, kernel_common's layouts) with its bias (0: none) and op.post_ops fused, the
// k-th kSum adding sums[k] (y's shape). Pads must be symmetric (the planner's rule).
Result<KernelLaunch<kernels::ConvParams>> conv_launch(const PlanOp& op, const DeviceTensor& x,
                                                      const DeviceTensor& w, DeviceAddress bias,
                                                      std::span<const DeviceAddress> sums,
                                                      const DeviceTensor& y);
// Gemm: y[M, N] = op.alpha * op(A) op(B) + beta * y (beta 0: y not read; the executor has put
// broadcast C in y first for a beta of op.beta), then op.post_ops.
Result<KernelLaunch<kernels::GemmParams>> gemm_launch(const PlanOp& op, const DeviceTensor& a,
                                                      const DeviceTensor& b, float beta,
                                                      std::span<const DeviceAddress> sums,
                                                      const DeviceTensor& y);
// MatMul as planned (DeviceStep: m, n, k, batch and batch strides; A [.., m, k], B [.., k, n]).
Result<KernelLaunch<kernels::GemmParams>> matmul_launch(const PlanOp& op, int64_t m, int64_t n,
                                                        int64_t k, int64_t batch, int64_t stride_a,
                                                        int64_t stride_b, const DeviceTensor& a,
                                                        const DeviceTensor& b,
                                                        const DeviceTensor& y);

// The launches of the op kinds that are one of the library's element, movement or reduction
// kernels (everything but Conv, Gemm, MatMul and BatchNorm, which the executor plans itself), in
// order, each handed to `launch` (a wing's launcher: a callable taking any
// Result<KernelLaunch<P>> and returning a Status). kInternal for an op kind with no kernel.
template <typename Launch>
Status launch_op_kernels(const PlanOp& op, std::span<const DeviceTensor> in,
                         std::span<const DeviceTensor> out, Launch&& launch) {
  switch (op.kind) {
    case OpKind::kUnary:
      return launch(unary_launch(op, in[0], out[0]));
    case OpKind::kBinary:
      return launch(binary_launch(op, in[0], in[1], out[0]));
    case OpKind::kMaxPool:
    case OpKind::kAveragePool:
      return launch(pool_launch(op, in[0], out[0]));
    case OpKind::kGlobalAveragePool:
      return launch(global_average_pool_launch(op, in[0], out[0]));
    case OpKind::kReduceMean:
      return launch(reduce_mean_launch(op, in[0], out[0]));
    case OpKind::kSoftmax:
      return launch(softmax_launch(op, in[0], out[0]));
    case OpKind::kLrn:
      return launch(lrn_launch(op, in[0], out[0]));
    case OpKind::kTranspose:
      return launch(transpose_launch(op, in[0], out[0]));
    case OpKind::kSlice:
      return launch(slice_launch(op, in[0], out[0]));
    case OpKind::kPad:
      return launch(pad_launch(op, in[0], out[0]));
    case OpKind::kGather:
      return launch(gather_launch(op, in[0], in[1], out[0]));
    case OpKind::kCast:
      return launch(cast_launch(op, in[0], out[0]));
    case OpKind::kFill:
      return launch(fill_launch(op, out[0]));
    case OpKind::kConcat:
      for (size_t i = 0; i < in.size(); ++i)
        RETURN_IF_ERROR(launch(concat_launch(op, in, i, out[0])));
      return Status::ok();
    case OpKind::kSplit:
      for (size_t i = 0; i < out.size(); ++i)
        RETURN_IF_ERROR(launch(split_launch(op, in[0], out, i)));
      return Status::ok();
    default:
      return {ErrorCode::kInternal, op.label + ": no device kernel for this op"};
  }
}

}  // namespace sliceserve::backends
