#pragma once
// The cpu backend: a slice is a percentage of the machine's CPU time.
//
// share = percent / 100 x machine cores, in core units. The slice runs ceil(share) compute
// threads (at least one): a persistent pool in which the thread that calls parallel_for counts
// as the first member. Thread i is pinned to logical core (first_core + i) mod machine_cores,
// logical core c being the c-th cpu this process may run on (modulo their number, so that a
// simulated machine_cores larger than the real machine still pins to real cpus). When share is
// not a whole number of cores, the remainder is a CPU-time quota enforced by a duty-cycle throttle
// in end_batch() (see duty_cycle_throttle.h) at duty = share / threads: 30% of 2 cores = 0.6 core
// = 1 thread at 60%; 70% of 2 cores = 1.4 cores = 2 threads at 70%. cgroups are not used.
//
// mode "process": the share is fixed for the worker's lifetime (a shadow resize changes it):
// resizes_in_place() is false, prepare() answers kUnavailable, the pool holds the one share.
// mode "affinity": a pool of pre-built shares (see Slice). Thread i of every share is pinned to
// the same core, so the shares of a pool differ only in how many threads run and at what duty:
// prepare(p) starts (and pins) the threads that p needs beyond those already running, parked;
// select(i) makes share i's threads the active ones and sets its quota, which is a few stores
// and no system call (no thread created, none re-pinned), typically well under a microsecond.
// Parked threads sleep on their own futex word and are never woken by a batch.
//
// The calling thread is pinned when the slice is created and whenever a different thread calls
// parallel_for; the creating thread's previous affinity is restored when the slice is destroyed
// on that thread.

#include <memory>
#include <string>

#include "sliceserve/backends/slice.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct CpuSliceOptions {
  double percent = 100.0;        // (0, 100] of the machine's CPU time
  std::string mode = "process";  // process | affinity
  unsigned machine_cores = 0;    // 0 = all cpus this process may run on
  unsigned first_core = 0;       // placement offset the controller chose, < machine_cores
};

// What a share means on a machine: ceil(share_cores) threads each running `duty` of the time.
struct CpuSharePlan {
  double share_cores = 0;  // percent / 100 x machine_cores
  unsigned threads = 0;    // ceil(share_cores), at least 1
  double duty = 1.0;       // share_cores / threads, in (0, 1]; 1 = no quota
};

// kInvalidArgument unless percent is in (0, 100] and machine_cores > 0.
Result<CpuSharePlan> plan_cpu_share(double percent, unsigned machine_cores);

// Validates the options (percent, mode, first_core < cores), starts and pins the pool.
// Pinning failures are kInternal errors carrying the errno text.
Result<std::unique_ptr<Slice>> create_cpu_slice(const CpuSliceOptions& options);

}  // namespace sliceserve::backends
