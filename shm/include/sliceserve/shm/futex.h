#pragma once
// Futex waiting on 32-bit words in shared memory (process-shared, so no FUTEX_PRIVATE_FLAG).

#include <atomic>
#include <cstdint>

namespace sliceserve::shm {

// Sleeps while *word == expected, at most timeout_ns (< 0: no limit). Returns false on timeout.
// Spurious returns are allowed; callers re-check their condition.
bool futex_wait(std::atomic<uint32_t>& word, uint32_t expected, int64_t timeout_ns);
void futex_wake_all(std::atomic<uint32_t>& word);

// A doorbell: the ringer adds 2 and calls futex-wake only when bit 0 says someone sleeps.
// The sleeper sets bit 0, re-checks its condition, then waits on the value it saw.
void ring_bell(std::atomic<uint32_t>& bell);
// Waits for a ring after the caller's condition was false. `ready` is called again after the
// waiter flag is set, so a ring between the caller's check and the sleep is not lost.
template <typename Ready>
bool wait_bell(std::atomic<uint32_t>& bell, Ready&& ready, int64_t timeout_ns) {
  // seq_cst: the flag must be visible before we re-read the condition (Dekker pattern with
  // the ringer's seq_cst fetch_add after its release of the data).
  uint32_t seen = bell.fetch_or(1, std::memory_order_seq_cst) | 1;
  if (ready()) return true;
  return futex_wait(bell, seen, timeout_ns);
}

uint64_t monotonic_ns();

}  // namespace sliceserve::shm
