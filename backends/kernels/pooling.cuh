#pragma once
// MaxPool and AveragePool over the two spatial dimensions of NCHW (1-d pooling is H = 1), one
// output element per index. As the reference: windows count only in-bounds elements, a window
// with none gives -inf (max) or 0 (average), a NaN in a max window propagates, and
// count_include_pad divides by the window positions inside the padded input (not those past the
// end pads that ceil_mode adds).

#include "kernels/kernel_common.cuh"

namespace sliceserve::backends::kernels {

struct PoolAxis {
  int64_t in;
  int64_t out;
  int64_t kernel;
  int64_t stride;
  int64_t dilation;
  int64_t pad_begin;
  int64_t pad_end;
};

struct Pool2dParams {
  const float* x;
  float* y;
  int64_t count;  // N * C * out_h * out_w
  PoolAxis h;
  PoolAxis w;
  int32_t count_include_pad;
};

// The window along one axis for output position o: kernel taps [k_lo, k_hi) are in bounds.
struct PoolTaps {
  int64_t start;  // input position of tap 0
  int64_t k_lo;
  int64_t k_hi;
  int64_t padded;  // taps inside the padded input
};

SS_HD inline PoolTaps pool_taps(const PoolAxis& a, int64_t o) {
  PoolTaps t{o * a.stride - a.pad_begin, 0, 0, 0};
  // Taps are few (the kernel's size), so a plain scan beats the division that would skip ahead.
  t.k_lo = a.kernel;
  for (int64_t k = 0; k < a.kernel; ++k) {
    const int64_t pos = t.start + k * a.dilation;
    if (pos >= 0 && pos < a.in) {
      if (t.k_lo == a.kernel) t.k_lo = k;
      t.k_hi = k + 1;
    }
    if (pos >= -a.pad_begin && pos < a.in + a.pad_end) ++t.padded;
  }
  if (t.k_lo == a.kernel) t.k_lo = t.k_hi = 0;
  return t;
}

// The plane and the two taps of output index i.
struct PoolWindow {
  const float* plane;
  PoolTaps h;
  PoolTaps w;
};

SS_HD inline PoolWindow pool_window(const Pool2dParams& p, int64_t i) {
  const int64_t ow = i % p.w.out;
  const int64_t rest = i / p.w.out;
  const int64_t oh = rest % p.h.out;
  const int64_t plane = rest / p.h.out;
  return {p.x + plane * p.h.in * p.w.in, pool_taps(p.h, oh), pool_taps(p.w, ow)};
}

SS_HD inline void max_pool_element(const Pool2dParams& p, int64_t i) {
  const PoolWindow win = pool_window(p, i);
  float best = -INFINITY;
  bool first = true;
  for (int64_t kh = win.h.k_lo; kh < win.h.k_hi; ++kh) {
    const int64_t ih = win.h.start + kh * p.h.dilation;
    for (int64_t kw = win.w.k_lo; kw < win.w.k_hi; ++kw) {
      const float v = win.plane[ih * p.w.in + win.w.start + kw * p.w.dilation];
      if (first || v > best || v != v) best = v;  // NaN propagates, like numpy's maximum
      first = false;
    }
  }
  p.y[i] = best;
}

SS_HD inline void average_pool_element(const Pool2dParams& p, int64_t i) {
  const PoolWindow win = pool_window(p, i);
  float sum = 0.0F;
  for (int64_t kh = win.h.k_lo; kh < win.h.k_hi; ++kh) {
    const int64_t ih = win.h.start + kh * p.h.dilation;
    for (int64_t kw = win.w.k_lo; kw < win.w.k_hi; ++kw) {
      sum += win.plane[ih * p.w.in + win.w.start + kw * p.w.dilation];
    }
  }
  const int64_t count = p.count_include_pad != 0
                            ? win.h.padded * win.w.padded
                            : (win.h.k_hi - win.h.k_lo) * (win.w.k_hi - win.w.k_lo);
  p.y[i] = count > 0 ? sum / static_cast<float>(count) : 0.0F;
}

}  // namespace sliceserve::backends::kernels
