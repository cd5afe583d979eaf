#include "sliceserve/shm/client_lane.h"

#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/process_identity.h"

namespace sliceserve::shm {

Result<ClientLane> ClientLane::acquire(Segment& segment) {
  SegmentHeader& h = segment.header();
  if (h.lifecycle.load(std::memory_order_acquire) != uint32_t(Lifecycle::kOpen)) {
    return Status(ErrorCode::kServerGone, "model segment " + segment.name() + " is closing");
  }
  const uint32_t per_lane = segment.geometry().slots_per_lane;
  for (uint32_t lane = 0; lane < segment.geometry().lanes; ++lane) {
    LaneHeader& l = segment.lane(lane);
    ProcessIdentity expected = 0;
    // acq_rel: we must see the slots as the previous owner or the reclaimer left them.
    if (!l.owner.compare_exchange_strong(expected, self_identity(), std::memory_order_acq_rel)) {
      continue;
    }
    bool all_free = true;
    for (uint32_t s = lane * per_lane; s < (lane + 1) * per_lane; ++s) {
      all_free = all_free && slot_state(segment.slot(s).state.load(std::memory_order_acquire)) ==
                                 SlotState::kFree;
    }
    if (!all_free) {  // cannot happen while the reclaim invariant holds; leave it to the sweep
      l.owner.store(kLaneRetired, std::memory_order_release);
      continue;
    }
    h.active_lanes.fetch_or(uint64_t{1} << lane, std::memory_order_release);
    return ClientLane(&segment, lane);
  }
  return Status(ErrorCode::kBusy, "all " + std::to_string(segment.geometry().lanes) +
                                      " client lanes of " + segment.name() + " are taken");
}

ClientLane::ClientLane(Segment* segment, uint32_t lane)
    : segment_(segment), lane_(lane), first_slot_(lane * segment->geometry().slots_per_lane) {}

ClientLane::ClientLane(ClientLane&& other) noexcept
    : segment_(other.segment_),
      lane_(other.lane_),
      first_slot_(other.first_slot_),
      active_(std::exchange(other.active_, false)) {}

uint32_t ClientLane::slots() const { return segment_->geometry().slots_per_lane; }

ClientLane::~ClientLane() {
  if (!active_) return;
  // Free what no worker holds; if a worker still runs some of our requests the lane is handed
  // to the controller's sweep, which frees those slots once they are DONE.
  bool held = false;
  for (uint32_t s = first_slot_; s < first_slot_ + slots(); ++s) {
    std::atomic<uint64_t>& state = segment_->slot(s).state;
    uint64_t w = state.load(std::memory_order_acquire);
    for (;;) {
      SlotState st = slot_state(w);
      if (st == SlotState::kFree) break;
      if (st == SlotState::kClaimed) {
        held = true;
        break;
      }
      if (state.compare_exchange_weak(w,
                                      pack_slot_word(slot_generation(w) + 1, 0, SlotState::kFree),
                                      std::memory_order_acq_rel)) {
        break;
      }
    }
  }
  LaneHeader& l = segment_->lane(lane_);
  if (held) {
    l.owner.store(kLaneRetired, std::memory_order_release);
    return;
  }
  segment_->header().active_lanes.fetch_and(~(uint64_t{1} << lane_), std::memory_order_release);
  // Release: the FREE states above are visible to the next owner's acquire CAS.
  l.owner.store(0, std::memory_order_release);
}

std::optional<SlotTicket> ClientLane::take_slot() {
  for (uint32_t s = first_slot_; s < first_slot_ + slots(); ++s) {
    std::atomic<uint64_t>& state = segment_->slot(s).state;
    uint64_t w = state.load(std::memory_order_acquire);
    if (slot_state(w) != SlotState::kFree) continue;
    uint32_t gen = slot_generation(w);
    // Only this lane's client moves its slots out of FREE, so the CAS fails only if the
    // invariants are broken; still, never take a slot we did not see FREE.
    if (state.compare_exchange_strong(w, pack_slot_word(gen, 0, SlotState::kWriting),
                                      std::memory_order_acquire)) {
      return SlotTicket{s, gen};
    }
  }
  return std::nullopt;
}

Status ClientLane::submit(const SlotTicket& ticket, uint64_t request_id) {
  LaneHeader& l = segment_->lane(lane_);
  const uint32_t capacity = segment_->geometry().ring_capacity;
  uint64_t tail = l.tail.load(std::memory_order_relaxed);  // we are the only writer
  if (tail - l.head.load(std::memory_order_acquire) >= capacity) {
    return Status(ErrorCode::kBusy,
                  "submission ring of lane " + std::to_string(lane_) + " is full");
  }
  SlotHeader& slot = segment_->slot(ticket.slot);
  slot.request_id = request_id;
  slot.enqueue_ns = monotonic_ns();
  uint64_t expected = pack_slot_word(ticket.generation, 0, SlotState::kWriting);
  // Release: the request's header and tensors are visible to the worker that claims it.
  if (!slot.state.compare_exchange_strong(expected,
                                          pack_slot_word(ticket.generation, 0, SlotState::kQueued),
                                          std::memory_order_release)) {
    return Status(ErrorCode::kInternal, "slot " + std::to_string(ticket.slot) +
                                            " left WRITING under its client (reclaimed?)");
  }
  segment_->lane_ring(lane_)[tail & (capacity - 1)].store(
      pack_ring_entry(ticket.generation, ticket.slot), std::memory_order_relaxed);
  // Release: publishes the entry; the worker's acquire load of tail sees it.
  l.tail.store(tail + 1, std::memory_order_release);
  l.submitted.fetch_add(1, std::memory_order_relaxed);
  ring_bell(segment_->header().submit_bell);
  return Status::ok();
}

bool ClientLane::is_done(const SlotTicket& ticket) const {
  uint64_t w = segment_->slot(ticket.slot).state.load(std::memory_order_acquire);
  return slot_state(w) == SlotState::kDone && slot_generation(w) == ticket.generation;
}

uint32_t ClientLane::completion_token() const {
  return bell_token(segment_->lane(lane_).completion_bell);
}

bool ClientLane::wait_completion(uint32_t token, int64_t timeout_ns) {
  return wait_bell(segment_->lane(lane_).completion_bell, token, timeout_ns);
}

bool ClientLane::server_alive() const {
  const SegmentHeader& h = segment_->header();
  return h.lifecycle.load(std::memory_order_acquire) == uint32_t(Lifecycle::kOpen) &&
         is_alive(h.controller);
}

bool ClientLane::release(const SlotTicket& ticket) {
  uint64_t expected_gen = ticket.generation;
  std::atomic<uint64_t>& state = segment_->slot(ticket.slot).state;
  uint64_t w = state.load(std::memory_order_acquire);
  if (slot_state(w) != SlotState::kDone || slot_generation(w) != expected_gen) return false;
  return state.compare_exchange_strong(
      w, pack_slot_word(ticket.generation + 1, 0, SlotState::kFree), std::memory_order_acq_rel);
}

bool ClientLane::cancel(const SlotTicket& ticket) {
  std::atomic<uint64_t>& state = segment_->slot(ticket.slot).state;
  for (SlotState from : {SlotState::kQueued, SlotState::kWriting}) {
    uint64_t expected = pack_slot_word(ticket.generation, 0, from);
    // The generation bump makes the ring entry stale: the worker skips it.
    if (state.compare_exchange_strong(expected,
                                      pack_slot_word(ticket.generation + 1, 0, SlotState::kFree),
                                      std::memory_order_acq_rel)) {
      return true;
    }
  }
  return false;
}

}  // namespace sliceserve::shm
