#pragma once
// Host tensors for the kernel library's tests: one buffer that the reference kernels read and write
// and that the kernel bodies (host emulation, through its address in place of a device one) or a
// device copy of it stand in for; random contents; the reference's answer; the comparison.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "device_kernels.h"
#include "reference_ops.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::testing {

using backends::DataType;
using backends::DeviceAddress;
using backends::DeviceTensor;
using backends::MutableTensorRef;
using backends::OpKind;
using backends::PlanOp;
using backends::TensorRef;
using Dims = std::vector<int64_t>;

inline DeviceAddress address(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// A host tensor that both the reference kernels and the kernel bodies (through host addresses
// in place of device ones) read and write.
struct HostTensor {
  HostTensor(DataType t, Dims d)
      : dtype(t), dims(std::move(d)), bytes(size_t(elements(dims)) * shm::data_type_size(t)) {}

  static int64_t elements(const Dims& dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }

  int64_t count() const { return elements(dims); }
  float f(int64_t i) const {
    float v;
    std::memcpy(&v, bytes.data() + i * 4, 4);
    return v;
  }
  void set_f(int64_t i, float v) { std::memcpy(bytes.data() + i * 4, &v, 4); }
  template <typename T>
  void set(int64_t i, T v) {
    std::memcpy(bytes.data() + i * int64_t(sizeof(T)), &v, sizeof(T));
  }
  TensorRef ref() const { return {dtype, dims, bytes.data()}; }
  MutableTensorRef mut() { return {dtype, dims, bytes.data()}; }
  DeviceTensor device() const { return {address(bytes.data()), dtype, dims}; }

  DataType dtype;
  Dims dims;
  std::vector<std::byte> bytes;
};

inline std::mt19937& rng() {
  static std::mt19937 generator(12345);
  return generator;
}

inline HostTensor random_fp32(Dims dims, float lo = -4.0F, float hi = 4.0F) {
  HostTensor t(DataType::kFp32, std::move(dims));
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.count(); ++i) t.set_f(i, dist(rng()));
  return t;
}

// Random bytes: any element pattern of any dtype (movement does not look at values).
inline HostTensor random_bytes(DataType dtype, Dims dims) {
  HostTensor t(dtype, std::move(dims));
  std::uniform_int_distribution<int> dist(0, 255);
  for (std::byte& b : t.bytes) b = std::byte(dist(rng()));
  if (dtype == DataType::kBool) {
    for (std::byte& b : t.bytes) b = std::byte(int(b) & 1);
  }
  return t;
}

inline void run_reference(const PlanOp& op, const std::vector<const HostTensor*>& in,
                          const std::vector<HostTensor*>& out,
                          const std::vector<const HostTensor*>& sums = {}) {
  std::vector<TensorRef> ins, sum_refs;
  std::vector<MutableTensorRef> outs;
  for (const HostTensor* t : in) ins.push_back(t->ref());
  for (HostTensor* t : out) outs.push_back(t->mut());
  for (const HostTensor* t : sums) sum_refs.push_back(t->ref());
  const Status status = backends::run_reference_op(op, ins, outs, sum_refs);
  ASSERT_TRUE(status.is_ok()) << status.to_string();
}

// fp32: within rtol (NaN matches NaN, inf matches itself); every other dtype: bit-exact.
inline void expect_matches(const HostTensor& got, const HostTensor& want, float rtol = 1e-5F,
                           float atol = 1e-6F) {
  ASSERT_EQ(got.dims, want.dims);
  ASSERT_EQ(got.dtype, want.dtype);
  int mismatches = 0;
  for (int64_t i = 0; i < want.count() && mismatches < 5; ++i) {
    if (want.dtype == DataType::kFp32) {
      const float a = got.f(i), b = want.f(i);
      const bool same = std::isnan(b)   ? std::isnan(a)
                        : std::isinf(b) ? a == b
                                        : std::fabs(a - b) <= atol + rtol * std::fabs(b);
      if (!same) {
        ++mismatches;
        ADD_FAILURE() << "element " << i << ": got " << a << ", expected " << b;
      }
    } else {
      const size_t size = shm::data_type_size(want.dtype);
      if (std::memcmp(got.bytes.data() + size_t(i) * size, want.bytes.data() + size_t(i) * size,
                      size) != 0) {
        ++mismatches;
        uint64_t a = 0, b = 0;
        std::memcpy(&a, got.bytes.data() + size_t(i) * size, size);
        std::memcpy(&b, want.bytes.data() + size_t(i) * size, size);
        ADD_FAILURE() << "element " << i << ": got bits 0x" << std::hex << a << ", expected 0x" << b
                      << std::dec;
      }
    }
  }
}

inline PlanOp make_op(OpKind kind, const std::string& label = "node 'n' (test)") {
  PlanOp op;
  op.kind = kind;
  op.label = label;
  return op;
}

}  // namespace sliceserve::testing
