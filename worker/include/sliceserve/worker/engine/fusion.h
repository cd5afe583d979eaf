#pragma once
// Graph rewrites that make a model cheaper to run, done once per model before it is lowered:
//
//   Identity, Dropout (inference)      removed; their consumers read the input
//   HardSigmoid(x; 1/6, 1/2) * x       HardSwish(x): how opset-13 exporters write HardSwish
//   Sigmoid(x) * x                     Swish(x), i.e. SiLU (efficientnet): an engine-internal op
//   Conv -> BatchNormalization         the BN folded into the Conv's weights and bias
//   Conv -> Add(other)                 the Add as the Conv's sum post-op (a residual connection)
//   Conv|Gemm -> Relu | LeakyRelu | Clip | Sigmoid | HardSigmoid | HardSwish | Swish
//                                      the activation as a post-op (FusedOp), after the above
//   BatchNormalization -> Relu         the Relu as the BN's post-op (densenet's pre-activation)
//
// A value is fused away only when its one consumer is the fused op and it is not a graph output.
// The merged node takes the place of the last node it absorbed, so every operand (an Add's other
// input included) is computed before it.

#include <optional>

#include "sliceserve/shm/status.h"
#include "sliceserve/worker/engine/graph.h"

namespace sliceserve::worker::engine {

struct FusionCounts {
  int removed = 0;       // Identity and Dropout nodes
  int hardswish = 0;     // HardSigmoid * x patterns
  int swish = 0;         // Sigmoid * x patterns
  int batch_norm = 0;    // BatchNormalizations folded into a Conv
  int add = 0;           // Adds fused into a Conv
  int activation = 0;    // activations fused into a Conv or Gemm
};

// Rewrites `graph`, whose shapes were inferred (infer_shapes), in place; its values and constants
// are stale afterwards (infer them again). New initializers hold folded weights; those no node
// uses any more are dropped.
Result<FusionCounts> fuse(Graph& graph);

// The activation `node` computes, as a FusedOp: Relu, LeakyRelu, Sigmoid, HardSigmoid, HardSwish,
// or Clip with constant bounds (+-inf when absent). nullopt for any other node.
std::optional<FusedOp> activation_of(const Graph& graph, const Node& node);

}  // namespace sliceserve::worker::engine
