// The CUDA executor's own kernels: thin __global__ wrappers over the bodies in backends/kernels
// (which the host tests and the HIP kernels run too). Built by nvcc into a fatbin that the library
// embeds and loads with cuLibraryLoadData; the names are the launcher's (SS_DEVICE_KERNELS in
// backends/src/device_kernels.h). ss_conv and ss_gemm are there for the HIP executor (no vendor
// libraries on Debian); the CUDA executor uses cuDNN and cuBLAS, and the kernels are only tested.
//
// Element-wise kernels run a grid-stride loop over [0, count), so any grid covers any size.
// Row kernels come in two shapes: `_rows` (a thread per row, for short rows) and `_block` (a
// block per row with a shared-memory reduction, for long ones). Params arrive by value as
// __grid_constant__, so the bodies read them in the constant bank without a local copy.

#include "kernels/convolution.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/movement.cuh"
#include "kernels/pooling.cuh"
#include "kernels/reductions.cuh"

namespace k = sliceserve::backends::kernels;

#define SS_ELEMENTWISE_KERNEL(name, Params, body)                                              \
  extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock)                            \
      name(const __grid_constant__ k::Params p) {                                              \
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

// Reduces one value per thread of the block; every thread gets the result. `shared` holds a
// value per warp and may be reused right after (the first barrier orders a previous use).
template <typename Op>
__device__ float block_reduce(float value, Op op, float identity, float* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = op(value, __shfl_xor_sync(0xffffffffU, value, offset));
  }
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  value = lane < blockDim.x / 32 ? shared[lane] : identity;
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = op(value, __shfl_xor_sync(0xffffffffU, value, offset));
  }
  return value;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock)
    ss_reduce_mean_rows(const __grid_constant__ k::ReduceMeanParams p) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < p.rows; row += step) {
    k::reduce_mean_row(p, row);
  }
}

extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock)
    ss_reduce_mean_block(const __grid_constant__ k::ReduceMeanParams p) {
  __shared__ float shared[k::kThreadsPerBlock / 32];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int64_t base = k::reduce_mean_row_base(p, row);
    float sum = 0.0F;
    for (int64_t i = threadIdx.x; i < p.row_length; i += blockDim.x) {
      sum += k::reduce_mean_load(p, base, i);
    }
    sum = block_reduce(sum, SumOp{}, 0.0F, shared);
    if (threadIdx.x == 0) p.y[row] = k::reduce_mean_finish(p, sum);
  }
}

extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock)
    ss_softmax_rows(const __grid_constant__ k::SoftmaxParams p) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < p.rows; row += step) {
    k::softmax_row(p, row);
  }
}

extern "C" __global__ void __launch_bounds__(k::kThreadsPerBlock)
    ss_softmax_block(const __grid_constant__ k::SoftmaxParams p) {
  __shared__ float shared[k::kThreadsPerBlock / 32];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const float* x = p.x + k::softmax_row_base(p, row);
    float* y = p.y + k::softmax_row_base(p, row);
    float max = -INFINITY;
    for (int64_t i = threadIdx.x; i < p.length; i += blockDim.x) {
      max = k::max_value(max, x[i * p.inner]);
    }
    max = block_reduce(max, MaxOp{}, -INFINITY, shared);
    float sum = 0.0F;
    for (int64_t i = threadIdx.x; i < p.length; i += blockDim.x) sum += expf(x[i * p.inner] - max);
    sum = block_reduce(sum, SumOp{}, 0.0F, shared);
    for (int64_t i = threadIdx.x; i < p.length; i += blockDim.x) {
      y[i * p.inner] = expf(x[i * p.inner] - max) / sum;
    }
  }
}
