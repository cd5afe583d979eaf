#include "sliceserve/shm/futex.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

namespace sliceserve::shm {
namespace {

long futex(std::atomic<uint32_t>& word, int op, uint32_t value, const timespec* timeout) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), op, value, timeout, nullptr, 0);
}

}  // namespace

bool futex_wait(std::atomic<uint32_t>& word, uint32_t expected, int64_t timeout_ns) {
  timespec ts{};
  const timespec* timeout = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1'000'000'000;
    ts.tv_nsec = timeout_ns % 1'000'000'000;
    timeout = &ts;
  }
  // Shared (non-private) futex: the word lives in memory mapped by several processes.
  long rc = futex(word, FUTEX_WAIT, expected, timeout);
  return !(rc == -1 && errno == ETIMEDOUT);
}

void futex_wake_all(std::atomic<uint32_t>& word) { futex(word, FUTEX_WAKE, INT_MAX, nullptr); }

void ring_bell(std::atomic<uint32_t>& bell) {
  // seq_cst orders the ring after the caller's release of the data and against the sleeper's
  // fetch_or of the waiter bit: either we see the bit, or the sleeper's re-check sees the data.
  uint32_t before = bell.fetch_add(2, std::memory_order_seq_cst);
  if (before & 1) {
    bell.fetch_and(~1u, std::memory_order_relaxed);
    futex_wake_all(bell);
  }
}

uint32_t bell_token(const std::atomic<uint32_t>& bell) {
  // seq_cst pairs with the ringer's fetch_add: a token read after a ring sees the data the
  // ringer published before it.
  return bell.load(std::memory_order_seq_cst) & ~1u;
}

bool wait_bell(std::atomic<uint32_t>& bell, uint32_t token, int64_t timeout_ns) {
  const uint64_t deadline = timeout_ns < 0 ? 0 : monotonic_ns() + uint64_t(timeout_ns);
  for (;;) {
    uint32_t current = bell.load(std::memory_order_seq_cst);
    if ((current & ~1u) != token) return true;
    // Announce the sleeper; if the bell moved meanwhile the CAS fails and we re-check.
    if (!(current & 1) &&
        !bell.compare_exchange_weak(current, current | 1, std::memory_order_seq_cst)) {
      continue;
    }
    int64_t left = -1;
    if (timeout_ns >= 0) {
      uint64_t now = monotonic_ns();
      if (now >= deadline) return false;
      left = int64_t(deadline - now);
    }
    futex_wait(bell, current | 1, left);
  }
}

uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec);
}

}  // namespace sliceserve::shm
