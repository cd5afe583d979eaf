#pragma once
// What every kernel body shares. The bodies (the other .cuh files here) are functions of one flat
// output index, or of one row for reductions, over a small trivially copyable params struct: nvcc
// compiles them into backends/cuda/kernels/sliceserve_kernels.cu's kernels, hipcc into
// backends/hip/kernels/sliceserve_kernels.hip's, and the host compiler compiles the same code into
// the launchers (which fill the structs) and into the tests, which run a body over every index on
// the host and compare with the reference kernels. So nothing here may use the standard
// library beyond <cstdint> and C math, and everything is SS_HD.
//
// Pointers in the params are device addresses on the GPU and host addresses in host emulation.
// Tensors are dense and row-major unless the params carry strides.

#include <math.h>  // expf, powf: C math is what both nvcc and the host compiler provide

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SS_HD __host__ __device__
#else
#define SS_HD
#endif
// Defined in the device pass of nvcc or hipcc: typed loads, the compilers' bit casts.
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#define SS_DEVICE_PASS 1
#endif

namespace sliceserve::backends::kernels {

inline constexpr int kMaxRank = 8;     // strided index spaces (after merging contiguous dims)
inline constexpr int kMaxPostOps = 8;  // an epilogue's chain
inline constexpr int kThreadsPerBlock = 256;

// The plan's UnaryAlg and BinaryAlg, with fixed values for the params structs; the launcher maps.
enum class KernelUnary : int32_t {
  kRelu,
  kLeakyRelu,
  kClip,
  kSigmoid,
  kHardSigmoid,
  kHardSwish,
  kSwish
};
enum class KernelBinary : int32_t { kAdd, kSub, kMul, kDiv };
// The dtypes Cast converts between.
enum class KernelDtype : int32_t { kFp32, kFp16, kInt32, kInt64, kInt8, kUint8, kBool };

// Element access. Host emulation goes through memcpy (the tests' buffers are bytes, and the
// reference kernels' semantics do not assume alignment); device tensors are allocated aligned
// for their dtype, so a typed access is a plain load.
template <typename T>
SS_HD inline T load_at(const void* base, int64_t index) {
#if defined(SS_DEVICE_PASS)
  return static_cast<const T*>(base)[index];
#else
  T value;
  std::memcpy(&value, static_cast<const unsigned char*>(base) + index * int64_t(sizeof(T)),
              sizeof(T));
  return value;
#endif
}

template <typename T>
SS_HD inline void store_at(void* base, int64_t index, T value) {
#if defined(SS_DEVICE_PASS)
  static_cast<T*>(base)[index] = value;
#else
  std::memcpy(static_cast<unsigned char*>(base) + index * int64_t(sizeof(T)), &value, sizeof(T));
#endif
}

// Copies one element of `element_size` (1, 2, 4 or 8) bytes: what data movement needs, whatever
// the dtype.
SS_HD inline void copy_element(void* dst, int64_t dst_index, const void* src, int64_t src_index,
                               int32_t element_size) {
  switch (element_size) {
    case 1:
      store_at<uint8_t>(dst, dst_index, load_at<uint8_t>(src, src_index));
      break;
    case 2:
      store_at<uint16_t>(dst, dst_index, load_at<uint16_t>(src, src_index));
      break;
    case 4:
      store_at<uint32_t>(dst, dst_index, load_at<uint32_t>(src, src_index));
      break;
    default:
      store_at<uint64_t>(dst, dst_index, load_at<uint64_t>(src, src_index));
      break;
  }
}

// Stores the low `element_size` bytes of `bits` (a value's little-endian bytes).
SS_HD inline void store_bits(void* dst, int64_t index, int32_t element_size, uint64_t bits) {
  switch (element_size) {
    case 1:
      store_at<uint8_t>(dst, index, static_cast<uint8_t>(bits));
      break;
    case 2:
      store_at<uint16_t>(dst, index, static_cast<uint16_t>(bits));
      break;
    case 4:
      store_at<uint32_t>(dst, index, static_cast<uint32_t>(bits));
      break;
    default:
      store_at<uint64_t>(dst, index, bits);
      break;
  }
}

SS_HD inline uint32_t float_to_bits(float value) {
#if defined(SS_DEVICE_PASS)
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

SS_HD inline float bits_to_float(uint32_t bits) {
#if defined(SS_DEVICE_PASS)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

// IEEE binary16 <-> fp32 on the bits, as shm::half_to_double / double_to_half do it: exact one
// way; round to nearest even once the other, overflow to inf, NaN to a quiet NaN keeping the sign.
SS_HD inline float half_to_float(uint16_t half) {
  const uint32_t sign = uint32_t(half & 0x8000U) << 16;
  const uint32_t exponent = (half >> 10) & 0x1fU;
  uint32_t mantissa = half & 0x3ffU;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000U | (mantissa << 13));
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_to_float(sign);
  // Subnormal: normalise into an fp32 normal (every half subnormal is one).
  int32_t e = 113;
  while ((mantissa & 0x400U) == 0) {
    mantissa <<= 1;
    --e;
  }
  return bits_to_float(sign | (uint32_t(e) << 23) | ((mantissa & 0x3ffU) << 13));
}

SS_HD inline uint16_t float_to_half(float value) {
  const uint32_t x = float_to_bits(value);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000U);
  const int32_t exponent = int32_t((x >> 23) & 0xffU);
  uint32_t mantissa = x & 0x7fffffU;
  if (exponent == 0xff) return static_cast<uint16_t>(sign | 0x7c00U | (mantissa != 0 ? 0x200U : 0));
  const int32_t half_exponent = exponent - 127 + 15;
  if (half_exponent >= 31) return static_cast<uint16_t>(sign | 0x7c00U);  // overflow: inf
  if (half_exponent <= 0) {                                               // subnormal half or 0
    if (half_exponent < -10) return sign;  // below half the smallest subnormal
    mantissa |= 0x800000U;
    const int32_t shift = 14 - half_exponent;
    uint32_t half_mantissa = mantissa >> shift;
    const uint32_t rest = mantissa & ((1U << shift) - 1);
    const uint32_t halfway = 1U << (shift - 1);
    if (rest > halfway || (rest == halfway && (half_mantissa & 1U) != 0)) ++half_mantissa;
    return static_cast<uint16_t>(sign | half_mantissa);  // a carry makes the smallest normal
  }
  uint32_t half = (uint32_t(half_exponent) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffU;
  if (rest > 0x1000U || (rest == 0x1000U && (half & 1U) != 0)) ++half;  // carries round to inf
  return static_cast<uint16_t>(sign | half);
}

// std::min / std::max's exact expressions (NaN handling included), which the reference uses.
SS_HD inline float min_value(float a, float b) { return b < a ? b : a; }
SS_HD inline float max_value(float a, float b) { return a < b ? b : a; }

// The plan's element-wise functions (plan.h), as the reference computes them in fp32.
SS_HD inline float unary_value(KernelUnary alg, float alpha, float beta, float x) {
  switch (alg) {
    case KernelUnary::kRelu:
      return x > 0.0F ? x : 0.0F;
    case KernelUnary::kLeakyRelu:
      return x >= 0.0F ? x : alpha * x;
    case KernelUnary::kClip:
      return min_value(max_value(x, alpha), beta);
    case KernelUnary::kSigmoid:
      return 1.0F / (1.0F + expf(-x));
    case KernelUnary::kHardSigmoid:
      return max_value(0.0F, min_value(1.0F, alpha * x + beta));
    case KernelUnary::kHardSwish:
      return x * max_value(0.0F, min_value(1.0F, x / 6.0F + 0.5F));
    case KernelUnary::kSwish:
      return x / (1.0F + expf(-x));
  }
  return x;
}

// The element offset of row-major `index` in the index space `dims[0..rank)` read through
// `strides` (elements, any sign). The outermost dimension needs no division.
SS_HD inline int64_t strided_offset(int64_t index, int32_t rank, const int64_t* dims,
                                    const int64_t* strides) {
  int64_t offset = 0;
  for (int32_t d = rank - 1; d > 0; --d) {
    offset += (index % dims[d]) * strides[d];
    index /= dims[d];
  }
  return rank > 0 ? offset + index * strides[0] : 0;
}

// The same for two views of one index space at once (one division per dimension).
SS_HD inline void strided_offsets(int64_t index, int32_t rank, const int64_t* dims,
                                  const int64_t* strides_a, const int64_t* strides_b,
                                  int64_t* offset_a, int64_t* offset_b) {
  int64_t a = 0, b = 0;
  for (int32_t d = rank - 1; d > 0; --d) {
    const int64_t q = index % dims[d];
    index /= dims[d];
    a += q * strides_a[d];
    b += q * strides_b[d];
  }
  if (rank > 0) {
    a += index * strides_a[0];
    b += index * strides_b[0];
  }
  *offset_a = a;
  *offset_b = b;
}

}  // namespace sliceserve::backends::kernels
