#pragma once
// The worker's serve loop: claim a batch from the model's ring, validate, run, complete, publish
// stats; between batches answer mailbox commands and hand over when the controller asks.

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
  // Requires ownership of the ring (WorkerPort::wait_for_ownership).
  ServeExit run(const std::atomic<bool>& stop);

  uint32_t max_batch() const { return options_.max_batch; }

 private:
  // Claims up to max_batch requests, waiting up to the queue delay for a partial batch.
  void collect_batch(const std::atomic<bool>& stop);
  void run_batch();
  void finish(const shm::ClaimedSlot& claimed, const Status& status, uint64_t compute_ns);
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
  uint64_t last_recovery_ns_ = 0;
  uint64_t last_liveness_ns_ = 0;
};

}  // namespace sliceserve::worker
