#pragma once
// An executor runs the engine's plans on one device. Every device implements this interface
// (cpu: oneDNN; cuda: cuDNN/cuBLAS; hip: its kernels or MIOpen/rocBLAS); the engine and the
// worker never see a vendor type.
//
// A model is compiled once for all the batch sizes it will run: one plan per batch size, built
// together so the executor can choose one device layout per weight for all of them and keep the
// weights once, in the model's WeightStore, where a shadow worker maps them instead of making a
// second copy.

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "sliceserve/backends/compute_context.h"
#include "sliceserve/backends/plan.h"
#include "sliceserve/backends/weight_store.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct ExecutorWeights {
  size_t bytes = 0;          // weight bytes the executor uses
  size_t private_bytes = 0;  // of which this process holds its own copy
};

class Executor {
 public:
  virtual ~Executor() = default;

  // Prepares every plan for `threads` compute threads (0: the device's default): layouts,
  // primitives, activation memory, weights. The plans' constant bytes need to stay valid only
  // during the call. `weights` (nullable, must outlive the executor) is where the weights go;
  // without it the executor keeps a private copy. Errors name the op (its label) and say what is
  // unsupported. Called once.
  virtual Status compile(std::span<const Plan> plans, WeightStore* weights,
                         unsigned threads) = 0;

  // Runs plan `index` (compile order). inputs[i] holds plan.inputs[i], outputs[i] receives
  // plan.outputs[i], dense row-major with the plan's shapes. ctx gives the threads; a thread
  // count the plan was not prepared for is prepared on its first run (a slice resized in place;
  // the worker warms every share it may switch to). One run at a time.
  virtual Status run(size_t index, std::span<const std::byte* const> inputs,
                     std::span<std::byte* const> outputs, ComputeContext& ctx) = 0;

  // Items that are not contiguous (a batch of shared-memory slots): items[i].inputs[t] is item
  // i's part of plan input t (its bytes / batch), likewise for outputs. Executors that answer
  // runs_items() copy each item straight between its host memory and the device (DMA from memory
  // registered with register_host_memory); for the others the caller gathers into contiguous
  // buffers and calls run().
  struct ItemBuffers {
    std::span<const std::byte* const> inputs;
    std::span<std::byte* const> outputs;
  };
  virtual bool runs_items() const { return false; }
  virtual Status run_items(size_t index, std::span<const ItemBuffers> items, ComputeContext& ctx);

  // Host memory that batches' items live in (the segment's slot arena), for the whole life of the
  // executor: a device executor pins it (cuMemHostRegister) so that copies are DMA without a
  // staging buffer. Host executors ignore it.
  virtual Status register_host_memory(std::span<std::byte> memory);

  virtual ExecutorWeights weights() const = 0;

  // Per-op timing of one run of plan `index` (slicectl profile, KRISP): the time of each op that
  // is a step of its own (labels as in PlanOp::label, ops fused into another are absent), measured
  // on the device where it runs (device events; host clock around each step for host executors),
  // in execution order. Runs like run(), outputs included. kUnavailable where the executor
  // cannot time single ops.
  struct OpTiming {
    std::string label;
    double ms = 0;
  };
  virtual Result<std::vector<OpTiming>> profile_run(size_t index,
                                                    std::span<const std::byte* const> inputs,
                                                    std::span<std::byte* const> outputs,
                                                    ComputeContext& ctx);
};

// The cpu executor (oneDNN; backends/cpu).
std::unique_ptr<Executor> create_cpu_executor();

}  // namespace sliceserve::backends
