// The HIP executor's kernels: thin __global__ wrappers over the bodies in backends/kernels (the
// same ones nvcc compiles for the CUDA wing, and the host tests run). Built by hipcc into a code
// object (one per SLICESERVE_HIP_ARCHS entry, bundled) that the library embeds and loads with
// hipModuleLoadData; the names are the launcher's (SS_DEVICE_KERNELS in device_kernels.h).
//
// Element-wise kernels run a grid-stride loop over [0, count), so any grid covers any size.
// Row kernels come in two shapes: `_rows` (a thread per row, for short rows) and `_block` (a
// block per row with a local-memory tree reduction, which does not depend on the wavefront size:
// 64 on gfx9, 32 on RDNA).

#include <hip/hip_runtime.h>

#include "kernels/convolution.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/movement.cuh"
#include "kernels/pooling.cuh"
#include "kernels/reductions.cuh"

namespace k = sliceserve::backends::kernels;

#define SS_ELEMENTWISE_KERNEL(name, Params, body)                                              \
  extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock) name(const k::Params p) { \
    const int64_t step = int64_t(gridDim.x) * blockDim.x;                                      \
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.count; i += step) { \
      k::body(p, i);                                                                           \
    }                                                                                          \
  }

SS_ELEMENTWISE_KERNEL(ss_unary, UnaryParams, unary_element)
SS_ELEMENTWISE_KERNEL(ss_channel_epilogue, ChannelEpilogueParams, channel_epilogue_element)
SS_ELEMENTWISE_KERNEL(ss_binary, BinaryParams, binary_element)
SS_ELEMENTWISE_KERNEL(ss_lrn, LrnParams, lrn_element)
SS_ELEMENTWISE_KERNEL(ss_cast, CastParams, cast_element)
SS_ELEMENTWISE_KERNEL(ss_fill, FillParams, fill_element)
SS_ELEMENTWISE_KERNEL(ss_max_pool, Pool2dParams, max_pool_element)
SS_ELEMENTWISE_KERNEL(ss_average_pool, Pool2dParams, average_pool_element)
SS_ELEMENTWISE_KERNEL(ss_strided_copy, StridedCopyParams, strided_copy_element)
SS_ELEMENTWISE_KERNEL(ss_pad, PadParams, pad_element)
SS_ELEMENTWISE_KERNEL(ss_gather, GatherParams, gather_element)
SS_ELEMENTWISE_KERNEL(ss_conv, ConvParams, conv_element)
SS_ELEMENTWISE_KERNEL(ss_gemm, GemmParams, gemm_tile)

namespace {

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return k::max_value(a, b); }
};

// Reduces one value per thread of the block (kThreadsPerBlock, a power of two); every thread
// gets the result. `shared` holds a value per thread; the first barrier orders a previous use.
template <typename Op>
__device__ float block_reduce(float value, Op op, float* shared) {
  __syncthreads();
  shared[threadIdx.x] = value;
  __syncthreads();
  for (unsigned width = blockDim.x / 2; width > 0; width >>= 1) {
    if (threadIdx.x < width) shared[threadIdx.x] = op(shared[threadIdx.x], shared[threadIdx.x + width]);
    __syncthreads();
  }
  return shared[0];
}

}  // namespace

extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock)
    ss_reduce_mean_rows(const k::ReduceMeanParams p) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < p.rows; row += step) {
    k::reduce_mean_row(p, row);
  }
}

extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock)
    ss_reduce_mean_block(const k::ReduceMeanParams p) {
  __shared__ float shared[k::kThreadsPerBlock];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int64_t base = k::reduce_mean_row_base(p, row);
    float sum = 0.0F;
    for (int64_t i = threadIdx.x; i < p.row_length; i += blockDim.x) {
      sum += k::reduce_mean_load(p, base, i);
    }
    sum = block_reduce(sum, SumOp{}, shared);
    if (threadIdx.x == 0) p.y[row] = k::reduce_mean_finish(p, sum);
  }
}

extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock)
    ss_softmax_rows(const k::SoftmaxParams p) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < p.rows; row += step) {
    k::softmax_row(p, row);
  }
}

extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock)
    ss_softmax_block(const k::SoftmaxParams p) {
  __shared__ float shared[k::kThreadsPerBlock];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const float* x = p.x + k::softmax_row_base(p, row);
    float* y = p.y + k::softmax_row_base(p, row);
    float max = -INFINITY;
    for (int64_t i = threadIdx.x; i < p.length; i += blockDim.x) {
      max = k::max_value(max, x[i * p.inner]);
    }
    max = block_reduce(max, MaxOp{}, shared);
    float sum = 0.0F;
    for (int64_t i = threadIdx.x; i < p.length; i += blockDim.x) sum += expf(x[i * p.inner] - max);
    sum = block_reduce(sum, SumOp{}, shared);
    for (int64_t i = threadIdx.x; i < p.length; i += blockDim.x) {
      y[i * p.inner] = expf(x[i * p.inner] - max) / sum;
    }
  }
}
