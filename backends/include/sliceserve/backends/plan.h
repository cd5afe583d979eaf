#pragma once
// An execution plan: what the engine hands an executor for one model at one batch size. It is
// device-neutral and carries no ONNX types: values with fully known shapes, and ops in execution
// order with their parameters resolved (defaults applied, negative axes normalised, auto_pad
// turned into explicit pads, constant operands folded). Fusions the engine found are already
// combined into one op (a Conv with its BatchNormalization folded into the weights and its
// activation or residual Add as post-ops).
//
// Tensors are dense, row-major, little-endian. An executor may keep them in another layout
// internally (oneDNN blocked formats), but plan inputs and outputs are always row-major.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::backends {

using shm::DataType;

struct PlanValue {
  std::string name;
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> dims;  // every dimension known, >= 0
  // Constants (weights, folded values): their bytes, valid until Executor::compile returns.
  bool is_constant = false;
  std::span<const std::byte> data;

  int64_t element_count() const;
  size_t byte_size() const;
};

// Element-wise functions on one tensor, also used as post-ops of a Conv or Gemm.
//   kRelu  max(x, 0)             kLeakyRelu  x >= 0 ? x : alpha x
//   kClip  min(max(x, alpha), beta)  (alpha = min, beta = max; +-inf when absent)
//   kSigmoid  1 / (1 + e^-x)     kHardSigmoid  max(0, min(1, alpha x + beta))
//   kHardSwish  x max(0, min(1, x / 6 + 1/2))   kSwish  x / (1 + e^-x)  (SiLU)
enum class UnaryAlg { kRelu, kLeakyRelu, kClip, kSigmoid, kHardSigmoid, kHardSwish, kSwish };

// Element-wise functions on two tensors with ONNX (numpy) broadcasting.
enum class BinaryAlg { kAdd, kSub, kMul, kDiv };

enum class OpKind {
  kConv,             // in: X, W, [B]; group, kernel, strides, dilations, pads; post_ops
  kBatchNorm,        // in: X, scale, bias, mean, var; epsilon. Inference: the running statistics.
                     // training: the batch's (population variance) and out: Y, running mean
                     // and var (momentum x given + (1 - momentum) x the batch's)
  kUnary,            // in: X; unary, alpha, beta
  kBinary,           // in: A, B; binary
  kMaxPool,          // in: X; kernel, strides, dilations, pads (ceil_mode already applied);
                     // out: Y, optionally Indices (int64; column-major spatially if asked)
  kAveragePool,      // in: X; kernel, strides, pads; count_include_pad
  kGlobalAveragePool,  // in: X (rank >= 3): mean over every spatial dimension
  kGemm,             // in: A, B, [C]; trans_a, trans_b, alpha, beta; post_ops. Rank-2 A and B
  kMatMul,           // in: A, B: numpy matmul (rank >= 1, batch dimensions broadcast)
  kCopy,             // in: X; out has X's bytes in another shape (Reshape, Flatten, Squeeze,
                     // Unsqueeze, Identity, Dropout at inference)
  kTranspose,        // in: X; perm
  kConcat,           // in: X0..Xn; axis
  kSplit,            // in: X; out: Y0..Yn; axis, sizes (one per output)
  kSlice,            // in: X; starts, steps, one per dimension: out[i] = X[starts + i * steps]
                     // (starts in range, steps != 0 and may be < 0; out's dims give the counts)
  kReduceMean,       // in: X; axes (sorted, normalised), keepdims
  kSoftmax,          // in: X; axis (opset >= 13: over that axis alone; earlier opsets are
                     // lowered to that by the engine with a Copy on either side)
  kLrn,              // in: X; size, alpha, beta, bias (over channels, dimension 1)
  kPad,              // in: X; pads (begins then ends, < 0 crops), pad_mode, pad_value
  kGather,           // in: X, indices (int32/int64, negative counts from the end); axis
  kCast,             // in: X; out's dtype
  kFill,             // out: a mask of ones (Dropout's mask output at inference)
};

// What follows a Conv or Gemm inside it: an element-wise function of its result, or the sum
// with another value of the same shape (a residual Add), in order. A BatchNorm takes unary ones
// (densenet's BN -> Relu).
struct PostOp {
  enum class Kind { kUnary, kSum };
  Kind kind = Kind::kUnary;
  UnaryAlg unary = UnaryAlg::kRelu;
  float alpha = 0.0F;
  float beta = 0.0F;
  int value = -1;  // kSum: the index of the value added
};

struct PlanOp {
  OpKind kind = OpKind::kCopy;
  std::string label;         // "node 'conv1' (Conv)": the node(s) it came from, for errors
  std::vector<int> inputs;   // indices into Plan::values, -1 for an absent optional input
  std::vector<int> outputs;  // indices into Plan::values

  // Conv and pooling: one entry per spatial dimension; pads are begins then ends.
  std::vector<int64_t> kernel, strides, dilations, pads;
  int64_t group = 1;
  bool count_include_pad = false;
  bool column_major_indices = false;  // MaxPool's Indices with ONNX storage_order 1

  UnaryAlg unary = UnaryAlg::kRelu;
  BinaryAlg binary = BinaryAlg::kAdd;
  float alpha = 0.0F;  // Unary, Gemm, LRN
  float beta = 0.0F;   // Unary, Gemm, LRN
  float bias = 0.0F;   // LRN
  float epsilon = 1e-5F;
  bool training = false;   // BatchNorm
  float momentum = 0.9F;   // BatchNorm, training
  bool trans_a = false, trans_b = false;

  int64_t axis = 0;            // Concat, Split, Softmax, Gather
  int64_t size = 0;            // LRN
  std::vector<int64_t> perm;   // Transpose
  std::vector<int64_t> sizes;  // Split
  std::vector<int64_t> starts, steps;  // Slice
  std::vector<int64_t> axes;   // ReduceMean
  bool keepdims = true;
  enum class PadMode { kConstant, kReflect, kEdge };
  PadMode pad_mode = PadMode::kConstant;
  double pad_value = 0.0;

  std::vector<PostOp> post_ops;
};

struct Plan {
  int64_t batch = 0;         // the batch size it was built for (0: the model's declared shapes)
  std::vector<PlanValue> values;
  std::vector<PlanOp> ops;   // execution order
  std::vector<int> inputs;   // graph inputs, in the model's order
  std::vector<int> outputs;  // graph outputs, in the model's order (may be constants or inputs)
};

}  // namespace sliceserve::backends
