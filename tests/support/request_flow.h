#pragma once
// A client that keeps requests flowing through a model segment (test_segment_options' spec: FP32
// "x" [16] -> "y" [16]) and accounts for every one: request n of client `tag` carries
// x[0] = n, x[1] = tag, x[k] = k (k >= 2), and must come back once, with status OK and
// y = 2x + 1 (the synthetic model's formula; exact in float for these values).

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "sliceserve/shm/client_lane.h"
#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment.h"

namespace sliceserve::testing {

inline constexpr uint32_t kFlowElements = 16;

class FlowClient {
 public:
  FlowClient(shm::Segment& segment, uint32_t tag) : segment_(segment), tag_(tag) {}

  // Submits with up to `depth` in flight until `stop` turns true (or max_requests were sent),
  // then waits for the rest. Returns "" or what went wrong.
  std::string run(const std::atomic<bool>& stop, uint32_t depth, uint32_t max_requests = 1u << 20,
                  uint64_t stall_ns = 10'000'000'000ULL) {
    auto lane = shm::ClientLane::acquire(segment_);
    if (!lane.is_ok()) return "acquire: " + lane.status().to_string();
    const shm::TensorSpec& in = segment_.spec().inputs[0];
    struct InFlight {
      shm::SlotTicket ticket;
      uint32_t n;
    };
    std::vector<InFlight> flight;
    uint64_t last_progress = shm::monotonic_ns();
    for (;;) {
      while (!stop.load(std::memory_order_relaxed) && submitted_ < max_requests &&
             flight.size() < depth) {
        auto ticket = lane->take_slot();
        if (!ticket) break;
        const uint32_t n = submitted_;
        shm::SlotHeader& h = segment_.slot(ticket->slot);
        h.n_inputs = 1;
        h.inputs[0].dtype = in.dtype;
        h.inputs[0].ndims = in.ndims;
        for (uint8_t d = 0; d < in.ndims; ++d) h.inputs[0].dims[d] = in.dims[d];
        h.inputs[0].bytes = in.byte_size();
        auto* x =
            reinterpret_cast<float*>(segment_.slot_data(ticket->slot) + segment_.input_offset(0));
        for (uint32_t k = 0; k < kFlowElements; ++k) x[k] = float(k);
        x[0] = float(n);
        x[1] = float(tag_);
        Status s = lane->submit(*ticket, (uint64_t{tag_} << 32) | n);
        if (!s.is_ok()) return "submit: " + s.to_string();
        flight.push_back({*ticket, n});
        completions_.push_back(0);
        ++submitted_;
      }
      if (flight.empty() && (stop.load(std::memory_order_relaxed) || submitted_ >= max_requests)) {
        return "";
      }
      const uint32_t token = lane->completion_token();
      bool progressed = false;
      for (size_t i = 0; i < flight.size();) {
        if (!lane->is_done(flight[i].ticket)) {
          ++i;
          continue;
        }
        const uint32_t slot = flight[i].ticket.slot;
        const shm::SlotHeader& h = segment_.slot(slot);
        const uint32_t n = flight[i].n;
        if (h.request_id != ((uint64_t{tag_} << 32) | n)) return "wrong request id";
        if (h.status_code != 0) {
          return "request " + std::to_string(n) + " failed: " + std::string(h.error);
        }
        const auto* y =
            reinterpret_cast<const float*>(segment_.slot_data(slot) + segment_.output_offset(0));
        for (uint32_t k = 0; k < kFlowElements; ++k) {
          const float x = k == 0 ? float(n) : k == 1 ? float(tag_) : float(k);
          if (y[k] != 2 * x + 1) return "wrong output for request " + std::to_string(n);
        }
        if (!lane->release(flight[i].ticket)) return "release failed";
        ++completions_[n];
        ++completed_;
        flight[i] = flight.back();
        flight.pop_back();
        progressed = true;
      }
      const uint64_t now = shm::monotonic_ns();
      if (progressed) {
        last_progress = now;
      } else {
        if (now - last_progress > stall_ns) {
          return "stalled with " + std::to_string(flight.size()) + " requests in flight";
        }
        lane->wait_completion(token, 20'000'000);
      }
    }
  }

  uint32_t tag() const { return tag_; }
  uint64_t submitted() const { return submitted_; }
  uint64_t completed() const { return completed_; }
  // Requests that did not come back exactly once.
  uint64_t not_once() const {
    uint64_t bad = 0;
    for (uint8_t c : completions_) bad += c != 1;
    return bad;
  }

 private:
  shm::Segment& segment_;
  uint32_t tag_;
  uint32_t submitted_ = 0;
  uint64_t completed_ = 0;
  std::vector<uint8_t> completions_;
};

}  // namespace sliceserve::testing
