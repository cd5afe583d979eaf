#include "pinned_pool.h"

#include <algorithm>
#include <utility>

#include "sliceserve/backends/cpu/cpu_topology.h"

namespace sliceserve::backends {
namespace {

// Start of chunk i when [0, n) is split into `chunks` contiguous, near-equal chunks.
size_t chunk_begin(size_t n, size_t chunks, size_t i) {
  return i * (n / chunks) + std::min(i, n % chunks);
}

}  // namespace

Result<std::unique_ptr<PinnedPool>> PinnedPool::create(std::vector<unsigned> cpus) {
  if (cpus.empty()) return Status(ErrorCode::kInvalidArgument, "a pinned pool needs a cpu");
  std::unique_ptr<PinnedPool> pool(new PinnedPool());
  RETURN_IF_ERROR(pool->repin(std::move(cpus)));
  return pool;
}

PinnedPool::~PinnedPool() {
  stop_members_from(1);
  if (std::this_thread::get_id() == creator_id_ && !creator_cpus_.empty()) {
    // Best effort: the slice is going away; a failure leaves the thread pinned, nothing worse.
    (void)set_thread_cpus(creator_handle_, creator_cpus_);
  }
}

Status PinnedPool::pin_caller() {
  if (creator_id_ == std::thread::id()) {
    ASSIGN_OR_RETURN(creator_cpus_, current_thread_cpus());
    creator_id_ = std::this_thread::get_id();
    creator_handle_ = pthread_self();
  }
  RETURN_IF_ERROR(pin_thread(pthread_self(), cpus_[0]));
  caller_id_ = std::this_thread::get_id();
  return Status::ok();
}

Status PinnedPool::repin(std::vector<unsigned> cpus) {
  if (cpus.empty()) return Status(ErrorCode::kInvalidArgument, "a pinned pool needs a cpu");
  std::vector<unsigned> old = std::exchange(cpus_, std::move(cpus));
  Status status = pin_caller();
  if (status) {
    stop_members_from(cpus_.size());
    for (size_t k = 1; k <= members_.size() && status; ++k) {
      status = pin_thread(members_[k - 1].thread.native_handle(), cpus_[k]);
    }
    while (status && members_.size() + 1 < cpus_.size()) status = start_member(members_.size() + 1);
  }
  if (!status && !old.empty()) {
    // Roll back to the previous placement; best effort, the first error is what is reported.
    cpus_ = std::move(old);
    stop_members_from(cpus_.size());
    (void)pin_caller();
    for (size_t k = 1; k <= members_.size(); ++k) {
      (void)pin_thread(members_[k - 1].thread.native_handle(), cpus_[k]);
    }
    while (members_.size() + 1 < cpus_.size()) {
      if (!start_member(members_.size() + 1)) break;
    }
  }
  return status;
}

Status PinnedPool::start_member(size_t index) {
  uint64_t seen = 0;
  {
    std::lock_guard lock(mu_);
    seen = generation_;
    live_ = index + 1;
  }
  members_.push_back(Member{std::thread([this, index, seen] { member_loop(index, seen); })});
  Status status = pin_thread(members_.back().thread.native_handle(), cpus_[index]);
  if (!status) stop_members_from(index);
  return status;
}

void PinnedPool::stop_members_from(size_t index) {
  if (index < 1) index = 1;
  if (members_.size() + 1 <= index) return;
  {
    std::lock_guard lock(mu_);
    live_ = index;
  }
  work_cv_.notify_all();
  for (size_t k = index; k <= members_.size(); ++k) members_[k - 1].thread.join();
  members_.resize(index - 1);
}

void PinnedPool::member_loop(size_t index, uint64_t seen_generation) {
  std::unique_lock lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return index >= live_ || generation_ != seen_generation; });
    if (index >= live_) return;
    seen_generation = generation_;
    if (index >= chunks_) continue;  // this run has fewer chunks than threads
    const Fn* fn = fn_;
    const size_t begin = chunk_begin(n_, chunks_, index);
    const size_t end = chunk_begin(n_, chunks_, index + 1);
    lock.unlock();
    (*fn)(begin, end);
    lock.lock();
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void PinnedPool::run(size_t n, const Fn& fn) {
  if (std::this_thread::get_id() != caller_id_) {
    // A new calling thread joins as member 0. Best effort: if pinning fails the work still runs,
    // only on whatever cpu the scheduler picks.
    (void)pin_caller();
  }
  if (n == 0) return;
  const size_t chunks = std::min<size_t>(n, cpus_.size());
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  {
    std::lock_guard lock(mu_);
    fn_ = &fn;
    n_ = n;
    chunks_ = chunks;
    pending_ = chunks - 1;
    ++generation_;
  }
  work_cv_.notify_all();
  fn(0, chunk_begin(n, chunks, 1));
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
  fn_ = nullptr;
}

}  // namespace sliceserve::backends
