#pragma once
// The engine: an ONNX model made ready to run on one device. Loading parses the file, fuses the
// usual patterns once (fusion.h), infers shapes and lowers the graph to one plan per batch size
// (lowering.h), and compiles every plan on the device's executor (backends/executor.h), whose
// weights live in the model's WeightStore.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "sliceserve/backends/compute_context.h"
#include "sliceserve/backends/executor.h"
#include "sliceserve/backends/weight_store.h"
#include "sliceserve/shm/status.h"
#include "sliceserve/worker/engine/graph.h"

namespace sliceserve::worker::engine {

struct EngineOptions {
  // Plans are built for every batch size 1..max_batch, the first dimension of every graph input
  // being the batch. 0: one plan at the graph's declared input shapes, which must all be known.
  int64_t max_batch = 1;
  // The executor: "cpu" (oneDNN), "cuda:<ordinal>" (cuDNN/cuBLAS/own kernels; "cuda" is
  // cuda:0), in builds with the cuda wing, "hip:<ordinal>" (the kernel library; "hip" is hip:0)
  // in builds with the hip wing.
  std::string device = "cpu";
  // Where the executor keeps the weights (nullable: a private copy); must outlive the engine.
  backends::WeightStore* weights = nullptr;
  // The compute threads of the context the engine will run in (a slice's concurrency()): its
  // primitives are built for them at load. 0: the device's default. Runs with another count
  // build theirs on their first run.
  unsigned threads = 0;
  // Host memory the items of run_items() live in (the segment's slot arena): a device executor
  // pins it at load so items go to the device by DMA. Empty: none.
  std::span<std::byte> io_memory = {};
};

class Engine {
 public:
  // kNotFound for a missing file; kInvalidArgument for an invalid model, an unsupported op or
  // attribute (naming the node and op), or inputs whose shapes cannot be fixed.
  static Result<std::unique_ptr<Engine>> load_file(const std::string& path,
                                                   const EngineOptions& options);
  // From a graph the caller built or edited (tests); takes it over.
  static Result<std::unique_ptr<Engine>> load_graph(Graph graph, const EngineOptions& options);

  // Inputs and outputs with their dtypes and shapes at batch 1 (max_batch > 0) or as declared.
  const std::vector<ValueInfo>& inputs() const { return inputs_; }
  const std::vector<ValueInfo>& outputs() const { return outputs_; }
  int64_t max_batch() const { return max_batch_; }

  // Shape of input/output i at `batch` (batch 0 with max_batch 0).
  std::vector<int64_t> input_shape(size_t i, int64_t batch) const;
  std::vector<int64_t> output_shape(size_t i, int64_t batch) const;

  // Runs `batch` items (1..max_batch; 0 when max_batch is 0). inputs[i] / outputs[i] are dense
  // row-major buffers of input_shape(i, batch) / output_shape(i, batch), items one after the
  // other. kInvalidArgument for a batch out of range or a wrong buffer count.
  Status run(int64_t batch, std::span<const std::byte* const> inputs,
             std::span<std::byte* const> outputs, backends::ComputeContext& ctx);

  // run() with the time of each op (Executor::profile_run: slicectl profile); kUnavailable where
  // the executor cannot time single ops.
  Result<std::vector<backends::Executor::OpTiming>> profile_run(
      int64_t batch, std::span<const std::byte* const> inputs,
      std::span<std::byte* const> outputs, backends::ComputeContext& ctx);

  // Runs batch.size() items given one by one (shared-memory slots), where the executor copies
  // them to and from its device itself (runs_items()); otherwise the caller gathers them into
  // the contiguous buffers run() takes.
  bool runs_items() const { return executor_->runs_items(); }
  Status run_items(std::span<const backends::Executor::ItemBuffers> items,
                   backends::ComputeContext& ctx);

  backends::ExecutorWeights weights() const { return executor_->weights(); }

 private:
  Engine() = default;
  // The plan of `batch`, after checking it and the buffer counts.
  Result<size_t> plan_index(int64_t batch, size_t inputs, size_t outputs) const;

  int64_t max_batch_ = 0;
  std::vector<ValueInfo> inputs_;
  std::vector<ValueInfo> outputs_;
  std::unique_ptr<backends::Executor> executor_;
};

}  // namespace sliceserve::worker::engine
