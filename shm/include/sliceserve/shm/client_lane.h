#pragma once
// The client's side of a model segment: one lane (a submission ring and its own slots).
// take_slot, submit, release and cancel change the lane and must be serialised by the caller;
// is_done, completion_token, wait_completion and server_alive only read (or sleep on) shared
// words and may run on any thread alongside them.

#include <cstdint>
#include <optional>

#include "sliceserve/shm/segment.h"

namespace sliceserve::shm {

struct SlotTicket {
  uint32_t slot = 0;
  uint32_t generation = 0;  // generation the slot had when this client took it
};

class ClientLane {
 public:
  // Claims a free lane for this process; kBusy when every lane has an owner.
  static Result<ClientLane> acquire(Segment& segment);

  ClientLane(ClientLane&& other) noexcept;
  ClientLane& operator=(ClientLane&&) = delete;
  ClientLane(const ClientLane&) = delete;
  ~ClientLane();  // frees the lane's slots that are not in a worker's hands and releases it

  uint32_t index() const { return lane_; }
  uint32_t first_slot() const { return first_slot_; }
  uint32_t slots() const;

  // FREE -> WRITING on one of this lane's slots; nullopt when all are in flight.
  std::optional<SlotTicket> take_slot();
  // WRITING -> QUEUED, push onto the ring, ring the worker's bell. The slot's header and data
  // must be filled before. Returns kBusy only if the ring is full of stale entries.
  Status submit(const SlotTicket& ticket, uint64_t request_id);
  bool is_done(const SlotTicket& ticket) const;
  // Completion waiting: take a token, check is_done() on the slots of interest, then wait with
  // the token; it returns once any slot of this lane completed after the token was taken
  // (true) or the timeout passed (false).
  uint32_t completion_token() const;
  bool wait_completion(uint32_t token, int64_t timeout_ns);
  // True while the server is up (segment open, controller alive).
  bool server_alive() const;
  // DONE -> FREE (generation + 1). Returns false if the slot is not DONE with that generation.
  bool release(const SlotTicket& ticket);
  // Withdraws a request not yet claimed (QUEUED -> FREE, generation + 1): true on success; false
  // when a worker already holds it, in which case release() it once it is DONE.
  bool cancel(const SlotTicket& ticket);

  Segment& segment() const { return *segment_; }

 private:
  ClientLane(Segment* segment, uint32_t lane);
  Segment* segment_;
  uint32_t lane_;
  uint32_t first_slot_;
  bool active_ = true;
};

}  // namespace sliceserve::shm
