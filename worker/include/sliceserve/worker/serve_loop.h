#pragma once
// The worker's serve loop: claim a batch from the model's ring, validate, run, complete, publish
// stats; between batches answer mailbox commands and hand over when the controller asks.
//
// Handover (shadow resize), live side: as soon as the loop sees handover_to > its epoch — while
// waiting for requests, while a partial batch waits for more, or with a batch in hand — it stops
// claiming and passes the ring on (owner_epoch = handover_to, epoch bell rung) *first*, then runs
// and completes the batch it holds, then returns kHandedOver. The new owner claims the next
// requests meanwhile, so completions never pause for a whole batch.
//
// Instant resize: `set slice <percent>` (mailbox, arg 0 an integer percent) runs
// backends::resize_in_place between two batches; a slice that cannot (cpu mode=process, mps)
// answers kUnavailable with its reason and keeps serving as it was.
//
// Stats it keeps besides the counters: batch_exec_ns[size] (model run time summed per batch
// size), slice_changed_ns (when the slice in force took effect: a resize, or this worker taking
// the ring) and first_batch_at_slice_ns (start of the first batch after that; 0 until then),
// weight_bytes / weight_private_bytes (Model::weights()).

#include <atomic>
#include <cstdint>
#include <vector>

#include "sliceserve/backends/slice.h"
#include "sliceserve/shm/segment.h"
#include "sliceserve/shm/worker_port.h"
#include "sliceserve/worker/model.h"

namespace sliceserve::worker {

struct ServeOptions {
  uint32_t max_batch = 8;              // 1..shm::kMaxBatch
  uint32_t max_queue_delay_us = 1000;  // a partial batch waits at most this long after its first
                                       // request was enqueued
};

enum class ServeExit { kStopped, kHandedOver, kDrained, kSegmentClosed, kControllerGone };
const char* serve_exit_name(ServeExit exit);

class ServeLoop {
 public:
  ServeLoop(shm::Segment& segment, shm::WorkerPort& port, Model& model, backends::Slice& slice,
            ServeOptions options);

  // Runs until stop turns true, a handover or drain completes, or the server goes away.
  // Requires ownership of the ring (WorkerPort::wait_for_ownership); records slice_changed_ns
  // as it starts.
  ServeExit run(const std::atomic<bool>& stop);

  uint32_t max_batch() const { return options_.max_batch; }

 private:
  // Claims up to max_batch requests, waiting up to the queue delay for a partial batch.
  void collect_batch(const std::atomic<bool>& stop);
  void run_batch();
  // Passes the ring on (see above) and logs it.
  void hand_over();
  // The slice in force changed now: its first batch is timed again.
  void mark_slice_changed();
  void finish(const shm::ClaimedSlot& claimed, const Status& status, uint64_t compute_ns);
  // A handover or a mailbox command for us is waiting.
  bool control_pending() const;
  // Executes a pending mailbox command; true if it asks the loop to drain.
  bool handle_mailbox();
  void publish_config();

  shm::Segment& segment_;
  shm::WorkerPort& port_;
  Model& model_;
  backends::Slice& slice_;
  ServeOptions options_;
  std::vector<shm::ClaimedSlot> batch_;
  std::vector<shm::ClaimedSlot> scratch_;
  std::vector<const std::byte*> input_ptrs_;
  std::vector<std::byte*> output_ptrs_;
  std::vector<ItemIO> items_;
  std::vector<shm::ClaimedSlot> item_slots_;
  bool first_batch_pending_ = false;  // the next batch is the first at the current slice
  double duty_ = 1;  // the slice's per-thread time quota, see SliceInfo::duty
  uint64_t last_recovery_ns_ = 0;
  uint64_t last_liveness_ns_ = 0;
};

}  // namespace sliceserve::worker
