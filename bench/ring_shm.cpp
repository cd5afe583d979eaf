// The shm transport: client -> lane ring -> worker running a null model -> client, through the
// real sliceserve::shm API. The parent plays the controller (creates the segment, gives the
// ring to epoch 1) and the client (attaches, acquires a lane); the forked child is the worker.
// Both sides wait the way the product does: poll for up to config.spin_ns, then futex-wait.

#include <array>
#include <cstring>
#include <optional>
#include <string>

#include "ring_bench.h"
#include "sliceserve/shm/client_lane.h"
#include "sliceserve/shm/segment.h"
#include "sliceserve/shm/segment_control.h"
#include "sliceserve/shm/worker_port.h"

namespace sliceserve::bench {
namespace {

constexpr uint64_t kEpoch = 1;
constexpr int64_t kTensorElements = kMessageBytes / sizeof(float);  // FP32 [16]
constexpr uint32_t kSlotsPerLane = 16;
constexpr int64_t kSleepSliceNs = 100'000'000;       // one futex wait, then re-check closing
constexpr int64_t kReplyTimeoutNs = 10'000'000'000;  // a worker that never answers
constexpr int64_t kReapTimeoutNs = 5'000'000'000;

bool closing(const shm::Segment& segment) {
  return segment.header().lifecycle.load(std::memory_order_acquire) ==
         static_cast<uint32_t>(shm::Lifecycle::kClosing);
}

Result<shm::ModelSpec> null_model_spec() {
  const int64_t shape[] = {kTensorElements};
  shm::ModelSpec spec;
  ASSIGN_OR_RETURN(spec.inputs[0], shm::make_tensor_spec("input", shm::DataType::kFp32, shape));
  ASSIGN_OR_RETURN(spec.outputs[0], shm::make_tensor_spec("output", shm::DataType::kFp32, shape));
  spec.n_inputs = 1;
  spec.n_outputs = 1;
  return spec;
}

// The worker process: serve until the controller closes the segment. Exit status for the child.
int run_null_worker(const std::string& name, int64_t spin_ns) {
  auto segment = shm::Segment::attach(name);
  if (!segment) {
    std::fprintf(stderr, "ring_bench: shm worker: %s\n", segment.status().to_string().c_str());
    return 1;
  }
  shm::WorkerPort port(*segment, kEpoch);
  if (!port.wait_for_ownership(kReplyTimeoutNs)) {
    std::fprintf(stderr, "ring_bench: shm worker: epoch %llu never became owner\n",
                 static_cast<unsigned long long>(kEpoch));
    return 1;
  }
  port.publish_state(shm::WorkerState::kServing);

  const size_t input_offset = segment->input_offset(0);
  const size_t output_offset = segment->output_offset(0);
  const size_t output_bytes = segment->spec().outputs[0].byte_size();
  std::array<shm::ClaimedSlot, kSlotsPerLane> batch;
  uint64_t idle_since = 0;
  for (;;) {
    size_t n = port.claim(batch);
    if (n == 0) {
      if (closing(*segment)) break;
      const uint64_t now = now_ns();
      if (idle_since == 0) idle_since = now;
      if (now - idle_since < uint64_t(spin_ns)) {
        cpu_relax();
        continue;
      }
      // Going to sleep. The token is read only here, not while polling: reading the bell's
      // cache line on every poll would make each client's ring pull it back across cores.
      // Taken before a last claim(), so a submit between that claim and the sleep wakes us.
      const uint32_t token = port.work_token();
      n = port.claim(batch);
      if (n == 0) {
        port.wait_for_work(token, kSleepSliceNs);
        continue;
      }
    }
    idle_since = 0;
    for (size_t i = 0; i < n; ++i) {
      // The null model: output = input.
      std::byte* data = segment->slot_data(batch[i].slot);
      std::memcpy(data + output_offset, data + input_offset, output_bytes);
      shm::SlotHeader& header = segment->slot(batch[i].slot);
      header.status_code = static_cast<int32_t>(ErrorCode::kOk);
      header.batch_size = static_cast<uint32_t>(n);
      if (!port.complete(batch[i])) {
        std::fprintf(stderr, "ring_bench: shm worker: complete(slot %u) failed\n", batch[i].slot);
        return 1;
      }
    }
  }
  port.publish_state(shm::WorkerState::kExited);
  return 0;
}

// Spins on the slot for up to spin_ns, then sleeps on the lane's completion bell.
Status wait_done(shm::ClientLane& lane, const shm::SlotTicket& ticket, int64_t spin_ns) {
  if (lane.is_done(ticket)) return Status::ok();
  const uint64_t start = now_ns();
  while (now_ns() - start < uint64_t(spin_ns)) {
    for (int i = 0; i < 16; ++i) {  // read the clock once every 16 polls
      if (lane.is_done(ticket)) return Status::ok();
      cpu_relax();
    }
  }
  for (;;) {
    // Token first, then the check: a completion between the check and the sleep is not lost.
    const uint32_t token = lane.completion_token();
    if (lane.is_done(ticket)) return Status::ok();
    if (closing(lane.segment())) return Status(ErrorCode::kServerGone, "segment closing");
    if (lane.wait_completion(token, kSleepSliceNs)) continue;
    // Timed out. server_alive() reads /proc, so only here, not on every sleep.
    if (!lane.server_alive()) return Status(ErrorCode::kServerGone, "server gone");
    if (now_ns() - start > uint64_t(kReplyTimeoutNs)) {
      return Status(ErrorCode::kTimeout, "no completion from the worker");
    }
  }
}

Result<Samples> run_client(const std::string& name, const BenchConfig& config) {
  ASSIGN_OR_RETURN(shm::Segment segment, shm::Segment::attach(name));
  ASSIGN_OR_RETURN(shm::ClientLane lane, shm::ClientLane::acquire(segment));
  const size_t input_offset = segment.input_offset(0);
  const size_t output_offset = segment.output_offset(0);
  uint64_t request_id = 0;
  return measure(config, [&](const std::byte* request, std::byte* reply) -> Status {
    const std::optional<shm::SlotTicket> ticket = lane.take_slot();
    if (!ticket) return Status(ErrorCode::kBusy, "no free slot in the lane");
    shm::SlotHeader& header = segment.slot(ticket->slot);
    std::byte* data = segment.slot_data(ticket->slot);
    std::memcpy(data + input_offset, request, kMessageBytes);
    header.n_inputs = 1;
    shm::RequestTensor& tensor = header.inputs[0];
    tensor.dtype = shm::DataType::kFp32;
    tensor.ndims = 1;
    tensor.dims[0] = kTensorElements;
    tensor.bytes = kMessageBytes;
    // submit() stamps enqueue_ns and request_id itself.
    RETURN_IF_ERROR(lane.submit(*ticket, ++request_id));
    RETURN_IF_ERROR(wait_done(lane, *ticket, config.spin_ns));
    if (header.status_code != static_cast<int32_t>(ErrorCode::kOk)) {
      return Status(ErrorCode::kModelError,
                    "worker answered with status " + std::to_string(header.status_code));
    }
    std::memcpy(reply, data + output_offset, kMessageBytes);
    if (!lane.release(*ticket)) {
      return Status(ErrorCode::kInternal,
                    "release(slot " + std::to_string(ticket->slot) + ") refused");
    }
    return Status::ok();
  });
}

}  // namespace

Result<Samples> run_shm(const BenchConfig& config) {
  ASSIGN_OR_RETURN(const std::string name,
                   shm::segment_name("bench" + std::to_string(getpid()), "null"));
  shm::SegmentOptions options;
  options.name = name;
  options.model_name = "null";
  ASSIGN_OR_RETURN(options.spec, null_model_spec());
  options.lanes = 1;
  options.slots_per_lane = kSlotsPerLane;
  // The creator unlinks the name when `segment` goes out of scope (or a signal handler does).
  track_shm_name(name);
  ASSIGN_OR_RETURN(shm::Segment segment, shm::Segment::create(options));
  shm::set_owner_epoch(segment, kEpoch);

  ASSIGN_OR_RETURN(const pid_t worker,
                   fork_server(config, [&]() { return run_null_worker(name, config.spin_ns); }));
  Result<Samples> samples = run_client(name, config);
  shm::close_segment(segment);  // wakes the worker, which exits
  const Status reaped = reap_server(worker, kReapTimeoutNs);
  if (!samples) return samples;
  RETURN_IF_ERROR(reaped);
  return samples;
}

}  // namespace sliceserve::bench
