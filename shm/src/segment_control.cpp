#include "sliceserve/shm/segment_control.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/process_identity.h"

namespace sliceserve::shm {

void set_owner_epoch(Segment& segment, uint64_t epoch) {
  SegmentHeader& h = segment.header();
  h.owner_epoch.store(epoch, std::memory_order_release);
  ring_bell(h.epoch_bell);
  ring_bell(h.submit_bell);
}

void request_handover(Segment& segment, uint64_t epoch) {
  SegmentHeader& h = segment.header();
  h.handover_to.store(epoch, std::memory_order_release);
  ring_bell(h.submit_bell);  // the live worker may sleep waiting for work
}

ReclaimReport reclaim_dead_lanes(Segment& segment) {
  ReclaimReport report;
  const SegmentGeometry& g = segment.geometry();
  for (uint32_t lane = 0; lane < g.lanes; ++lane) {
    LaneHeader& l = segment.lane(lane);
    ProcessIdentity owner = l.owner.load(std::memory_order_acquire);
    if (owner == 0 || (owner != kLaneRetired && is_alive(owner))) continue;
    uint32_t waiting = 0;
    for (uint32_t s = lane * g.slots_per_lane; s < (lane + 1) * g.slots_per_lane; ++s) {
      std::atomic<uint64_t>& state = segment.slot(s).state;
      uint64_t w = state.load(std::memory_order_acquire);
      for (;;) {
        SlotState st = slot_state(w);
        if (st == SlotState::kFree) break;
        if (st == SlotState::kClaimed) {  // a worker runs it; free it once DONE
          ++waiting;
          break;
        }
        // WRITING, QUEUED or DONE of a dead client. The generation bump makes any ring entry
        // for it stale; the CAS loses cleanly to a worker claiming a QUEUED slot.
        if (state.compare_exchange_weak(w,
                                        pack_slot_word(slot_generation(w) + 1, 0, SlotState::kFree),
                                        std::memory_order_acq_rel)) {
          ++report.slots_freed;
          break;
        }
      }
    }
    report.slots_waiting += waiting;
    if (waiting == 0) {
      segment.header().active_lanes.fetch_and(~(uint64_t{1} << lane), std::memory_order_release);
      // Only if nobody re-took it meanwhile (a dead owner cannot; a retired lane stays ours).
      if (l.owner.compare_exchange_strong(owner, 0, std::memory_order_acq_rel)) {
        ++report.lanes_released;
      }
    }
  }
  return report;
}

SlotCensus slot_census(const Segment& segment) {
  SlotCensus c;
  for (uint32_t s = 0; s < segment.slot_count(); ++s) {
    switch (slot_state(segment.slot(s).state.load(std::memory_order_acquire))) {
      case SlotState::kFree:
        ++c.free;
        break;
      case SlotState::kWriting:
        ++c.writing;
        break;
      case SlotState::kQueued:
        ++c.queued;
        break;
      case SlotState::kClaimed:
        ++c.claimed;
        break;
      case SlotState::kDone:
        ++c.done;
        break;
    }
  }
  return c;
}

Result<uint64_t> post_command(Segment& segment, uint64_t target_epoch, Command command,
                              int64_t arg0) {
  Mailbox& m = segment.mailbox();
  uint64_t seq = m.request_seq.load(std::memory_order_relaxed);
  if (m.ack_seq.load(std::memory_order_acquire) != seq) {
    return Status(ErrorCode::kBusy, "the previous command is still unanswered");
  }
  m.command = uint32_t(command);
  m.target_epoch = target_epoch;
  m.args[0] = arg0;
  // Release: the worker that acquires request_seq sees the command and its arguments.
  m.request_seq.store(seq + 1, std::memory_order_release);
  ring_bell(segment.header().submit_bell);  // the worker may sleep waiting for requests
  return seq + 1;
}

std::optional<Result<std::string>> poll_command(const Segment& segment, uint64_t seq) {
  const Mailbox& m = segment.mailbox();
  // Acquire pairs with the worker's release of ack_seq: result and message are written.
  if (m.ack_seq.load(std::memory_order_acquire) < seq) return std::nullopt;
  std::string message(m.message, strnlen(m.message, sizeof m.message));
  if (m.result != 0) return Result<std::string>(Status(ErrorCode(m.result), message));
  return Result<std::string>(message);
}

void abandon_command(Segment& segment, uint64_t seq) {
  Mailbox& m = segment.mailbox();
  uint64_t expected = seq - 1;
  // Only if still unanswered; a late answer from a worker is harmless either way.
  m.ack_seq.compare_exchange_strong(expected, seq, std::memory_order_acq_rel);
}

Result<std::string> send_command(Segment& segment, uint64_t target_epoch, Command command,
                                 int64_t arg0, int64_t timeout_ns) {
  ASSIGN_OR_RETURN(uint64_t seq, post_command(segment, target_epoch, command, arg0));
  const uint64_t deadline = monotonic_ns() + uint64_t(timeout_ns);
  for (;;) {
    if (auto answer = poll_command(segment, seq)) return *answer;
    if (monotonic_ns() >= deadline) {
      return Status(ErrorCode::kTimeout,
                    "worker epoch " + std::to_string(target_epoch) + " did not answer the command");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void close_segment(Segment& segment) {
  SegmentHeader& h = segment.header();
  h.lifecycle.store(uint32_t(Lifecycle::kClosing), std::memory_order_release);
  for (uint32_t lane = 0; lane < segment.geometry().lanes; ++lane) {
    ring_bell(segment.lane(lane).completion_bell);
  }
  ring_bell(h.submit_bell);
  ring_bell(h.epoch_bell);
}

}  // namespace sliceserve::shm
