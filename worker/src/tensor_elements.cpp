#include "tensor_elements.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "sliceserve/shm/check.h"

namespace sliceserve::worker {
namespace {

template <typename T>
T load_as(const std::byte* base, size_t index) {
  T value;
  std::memcpy(&value, base + index * sizeof(T), sizeof(T));
  return value;
}

template <typename T>
void store_as(std::byte* base, size_t index, T value) {
  std::memcpy(base + index * sizeof(T), &value, sizeof(T));
}

// Saturating, truncating double -> integer conversion; NaN -> 0.
template <typename T>
T saturate(double value) {
  if (std::isnan(value)) return 0;
  // max + 1 is exact for every width: 2^n - 1 + 1 for n <= 32, and for 64 bits max already
  // rounds to 2^n (or 2^(n-1)) as a double, the +1 being absorbed.
  constexpr double kAboveMax = double(std::numeric_limits<T>::max()) + 1.0;
  constexpr double kMin = double(std::numeric_limits<T>::min());
  if (value >= kAboveMax) return std::numeric_limits<T>::max();
  if (value <= kMin) return std::numeric_limits<T>::min();
  return static_cast<T>(value);  // in range: truncates toward zero
}

// double -> float without the undefined behaviour of converting an out-of-range value.
float to_float(double value) {
  constexpr double kMax = std::numeric_limits<float>::max();
  if (value > kMax) return std::numeric_limits<float>::infinity();
  if (value < -kMax) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(value);
}

}  // namespace

double half_to_double(uint16_t bits) {
  const unsigned exponent = (bits >> 10) & 0x1f;
  const unsigned mantissa = bits & 0x3ff;
  double magnitude = 0;
  if (exponent == 0) {
    magnitude = std::ldexp(double(mantissa), -24);  // zero or subnormal
  } else if (exponent == 31) {
    magnitude = mantissa != 0 ? std::numeric_limits<double>::quiet_NaN()
                              : std::numeric_limits<double>::infinity();
  } else {
    magnitude = std::ldexp(double(mantissa + 1024), int(exponent) - 25);
  }
  return (bits & 0x8000) != 0 ? -magnitude : magnitude;
}

uint16_t float_to_half(float value) {
  uint32_t x = 0;
  std::memcpy(&x, &value, sizeof x);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t exponent = (x >> 23) & 0xff;
  uint32_t mantissa = x & 0x7fffff;
  if (exponent == 0xff) {  // inf stays inf, NaN stays a quiet NaN
    return uint16_t(sign | 0x7c00 | (mantissa != 0 ? 0x200 | (mantissa >> 13) : 0));
  }
  const int half_exponent = int(exponent) - 127 + 15;
  if (half_exponent >= 31) return uint16_t(sign | 0x7c00);  // overflow: inf
  if (half_exponent <= 0) {                                 // subnormal half, or zero
    if (half_exponent < -10) return uint16_t(sign);
    mantissa |= 0x800000;
    const unsigned shift = unsigned(14 - half_exponent);
    uint32_t half_mantissa = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half_mantissa & 1) != 0)) ++half_mantissa;
    return uint16_t(sign | half_mantissa);  // a carry into bit 10 is the smallest normal: right
  }
  uint32_t half = sign | (uint32_t(half_exponent) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1) != 0)) ++half;  // carries round up to inf
  return uint16_t(half);
}

double load_element(shm::DataType dtype, const std::byte* base, size_t index) {
  using shm::DataType;
  switch (dtype) {
    case DataType::kBool:
      return load_as<uint8_t>(base, index) != 0 ? 1.0 : 0.0;
    case DataType::kUint8:
      return double(load_as<uint8_t>(base, index));
    case DataType::kUint16:
      return double(load_as<uint16_t>(base, index));
    case DataType::kUint32:
      return double(load_as<uint32_t>(base, index));
    case DataType::kUint64:
      return double(load_as<uint64_t>(base, index));
    case DataType::kInt8:
      return double(load_as<int8_t>(base, index));
    case DataType::kInt16:
      return double(load_as<int16_t>(base, index));
    case DataType::kInt32:
      return double(load_as<int32_t>(base, index));
    case DataType::kInt64:
      return double(load_as<int64_t>(base, index));
    case DataType::kFp16:
      return half_to_double(load_as<uint16_t>(base, index));
    case DataType::kFp32:
      return double(load_as<float>(base, index));
    case DataType::kFp64:
      return load_as<double>(base, index);
    case DataType::kInvalid:
      break;
  }
  SS_CHECK(false, "load_element on an invalid dtype");
  return 0;
}

void store_element(shm::DataType dtype, std::byte* base, size_t index, double value) {
  using shm::DataType;
  switch (dtype) {
    case DataType::kBool:
      return store_as<uint8_t>(base, index, (value != 0 && !std::isnan(value)) ? 1 : 0);
    case DataType::kUint8:
      return store_as(base, index, saturate<uint8_t>(value));
    case DataType::kUint16:
      return store_as(base, index, saturate<uint16_t>(value));
    case DataType::kUint32:
      return store_as(base, index, saturate<uint32_t>(value));
    case DataType::kUint64:
      return store_as(base, index, saturate<uint64_t>(value));
    case DataType::kInt8:
      return store_as(base, index, saturate<int8_t>(value));
    case DataType::kInt16:
      return store_as(base, index, saturate<int16_t>(value));
    case DataType::kInt32:
      return store_as(base, index, saturate<int32_t>(value));
    case DataType::kInt64:
      return store_as(base, index, saturate<int64_t>(value));
    case DataType::kFp16:
      return store_as(base, index, float_to_half(to_float(value)));
    case DataType::kFp32:
      return store_as(base, index, to_float(value));
    case DataType::kFp64:
      return store_as(base, index, value);
    case DataType::kInvalid:
      break;
  }
  SS_CHECK(false, "store_element on an invalid dtype");
}

}  // namespace sliceserve::worker
