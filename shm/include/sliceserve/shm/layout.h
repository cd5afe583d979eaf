#pragma once
// The model segment, byte for byte. Everything lives at fixed offsets (never pointers) because
// the segment is mapped at different addresses by the controller, workers and clients.
//
//   SegmentHeader | LaneHeader[lanes] | lane ring entries | SlotHeader[slots] | WorkerStats[4]
//   | Mailbox | slot data (slot_data_bytes each)
//
// Slots are partitioned by lane: lane L owns slots [L*slots_per_lane, (L+1)*slots_per_lane).
// A client process claims a lane, so allocation needs no shared free list, a client never
// contends with another one, and a dead client's slots are found by lane alone.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::shm {

inline constexpr uint64_t kSegmentMagic = 0x53'4C'49'43'45'53'45'31ULL;  // "SLICESE1"
inline constexpr uint32_t kLayoutVersion = 2;  // 2: policy decisions and SLO counters
inline constexpr uint32_t kMaxLanes = 64;  // active_lanes is one 64-bit mask
inline constexpr uint32_t kMaxSlotsPerLane = 1024;
inline constexpr uint32_t kStatsBlocks = 4;  // live, shadow and two retired epochs
inline constexpr uint32_t kMaxBatch = 256;
inline constexpr size_t kMaxModelName = 64;
inline constexpr size_t kErrorText = 160;

// ---- slot state word: generation (32) | epoch (24) | state (8) ----
enum class SlotState : uint8_t { kFree = 0, kWriting = 1, kQueued = 2, kClaimed = 3, kDone = 4 };

inline constexpr uint64_t kEpochMask = (1ULL << 24) - 1;

constexpr uint64_t pack_slot_word(uint32_t generation, uint64_t epoch, SlotState state) {
  return (uint64_t{generation} << 32) | ((epoch & kEpochMask) << 8) | uint64_t(state);
}
constexpr SlotState slot_state(uint64_t word) { return SlotState(word & 0xff); }
constexpr uint64_t slot_epoch(uint64_t word) { return (word >> 8) & kEpochMask; }
constexpr uint32_t slot_generation(uint64_t word) { return uint32_t(word >> 32); }

// ---- lane ring entry: generation (32) | slot index (32) ----
constexpr uint64_t pack_ring_entry(uint32_t generation, uint32_t slot) {
  return (uint64_t{generation} << 32) | slot;
}
constexpr uint32_t ring_entry_slot(uint64_t e) { return uint32_t(e); }
constexpr uint32_t ring_entry_generation(uint64_t e) { return uint32_t(e >> 32); }

// Identity of a process that survives pid reuse: pid | (start time in clock ticks, low 32) << 32.
// Bit 63 is always set, so no identity equals 0 (free) or kLaneRetired.
using ProcessIdentity = uint64_t;
// Lane owner value of a lane its client gave up while a worker still held some of its slots:
// the controller frees them once they are DONE, like a dead client's.
inline constexpr ProcessIdentity kLaneRetired = 1;

enum class Lifecycle : uint32_t { kInitializing = 0, kOpen = 1, kClosing = 2 };

enum class WorkerState : uint32_t {
  kUnused = 0,
  kLoading = 1,
  kReady = 2,
  kServing = 3,
  kDraining = 4,
  kExited = 5,
  kFailed = 6,
};

// "loading", "serving", ...; "unknown" for a value outside the enum (read from shared memory).
const char* worker_state_name(uint32_t state);

struct SegmentGeometry {
  uint32_t lanes = 0;
  uint32_t slots_per_lane = 0;
  uint32_t ring_capacity = 0;  // per lane, power of two >= 2 * slots_per_lane
  uint32_t reserved = 0;
  uint64_t slot_data_bytes = 0;  // per slot, multiple of 64
  uint64_t lanes_offset = 0;
  uint64_t ring_entries_offset = 0;
  uint64_t slots_offset = 0;
  uint64_t stats_offset = 0;
  uint64_t mailbox_offset = 0;
  uint64_t slot_data_offset = 0;
  uint64_t total_bytes = 0;

  uint32_t slot_count() const { return lanes * slots_per_lane; }
};

// A short text one side writes and others read while it may change: a seqlock over atomic
// words, so readers never see a torn string and no access is a data race.
struct SharedText {
  static constexpr size_t kWords = 24;  // 192 bytes, NUL-padded
  std::atomic<uint64_t> seq;            // odd while a write is in progress
  std::atomic<uint64_t> words[kWords];
};
// Single writer. Text longer than the capacity is cut.
void store_text(SharedText& text, std::string_view value);
std::string load_text(const SharedText& text);

// What a policy decision did to a model, for the decision counters.
enum class PolicyAction : uint32_t { kGrow = 0, kShrink = 1, kBatch = 2, kHold = 3 };
inline constexpr uint32_t kPolicyActions = 4;
// "grow", "shrink", "batch", "hold".
const char* policy_action_name(PolicyAction action);
inline constexpr uint32_t kNoSloAttainment = UINT32_MAX;

// Rates and percentiles the controller computes every interval, for slicectl status. Each
// field is its own relaxed atomic: a reader may see fields of two neighbouring intervals.
struct ControllerSummary {
  std::atomic<uint64_t> updated_ns;  // CLOCK_MONOTONIC
  std::atomic<uint64_t> arrival_milli_rps;
  std::atomic<uint64_t> completion_milli_rps;
  std::atomic<uint64_t> p50_us;
  std::atomic<uint64_t> p99_us;
  std::atomic<uint32_t> slice_percent;
  std::atomic<uint32_t> slo_ms;
  std::atomic<uint32_t> max_batch;
  std::atomic<uint32_t> restarts;
  std::atomic<int32_t> worker_pid;
  std::atomic<uint32_t> policy_on;            // 0: pinned by `slicectl policy MODEL off`
  std::atomic<uint32_t> resizes;              // completed resizes (shadow or instant)
  std::atomic<uint32_t> failed_resizes;
  std::atomic<uint64_t> shadow_epoch;         // 0 when no shadow is loading
  std::atomic<int32_t> shadow_pid;
  std::atomic<uint64_t> completed_total;      // completions over every epoch so far
  // The policy's decisions so far, by PolicyAction (grow, shrink, batch, hold).
  std::atomic<uint64_t> decisions[kPolicyActions];
  // Completions over every epoch so far whose latency (enqueue -> done) was within the SLO and
  // over it, counted from the latency histogram: a bucket counts as within when its upper edge
  // is, so the split is exact to one bucket (about 9%) of the SLO.
  std::atomic<uint64_t> slo_met_total;
  std::atomic<uint64_t> slo_missed_total;
  // Share of the status window's completions within the SLO, parts per million;
  // kNoSloAttainment while the window has none.
  std::atomic<uint32_t> slo_attainment_ppm;
  SharedText backend;                         // e.g. "cpu mode=process"
  SharedText last_decision;                   // the policy's last decision with its inputs
  SharedText last_resize;                     // outcome of the last resize, or why it failed
};

struct SegmentHeader {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t header_bytes;
  uint64_t layout_checksum;  // over version, struct sizes, geometry and spec
  SegmentGeometry geometry;
  ProcessIdentity controller;  // the creating controller, for stale-segment detection
  char model_name[kMaxModelName];
  ModelSpec spec;
  std::atomic<uint32_t> lifecycle;  // Lifecycle; kOpen is stored last, with release

  // Ownership: only the worker whose epoch equals owner_epoch may claim slots.
  alignas(64) std::atomic<uint64_t> owner_epoch;
  std::atomic<uint64_t> handover_to;  // set by the controller to ask the owner to hand over
  std::atomic<uint32_t> epoch_bell;   // futex word, bumped on every ownership change

  // Submission doorbell: clients add 2 after a push; bit 0 says a worker sleeps on it.
  alignas(64) std::atomic<uint32_t> submit_bell;
  // Lanes with an owner, so the worker scans only those.
  alignas(64) std::atomic<uint64_t> active_lanes;

  alignas(64) ControllerSummary summary;
};

struct alignas(64) LaneHeader {
  std::atomic<ProcessIdentity> owner;      // 0 = free
  std::atomic<uint64_t> submitted;         // requests ever pushed (arrival counter)
  alignas(64) std::atomic<uint64_t> tail;  // written by the lane's client only
  alignas(64) std::atomic<uint64_t> head;  // written by the owning worker only
  // Completion doorbell: the worker adds 2 after a slot of this lane turns DONE; bit 0 says
  // the client sleeps on it.
  alignas(64) std::atomic<uint32_t> completion_bell;
};

struct RequestTensor {
  DataType dtype;
  uint8_t ndims;
  uint8_t pad[6];
  int64_t dims[kMaxDims];
  uint64_t bytes;
};

struct alignas(64) SlotHeader {
  std::atomic<uint64_t> state;  // pack_slot_word(...)
  uint64_t request_id;          // client's id, echoed
  uint64_t enqueue_ns;          // client, just before QUEUED
  uint64_t claim_ns;            // worker, at CLAIMED
  uint64_t done_ns;             // worker, just before DONE
  uint32_t n_inputs;
  int32_t status_code;  // ErrorCode of the result
  uint32_t batch_size;  // size of the batch the request ran in
  uint32_t reserved;
  RequestTensor inputs[kMaxTensors];
  char error[kErrorText];
};

inline constexpr size_t kLatencyBuckets = 160;

struct alignas(64) WorkerStats {
  std::atomic<uint64_t> epoch;  // which worker epoch the block belongs to; 0 = unused
  std::atomic<uint32_t> state;  // WorkerState
  std::atomic<int32_t> pid;
  std::atomic<uint64_t> identity;       // ProcessIdentity, to tell a dead epoch from a live one
  std::atomic<uint32_t> slice_percent;  // slice the worker is running at
  std::atomic<uint32_t> max_batch;      // batch limit in force
  std::atomic<uint64_t> heartbeat_ns;   // CLOCK_MONOTONIC, refreshed every loop
  std::atomic<uint64_t> claimed;
  std::atomic<uint64_t> completed;
  std::atomic<uint64_t> failed;
  std::atomic<uint64_t> recovered;  // slots taken over from a dead epoch
  std::atomic<uint64_t> batches;
  std::atomic<uint64_t> busy_ns;     // time spent running the model
  std::atomic<uint64_t> queue_ns;    // sum of enqueue -> claim
  std::atomic<uint64_t> compute_ns;  // sum over requests of the batch run time
  std::atomic<uint64_t> batch_hist[kMaxBatch + 1];
  std::atomic<uint64_t> batch_exec_ns[kMaxBatch + 1];   // run time summed per batch size
  std::atomic<uint64_t> latency_hist[kLatencyBuckets];  // enqueue -> done, see histogram.h
  std::atomic<uint64_t> slice_changed_ns;   // when the slice in force took effect
  std::atomic<uint64_t> first_batch_at_slice_ns;  // start of the first batch at that slice
  std::atomic<uint64_t> weight_bytes;       // model weights this worker maps
  std::atomic<uint64_t> weight_private_bytes;  // of which it holds its own copy (not shared)
  char message[kErrorText];                             // why the worker failed, when it did
};

enum class Command : uint32_t { kNone = 0, kPing = 1, kSetMaxBatch = 2, kSetSlice = 3, kDrain = 4 };

// One command at a time: the controller writes command/args, then bumps request_seq (release);
// the owning worker executes between batches, writes result/message, then stores
// ack_seq = request_seq (release). The controller writes again only once ack_seq caught up.
struct alignas(64) Mailbox {
  std::atomic<uint64_t> request_seq;
  uint32_t command;
  uint32_t reserved;
  uint64_t target_epoch;
  int64_t args[4];
  alignas(64) std::atomic<uint64_t> ack_seq;
  int32_t result;  // ErrorCode
  char message[kErrorText];
};

static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(std::is_standard_layout_v<SegmentHeader>);
static_assert(std::is_trivially_copyable_v<TensorSpec>);
static_assert(std::is_trivially_copyable_v<ModelSpec>);
static_assert(std::is_trivially_copyable_v<RequestTensor>);

}  // namespace sliceserve::shm
