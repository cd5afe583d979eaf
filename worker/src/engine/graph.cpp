#include "sliceserve/worker/engine/graph.h"

#include <fmt/format.h>

namespace sliceserve::worker::engine {
namespace {

template <typename T>
void append_as_int64(const std::vector<std::byte>& data, std::vector<int64_t>& out) {
  const size_t count = data.size() / sizeof(T);
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, data.data() + i * sizeof(T), sizeof(T));
    out.push_back(static_cast<int64_t>(value));
  }
}

const char* kind_name(Attribute::Kind kind) {
  switch (kind) {
    case Attribute::Kind::kInt:
      return "an int";
    case Attribute::Kind::kFloat:
      return "a float";
    case Attribute::Kind::kString:
      return "a string";
    case Attribute::Kind::kInts:
      return "a list of ints";
    case Attribute::Kind::kFloats:
      return "a list of floats";
    case Attribute::Kind::kTensor:
      return "a tensor";
    case Attribute::Kind::kOther:
      break;
  }
  return "of a supported type";
}

}  // namespace

int64_t Tensor::element_count() const {
  int64_t count = 1;
  for (int64_t dim : dims) count *= dim;
  return count;
}

std::vector<int64_t> Tensor::to_int64() const {
  std::vector<int64_t> out;
  switch (dtype) {
    case DataType::kInt64:
      append_as_int64<int64_t>(data, out);
      break;
    case DataType::kInt32:
      append_as_int64<int32_t>(data, out);
      break;
    case DataType::kInt16:
      append_as_int64<int16_t>(data, out);
      break;
    case DataType::kInt8:
      append_as_int64<int8_t>(data, out);
      break;
    case DataType::kUint8:
    case DataType::kBool:
      append_as_int64<uint8_t>(data, out);
      break;
    default:
      break;
  }
  return out;
}

Tensor Tensor::from_int64(std::span<const int64_t> values, std::vector<int64_t> dims) {
  Tensor tensor;
  tensor.dtype = DataType::kInt64;
  tensor.dims = std::move(dims);
  tensor.data.resize(values.size() * sizeof(int64_t));
  if (!values.empty()) std::memcpy(tensor.data.data(), values.data(), tensor.data.size());
  return tensor;
}

std::string Node::describe() const { return fmt::format("node '{}' ({})", name, op_type); }

Status Node::error(std::string_view message) const {
  return {ErrorCode::kInvalidArgument, fmt::format("{}: {}", describe(), message)};
}

bool Node::has_attribute(std::string_view attr) const {
  return attributes.find(attr) != attributes.end();
}

#define SS_ENGINE_ATTR_LOOKUP(expected_kind)                                                \
  auto it = attributes.find(attr);                                                          \
  if (it == attributes.end()) return fallback;                                              \
  if (it->second.kind != (expected_kind)) {                                                 \
    return error(fmt::format("attribute '{}' must be {}", attr, kind_name(expected_kind))); \
  }

Result<int64_t> Node::int_attr(std::string_view attr, int64_t fallback) const {
  SS_ENGINE_ATTR_LOOKUP(Attribute::Kind::kInt)
  return it->second.i;
}

Result<float> Node::float_attr(std::string_view attr, float fallback) const {
  SS_ENGINE_ATTR_LOOKUP(Attribute::Kind::kFloat)
  return it->second.f;
}

Result<std::string> Node::string_attr(std::string_view attr, std::string_view fallback) const {
  auto it = attributes.find(attr);
  if (it == attributes.end()) return std::string(fallback);
  if (it->second.kind != Attribute::Kind::kString) {
    return error(fmt::format("attribute '{}' must be a string", attr));
  }
  return it->second.s;
}

Result<std::vector<int64_t>> Node::ints_attr(std::string_view attr,
                                             std::vector<int64_t> fallback) const {
  SS_ENGINE_ATTR_LOOKUP(Attribute::Kind::kInts)
  return it->second.ints;
}

Result<std::vector<float>> Node::floats_attr(std::string_view attr,
                                             std::vector<float> fallback) const {
  SS_ENGINE_ATTR_LOOKUP(Attribute::Kind::kFloats)
  return it->second.floats;
}

#undef SS_ENGINE_ATTR_LOOKUP

Result<const Tensor*> Node::tensor_attr(std::string_view attr) const {
  auto it = attributes.find(attr);
  if (it == attributes.end()) return error(fmt::format("missing attribute '{}'", attr));
  if (it->second.kind != Attribute::Kind::kTensor) {
    return error(fmt::format("attribute '{}' must be a tensor", attr));
  }
  return &it->second.t;
}

Result<DataType> data_type_from_onnx(int64_t onnx_type) {
  switch (onnx_type) {
    case 1:
      return DataType::kFp32;
    case 2:
      return DataType::kUint8;
    case 3:
      return DataType::kInt8;
    case 4:
      return DataType::kUint16;
    case 5:
      return DataType::kInt16;
    case 6:
      return DataType::kInt32;
    case 7:
      return DataType::kInt64;
    case 9:
      return DataType::kBool;
    case 10:
      return DataType::kFp16;
    case 11:
      return DataType::kFp64;
    case 12:
      return DataType::kUint32;
    case 13:
      return DataType::kUint64;
    default:
      return Status(ErrorCode::kInvalidArgument, fmt::format("unsupported dtype {}", onnx_type));
  }
}

const ValueInfo* Graph::find_value(std::string_view value_name) const {
  auto it = values.find(value_name);
  return it == values.end() ? nullptr : &it->second;
}

const Tensor* Graph::find_constant(std::string_view value_name) const {
  if (auto it = constants.find(value_name); it != constants.end()) return &it->second;
  auto it = initializers.find(value_name);
  return it == initializers.end() ? nullptr : &it->second;
}

}  // namespace sliceserve::worker::engine
