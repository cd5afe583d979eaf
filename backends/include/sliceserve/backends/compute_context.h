#pragma once
// What a model or executor computes through. Every backend implements it; a model never knows
// which device share it runs on, only how many threads it may use and how to fan work out.

#include <cstddef>
#include <functional>
#include <string_view>
#include <vector>

namespace sliceserve::backends {

// Where a GPU slice's work goes: opaque vendor handles (CUDA: the CUcontext to make current and
// the CUstream to launch on; HIP: the hipStream_t) and the index of the slice's pool entry they
// belong to, so an executor keeps per-queue state (CUDA graphs, library handles) by index. A
// host slice has none (all null).
struct DeviceQueue {
  void* context = nullptr;
  void* stream = nullptr;
  size_t index = 0;
};

class ComputeContext {
 public:
  virtual ~ComputeContext() = default;

  // Compute threads available now (the calling thread included).
  virtual unsigned concurrency() const = 0;

  // Runs fn(begin, end) over [0, n) split into at most concurrency() contiguous chunks on the
  // context's threads, returns when all are done. The calling thread takes part. Not reentrant:
  // fn must not call parallel_for on the same context.
  virtual void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) = 0;

  // The host cpus the compute threads are pinned to: thread i (the caller is 0) on cpus[i];
  // empty when they are not pinned. An executor with threads of its own (oneDNN's OpenMP team)
  // pins them the same way, so a model stays inside its slice.
  virtual std::vector<unsigned> host_cpus() const { return {}; }

  // The GPU queue work of this context is launched on now (it changes when an instant resize
  // selects another pool entry); all null for host contexts.
  virtual DeviceQueue device_queue() const { return {}; }

  // Per-layer right-sizing (KRISP): the queue the op labelled `layer` (PlanOp::label) is launched
  // on. A slice with a right-sizing profile answers a queue of fewer compute units inside its own
  // share for layers that need fewer; every other context answers device_queue(). An executor
  // that asks per op orders consecutive ops on different queues with events, and finishes a run
  // on device_queue().
  virtual DeviceQueue layer_queue(std::string_view /*layer*/) const { return device_queue(); }
};

}  // namespace sliceserve::backends
