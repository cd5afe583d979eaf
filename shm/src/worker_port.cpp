#include "sliceserve/shm/worker_port.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/process_identity.h"

namespace sliceserve::shm {
namespace {

// True if the worker of `epoch24` (low 24 bits, as stored in a slot word) cannot be running.
bool epoch_is_gone(const Segment& segment, uint64_t epoch24) {
  for (uint64_t i = 0; i < kStatsBlocks; ++i) {
    const WorkerStats& st = segment.stats_block(i);
    uint64_t e = st.epoch.load(std::memory_order_acquire);
    if (e != 0 && (e & kEpochMask) == epoch24) {
      return !is_alive(st.identity.load(std::memory_order_acquire));
    }
  }
  // Its stats block was reused by a newer epoch: it is long gone.
  return true;
}

}  // namespace

WorkerPort::WorkerPort(Segment& segment, uint64_t epoch) : segment_(segment), epoch_(epoch) {}

bool WorkerPort::owns_ring() const {
  return segment_.header().owner_epoch.load(std::memory_order_acquire) == epoch_;
}

void WorkerPort::publish_state(WorkerState state) {
  WorkerStats& st = stats();
  if (st.epoch.load(std::memory_order_relaxed) != epoch_) {
    // Take the block over from an older epoch: clear the counters first, then claim it with
    // release so readers that see our epoch see zeroed counters.
    st.epoch.store(0, std::memory_order_relaxed);
    for (auto* c : {&st.claimed, &st.completed, &st.failed, &st.recovered, &st.batches, &st.busy_ns,
                    &st.queue_ns, &st.compute_ns}) {
      c->store(0, std::memory_order_relaxed);
    }
    for (auto* c : {&st.slice_changed_ns, &st.first_batch_at_slice_ns, &st.weight_bytes,
                    &st.weight_private_bytes}) {
      c->store(0, std::memory_order_relaxed);
    }
    for (auto& b : st.batch_hist) b.store(0, std::memory_order_relaxed);
    for (auto& b : st.batch_exec_ns) b.store(0, std::memory_order_relaxed);
    for (auto& b : st.latency_hist) b.store(0, std::memory_order_relaxed);
    std::memset(st.message, 0, sizeof st.message);
    st.pid.store(getpid(), std::memory_order_relaxed);
    st.identity.store(self_identity(), std::memory_order_relaxed);
    st.epoch.store(epoch_, std::memory_order_release);
  }
  st.heartbeat_ns.store(monotonic_ns(), std::memory_order_relaxed);
  st.state.store(uint32_t(state), std::memory_order_release);
}

void WorkerPort::publish_failure(const Status& status) {
  WorkerStats& st = stats();
  std::string text = status.to_string();
  size_t n = std::min(text.size(), sizeof st.message - 1);
  std::memcpy(st.message, text.data(), n);
  st.message[n] = '\0';
  publish_state(WorkerState::kFailed);
}

bool WorkerPort::wait_for_ownership(int64_t timeout_ns, const std::atomic<bool>* stop) {
  const uint64_t deadline = monotonic_ns() + uint64_t(std::max<int64_t>(timeout_ns, 0));
  std::atomic<uint32_t>& bell = segment_.header().epoch_bell;
  for (;;) {
    uint32_t token = bell_token(bell);
    if (owns_ring()) return true;
    if (stop && stop->load(std::memory_order_relaxed)) return false;
    uint64_t now = monotonic_ns();
    if (now >= deadline) return false;
    // Short slices so a stop request is noticed without a ring.
    wait_bell(bell, token, std::min<int64_t>(int64_t(deadline - now), 50'000'000));
  }
}

std::vector<ClaimedSlot> WorkerPort::recover_orphans() {
  std::vector<ClaimedSlot> recovered;
  if (!owns_ring()) return recovered;
  const uint64_t mine = epoch_ & kEpochMask;
  for (uint32_t s = 0; s < segment_.slot_count(); ++s) {
    std::atomic<uint64_t>& state = segment_.slot(s).state;
    uint64_t w = state.load(std::memory_order_acquire);
    if (slot_state(w) != SlotState::kClaimed || slot_epoch(w) == mine) continue;
    if (!epoch_is_gone(segment_, slot_epoch(w))) continue;  // a retiring worker finishes it
    if (state.compare_exchange_strong(
            w, pack_slot_word(slot_generation(w), epoch_, SlotState::kClaimed),
            std::memory_order_acq_rel)) {
      segment_.slot(s).claim_ns = monotonic_ns();
      recovered.push_back({s, slot_generation(w)});
    }
  }
  stats().recovered.fetch_add(recovered.size(), std::memory_order_relaxed);
  return recovered;
}

size_t WorkerPort::claim(std::span<ClaimedSlot> out) {
  if (out.empty() || !owns_ring()) return 0;
  const SegmentGeometry& g = segment_.geometry();
  const uint64_t active = segment_.header().active_lanes.load(std::memory_order_acquire);
  if (active == 0) return 0;
  size_t taken = 0;
  bool progress = true;
  // Round robin, one request per lane per pass, so one busy client cannot starve the others.
  while (taken < out.size() && progress) {
    progress = false;
    for (uint32_t i = 0; i < g.lanes && taken < out.size(); ++i) {
      uint32_t lane = (next_lane_ + i) % g.lanes;
      if (!(active >> lane & 1)) continue;
      LaneHeader& l = segment_.lane(lane);
      uint64_t head = l.head.load(std::memory_order_relaxed);  // only the owner writes it
      // Acquire: the entries before tail (and the slots they name) are visible.
      const uint64_t tail = l.tail.load(std::memory_order_acquire);
      while (head < tail) {
        uint64_t entry =
            segment_.lane_ring(lane)[head & (g.ring_capacity - 1)].load(std::memory_order_relaxed);
        ++head;
        uint32_t s = ring_entry_slot(entry);
        uint32_t gen = ring_entry_generation(entry);
        // An entry outside the lane's slots can only come from a corrupted client: skip it.
        if (s / g.slots_per_lane != lane) continue;
        SlotHeader& slot = segment_.slot(s);
        uint64_t expected = pack_slot_word(gen, 0, SlotState::kQueued);
        // Acquire pairs with the client's release at QUEUED. A cancelled or reclaimed slot has
        // another generation, so its stale entry fails here and is dropped.
        if (slot.state.compare_exchange_strong(expected,
                                               pack_slot_word(gen, epoch_, SlotState::kClaimed),
                                               std::memory_order_acquire)) {
          slot.claim_ns = monotonic_ns();
          out[taken++] = {s, gen};
          progress = true;
          break;
        }
      }
      // Release: a later owner that reads head sees the entries we consumed as consumed.
      l.head.store(head, std::memory_order_release);
    }
    next_lane_ = (next_lane_ + 1) % g.lanes;
  }
  if (taken > 0) stats().claimed.fetch_add(taken, std::memory_order_relaxed);
  return taken;
}

uint32_t WorkerPort::work_token() const { return bell_token(segment_.header().submit_bell); }

bool WorkerPort::wait_for_work(uint32_t token, int64_t timeout_ns) {
  return wait_bell(segment_.header().submit_bell, token, timeout_ns);
}

bool WorkerPort::complete(const ClaimedSlot& claimed) {
  SlotHeader& slot = segment_.slot(claimed.slot);
  slot.done_ns = monotonic_ns();
  uint64_t expected = pack_slot_word(claimed.generation, epoch_, SlotState::kClaimed);
  // Release: the outputs and status written into the slot are visible to the client.
  if (!slot.state.compare_exchange_strong(
          expected, pack_slot_word(claimed.generation, epoch_, SlotState::kDone),
          std::memory_order_release)) {
    return false;
  }
  ring_bell(segment_.lane(claimed.slot / segment_.geometry().slots_per_lane).completion_bell);
  return true;
}

bool WorkerPort::handover_requested() const {
  const SegmentHeader& h = segment_.header();
  return h.handover_to.load(std::memory_order_acquire) > epoch_ && owns_ring();
}

uint64_t WorkerPort::hand_over() {
  SegmentHeader& h = segment_.header();
  uint64_t next = h.handover_to.load(std::memory_order_acquire);
  // Release: our last head stores are visible to the new owner, which acquires owner_epoch.
  h.owner_epoch.store(next, std::memory_order_release);
  ring_bell(h.epoch_bell);
  publish_state(WorkerState::kDraining);
  return next;
}

}  // namespace sliceserve::shm
