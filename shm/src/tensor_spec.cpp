#include "sliceserve/shm/tensor_spec.h"

#include <algorithm>
#include <cstring>

namespace sliceserve::shm {
namespace {

struct TypeName {
  DataType dtype;
  std::string_view kserve;
  std::string_view numpy;
  size_t size;
};

constexpr TypeName kTypes[] = {
    {DataType::kBool, "BOOL", "bool", 1},       {DataType::kUint8, "UINT8", "uint8", 1},
    {DataType::kUint16, "UINT16", "uint16", 2}, {DataType::kUint32, "UINT32", "uint32", 4},
    {DataType::kUint64, "UINT64", "uint64", 8}, {DataType::kInt8, "INT8", "int8", 1},
    {DataType::kInt16, "INT16", "int16", 2},    {DataType::kInt32, "INT32", "int32", 4},
    {DataType::kInt64, "INT64", "int64", 8},    {DataType::kFp16, "FP16", "float16", 2},
    {DataType::kFp32, "FP32", "float32", 4},    {DataType::kFp64, "FP64", "float64", 8},
};

const TypeName* find_type(DataType dtype) {
  for (const auto& t : kTypes) {
    if (t.dtype == dtype) return &t;
  }
  return nullptr;
}

}  // namespace

std::string_view data_type_name(DataType dtype) {
  const TypeName* t = find_type(dtype);
  return t ? t->kserve : "INVALID";
}

Result<DataType> parse_data_type(std::string_view name) {
  for (const auto& t : kTypes) {
    if (name == t.kserve || name == t.numpy) return t.dtype;
  }
  return Status(ErrorCode::kInvalidArgument,
                "unknown dtype '" + std::string(name) +
                    "' (expected BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32 or FP64)");
}

size_t data_type_size(DataType dtype) {
  const TypeName* t = find_type(dtype);
  return t ? t->size : 0;
}

std::string_view TensorSpec::name_view() const { return {name, strnlen(name, kMaxTensorName)}; }

size_t TensorSpec::element_count() const {
  size_t n = 1;
  for (uint8_t i = 0; i < ndims; ++i) n *= size_t(dims[i]);
  return n;
}

Result<TensorSpec> make_tensor_spec(std::string_view name, DataType dtype,
                                    std::span<const int64_t> shape) {
  if (name.empty() || name.size() >= kMaxTensorName) {
    return Status(
        ErrorCode::kInvalidArgument,
        "tensor name must have 1 to " + std::to_string(kMaxTensorName - 1) + " characters");
  }
  if (data_type_size(dtype) == 0) {
    return Status(ErrorCode::kInvalidArgument, "tensor '" + std::string(name) + "': no dtype");
  }
  if (shape.empty() || shape.size() > kMaxDims) {
    return Status(ErrorCode::kInvalidArgument, "tensor '" + std::string(name) +
                                                   "': shape must have 1 to " +
                                                   std::to_string(kMaxDims) + " dimensions");
  }
  TensorSpec spec;
  std::memcpy(spec.name, name.data(), name.size());
  spec.dtype = dtype;
  spec.ndims = uint8_t(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] <= 0 || shape[i] > (int64_t{1} << 31)) {
      return Status(ErrorCode::kInvalidArgument, "tensor '" + std::string(name) + "': dimension " +
                                                     std::to_string(i) + " must be in 1..2^31");
    }
    spec.dims[i] = shape[i];
  }
  return spec;
}

std::string shape_to_string(std::span<const int64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

size_t ModelSpec::item_bytes() const {
  size_t total = 0;
  for (const auto& t : input_specs()) total += t.byte_size();
  for (const auto& t : output_specs()) total += t.byte_size();
  return total;
}

int ModelSpec::find_input(std::string_view name) const {
  for (uint32_t i = 0; i < n_inputs; ++i) {
    if (inputs[i].name_view() == name) return int(i);
  }
  return -1;
}

}  // namespace sliceserve::shm
