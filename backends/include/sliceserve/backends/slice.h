#pragma once
// A slice: one worker's share of a device, plus the compute context that runs inside it.

#include <string>
#include <vector>

#include "sliceserve/backends/compute_context.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct SliceInfo {
  std::string backend;    // "cpu", "mps", "greenctx", "cumask"
  std::string mode;       // backend-specific, e.g. "process" or "affinity" for cpu
  double percent = 0;     // share of the device, (0, 100]
  unsigned threads = 0;   // compute threads (cpu) or equivalent parallel lanes
  std::string placement;  // human-readable, e.g. "cores 0-1, quota 70%"
  // Fraction of the time each compute thread may run: a CPU quota below whole cores; 1 when
  // the slice is not time-shared. A batch's cost to the slice is its compute time / duty.
  double duty = 1.0;
};

class Slice : public ComputeContext {
 public:
  virtual SliceInfo info() const = 0;

  // Bracket every batch so that quota-enforcing slices can throttle: end_batch() may sleep to
  // keep the slice's long-run share of the device. Called by the thread that runs the batches.
  virtual void begin_batch() = 0;
  virtual void end_batch() = 0;

  // Instant resize. A slice that can change inside a running worker keeps a pool of
  // pre-built configurations — cpu affinity: pinned thread sets and quotas; greenctx: green
  // contexts and their streams; cumask: CU-masked streams — and switches between them by index,
  // between two batches, from the thread that runs the batches. Slices that cannot (cpu
  // mode=process, mps: the share is fixed per process, so they resize by shadow worker) answer
  // false and kUnavailable.
  virtual bool resizes_in_place() const = 0;
  // Builds the configuration for `percent` into the pool if it is not there yet (this may take
  // time: creating contexts or threads) and returns its index. Does not switch to it.
  virtual Result<size_t> prepare(double percent) = 0;
  // Shares of the pool's entries, by index.
  virtual std::vector<double> pool() const = 0;
  // Switches to a prepared entry; cheap (microseconds).
  virtual Status select(size_t index) = 0;
};

}  // namespace sliceserve::backends

namespace sliceserve::backends {

// prepare() then select(): what the worker does on a `set slice` command.
Status resize_in_place(Slice& slice, double percent);

}  // namespace sliceserve::backends
