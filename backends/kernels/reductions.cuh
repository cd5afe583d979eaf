#pragma once
// Reduction kernel bodies, by row: ReduceMean (GlobalAveragePool is the mean over the spatial
// dimensions) and Softmax. A row's element access and its finish are the bodies; the serial
// `*_row` functions are what a thread-per-row kernel and host emulation run, and a
// block-per-row kernel combines the same accesses with a shared-memory reduction.

#include "kernels/kernel_common.cuh"

namespace sliceserve::backends::kernels {

// y[row] = mean of x over the reduced index space, at x's offset
// strided_offset(row, kept...) + strided_offset(k, reduced...) for k in [0, row_length).
struct ReduceMeanParams {
  const float* x;
  float* y;
  int64_t rows;
  int64_t row_length;
  int32_t kept_rank;
  int32_t reduced_rank;
  int64_t kept_dims[kMaxRank];
  int64_t kept_strides[kMaxRank];
  int64_t reduced_dims[kMaxRank];
  int64_t reduced_strides[kMaxRank];
};

SS_HD inline int64_t reduce_mean_row_base(const ReduceMeanParams& p, int64_t row) {
  return strided_offset(row, p.kept_rank, p.kept_dims, p.kept_strides);
}

SS_HD inline float reduce_mean_load(const ReduceMeanParams& p, int64_t base, int64_t k) {
  return p.x[base + strided_offset(k, p.reduced_rank, p.reduced_dims, p.reduced_strides)];
}

// The mean of an empty row is NaN, as the reference's 0 / 0.
SS_HD inline float reduce_mean_finish(const ReduceMeanParams& p, float sum) {
  return p.row_length > 0 ? sum / static_cast<float>(p.row_length) : NAN;
}

SS_HD inline void reduce_mean_row(const ReduceMeanParams& p, int64_t row) {
  const int64_t base = reduce_mean_row_base(p, row);
  float sum = 0.0F;
  for (int64_t k = 0; k < p.row_length; ++k) sum += reduce_mean_load(p, base, k);
  p.y[row] = reduce_mean_finish(p, sum);
}

// Softmax over one axis of [outer, length, inner]: a row is one (outer, inner) pair, its
// elements `inner` apart. Numerically stable: exp(x - max) / sum. As std::max, the max skips
// NaNs, which then make their row NaN through the sum.
struct SoftmaxParams {
  const float* x;
  float* y;
  int64_t rows;  // outer * inner
  int64_t length;
  int64_t inner;
};

SS_HD inline int64_t softmax_row_base(const SoftmaxParams& p, int64_t row) {
  return (row / p.inner) * p.length * p.inner + row % p.inner;
}

SS_HD inline void softmax_row(const SoftmaxParams& p, int64_t row) {
  const int64_t base = softmax_row_base(p, row);
  float max = -INFINITY;
  for (int64_t k = 0; k < p.length; ++k) max = max_value(max, p.x[base + k * p.inner]);
  float sum = 0.0F;
  for (int64_t k = 0; k < p.length; ++k) sum += expf(p.x[base + k * p.inner] - max);
  for (int64_t k = 0; k < p.length; ++k) {
    p.y[base + k * p.inner] = expf(p.x[base + k * p.inner] - max) / sum;
  }
}

}  // namespace sliceserve::backends::kernels
