#pragma once
// The worker's side of a model segment: ownership by epoch, claiming, completing, handover.

#include <cstdint>
#include <span>
#include <vector>

#include "sliceserve/shm/segment.h"

namespace sliceserve::shm {

struct ClaimedSlot {
  uint32_t slot = 0;
  uint32_t generation = 0;
};

class WorkerPort {
 public:
  WorkerPort(Segment& segment, uint64_t epoch);

  uint64_t epoch() const { return epoch_; }
  bool owns_ring() const;
  WorkerStats& stats() const { return segment_.stats_block(epoch_); }

  // Marks this epoch's stats block as ours (resetting it) with the given state.
  void publish_state(WorkerState state);
  void publish_failure(const Status& status);

  // Sleeps until owner_epoch == epoch, the timeout passes, or `stop` turns true between polls.
  bool wait_for_ownership(int64_t timeout_ns, const std::atomic<bool>* stop = nullptr);

  // Takes over slots CLAIMED by other epochs whose worker is gone: CLAIMED(old) ->
  // CLAIMED(ours). They are re-run; completion stays exactly-once because DONE is a CAS on
  // the generation. The owner calls it on taking the ring and then periodically, since a
  // worker that handed over may still die holding its last batch.
  std::vector<ClaimedSlot> recover_orphans();

  // Pops up to out.size() requests (round robin over active lanes), QUEUED -> CLAIMED(ours).
  // Stale ring entries (cancelled or reclaimed slots) are skipped. Returns how many were taken.
  // Claims nothing once this worker no longer owns the ring.
  size_t claim(std::span<ClaimedSlot> out);
  // Sleeping for work: take a token, claim(), and if nothing came wait with the token until a
  // client (or the controller: handover, command, close) rings, or timeout_ns passes.
  uint32_t work_token() const;
  bool wait_for_work(uint32_t token, int64_t timeout_ns);

  // CLAIMED(ours, generation) -> DONE and wakes the lane's client. False if the slot moved on
  // (it cannot, unless the invariants are broken; counted in stats as failed).
  bool complete(const ClaimedSlot& claimed);

  // Handover, live side: true if the controller asked for one.
  bool handover_requested() const;
  // Stops claiming and passes ownership to handover_to; the caller then finishes the batch it
  // holds. Returns the new owner epoch.
  uint64_t hand_over();

 private:
  Segment& segment_;
  uint64_t epoch_;
  uint32_t next_lane_ = 0;  // round-robin cursor
};

}  // namespace sliceserve::shm
