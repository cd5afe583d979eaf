#pragma once
// Convolution and GEMM kernel bodies for devices without a vendor library (the HIP executor on
// Debian, which has neither MIOpen nor rocBLAS): portable, simple and correct first.
//
//   - conv_element: a direct convolution, one output element per thread, with the bias and the
//     op's post-ops (a residual sum, activations) fused, 1-D to 3-D (a 1-D or 2-D one is a 3-D one
//     with unit leading dimensions), any groups, strides, dilations and padding (begin pads; the
//     end pads only bound the output, which the planner checked).
//   - gemm_tile: Y[b] = alpha * A[b] B[b] + beta * Y[b] for b < batch, a 4 x 4 tile of Y per thread
//     (16 accumulators in registers, each A and B element loaded once per tile), A and B read
//     through row and column strides (so transposed operands cost nothing) and batch strides
//     (0: broadcast), the post-ops fused.
//
// Speed: neither uses local (shared) memory or the matrix cores; each thread reads its inputs
// from the cache hierarchy. That is enough to run every torchvision model, not to compete with
// MIOpen's or rocBLAS's tuned kernels (docs/amd.md, "Speed").

#include "kernels/elementwise.cuh"
#include "kernels/kernel_common.cuh"

namespace sliceserve::backends::kernels {

inline constexpr int kConvSpatial = 3;
inline constexpr int64_t kGemmTile = 4;

// Applies a fused epilogue's post-ops to the value of output element i.
SS_HD inline float apply_post_ops(const KernelPostOp* post_ops, int32_t count, float v, int64_t i) {
  for (int32_t k = 0; k < count; ++k) {
    const KernelPostOp& post = post_ops[k];
    v = post.kind == KernelPostOpKind::kSum ? v + post.sum[i]
                                            : unary_value(post.unary, post.alpha, post.beta, v);
  }
  return v;
}

// x [N, groups * group_in, in...], w [out_channels, group_in, kernel...], bias [out_channels] or
// null, y [N, out_channels, out...]; spatial arrays are depth, height, width.
struct ConvParams {
  const float* x;
  const float* w;
  const float* bias;
  float* y;
  int64_t count;  // N * out_channels * out[0] * out[1] * out[2]
  int64_t out_channels;
  int64_t group_in;   // input channels per group
  int64_t group_out;  // output channels per group
  int64_t in[kConvSpatial];
  int64_t out[kConvSpatial];
  int64_t kernel[kConvSpatial];
  int64_t stride[kConvSpatial];
  int64_t dilation[kConvSpatial];
  int64_t pad[kConvSpatial];  // begin pads
  int32_t post_op_count;
  KernelPostOp post_ops[kMaxPostOps];
};

SS_HD inline void conv_element(const ConvParams& p, int64_t i) {
  int64_t rest = i;
  const int64_t ow = rest % p.out[2];
  rest /= p.out[2];
  const int64_t oh = rest % p.out[1];
  rest /= p.out[1];
  const int64_t od = rest % p.out[0];
  rest /= p.out[0];
  const int64_t co = rest % p.out_channels;
  const int64_t n = rest / p.out_channels;
  const int64_t group = co / p.group_out;
  const int64_t in_plane = p.in[0] * p.in[1] * p.in[2];
  const float* x =
      p.x + (n * p.group_in * (p.out_channels / p.group_out) + group * p.group_in) * in_plane;
  const float* w = p.w + co * p.group_in * p.kernel[0] * p.kernel[1] * p.kernel[2];
  float sum = 0.0F;
  for (int64_t ci = 0; ci < p.group_in; ++ci) {
    for (int64_t kd = 0; kd < p.kernel[0]; ++kd) {
      const int64_t id = od * p.stride[0] - p.pad[0] + kd * p.dilation[0];
      if (id < 0 || id >= p.in[0]) continue;
      for (int64_t kh = 0; kh < p.kernel[1]; ++kh) {
        const int64_t ih = oh * p.stride[1] - p.pad[1] + kh * p.dilation[1];
        if (ih < 0 || ih >= p.in[1]) continue;
        const float* x_row = x + (ci * p.in[0] + id) * p.in[1] * p.in[2] + ih * p.in[2];
        const float* w_row = w + ((ci * p.kernel[0] + kd) * p.kernel[1] + kh) * p.kernel[2];
        for (int64_t kw = 0; kw < p.kernel[2]; ++kw) {
          const int64_t iw = ow * p.stride[2] - p.pad[2] + kw * p.dilation[2];
          if (iw >= 0 && iw < p.in[2]) sum += x_row[iw] * w_row[kw];
        }
      }
    }
  }
  if (p.bias != nullptr) sum += p.bias[co];
  p.y[i] = apply_post_ops(p.post_ops, p.post_op_count, sum, i);
}

// Y [batch, m, n] dense; A(b, i, kk) = a[b * a_batch + i * a_row + kk * a_col], B(b, kk, j) =
// b[b * b_batch + kk * b_row + j * b_col].
struct GemmParams {
  const float* a;
  const float* b;
  float* y;
  int64_t count;  // batch * ceil(m / 4) * ceil(n / 4): one tile each
  int64_t m, n, k, batch;
  int64_t a_row, a_col, a_batch;
  int64_t b_row, b_col, b_batch;
  float alpha;
  float beta;  // 0: Y is not read
  int32_t post_op_count;
  KernelPostOp post_ops[kMaxPostOps];
};

SS_HD inline void gemm_tile(const GemmParams& p, int64_t t) {
  const int64_t tiles_n = (p.n + kGemmTile - 1) / kGemmTile;
  const int64_t tiles_m = (p.m + kGemmTile - 1) / kGemmTile;
  const int64_t batch = t / (tiles_m * tiles_n);
  const int64_t i0 = (t / tiles_n) % tiles_m * kGemmTile;
  const int64_t j0 = t % tiles_n * kGemmTile;
  const int64_t rows = p.m - i0 < kGemmTile ? p.m - i0 : kGemmTile;
  const int64_t cols = p.n - j0 < kGemmTile ? p.n - j0 : kGemmTile;
  const float* a = p.a + batch * p.a_batch + i0 * p.a_row;
  const float* b = p.b + batch * p.b_batch + j0 * p.b_col;
  float acc[kGemmTile][kGemmTile] = {};
  for (int64_t kk = 0; kk < p.k; ++kk) {
    float av[kGemmTile] = {};
    float bv[kGemmTile] = {};
    for (int64_t u = 0; u < rows; ++u) av[u] = a[u * p.a_row + kk * p.a_col];
    for (int64_t v = 0; v < cols; ++v) bv[v] = b[kk * p.b_row + v * p.b_col];
    for (int64_t u = 0; u < kGemmTile; ++u) {
      for (int64_t v = 0; v < kGemmTile; ++v) acc[u][v] += av[u] * bv[v];
    }
  }
  for (int64_t u = 0; u < rows; ++u) {
    for (int64_t v = 0; v < cols; ++v) {
      const int64_t at = (batch * p.m + i0 + u) * p.n + j0 + v;
      float value = p.alpha * acc[u][v];
      if (p.beta != 0.0F) value += p.beta * p.y[at];
      p.y[at] = apply_post_ops(p.post_ops, p.post_op_count, value, at);
    }
  }
}

}  // namespace sliceserve::backends::kernels
