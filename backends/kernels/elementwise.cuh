#pragma once
// Element-wise kernel bodies: Unary, the per-channel epilogue (a Conv's or Gemm's bias and
// post-ops, and BatchNorm at inference), Binary with broadcasting, LRN, Cast and Fill. Each is a
// function of one flat output index; the kernels run it over [0, count).

#include "kernels/kernel_common.cuh"

namespace sliceserve::backends::kernels {

struct UnaryParams {
  const float* x;
  float* y;
  int64_t count;
  KernelUnary alg;
  float alpha;
  float beta;
};

SS_HD inline void unary_element(const UnaryParams& p, int64_t i) {
  p.y[i] = unary_value(p.alg, p.alpha, p.beta, p.x[i]);
}

enum class KernelPostOpKind : int32_t { kUnary, kSum };

struct KernelPostOp {
  KernelPostOpKind kind;
  KernelUnary unary;
  float alpha;
  float beta;
  const float* sum;  // kSum: the tensor added, the output's shape
};

// y = chain(x * scale[c] + shift[c]) with c = (i / inner) % channels: dimension 1 of an NCHW (or
// [M, N]) tensor. scale and shift may each be null (a conv's bias is a shift alone; BatchNorm is
// both, precomputed). x == y runs in place.
struct ChannelEpilogueParams {
  const float* x;
  float* y;
  const float* scale;
  const float* shift;
  int64_t count;
  int64_t channels;
  int64_t inner;
  int32_t post_op_count;
  KernelPostOp post_ops[kMaxPostOps];
};

SS_HD inline void channel_epilogue_element(const ChannelEpilogueParams& p, int64_t i) {
  float v = p.x[i];
  if (p.scale != nullptr || p.shift != nullptr) {
    const int64_t c = (i / p.inner) % p.channels;
    if (p.scale != nullptr) v *= p.scale[c];
    if (p.shift != nullptr) v += p.shift[c];
  }
  for (int32_t k = 0; k < p.post_op_count; ++k) {
    const KernelPostOp& post = p.post_ops[k];
    v = post.kind == KernelPostOpKind::kSum ? v + post.sum[i]
                                            : unary_value(post.unary, post.alpha, post.beta, v);
  }
  p.y[i] = v;
}

// y = a op b over y's index space [dims]; a's and b's strides are 0 along broadcast dimensions.
struct BinaryParams {
  const float* a;
  const float* b;
  float* y;
  int64_t count;
  KernelBinary alg;
  int32_t rank;
  int64_t dims[kMaxRank];
  int64_t a_strides[kMaxRank];
  int64_t b_strides[kMaxRank];
};

SS_HD inline float binary_value(KernelBinary alg, float a, float b) {
  switch (alg) {
    case KernelBinary::kAdd:
      return a + b;
    case KernelBinary::kSub:
      return a - b;
    case KernelBinary::kMul:
      return a * b;
    case KernelBinary::kDiv:
      return a / b;
  }
  return a;
}

SS_HD inline void binary_element(const BinaryParams& p, int64_t i) {
  int64_t at_a = 0, at_b = 0;
  strided_offsets(i, p.rank, p.dims, p.a_strides, p.b_strides, &at_a, &at_b);
  p.y[i] = binary_value(p.alg, p.a[at_a], p.b[at_b]);
}

// ONNX LRN across channels (dimension 1): y = x / (bias + scale * sum of squares over the
// channels [c - before, c + after] that exist) ^ beta, scale = alpha / size.
struct LrnParams {
  const float* x;
  float* y;
  int64_t count;
  int64_t channels;
  int64_t inner;
  int64_t before;
  int64_t after;
  float scale;
  float beta;
  float bias;
};

SS_HD inline void lrn_element(const LrnParams& p, int64_t i) {
  const int64_t c = (i / p.inner) % p.channels;
  const int64_t lo = c - p.before < 0 ? 0 : c - p.before;
  const int64_t hi = c + p.after > p.channels - 1 ? p.channels - 1 : c + p.after;
  const int64_t first = i + (lo - c) * p.inner;
  float square_sum = 0.0F;
  for (int64_t k = 0; k <= hi - lo; ++k) {
    const float v = p.x[first + k * p.inner];
    square_sum += v * v;
  }
  p.y[i] = p.x[i] / powf(p.bias + p.scale * square_sum, p.beta);
}

// Cast, with the reference's semantics: float -> integer saturates and truncates (NaN -> 0),
// integer -> integer wraps, -> bool is != 0 (NaN is true), -> fp16 rounds to nearest even.
struct CastParams {
  const void* x;
  void* y;
  int64_t count;
  KernelDtype from;
  KernelDtype to;
};

// A loaded source value: an fp32 (fp32 and fp16 sources) or an integer (the rest, bool as 0/1).
struct CastValue {
  bool is_float;
  float f;
  int64_t i;
};

SS_HD inline CastValue cast_load(KernelDtype dtype, const void* x, int64_t index) {
  switch (dtype) {
    case KernelDtype::kFp32:
      return {true, load_at<float>(x, index), 0};
    case KernelDtype::kFp16:
      return {true, half_to_float(load_at<uint16_t>(x, index)), 0};
    case KernelDtype::kInt32:
      return {false, 0.0F, load_at<int32_t>(x, index)};
    case KernelDtype::kInt64:
      return {false, 0.0F, load_at<int64_t>(x, index)};
    case KernelDtype::kInt8:
      return {false, 0.0F, load_at<int8_t>(x, index)};
    case KernelDtype::kUint8:
      return {false, 0.0F, load_at<uint8_t>(x, index)};
    case KernelDtype::kBool:
      return {false, 0.0F, load_at<uint8_t>(x, index) != 0 ? 1 : 0};
  }
  return {false, 0.0F, 0};
}

SS_HD inline void cast_element(const CastParams& p, int64_t i) {
  const CastValue v = cast_load(p.from, p.x, i);
  switch (p.to) {
    case KernelDtype::kFp32:
      store_at<float>(p.y, i, v.is_float ? v.f : static_cast<float>(v.i));
      break;
    case KernelDtype::kFp16:
      store_at<uint16_t>(p.y, i, float_to_half(v.is_float ? v.f : static_cast<float>(v.i)));
      break;
    case KernelDtype::kBool:
      store_at<uint8_t>(p.y, i, (v.is_float ? v.f != 0.0F : v.i != 0) ? 1 : 0);
      break;
    case KernelDtype::kInt64:
      if (!v.is_float) {
        store_at<int64_t>(p.y, i, v.i);
      } else if (v.f != v.f) {
        store_at<int64_t>(p.y, i, 0);
      } else if (v.f >= 9223372036854775808.0F) {
        store_at<int64_t>(p.y, i, INT64_MAX);
      } else if (v.f <= -9223372036854775808.0F) {
        store_at<int64_t>(p.y, i, INT64_MIN);
      } else {
        store_at<int64_t>(p.y, i, static_cast<int64_t>(v.f));
      }
      break;
    case KernelDtype::kInt32:
    case KernelDtype::kInt8:
    case KernelDtype::kUint8: {
      // A float saturates (shm::saturate's bounds are exact in fp32, so comparing in fp32 is
      // comparing in double) in int64, then narrows exactly; an integer source wraps.
      int64_t wide = v.i;
      if (v.is_float) {
        const bool is32 = p.to == KernelDtype::kInt32;
        const float above_max = is32 ? 2147483648.0F : p.to == KernelDtype::kInt8 ? 128.0F : 256.0F;
        const float min = is32 ? -2147483648.0F : p.to == KernelDtype::kInt8 ? -128.0F : 0.0F;
        if (v.f != v.f) {
          wide = 0;
        } else if (v.f >= above_max) {
          wide = static_cast<int64_t>(above_max) - 1;
        } else if (v.f <= min) {
          wide = static_cast<int64_t>(min);
        } else {
          wide = static_cast<int64_t>(v.f);
        }
      }
      if (p.to == KernelDtype::kInt32) {
        store_at<int32_t>(p.y, i, static_cast<int32_t>(wide));
      } else if (p.to == KernelDtype::kInt8) {
        store_at<int8_t>(p.y, i, static_cast<int8_t>(wide));
      } else {
        store_at<uint8_t>(p.y, i, static_cast<uint8_t>(wide));
      }
      break;
    }
  }
}

// Every element set to `bits` (the dtype's one, computed by the launcher).
struct FillParams {
  void* y;
  int64_t count;
  int32_t element_size;
  uint64_t bits;
};

SS_HD inline void fill_element(const FillParams& p, int64_t i) {
  store_bits(p.y, i, p.element_size, p.bits);
}

}  // namespace sliceserve::backends::kernels
