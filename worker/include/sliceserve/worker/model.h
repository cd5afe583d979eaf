#pragma once
// A model as the worker runs it: a declared spec (shm::ModelSpec) and a batch computation on a
// backend's compute context. Kinds:
//
// "null"       No compute: output 0 receives input 0's bytes (truncated, or zero-filled up to the
//              output's size); every other output is zero-filled. With no inputs all outputs are
//              zeros. For latency benchmarks of the request ring.
//
// "synthetic"  Deterministic load with real arithmetic. Each item costs flops_per_item floating
//              point operations: an FMA loop x[i] = 0.5f * x[i] + 0.5f over a per-thread working
//              set of working_set_kb KiB of floats (one per compute thread, allocated the first
//              time that thread computes, i.e. at warm-up, and reused), repeated until the flops
//              are spent (2 flops per element and pass). An item's flops are split into
//              ctx.concurrency() equal parts and all parts of all items are spread over
//              ctx.parallel_for, so even a batch of one item speeds up with more threads.
//              Outputs, a function of input 0 only (needs >= 1 input and >= 1 output):
//
//                  output_j[k] = to_dtype_j( 2 * from_dtype_0( input_0[k mod n0] ) + 1 )
//
//              for every output j and element k, n0 being input 0's element count. from_dtype:
//              the element's value as a double (BOOL: 0 or 1; FP16: IEEE binary16). to_dtype:
//              FP32/FP64 a plain conversion; FP16 IEEE binary16, round to nearest even; integers
//              saturate to the type's range, then truncate toward zero, NaN -> 0; BOOL: 1 if
//              non-zero, NaN -> 0. The arithmetic is folded into the result so the compiler
//              cannot drop it (a comparison with a value the loop can never produce) without
//              changing it.
//              Weights (weights_mb > 0): weights_mb MiB of floats in [0, 1], a fixed seeded
//              pattern, loaded once per model through the WeightStore as region "synthetic" (so
//              a shadow worker maps the live worker's copy instead of making its own; without a
//              store the model holds a private copy). The FMA loop then reads them as its
//              offset, x[i] = 0.5f * x[i] + 0.5f * w[j], each thread walking through all of the
//              weights batch after batch; x stays in [0, 1] and the outputs above do not change.
//              load_delay_ms: extra time create_model takes, to emulate a slow model load (an
//              MPS reconfiguration takes ~10 s) in demos and tests; `stop` cuts it short.
//
// "onnx"       An ONNX file (`path`) run by the engine on the worker's device. The spec's
//              tensors are the model's inputs and outputs without their batch dimension (names,
//              dtypes and item shapes must match the file's); the engine has a plan for every
//              batch size 1..max_batch. Its weights live in the WeightStore (region
//              "engine-<hash>"), so a shadow maps the live worker's copy. On "cuda:<n>" the
//              items go between their slots and the GPU by DMA, with no gather step.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "sliceserve/backends/compute_context.h"
#include "sliceserve/backends/executor.h"
#include "sliceserve/backends/weight_store.h"
#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::worker {

// One request of a batch, inside its shm slot: one pointer per declared input and output, in
// spec order. The executors' own item type, so a device executor takes a batch as it is.
using ItemIO = backends::Executor::ItemBuffers;

struct ModelOptions {
  std::string kind;               // "null" | "synthetic" | "onnx"
  std::string path;               // model file, for kinds that load one
  double flops_per_item = 1e6;    // synthetic: floating point operations per item, >= 0
  uint32_t working_set_kb = 256;  // synthetic: per-thread working set, 1 KiB .. 1 GiB
  uint32_t weights_mb = 0;        // synthetic: MiB of weights, 0 .. 65536 (0: none)
  uint32_t load_delay_ms = 0;     // synthetic: simulated extra load time, 0 .. 600000
  int64_t max_batch = 1;          // onnx: the largest batch the worker runs, 1 .. 4096
  unsigned threads = 0;           // onnx: the slice's compute threads at load (0: all cpus)
  std::string device = "cpu";     // onnx: the engine's device, "cpu" or "cuda:<ordinal>"
  // onnx on a device: the segment's slot arena, which batches' items point into; the engine
  // pins it for DMA. Empty: none.
  std::span<std::byte> io_memory = {};
  // Cuts a load delay short when it turns true (a worker told to stop while loading): the load
  // then fails with kUnavailable. Nullable.
  const std::atomic<bool>* stop = nullptr;
};

// Model weights this model holds: `bytes` in all, of which `private_bytes` are its own copy
// (the rest is mapped from another worker's copy through the WeightStore).
struct WeightUsage {
  uint64_t bytes = 0;
  uint64_t private_bytes = 0;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const shm::ModelSpec& spec() const = 0;
  // Runs once on zero inputs (allocating per-thread state on every compute thread).
  virtual Status warm_up(backends::ComputeContext& ctx) = 0;
  // Computes every item of the batch in place; inputs were validated against spec().
  // kInvalidArgument if an item does not carry one pointer per declared tensor.
  virtual Status run(std::span<const ItemIO> batch, backends::ComputeContext& ctx) = 0;
  virtual WeightUsage weights() const { return {}; }
};

// kInvalidArgument for an unknown kind, a kind needing a path without one, bad options or a spec
// the kind cannot serve. `weights` (nullable, must outlive the model) is where a kind with
// weights gets them, shared with the model's other workers; without it the model loads a
// private copy.
Result<std::unique_ptr<Model>> create_model(const ModelOptions& options, const shm::ModelSpec& spec,
                                            backends::WeightStore* weights = nullptr);

// The spec of one item of the ONNX model at `path` (its inputs and outputs without the batch
// dimension), for configs that leave the tensors to the model file.
Result<shm::ModelSpec> onnx_item_spec(const std::string& path);

// Weight j of the synthetic model: a fixed pseudo-random pattern (splitmix64 of j), in [0, 1].
float synthetic_weight(size_t j);

}  // namespace sliceserve::worker
