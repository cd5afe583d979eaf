#pragma once
// Tensor declarations shared by the segment header, the worker and the client: a model declares
// each input and output by name, dtype and per-item shape (the batch dimension is implicit).

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::shm {

enum class DataType : uint8_t {
  kInvalid = 0,
  kBool,
  kUint8,
  kUint16,
  kUint32,
  kUint64,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFp16,
  kFp32,
  kFp64,
};

inline constexpr size_t kMaxDims = 8;
inline constexpr size_t kMaxTensorName = 32;  // including the terminating NUL
inline constexpr size_t kMaxTensors = 8;      // per direction (inputs, outputs)

// KServe v2 datatype names: "FP32", "INT64", ...
std::string_view data_type_name(DataType dtype);
// Accepts the KServe names and the lower-case numpy-style ones ("float32", "int64").
Result<DataType> parse_data_type(std::string_view name);
size_t data_type_size(DataType dtype);

// Trivially copyable so it can live in the segment header.
struct TensorSpec {
  char name[kMaxTensorName] = {};
  DataType dtype = DataType::kInvalid;
  uint8_t ndims = 0;
  int64_t dims[kMaxDims] = {};

  std::string_view name_view() const;
  std::span<const int64_t> shape() const { return {dims, ndims}; }
  size_t element_count() const;
  size_t byte_size() const { return element_count() * data_type_size(dtype); }
};

// Builds a validated spec: non-empty name that fits, known dtype, 0 < ndims <= kMaxDims, dims > 0.
Result<TensorSpec> make_tensor_spec(std::string_view name, DataType dtype,
                                    std::span<const int64_t> shape);

std::string shape_to_string(std::span<const int64_t> shape);

struct ModelSpec {
  uint32_t n_inputs = 0;
  uint32_t n_outputs = 0;
  TensorSpec inputs[kMaxTensors];
  TensorSpec outputs[kMaxTensors];

  std::span<const TensorSpec> input_specs() const { return {inputs, n_inputs}; }
  std::span<const TensorSpec> output_specs() const { return {outputs, n_outputs}; }
  // Sum of all inputs' and outputs' byte sizes: what one slot must hold.
  size_t item_bytes() const;
  // Index of the named input, or -1.
  int find_input(std::string_view name) const;
};

}  // namespace sliceserve::shm
