#include "tensor_elements.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "sliceserve/shm/check.h"
#include "sliceserve/shm/element_conversions.h"

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

}  // namespace

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
      return shm::half_to_double(load_as<uint16_t>(base, index));
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
      return store_as(base, index, shm::saturate<uint8_t>(value));
    case DataType::kUint16:
      return store_as(base, index, shm::saturate<uint16_t>(value));
    case DataType::kUint32:
      return store_as(base, index, shm::saturate<uint32_t>(value));
    case DataType::kUint64:
      return store_as(base, index, shm::saturate<uint64_t>(value));
    case DataType::kInt8:
      return store_as(base, index, shm::saturate<int8_t>(value));
    case DataType::kInt16:
      return store_as(base, index, shm::saturate<int16_t>(value));
    case DataType::kInt32:
      return store_as(base, index, shm::saturate<int32_t>(value));
    case DataType::kInt64:
      return store_as(base, index, shm::saturate<int64_t>(value));
    case DataType::kFp16:
      return store_as(base, index, shm::double_to_half(shm::to_float(value)));  // via float
    case DataType::kFp32:
      return store_as(base, index, shm::to_float(value));
    case DataType::kFp64:
      return store_as(base, index, value);
    case DataType::kInvalid:
      break;
  }
  SS_CHECK(false, "store_element on an invalid dtype");
}

}  // namespace sliceserve::worker
