#pragma once
// Controller-side operations on a model segment: ownership changes, dead-client reclaim,
// commands through the mailbox, close.

#include <cstdint>
#include <optional>
#include <string>

#include "sliceserve/shm/segment.h"

namespace sliceserve::shm {

// Gives the ring to `epoch` (first start, or restart after the owner died) and wakes waiters.
void set_owner_epoch(Segment& segment, uint64_t epoch);
// Asks the live owner to hand over to `epoch` (shadow resize).
void request_handover(Segment& segment, uint64_t epoch);

struct ReclaimReport {
  uint32_t lanes_released = 0;
  uint32_t slots_freed = 0;
  uint32_t slots_waiting = 0;  // still CLAIMED by a worker; freed on a later sweep
};
// Frees the slots of lanes whose owning process is gone, then releases those lanes.
ReclaimReport reclaim_dead_lanes(Segment& segment);

// Counts slots per state, for tests and leak checks.
struct SlotCensus {
  uint32_t free = 0, writing = 0, queued = 0, claimed = 0, done = 0;
};
SlotCensus slot_census(const Segment& segment);

// Posts a command to the worker of target_epoch without waiting; returns its sequence number.
// kBusy while the previous command is unanswered.
Result<uint64_t> post_command(Segment& segment, uint64_t target_epoch, Command command,
                              int64_t arg0);
// The answer to command `seq`: nullopt while the worker has not answered; the worker's reply
// text, or its error as a Status.
std::optional<Result<std::string>> poll_command(const Segment& segment, uint64_t seq);
// Withdraws an unanswered command (its worker is gone), so the mailbox takes new ones.
void abandon_command(Segment& segment, uint64_t seq);

// Sends a command to the worker of target_epoch and waits for its ack (or timeout).
Result<std::string> send_command(Segment& segment, uint64_t target_epoch, Command command,
                                 int64_t arg0, int64_t timeout_ns);

// Marks the segment closing and wakes every sleeper, so clients fail fast with kServerGone.
void close_segment(Segment& segment);

}  // namespace sliceserve::shm
