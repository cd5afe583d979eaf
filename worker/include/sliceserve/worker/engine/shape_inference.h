#pragma once
// Shape inference over the graph IR: fills Graph::values with every value's dtype and shape and
// folds the shape-computation subgraphs exporters emit (Shape -> Gather -> Unsqueeze -> Concat ->
// Reshape) into Graph::constants, so Reshape and friends see constant operands.

#include <cstdint>
#include <set>
#include <string>

#include "sliceserve/shm/status.h"
#include "sliceserve/worker/engine/graph.h"

namespace sliceserve::worker::engine {

// batch > 0 replaces the first dimension of every graph input; batch == 0 keeps the declared
// shapes. Errors name the node and op: unsupported op, wrong rank or shape, bad attribute.
Status infer_shapes(Graph& graph, int64_t batch);

// The op types infer_shapes supports.
const std::set<std::string, std::less<>>& supported_ops();

}  // namespace sliceserve::worker::engine
