#pragma once
// Futex waiting on 32-bit words in shared memory (process-shared, so no FUTEX_PRIVATE_FLAG).

#include <atomic>
#include <cstdint>

namespace sliceserve::shm {

// Sleeps while *word == expected, at most timeout_ns (< 0: no limit). Returns false on timeout.
// Spurious returns are allowed; callers re-check their condition.
bool futex_wait(std::atomic<uint32_t>& word, uint32_t expected, int64_t timeout_ns);
void futex_wake_all(std::atomic<uint32_t>& word);

// A doorbell (an eventcount): a ringer adds 2 and calls futex-wake only when bit 0 says someone
// sleeps. A sleeper takes a token (bell_token), checks its condition, and if it is false waits
// until the bell moved past the token. A ring between the check and the sleep is never lost.
void ring_bell(std::atomic<uint32_t>& bell);
uint32_t bell_token(const std::atomic<uint32_t>& bell);
// True once the bell rang after `token`; false on timeout (timeout_ns < 0: no limit).
bool wait_bell(std::atomic<uint32_t>& bell, uint32_t token, int64_t timeout_ns);

uint64_t monotonic_ns();

}  // namespace sliceserve::shm
