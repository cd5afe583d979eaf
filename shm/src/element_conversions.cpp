#include "sliceserve/shm/element_conversions.h"

#include <cstring>

namespace sliceserve::shm {

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

uint16_t double_to_half(double value) {
  uint64_t x = 0;
  std::memcpy(&x, &value, sizeof x);
  const auto sign = uint16_t((x >> 48) & 0x8000);
  const int exponent = int((x >> 52) & 0x7ff);
  uint64_t mantissa = x & ((uint64_t(1) << 52) - 1);
  if (exponent == 0x7ff) return uint16_t(sign | 0x7c00 | (mantissa != 0 ? 0x200 : 0));
  const int half_exponent = exponent - 1023 + 15;
  if (half_exponent >= 31) return uint16_t(sign | 0x7c00);  // overflow: inf
  if (half_exponent <= 0) {                                 // subnormal half, or zero
    if (half_exponent < -10) return sign;                   // below half the smallest subnormal
    mantissa |= uint64_t(1) << 52;
    const int shift = 43 - half_exponent;
    uint64_t half_mantissa = mantissa >> shift;
    const uint64_t rest = mantissa & ((uint64_t(1) << shift) - 1);
    const uint64_t halfway = uint64_t(1) << (shift - 1);
    if (rest > halfway || (rest == halfway && (half_mantissa & 1) != 0)) ++half_mantissa;
    return uint16_t(sign | half_mantissa);  // a carry into bit 10 is the smallest normal: right
  }
  uint32_t half = (uint32_t(half_exponent) << 10) | uint32_t(mantissa >> 42);
  const uint64_t rest = mantissa & ((uint64_t(1) << 42) - 1);
  const uint64_t halfway = uint64_t(1) << 41;
  if (rest > halfway || (rest == halfway && (half & 1) != 0)) ++half;  // carries round up to inf
  return uint16_t(sign | half);
}

}  // namespace sliceserve::shm
