#pragma once
// A slice: one worker's share of a device, plus the compute context that runs inside it.

#include <string>

#include "sliceserve/backends/compute_context.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct SliceInfo {
  std::string backend;    // "cpu", "mps", "greenctx", "cumask"
  std::string mode;       // backend-specific, e.g. "process" or "affinity" for cpu
  double percent = 0;     // share of the device, (0, 100]
  unsigned threads = 0;   // compute threads (cpu) or equivalent parallel lanes
  std::string placement;  // human-readable, e.g. "cores 0-1, quota 70%"
};

class Slice : public ComputeContext {
 public:
  virtual SliceInfo info() const = 0;

  // Bracket every batch so that quota-enforcing slices can throttle: end_batch() may sleep to
  // keep the slice's long-run share of the device. Called by the thread that runs the batches.
  virtual void begin_batch() = 0;
  virtual void end_batch() = 0;

  // Instant resize, between two batches (never while parallel_for runs), from the thread that
  // runs the batches. kUnavailable for backends/modes that can only change by a shadow resize.
  virtual Status resize(double percent) = 0;
};

}  // namespace sliceserve::backends
