#include "pinned_pool.h"

#include <algorithm>
#include <system_error>
#include <utility>

#include "sliceserve/backends/cpu/cpu_topology.h"
#include "sliceserve/shm/futex.h"

namespace sliceserve::backends {
namespace {

// Polls of the pending count before the caller sleeps: member chunks are about as long as the
// caller's own, so the rest usually finish within a few microseconds of it.
constexpr unsigned kSpinPolls = 2000;

// Start of chunk i when [0, n) is split into `chunks` contiguous, near-equal chunks.
size_t chunk_begin(size_t n, size_t chunks, size_t i) {
  return i * (n / chunks) + std::min(i, n % chunks);
}

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

Result<std::unique_ptr<PinnedPool>> PinnedPool::create(std::vector<unsigned> cpus) {
  if (cpus.empty()) return Status(ErrorCode::kInvalidArgument, "a pinned pool needs a cpu");
  std::unique_ptr<PinnedPool> pool(new PinnedPool());
  RETURN_IF_ERROR(pool->activate(cpus));
  return pool;
}

PinnedPool::~PinnedPool() {
  stop_members_from(0);
  if (std::this_thread::get_id() == creator_id_ && !creator_cpus_.empty()) {
    // Best effort: the slice is going away; a failure leaves the thread pinned, nothing worse.
    (void)set_thread_cpus(creator_handle_, creator_cpus_);
  }
}

Status PinnedPool::pin_caller(unsigned cpu) {
  if (creator_id_ == std::thread::id()) {
    ASSIGN_OR_RETURN(creator_cpus_, current_thread_cpus());
    creator_id_ = std::this_thread::get_id();
    creator_handle_ = pthread_self();
  }
  RETURN_IF_ERROR(pin_thread(pthread_self(), cpu));
  caller_id_ = std::this_thread::get_id();
  caller_cpu_ = cpu;
  return Status::ok();
}

Status PinnedPool::reserve(std::span<const unsigned> cpus) {
  const size_t started_before = members_.size();
  Status status;
  for (size_t k = members_.size() + 1; k < cpus.size() && status; ++k) {
    status = start_member(cpus[k]);
  }
  if (!status) stop_members_from(started_before);
  return status;
}

Status PinnedPool::activate(std::span<const unsigned> cpus) {
  if (cpus.empty()) return Status(ErrorCode::kInvalidArgument, "a pinned pool needs a cpu");
  const size_t started_before = members_.size();
  const bool caller_moves = caller_id_ != std::this_thread::get_id() || caller_cpu_ != cpus[0];
  const bool was_caller = caller_id_ == std::this_thread::get_id();
  const unsigned old_caller_cpu = caller_cpu_;
  std::vector<std::pair<size_t, unsigned>> repinned;  // (member, its previous cpu)
  Status status = caller_moves ? pin_caller(cpus[0]) : Status::ok();
  for (size_t k = 1; k < cpus.size() && status; ++k) {
    if (k <= members_.size()) {
      Member& m = *members_[k - 1];
      if (m.cpu == cpus[k]) continue;  // the common case: prepared entries share members
      status = pin_thread(m.thread.native_handle(), cpus[k]);
      if (status) {
        repinned.emplace_back(k - 1, m.cpu);
        m.cpu = cpus[k];
      }
    } else {
      status = start_member(cpus[k]);
    }
  }
  if (!status) {
    // Roll back; best effort, the first error is what is reported.
    for (const auto& [index, cpu] : repinned) {
      (void)pin_thread(members_[index]->thread.native_handle(), cpu);
      members_[index]->cpu = cpu;
    }
    stop_members_from(started_before);
    if (caller_moves && was_caller && !cpus_.empty()) (void)pin_caller(old_caller_cpu);
    return status;
  }
  cpus_.assign(cpus.begin(), cpus.end());
  return Status::ok();
}

Status PinnedPool::start_member(unsigned cpu) {
  auto member = std::make_unique<Member>();
  member->cpu = cpu;
  Member& self = *member;
  const size_t index = members_.size() + 1;
  try {
    member->thread = std::thread([this, &self, index] { member_loop(self, index); });
  } catch (const std::system_error& e) {
    return Status(ErrorCode::kUnavailable,
                  std::string("cannot start a compute thread: ") + e.what());
  }
  members_.push_back(std::move(member));
  Status status = pin_thread(self.thread.native_handle(), cpu);
  if (!status) stop_members_from(members_.size() - 1);
  return status;
}

void PinnedPool::stop_members_from(size_t index) {
  for (size_t k = index; k < members_.size(); ++k) {
    Member& m = *members_[k];
    m.stop.store(true, std::memory_order_relaxed);
    // Release: the member that acquires this go sees stop.
    m.go.fetch_add(1, std::memory_order_release);
    shm::ring_bell(m.bell);
  }
  for (size_t k = index; k < members_.size(); ++k) members_[k]->thread.join();
  if (index < members_.size()) members_.resize(index);
}

void PinnedPool::member_loop(Member& self, size_t index) {
  uint64_t seen = 0;
  for (;;) {
    // Eventcount: the token is taken before the check, so a go bumped and rung after the check
    // changes the bell and the wait returns at once.
    const uint32_t token = shm::bell_token(self.bell);
    // Acquire pairs with the caller's release: the run's fn_, n_ and chunks_ (or stop) are set.
    const uint64_t go = self.go.load(std::memory_order_acquire);
    if (go == seen) {
      shm::wait_bell(self.bell, token, -1);
      continue;
    }
    seen = go;
    if (self.stop.load(std::memory_order_relaxed)) return;
    (*fn_)(chunk_begin(n_, chunks_, index), chunk_begin(n_, chunks_, index + 1));
    // Release: the chunk's writes are visible to the caller that sees pending_ reach 0 (every
    // member's fetch_sub is part of the release sequence the caller's acquire load reads from).
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) shm::ring_bell(done_bell_);
  }
}

void PinnedPool::run(size_t n, const Fn& fn) {
  if (std::this_thread::get_id() != caller_id_) {
    // A new calling thread joins as member 0. Best effort: if pinning fails the work still runs,
    // only on whatever cpu the scheduler picks.
    (void)pin_caller(cpus_[0]);
  }
  if (n == 0) return;
  const size_t chunks = std::min<size_t>(n, cpus_.size());
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  fn_ = &fn;
  n_ = n;
  chunks_ = chunks;
  pending_.store(uint32_t(chunks - 1), std::memory_order_relaxed);
  for (size_t k = 1; k < chunks; ++k) {
    Member& m = *members_[k - 1];
    // Release: the run's fields above are visible to the member that acquires go.
    m.go.fetch_add(1, std::memory_order_release);
    shm::ring_bell(m.bell);
  }
  fn(0, chunk_begin(n, chunks, 1));
  // Acquire: the members' chunks are complete and visible once pending_ reads 0.
  for (unsigned spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
    if (spin < kSpinPolls) {
      cpu_relax();
      continue;
    }
    const uint32_t token = shm::bell_token(done_bell_);
    if (pending_.load(std::memory_order_acquire) == 0) break;
    shm::wait_bell(done_bell_, token, -1);
  }
  fn_ = nullptr;
}

}  // namespace sliceserve::backends
