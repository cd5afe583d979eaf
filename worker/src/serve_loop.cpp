#include "sliceserve/worker/serve_loop.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/latency_histogram.h"
#include "sliceserve/shm/process_identity.h"
#include "sliceserve/worker/request_validation.h"

namespace sliceserve::worker {
namespace {

constexpr uint64_t kRecoveryPeriodNs = 100'000'000;  // look for orphans of dead epochs
constexpr uint64_t kLivenessPeriodNs = 500'000'000;  // check the controller still runs
constexpr int64_t kIdleWaitNs = 50'000'000;          // longest sleep without re-checking
constexpr int kSpinPolls = 200;                      // polls of the rings before sleeping

void write_text(char* dst, size_t size, const std::string& text) {
  size_t n = std::min(text.size(), size - 1);
  std::memcpy(dst, text.data(), n);
  dst[n] = '\0';
}

}  // namespace

const char* serve_exit_name(ServeExit exit) {
  switch (exit) {
    case ServeExit::kStopped:
      return "stopped";
    case ServeExit::kHandedOver:
      return "handed over";
    case ServeExit::kDrained:
      return "drained";
    case ServeExit::kSegmentClosed:
      return "segment closed";
    case ServeExit::kControllerGone:
      return "controller gone";
  }
  return "?";
}

ServeLoop::ServeLoop(shm::Segment& segment, shm::WorkerPort& port, Model& model,
                     backends::Slice& slice, ServeOptions options)
    : segment_(segment), port_(port), model_(model), slice_(slice), options_(options) {
  options_.max_batch = std::clamp<uint32_t>(options_.max_batch, 1, shm::kMaxBatch);
  batch_.reserve(shm::kMaxBatch);
  scratch_.resize(shm::kMaxBatch);
  shm::WorkerStats& st = port_.stats();
  const WeightUsage weights = model_.weights();
  st.weight_bytes.store(weights.bytes, std::memory_order_relaxed);
  st.weight_private_bytes.store(weights.private_bytes, std::memory_order_relaxed);
  publish_config();
}

void ServeLoop::mark_slice_changed() {
  shm::WorkerStats& st = port_.stats();
  // first_batch_at_slice_ns is cleared first, so a reader never pairs the new slice_changed_ns
  // with the previous slice's first batch (it sees 0: not yet).
  st.first_batch_at_slice_ns.store(0, std::memory_order_relaxed);
  st.slice_changed_ns.store(shm::monotonic_ns(), std::memory_order_release);
  first_batch_pending_ = true;
}

void ServeLoop::hand_over() {
  const uint64_t next = port_.hand_over();
  spdlog::info("handed the ring over to epoch {}{}", next,
               batch_.empty()
                   ? std::string()
                   : ", completing the " + std::to_string(batch_.size()) + " requests in hand");
}

void ServeLoop::publish_config() {
  const backends::SliceInfo info = slice_.info();
  duty_ = std::clamp(info.duty, 0.01, 1.0);
  shm::WorkerStats& st = port_.stats();
  st.max_batch.store(options_.max_batch, std::memory_order_relaxed);
  st.slice_percent.store(uint32_t(info.percent + 0.5), std::memory_order_relaxed);
}

ServeExit ServeLoop::run(const std::atomic<bool>& stop) {
  const shm::SegmentHeader& header = segment_.header();
  mark_slice_changed();  // a worker taking the ring starts at its slice now
  batch_ = port_.recover_orphans();
  if (!batch_.empty()) spdlog::warn("re-running {} requests of a dead worker", batch_.size());
  last_recovery_ns_ = last_liveness_ns_ = shm::monotonic_ns();
  for (;;) {
    if (!batch_.empty()) {
      // A handover asked for while we collected this batch goes first: the new owner claims
      // the next requests while we run this one.
      const bool handing_over = port_.handover_requested();
      if (handing_over) hand_over();
      run_batch();
      batch_.clear();
      if (handing_over) return ServeExit::kHandedOver;
    }
    port_.stats().heartbeat_ns.store(shm::monotonic_ns(), std::memory_order_relaxed);

    if (handle_mailbox()) return ServeExit::kDrained;
    if (port_.handover_requested()) {
      hand_over();
      return ServeExit::kHandedOver;
    }
    if (!port_.owns_ring()) return ServeExit::kHandedOver;  // taken by the controller
    if (stop.load(std::memory_order_relaxed)) return ServeExit::kStopped;
    if (header.lifecycle.load(std::memory_order_acquire) != uint32_t(shm::Lifecycle::kOpen)) {
      return ServeExit::kSegmentClosed;
    }
    uint64_t now = shm::monotonic_ns();
    if (now - last_liveness_ns_ > kLivenessPeriodNs) {
      last_liveness_ns_ = now;
      if (!shm::is_alive(header.controller)) return ServeExit::kControllerGone;
    }
    if (now - last_recovery_ns_ > kRecoveryPeriodNs) {
      last_recovery_ns_ = now;
      batch_ = port_.recover_orphans();
      if (!batch_.empty()) {
        spdlog::warn("re-running {} requests of a dead worker", batch_.size());
        continue;
      }
    }
    collect_batch(stop);
  }
}

void ServeLoop::collect_batch(const std::atomic<bool>& stop) {
  const uint32_t max = options_.max_batch;
  // Spin briefly before sleeping: a request that arrives within a few microseconds is served
  // without a futex round trip. The token is taken only before the last look, so polling does
  // not read the doorbell line that every client writes.
  for (int spin = 0; spin < kSpinPolls && batch_.empty(); ++spin) {
    const bool last = spin + 1 == kSpinPolls;
    const uint32_t token = last ? port_.work_token() : 0;
    size_t n = port_.claim(std::span(scratch_.data(), max));
    batch_.insert(batch_.end(), scratch_.begin(), scratch_.begin() + n);
    // The controller rings the same bell for a handover or a command; one that came before the
    // token was taken would not wake us, so look for it before sleeping.
    if (batch_.empty() && last && !control_pending()) port_.wait_for_work(token, kIdleWaitNs);
  }
  if (batch_.empty()) return;
  // A partial batch waits for more until the first request has queued max_queue_delay.
  const uint64_t deadline =
      segment_.slot(batch_.front().slot).enqueue_ns + uint64_t(options_.max_queue_delay_us) * 1000;
  while (batch_.size() < max && !stop.load(std::memory_order_relaxed)) {
    uint32_t token = port_.work_token();
    size_t n = port_.claim(std::span(scratch_.data(), max - batch_.size()));
    batch_.insert(batch_.end(), scratch_.begin(), scratch_.begin() + n);
    if (batch_.size() >= max) break;
    uint64_t now = shm::monotonic_ns();
    if (now >= deadline || port_.handover_requested()) break;
    if (n == 0) port_.wait_for_work(token, int64_t(deadline - now));
  }
}

void ServeLoop::run_batch() {
  const shm::ModelSpec& spec = segment_.spec();
  items_.clear();
  item_slots_.clear();
  input_ptrs_.resize(batch_.size() * spec.n_inputs);
  output_ptrs_.resize(batch_.size() * spec.n_outputs);
  for (const shm::ClaimedSlot& c : batch_) {
    Status valid = validate_request(spec, segment_.slot(c.slot));
    if (!valid.is_ok()) {
      finish(c, valid, 0);
      continue;
    }
    std::byte* data = segment_.slot_data(c.slot);
    size_t k = item_slots_.size();
    for (uint32_t i = 0; i < spec.n_inputs; ++i) {
      input_ptrs_[k * spec.n_inputs + i] = data + segment_.input_offset(i);
    }
    for (uint32_t o = 0; o < spec.n_outputs; ++o) {
      output_ptrs_[k * spec.n_outputs + o] = data + segment_.output_offset(o);
    }
    items_.push_back({std::span(&input_ptrs_[k * spec.n_inputs], spec.n_inputs),
                      std::span(&output_ptrs_[k * spec.n_outputs], spec.n_outputs)});
    item_slots_.push_back(c);
  }
  if (items_.empty()) return;

  slice_.begin_batch();
  const uint64_t start = shm::monotonic_ns();
  if (first_batch_pending_) {
    first_batch_pending_ = false;
    port_.stats().first_batch_at_slice_ns.store(start, std::memory_order_relaxed);
  }
  Status status = model_.run(items_, slice_);
  const uint64_t compute = shm::monotonic_ns() - start;
  if (!status.is_ok()) spdlog::error("batch of {} failed: {}", items_.size(), status.to_string());
  for (const shm::ClaimedSlot& c : item_slots_) {
    segment_.slot(c.slot).batch_size = uint32_t(items_.size());
    finish(c, status, compute);
  }
  // Quota slices sleep here, after the clients already have their answers.
  slice_.end_batch();
  // What the batch costs the slice: its compute time stretched by the quota (whether or not the
  // throttle had to sleep this time). This is the execution time the policy scales with the
  // slice, and the busy time against the wall clock.
  const auto occupied = uint64_t(double(compute) / duty_);
  shm::WorkerStats& st = port_.stats();
  st.batches.fetch_add(1, std::memory_order_relaxed);
  const size_t size = std::min<size_t>(items_.size(), shm::kMaxBatch);
  st.batch_hist[size].fetch_add(1, std::memory_order_relaxed);
  st.batch_exec_ns[size].fetch_add(occupied, std::memory_order_relaxed);
  st.busy_ns.fetch_add(occupied, std::memory_order_relaxed);
}

void ServeLoop::finish(const shm::ClaimedSlot& claimed, const Status& status, uint64_t compute_ns) {
  shm::SlotHeader& slot = segment_.slot(claimed.slot);
  slot.status_code = int32_t(status.code());
  if (!status.is_ok()) write_text(slot.error, sizeof slot.error, status.message());
  const uint64_t enqueue = slot.enqueue_ns;
  const uint64_t claim = slot.claim_ns;
  if (!port_.complete(claimed)) {
    // Only a broken invariant gets here: someone else moved a slot we held.
    spdlog::critical("slot {} was not ours to complete", claimed.slot);
    return;
  }
  shm::WorkerStats& st = port_.stats();
  (status.is_ok() ? st.completed : st.failed).fetch_add(1, std::memory_order_relaxed);
  const uint64_t now = shm::monotonic_ns();
  st.queue_ns.fetch_add(claim > enqueue ? claim - enqueue : 0, std::memory_order_relaxed);
  st.compute_ns.fetch_add(compute_ns, std::memory_order_relaxed);
  const uint64_t latency_us = now > enqueue ? (now - enqueue) / 1000 : 0;
  st.latency_hist[shm::latency_bucket(latency_us)].fetch_add(1, std::memory_order_relaxed);
}

bool ServeLoop::control_pending() const {
  const shm::Mailbox& m = segment_.mailbox();
  // Acquire pairs with the controller's release of request_seq: target_epoch is set.
  const uint64_t seq = m.request_seq.load(std::memory_order_acquire);
  return port_.handover_requested() ||
         (seq != m.ack_seq.load(std::memory_order_relaxed) && m.target_epoch == port_.epoch());
}

bool ServeLoop::handle_mailbox() {
  shm::Mailbox& m = segment_.mailbox();
  // Acquire pairs with the controller's release of request_seq: the command fields are set.
  const uint64_t seq = m.request_seq.load(std::memory_order_acquire);
  if (seq == m.ack_seq.load(std::memory_order_relaxed) || m.target_epoch != port_.epoch()) {
    return false;
  }
  Status result;
  std::string reply;
  bool drain = false;
  const int64_t arg = m.args[0];
  switch (shm::Command(m.command)) {
    case shm::Command::kPing:
      reply = "pong epoch " + std::to_string(port_.epoch()) + " pid " + std::to_string(getpid());
      break;
    case shm::Command::kSetMaxBatch:
      if (arg < 1 || arg > int64_t(shm::kMaxBatch)) {
        result = Status(ErrorCode::kInvalidArgument,
                        "max_batch must be in 1.." + std::to_string(shm::kMaxBatch));
      } else {
        options_.max_batch = uint32_t(arg);
        reply = "max_batch " + std::to_string(arg);
      }
      break;
    case shm::Command::kSetSlice:
      // The argument is an integer percent; the slice validates the range.
      result = backends::resize_in_place(slice_, double(arg));
      if (result.is_ok()) {
        mark_slice_changed();
        reply = "slice " + std::to_string(arg) + "%: " + slice_.info().placement;
        spdlog::info("{}", reply);
      }
      break;
    case shm::Command::kDrain:
      drain = true;
      reply = "draining";
      break;
    default:
      result = Status(ErrorCode::kInvalidArgument, "unknown command " + std::to_string(m.command));
  }
  if (result.is_ok()) publish_config();
  m.result = int32_t(result.code());
  write_text(m.message, sizeof m.message, result.is_ok() ? reply : result.message());
  // Release: the result and message are visible to the controller that sees the ack.
  m.ack_seq.store(seq, std::memory_order_release);
  return drain;
}

}  // namespace sliceserve::worker
