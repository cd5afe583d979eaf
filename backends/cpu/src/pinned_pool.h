#pragma once
// A persistent pool of compute threads, each pinned to one cpu; the thread calling run() is the
// pool's member 0. The pool may hold more threads than it uses: members beyond the active ones
// stay parked (asleep on their own futex word, never woken by a run), so a cpu slice can build
// the thread sets of all its prepared shares up front and switch between them without creating
// a thread. Process-local; run(), reserve() and activate() are called from one thread at a time.

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

class PinnedPool {
 public:
  using Fn = std::function<void(size_t, size_t)>;

  // cpus[i] is member i's cpu; cpus[0] is the calling thread's, which is pinned now. All members
  // are active.
  static Result<std::unique_ptr<PinnedPool>> create(std::vector<unsigned> cpus);
  ~PinnedPool();
  PinnedPool(const PinnedPool&) = delete;
  PinnedPool& operator=(const PinnedPool&) = delete;

  // Active members (the caller included) and their cpus.
  unsigned size() const { return unsigned(cpus_.size()); }
  const std::vector<unsigned>& cpus() const { return cpus_; }
  // Threads started, parked ones included, plus the caller.
  unsigned capacity() const { return unsigned(members_.size() + 1); }

  // Starts (parked) and pins the members that `cpus` needs beyond those already started, so that
  // a later activate(cpus) creates no thread. A started member pinned elsewhere is left alone
  // (it may be active now); activate() re-pins it. On failure the members started by this call
  // are stopped again.
  Status reserve(std::span<const unsigned> cpus);

  // Makes members 0..cpus.size()-1 the active ones, on those cpus. Members already pinned there
  // cost nothing (no system call); others are re-pinned, missing ones started. Never while run()
  // is in progress. On failure the pool is left as it was.
  Status activate(std::span<const unsigned> cpus);

  // fn(begin, end) over [0, n) in min(n, size()) contiguous chunks; the caller runs chunk 0.
  void run(size_t n, const Fn& fn);

 private:
  struct Member {
    unsigned cpu = 0;
    std::atomic<uint64_t> go{0};    // runs handed to this member; bumped with release
    std::atomic<uint32_t> bell{0};  // eventcount the member sleeps on (shm/futex.h)
    std::atomic<bool> stop{false};  // set before the last go: exit instead of running
    std::thread thread;
  };

  PinnedPool() = default;
  Status pin_caller(unsigned cpu);
  Status start_member(unsigned cpu);     // appends a parked member pinned to cpu
  void stop_members_from(size_t index);  // index into members_
  void member_loop(Member& self, size_t index);

  std::vector<unsigned> cpus_;                    // active placement, cpus_[0] is the caller's
  std::vector<std::unique_ptr<Member>> members_;  // members_[k] is pool member k + 1

  // The thread pinned as member 0 (and where), and the affinity the creating thread had before.
  std::thread::id caller_id_;
  unsigned caller_cpu_ = 0;
  std::thread::id creator_id_;
  pthread_t creator_handle_{};
  std::vector<unsigned> creator_cpus_;

  // The run in progress: written by the caller before it bumps the members' go words (release),
  // read by those members after they acquire it; not written again until pending_ is 0.
  const Fn* fn_ = nullptr;
  size_t n_ = 0;
  size_t chunks_ = 0;
  std::atomic<uint32_t> pending_{0};    // member chunks of the run not yet finished
  std::atomic<uint32_t> done_bell_{0};  // rung by the member that finishes the last chunk
};

}  // namespace sliceserve::backends
