#pragma once
// Element conversions every part that computes on tensors of any dtype shares: IEEE 754
// binary16 (FP16 is stored as its raw bits), and double -> narrower types without undefined
// behaviour. Used by the model kinds, the engine's reference kernels and the tests.

#include <cmath>
#include <cstdint>
#include <limits>

namespace sliceserve::shm {

// Exact: every binary16 value is a double.
double half_to_double(uint16_t bits);

// Rounds to nearest even once, straight from the double (so a float source, converted to double
// exactly first, is rounded once too); overflows to inf; NaN stays a quiet NaN.
uint16_t double_to_half(double value);

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

// double -> float, out-of-range values to +-inf (a plain conversion would be undefined).
inline float to_float(double value) {
  constexpr double kMax = std::numeric_limits<float>::max();
  if (value > kMax) return std::numeric_limits<float>::infinity();
  if (value < -kMax) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(value);
}

}  // namespace sliceserve::shm
