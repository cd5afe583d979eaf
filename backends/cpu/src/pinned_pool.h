#pragma once
// A persistent pool of compute threads, each pinned to one cpu; the thread calling run() is the
// pool's member 0. Workers sleep on a condition variable between runs (process-local).

#include <pthread.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

class PinnedPool {
 public:
  using Fn = std::function<void(size_t, size_t)>;

  // cpus[i] is member i's cpu; cpus[0] is the calling thread's, which is pinned now.
  static Result<std::unique_ptr<PinnedPool>> create(std::vector<unsigned> cpus);
  ~PinnedPool();
  PinnedPool(const PinnedPool&) = delete;
  PinnedPool& operator=(const PinnedPool&) = delete;

  unsigned size() const { return unsigned(cpus_.size()); }
  const std::vector<unsigned>& cpus() const { return cpus_; }

  // Re-pins to a new cpu list (grows or shrinks the pool). Never while run() is in progress.
  // On failure the pool is left as it was.
  Status repin(std::vector<unsigned> cpus);

  // fn(begin, end) over [0, n) in min(n, size()) contiguous chunks; the caller runs chunk 0.
  void run(size_t n, const Fn& fn);

 private:
  struct Member {
    std::thread thread;
  };

  PinnedPool() = default;
  Status pin_caller();
  Status start_member(size_t index);  // index == members_.size() + 1
  void stop_members_from(size_t index);
  void member_loop(size_t index, uint64_t seen_generation);

  std::vector<unsigned> cpus_;
  std::vector<Member> members_;  // members_[k] is pool member k + 1

  // The thread pinned as member 0, and the affinity the creating thread had before.
  std::thread::id caller_id_;
  std::thread::id creator_id_;
  pthread_t creator_handle_{};
  std::vector<unsigned> creator_cpus_;

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  uint64_t generation_ = 0;  // bumped by every run() that needs the workers
  size_t live_ = 0;          // members with index >= live_ exit
  const Fn* fn_ = nullptr;
  size_t n_ = 0;
  size_t chunks_ = 0;
  size_t pending_ = 0;  // worker chunks of the current run not yet finished
};

}  // namespace sliceserve::backends
