#pragma once
// Lowering: a graph whose shapes were inferred for one batch size (infer_shapes) becomes an
// execution plan (backends/plan.h). Nodes whose outputs shape inference folded are dropped;
// every other node becomes one plan op (Softmax before opset 13, which works on a 2-D view,
// becomes a Copy, a Softmax and a Copy). Errors name the node and op.

#include <deque>

#include "sliceserve/backends/plan.h"
#include "sliceserve/shm/status.h"
#include "sliceserve/worker/engine/graph.h"

namespace sliceserve::worker::engine {

// Constant operands point into graph.initializers, or into copies appended to `storage` (for the
// values shape inference folded, which the next infer_shapes call replaces): both must outlive
// the plan's use.
Result<backends::Plan> lower(const Graph& graph, int64_t batch, std::deque<Tensor>& storage);

}  // namespace sliceserve::worker::engine
