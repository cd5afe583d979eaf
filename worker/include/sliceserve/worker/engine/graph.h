#pragma once
// The engine's device-neutral graph IR: what the ONNX loader produces and what shape inference,
// fusion and the executors consume. No protobuf types here.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::worker::engine {

using shm::DataType;

// A dense tensor with its bytes (little-endian, row-major). Float16 is kept as raw bits.
struct Tensor {
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> dims;
  std::vector<std::byte> data;

  int64_t element_count() const;

  template <typename T>
  std::span<const T> as() const {
    return {reinterpret_cast<const T*>(data.data()), data.size() / sizeof(T)};
  }
  // The elements as int64 (from int64, int32, int8, uint8, bool); empty for other dtypes.
  std::vector<int64_t> to_int64() const;
  static Tensor from_int64(std::span<const int64_t> values, std::vector<int64_t> dims);
};

// A named value's type: dtype and shape, -1 for an unknown or symbolic dimension.
struct ValueInfo {
  std::string name;
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> shape;
  bool has_shape = false;  // false: rank unknown
};

struct Attribute {
  enum class Kind { kInt, kFloat, kString, kInts, kFloats, kTensor, kOther };
  Kind kind = Kind::kOther;
  int64_t i = 0;
  float f = 0.0F;
  std::string s;
  std::vector<int64_t> ints;
  std::vector<float> floats;
  Tensor t;
};

// An op that fusion (fusion.h) merged into the node before it: the node's result goes through
// it, and the node's output is then this op's. Element-wise ops only, so shapes do not change.
struct FusedOp {
  std::string op_type;  // Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish, Swish or Add
  std::string name;     // the merged node's name, for errors
  float alpha = 0.0F;   // LeakyRelu: alpha; Clip: min; HardSigmoid: alpha
  float beta = 0.0F;    // Clip: max; HardSigmoid: beta
  std::string addend;   // Add: the other operand, same shape as the result
};

struct Node {
  std::string op_type;
  std::string name;
  std::vector<std::string> inputs;   // "" for an absent optional input
  std::vector<std::string> outputs;  // "" for an absent optional output
  std::map<std::string, Attribute, std::less<>> attributes;
  std::vector<FusedOp> fused;  // applied in order to the node's result

  // "node 'conv1' (Conv)", the prefix of every node-specific error.
  std::string describe() const;
  Status error(std::string_view message) const;

  bool has_attribute(std::string_view attr) const;
  bool has_input(size_t index) const { return index < inputs.size() && !inputs[index].empty(); }
  // Typed accessors: the default when the attribute is absent, an error when it has another type.
  Result<int64_t> int_attr(std::string_view attr, int64_t fallback) const;
  Result<float> float_attr(std::string_view attr, float fallback) const;
  Result<std::string> string_attr(std::string_view attr, std::string_view fallback) const;
  Result<std::vector<int64_t>> ints_attr(std::string_view attr,
                                         std::vector<int64_t> fallback = {}) const;
  Result<std::vector<float>> floats_attr(std::string_view attr,
                                         std::vector<float> fallback = {}) const;
  // Required tensor attribute (kNotFound-free: absent is kInvalidArgument).
  Result<const Tensor*> tensor_attr(std::string_view attr) const;
};

// ONNX TensorProto::DataType numbers (1 = FLOAT, 7 = INT64, ...) to the engine's dtypes.
Result<DataType> data_type_from_onnx(int64_t onnx_type);

// A node's parameters as shape inference resolved them for the current shapes: defaults applied,
// axes normalised, auto_pad turned into pads. Only the fields of the node's op are set.
struct NodeParams {
  std::vector<int64_t> kernel, strides, dilations;  // Conv, MaxPool, AveragePool
  std::vector<int64_t> pads;  // window ops: begins then ends per spatial dimension (as declared,
                              // without what ceil_mode adds); Pad: begins then ends per dimension
  int64_t axis = 0;           // Concat, Split, Softmax, Gather, Flatten
  std::vector<int64_t> perm;  // Transpose
  std::vector<int64_t> sizes;                // Split: one per output
  std::vector<int64_t> starts, steps;        // Slice: one per dimension
  std::vector<int64_t> axes;                 // ReduceMean: sorted; empty with noop: identity
  bool keepdims = true;                      // ReduceMean
  std::string mode;                          // Pad: constant | reflect | edge
  double value = 0.0;                        // Pad: the constant
  bool value_known = true;                   // Pad: false when it is not a constant
};

struct Graph {
  std::string name;
  int64_t opset = 0;              // default-domain opset version
  std::vector<ValueInfo> inputs;  // graph inputs that are not initializers
  std::vector<ValueInfo> outputs;
  std::map<std::string, Tensor, std::less<>> initializers;
  std::vector<Node> nodes;  // topological order

  // Filled by shape inference: every value's dtype and shape, and the values known at load time
  // (initializers, Constant nodes and folded shape computations).
  std::map<std::string, ValueInfo, std::less<>> values;
  std::map<std::string, Tensor, std::less<>> constants;
  std::vector<NodeParams> params;  // one per node

  const ValueInfo* find_value(std::string_view value_name) const;
  // A value known at load time: a constant, else an initializer; nullptr otherwise.
  const Tensor* find_constant(std::string_view value_name) const;
};

}  // namespace sliceserve::worker::engine
