#pragma once
// Kind "synthetic": configurable FLOPs per item on per-thread working sets, outputs a documented
// function of input 0 (see sliceserve/worker/model.h).

#include <memory>

#include "sliceserve/backends/weight_store.h"
#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"
#include "sliceserve/worker/model.h"

namespace sliceserve::worker {

// kInvalidArgument unless the spec has at least one input and one output, flops_per_item is
// finite and >= 0, working_set_kb is in [1, 1 GiB / 1 KiB], weights_mb <= 65536 and
// load_delay_ms <= 600000. Errors of the weight store are passed on; kUnavailable when `stop`
// cut the load delay short.
Result<std::unique_ptr<Model>> create_synthetic_model(const ModelOptions& options,
                                                      const shm::ModelSpec& spec,
                                                      backends::WeightStore* weights);

}  // namespace sliceserve::worker
