#include "sliceserve/client/client.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

#include "sliceserve/shm/check.h"
#include "sliceserve/shm/client_lane.h"
#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment.h"
#include "http_transport.h"
#include "tcp_transport.h"

namespace sliceserve::client {
namespace {

// How often a waiter asks whether the controller still runs (a /proc read, so not every wake).
constexpr uint64_t kLivenessCheckNs = 50'000'000;
// While timed-out requests still sit in a worker's hands, slot waiters poll for them this often.
constexpr uint64_t kOrphanPollNs = 1'000'000;

std::atomic<uint64_t> g_next_request_id{1};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

uint64_t deadline_after(std::chrono::milliseconds timeout) {
  const int64_t ms = std::max<int64_t>(timeout.count(), 0);
  return shm::monotonic_ns() + uint64_t(ms) * 1'000'000;
}

// The caller's tensors, validated and put in the model's declaration order.
template <typename T>
using OrderedOf = std::array<const T*, shm::kMaxTensors>;
using Ordered = OrderedOf<Tensor>;

size_t byte_count(const Tensor& t) { return t.data.size(); }
size_t byte_count(const TensorInfo& t) { return t.bytes; }

// For Tensor (infer) and TensorInfo (prepare): the same checks and messages either way.
template <typename T>
Status validate_inputs(const std::string& model, const shm::ModelSpec& spec,
                       std::span<const T> inputs, OrderedOf<T>& ordered) {
  ordered.fill(nullptr);
  if (inputs.size() > shm::kMaxTensors) {
    return Status(ErrorCode::kTensorTooLarge,
                  "request carries " + std::to_string(inputs.size()) + " tensors, at most " +
                      std::to_string(shm::kMaxTensors) + " are allowed");
  }
  for (const T& t : inputs) {
    const int index = spec.find_input(t.name);
    if (index < 0) {
      std::string declared;
      for (const shm::TensorSpec& s : spec.input_specs()) {
        declared += (declared.empty() ? "" : ", ") + std::string(s.name_view());
      }
      return Status(ErrorCode::kUnknownTensor, "model '" + model + "' has no input '" + t.name +
                                                   "' (inputs: " + declared + ")");
    }
    if (ordered[size_t(index)] != nullptr) {
      return Status(ErrorCode::kUnknownTensor, "input '" + t.name + "' is given twice");
    }
    const shm::TensorSpec& want = spec.inputs[index];
    if (t.dtype != want.dtype) {
      return Status(ErrorCode::kWrongDtype, "input '" + t.name + "' has dtype " +
                                                std::string(shm::data_type_name(t.dtype)) +
                                                ", model '" + model + "' declares " +
                                                std::string(shm::data_type_name(want.dtype)));
    }
    const std::span<const int64_t> declared = want.shape();
    std::span<const int64_t> given = t.shape;
    // A leading batch dimension of 1 is the single item the request carries.
    if (given.size() == declared.size() + 1 && given.front() == 1) given = given.subspan(1);
    if (!std::equal(given.begin(), given.end(), declared.begin(), declared.end())) {
      return Status(ErrorCode::kWrongShape,
                    "input '" + t.name + "' has shape " + shm::shape_to_string(t.shape) +
                        ", model '" + model + "' declares " + shm::shape_to_string(declared));
    }
    if (byte_count(t) != want.byte_size()) {
      return Status(ErrorCode::kTensorTooLarge,
                    "input '" + t.name + "' carries " + std::to_string(byte_count(t)) +
                        " bytes, its shape " + shm::shape_to_string(declared) + " and dtype need " +
                        std::to_string(want.byte_size()));
    }
    ordered[size_t(index)] = &t;
  }
  for (uint32_t i = 0; i < spec.n_inputs; ++i) {
    if (ordered[i] == nullptr) {
      return Status(ErrorCode::kUnknownTensor, "input '" + std::string(spec.inputs[i].name_view()) +
                                                   "' of model '" + model + "' is missing");
    }
  }
  return Status::ok();
}

Status unknown_model(std::string_view instance, std::string_view model) {
  std::vector<std::string> served = shm::list_segment_models(instance);
  std::string text = "unknown model '" + std::string(model) + "'";
  if (served.empty()) {
    text += " (instance '" + std::string(instance) + "' serves no models: is sliceserved running?)";
  } else {
    text += " (served: ";
    for (size_t i = 0; i < served.size(); ++i) text += (i ? ", " : "") + served[i];
    text += ")";
  }
  return Status(ErrorCode::kUnknownModel, std::move(text));
}

}  // namespace

// Everything a Client owns, on the heap so that the lane's pointer to the segment and the
// completion thread's pointer to the state survive moves of the Client.
struct Client::State {
  struct Pending {
    shm::SlotTicket ticket;
    uint64_t deadline_ns = 0;
    uint64_t request_id = 0;
    Callback done;           // infer_async: the result copied out of the slot
    SlotCallback slot_done;  // submit: the slot itself, or else
  };

  State(shm::Segment seg, std::string model_name, const ConnectOptions& options)
      : model(std::move(model_name)),
        instance(options.instance),
        segment(std::move(seg)),
        default_timeout(options.default_timeout),
        spin_ns(uint64_t(std::max<int64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(options.spin).count(), 0))) {}
  ~State() { shutdown(); }

  const shm::ModelSpec& spec() const { return segment.spec(); }
  bool segment_open() const {
    return segment.header().lifecycle.load(std::memory_order_acquire) ==
           uint32_t(shm::Lifecycle::kOpen);
  }
  std::atomic<uint32_t>& completion_bell() const {
    return segment.lane(lane->index()).completion_bell;
  }

  Result<InferResult> infer(std::span<const Tensor> inputs, uint64_t deadline);
  void infer_async(std::span<const Tensor> inputs, Callback done, uint64_t deadline);
  Result<PreparedRequest> prepare(std::span<const TensorInfo> inputs, uint64_t deadline);
  void submit(PreparedRequest& request, SlotCallback done, uint64_t deadline);
  void shutdown();

  // Lane bookkeeping: every call below needs `mu` held (the lane is not thread-safe).
  Result<shm::SlotTicket> take_slot_locked(std::unique_lock<std::mutex>& lock, uint64_t deadline);
  // Submits; while the lane's ring is full (of entries of withdrawn requests that no worker
  // has skipped yet) retries until the deadline. On failure the slot is FREE again.
  Status submit_locked(std::unique_lock<std::mutex>& lock, const shm::SlotTicket& ticket,
                       uint64_t request_id, uint64_t deadline);
  // Gives up on a request: withdraws it if no worker holds it, else keeps its ticket to release
  // once it is DONE. Returns true if it turned DONE meanwhile (the caller may still read it).
  bool abandon_locked(const shm::SlotTicket& ticket);
  void reap_orphans_locked();
  // Hands a submitted request to the completion thread; unlocks.
  void enqueue_locked(std::unique_lock<std::mutex>& lock, Pending request);
  void ensure_completer_locked();

  // Slot contents, touched only by the slot's holder (WRITING, or DONE before release).
  void write_request(const shm::SlotTicket& ticket, const Ordered& ordered);
  // The slot's request header for the model's inputs; their bytes are the caller's to write.
  void write_request_header(const shm::SlotTicket& ticket);
  // The worker's verdict on a DONE slot: ok, or its error with its text.
  Status worker_status(const shm::SlotTicket& ticket) const;
  Result<InferResult> read_result(const shm::SlotTicket& ticket, uint64_t request_id) const;
  // Releases a DONE slot whose result was read.
  void release(const shm::SlotTicket& ticket);

  Result<InferResult> wait_sync(const shm::SlotTicket& ticket, uint64_t request_id,
                                uint64_t deadline);
  void run_completer();
  // One pass over the requests in flight: those done, failed or past their deadline are taken
  // out and called back (without the lock while reading and calling; it is held again on
  // return). Returns how many; `wake` becomes the earliest deadline left.
  size_t finish_ready_locked(std::unique_lock<std::mutex>& lock, uint64_t& wake);
  void set_polling(bool on);
  size_t poll_completions();

  const std::string model;
  const std::string instance;
  shm::Segment segment;
  std::optional<shm::ClientLane> lane;  // emplaced once the segment sits at its final address
  const std::chrono::milliseconds default_timeout;
  const uint64_t spin_ns;

  std::mutex mu;                         // guards the lane's state changes and what follows
  std::condition_variable slot_freed;    // a slot of the lane went back to FREE
  std::condition_variable work;          // the completion thread has something to do
  std::vector<Pending> pending;          // async requests in flight
  std::vector<shm::SlotTicket> orphans;  // timed out while a worker held them
  uint64_t completer_wake_ns = 0;        // when the completion thread leaves the bell at the
                                         // latest; 0 while it sleeps on `work`
  uint64_t next_liveness_ns = 0;         // when finish_ready_locked asks if the server lives
  bool polling = false;                  // the owner polls: the completion thread stands aside
  bool stop = false;
  std::thread completer;
};

// ---- lane bookkeeping ----

Result<shm::SlotTicket> Client::State::take_slot_locked(std::unique_lock<std::mutex>& lock,
                                                        uint64_t deadline) {
  uint64_t next_liveness = 0;
  for (;;) {
    if (!orphans.empty()) reap_orphans_locked();
    if (std::optional<shm::SlotTicket> ticket = lane->take_slot()) return *ticket;
    const uint64_t now = shm::monotonic_ns();
    if (!segment_open()) {
      return Status(ErrorCode::kServerGone, "model '" + model + "': the server is stopping");
    }
    if (now >= next_liveness) {
      if (!lane->server_alive()) {
        return Status(ErrorCode::kServerGone, "model '" + model + "': the server has stopped");
      }
      next_liveness = now + kLivenessCheckNs;
    }
    if (now >= deadline) {
      return Status(ErrorCode::kTimeout, "model '" + model + "': all " +
                                             std::to_string(lane->slots()) +
                                             " request slots of this client stayed in flight");
    }
    uint64_t wait = std::min(deadline, next_liveness) - now;
    if (!orphans.empty()) wait = std::min(wait, kOrphanPollNs);
    slot_freed.wait_for(lock, std::chrono::nanoseconds(wait));
  }
}

Status Client::State::submit_locked(std::unique_lock<std::mutex>& lock,
                                    const shm::SlotTicket& ticket, uint64_t request_id,
                                    uint64_t deadline) {
  for (;;) {
    Status s = lane->submit(ticket, request_id);
    if (s.is_ok()) return s;
    const uint64_t now = shm::monotonic_ns();
    if (s.code() != ErrorCode::kBusy || now >= deadline || !segment_open()) {
      lane->cancel(ticket);  // WRITING -> FREE
      slot_freed.notify_all();
      if (s.code() != ErrorCode::kBusy) return s;
      if (!segment_open()) {
        return Status(ErrorCode::kServerGone, "model '" + model + "': the server is stopping");
      }
      return Status(ErrorCode::kTimeout,
                    "model '" + model +
                        "': the submission ring stayed full until the timeout "
                        "(withdrawn requests wait there for a worker to skip them)");
    }
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::nanoseconds(std::min(deadline - now, kOrphanPollNs)));
    lock.lock();
  }
}

bool Client::State::abandon_locked(const shm::SlotTicket& ticket) {
  if (lane->cancel(ticket)) {
    slot_freed.notify_all();
    return false;
  }
  if (lane->is_done(ticket)) return true;
  orphans.push_back(ticket);
  return false;
}

void Client::State::reap_orphans_locked() {
  bool freed = false;
  for (size_t i = 0; i < orphans.size();) {
    if (lane->is_done(orphans[i]) && lane->release(orphans[i])) {
      orphans[i] = orphans.back();
      orphans.pop_back();
      freed = true;
    } else {
      ++i;
    }
  }
  if (freed) slot_freed.notify_all();
}

void Client::State::release(const shm::SlotTicket& ticket) {
  {
    std::lock_guard lock(mu);
    // Cannot fail: only this client moves its DONE slots on, and it does so once.
    SS_CHECK(lane->release(ticket), "a DONE slot of this client moved under it");
  }
  slot_freed.notify_one();
}

// ---- slot contents ----

void Client::State::write_request_header(const shm::SlotTicket& ticket) {
  const shm::ModelSpec& s = spec();
  shm::SlotHeader& header = segment.slot(ticket.slot);
  header.n_inputs = s.n_inputs;
  header.status_code = 0;
  header.batch_size = 0;
  header.error[0] = '\0';
  for (uint32_t i = 0; i < s.n_inputs; ++i) {
    const shm::TensorSpec& want = s.inputs[i];
    shm::RequestTensor& rt = header.inputs[i];
    rt = shm::RequestTensor{};
    rt.dtype = want.dtype;  // validated equal to the caller's
    rt.ndims = want.ndims;  // the per-item shape, also when the caller's had a batch dimension of 1
    std::copy_n(want.dims, want.ndims, rt.dims);
    rt.bytes = want.byte_size();  // validated equal to the caller's
  }
}

void Client::State::write_request(const shm::SlotTicket& ticket, const Ordered& ordered) {
  write_request_header(ticket);
  std::byte* data = segment.slot_data(ticket.slot);
  for (uint32_t i = 0; i < spec().n_inputs; ++i) {
    const Tensor& t = *ordered[i];
    std::memcpy(data + segment.input_offset(i), t.data.data(), t.data.size());
  }
}

Status Client::State::worker_status(const shm::SlotTicket& ticket) const {
  const shm::SlotHeader& header = segment.slot(ticket.slot);
  if (header.status_code == 0) return Status::ok();
  const int32_t code = header.status_code;
  const bool known = code > 0 && code <= int32_t(ErrorCode::kInternal);
  std::string text(header.error, strnlen(header.error, sizeof header.error));
  if (text.empty()) text = "the worker failed the request";
  return Status(known ? ErrorCode(code) : ErrorCode::kModelError, "model '" + model + "': " + text);
}

Result<InferResult> Client::State::read_result(const shm::SlotTicket& ticket,
                                               uint64_t request_id) const {
  RETURN_IF_ERROR(worker_status(ticket));
  const shm::SlotHeader& header = segment.slot(ticket.slot);
  InferResult result;
  result.request_id = request_id;
  result.batch_size = header.batch_size;
  result.queue_ns = header.claim_ns > header.enqueue_ns ? header.claim_ns - header.enqueue_ns : 0;
  result.compute_ns = header.done_ns > header.claim_ns ? header.done_ns - header.claim_ns : 0;
  const shm::ModelSpec& s = spec();
  const std::byte* data = segment.slot_data(ticket.slot);
  result.outputs.resize(s.n_outputs);
  for (uint32_t o = 0; o < s.n_outputs; ++o) {
    const shm::TensorSpec& out = s.outputs[o];
    OutputTensor& t = result.outputs[o];
    t.name = std::string(out.name_view());
    t.dtype = out.dtype;
    t.shape.assign(out.dims, out.dims + out.ndims);
    const std::byte* begin = data + segment.output_offset(o);
    t.data.assign(begin, begin + out.byte_size());
  }
  return result;
}

// ---- synchronous path: the calling thread spins, then sleeps on the lane's bell itself ----

Result<InferResult> Client::State::infer(std::span<const Tensor> inputs, uint64_t deadline) {
  Ordered ordered;
  RETURN_IF_ERROR(validate_inputs(model, spec(), inputs, ordered));
  shm::SlotTicket ticket;
  {
    std::unique_lock lock(mu);
    ASSIGN_OR_RETURN(ticket, take_slot_locked(lock, deadline));
  }
  // The slot is WRITING and ours alone: fill it without the lock.
  write_request(ticket, ordered);
  const uint64_t request_id = g_next_request_id.fetch_add(1, std::memory_order_relaxed);
  {
    std::unique_lock lock(mu);
    RETURN_IF_ERROR(submit_locked(lock, ticket, request_id, deadline));
  }
  return wait_sync(ticket, request_id, deadline);
}

Result<InferResult> Client::State::wait_sync(const shm::SlotTicket& ticket, uint64_t request_id,
                                             uint64_t deadline) {
  // is_done, completion_token and wait_completion only read the slot word and wait on the
  // lane's bell: safe beside other threads of this client, so no lock while waiting.
  auto finish = [&]() -> Result<InferResult> {
    Result<InferResult> result = read_result(ticket, request_id);
    release(ticket);
    return result;
  };
  if (spin_ns > 0) {
    const uint64_t spin_end = shm::monotonic_ns() + spin_ns;
    for (uint32_t i = 1;; ++i) {
      if (lane->is_done(ticket)) return finish();
      cpu_relax();
      if (i % 64 == 0 && shm::monotonic_ns() >= spin_end) break;
    }
  }
  uint64_t next_liveness = shm::monotonic_ns() + kLivenessCheckNs;
  for (;;) {
    const uint32_t token = lane->completion_token();
    if (lane->is_done(ticket)) return finish();
    const uint64_t now = shm::monotonic_ns();
    Status failure;
    if (!segment_open()) {
      failure = Status(ErrorCode::kServerGone, "model '" + model + "': the server is stopping");
    } else if (now >= next_liveness) {
      if (!lane->server_alive()) {
        failure = Status(ErrorCode::kServerGone, "model '" + model + "': the server has stopped");
      }
      next_liveness = now + kLivenessCheckNs;
    }
    if (failure.is_ok() && now >= deadline) {
      failure = Status(ErrorCode::kTimeout, "model '" + model + "': no answer within the timeout");
    }
    if (!failure.is_ok()) {
      bool done;
      {
        std::lock_guard lock(mu);
        done = abandon_locked(ticket);
      }
      if (done) return finish();  // it completed after all
      return failure;
    }
    lane->wait_completion(token, int64_t(std::min(deadline, next_liveness) - now));
  }
}

// ---- asynchronous path: submit here, complete on the client's completion thread ----

void Client::State::infer_async(std::span<const Tensor> inputs, Callback done, uint64_t deadline) {
  Ordered ordered;
  Status valid = validate_inputs(model, spec(), inputs, ordered);
  if (!valid.is_ok()) return done(std::move(valid));
  std::unique_lock lock(mu);
  Result<shm::SlotTicket> ticket = take_slot_locked(lock, deadline);
  if (!ticket.is_ok()) {
    lock.unlock();
    return done(ticket.status());
  }
  lock.unlock();
  write_request(*ticket, ordered);
  const uint64_t request_id = g_next_request_id.fetch_add(1, std::memory_order_relaxed);
  lock.lock();
  Status submitted = submit_locked(lock, *ticket, request_id, deadline);
  if (!submitted.is_ok()) {
    lock.unlock();
    return done(std::move(submitted));
  }
  enqueue_locked(lock, Pending{*ticket, deadline, request_id, std::move(done), {}});
}

// ---- zero-copy path: the caller fills the slot, the completion thread hands it back ----

Result<PreparedRequest> Client::State::prepare(std::span<const TensorInfo> inputs,
                                               uint64_t deadline) {
  OrderedOf<TensorInfo> ordered;
  RETURN_IF_ERROR(validate_inputs(model, spec(), inputs, ordered));
  shm::SlotTicket ticket;
  {
    std::unique_lock lock(mu);
    Result<shm::SlotTicket> taken = take_slot_locked(lock, deadline);
    if (!taken.is_ok() && taken.status().code() == ErrorCode::kTimeout) {
      return Status(ErrorCode::kBusy, taken.status().message());
    }
    ASSIGN_OR_RETURN(ticket, std::move(taken));
  }
  write_request_header(ticket);
  uint8_t model_index[shm::kMaxTensors] = {};
  for (size_t i = 0; i < inputs.size(); ++i) {
    model_index[i] = uint8_t(spec().find_input(inputs[i].name));  // validated to exist
  }
  return PreparedRequest(this, {ticket.slot, ticket.generation},
                         std::span<const uint8_t>(model_index, inputs.size()));
}

void Client::State::submit(PreparedRequest& request, SlotCallback done, uint64_t deadline) {
  const shm::SlotTicket ticket{request.slot_.slot, request.slot_.generation};
  request.state_ = nullptr;  // the slot is the queue's now, or FREE again on failure
  const uint64_t request_id = g_next_request_id.fetch_add(1, std::memory_order_relaxed);
  std::unique_lock lock(mu);
  Status submitted = submit_locked(lock, ticket, request_id, deadline);
  if (!submitted.is_ok()) {
    lock.unlock();
    return done(std::move(submitted));
  }
  enqueue_locked(lock, Pending{ticket, deadline, request_id, {}, std::move(done)});
}

void Client::State::enqueue_locked(std::unique_lock<std::mutex>& lock, Pending request) {
  const uint64_t deadline = request.deadline_ns;
  pending.push_back(std::move(request));
  ensure_completer_locked();
  if (polling) return lock.unlock();  // the poller sees it; set_polling(false) wakes the thread
  // The completion thread sleeps on the lane's bell until its next deadline: ring it when this
  // request's deadline comes earlier (a spurious wake for this client's other waiters, no more).
  const bool ring = deadline < completer_wake_ns;
  lock.unlock();
  work.notify_one();
  if (ring) shm::ring_bell(completion_bell());
}

void Client::State::ensure_completer_locked() {
  if (completer.joinable()) return;
  completer_wake_ns = 0;
  completer = std::thread([this] { run_completer(); });
}

void Client::State::run_completer() {
  std::unique_lock lock(mu);
  next_liveness_ns = shm::monotonic_ns() + kLivenessCheckNs;
  for (;;) {
    if (pending.empty() && orphans.empty()) {
      if (stop) break;
      completer_wake_ns = 0;  // on the work condition, not on the bell
      work.wait(lock, [&] { return stop || !pending.empty() || !orphans.empty(); });
      continue;
    }
    if (pending.empty() && stop) break;  // orphans are left to the lane's destructor
    if (polling && !stop) {
      completer_wake_ns = 0;
      work.wait(lock, [&] { return stop || !polling; });
      continue;
    }
    const uint32_t token = lane->completion_token();
    uint64_t wake = 0;
    if (finish_ready_locked(lock, wake) > 0) continue;
    // Orphans need no poll here: the worker rings this bell when they turn DONE.
    const uint64_t now = shm::monotonic_ns();
    completer_wake_ns = wake;
    lock.unlock();
    if (wake > now) lane->wait_completion(token, int64_t(wake - now));
    lock.lock();
  }
}

size_t Client::State::finish_ready_locked(std::unique_lock<std::mutex>& lock, uint64_t& wake) {
  struct Finished {
    Pending request;
    Status failure;  // ok: the slot is DONE, read it (or hand it over)
  };
  std::vector<Finished> finished;
  const uint64_t now = shm::monotonic_ns();
  bool gone = !segment_open();
  if (!gone && now >= next_liveness_ns) {
    gone = !lane->server_alive();
    next_liveness_ns = now + kLivenessCheckNs;
  }
  wake = next_liveness_ns;
  for (size_t i = 0; i < pending.size();) {
    Pending& p = pending[i];
    Status failure;
    bool withdrawn = false;
    if (!lane->is_done(p.ticket)) {
      if (gone) {
        failure = Status(ErrorCode::kServerGone, "model '" + model + "': the server has stopped");
      } else if (now >= p.deadline_ns) {
        failure =
            Status(ErrorCode::kTimeout, "model '" + model + "': no answer within the timeout");
      } else if (stop && lane->cancel(p.ticket)) {
        // Destruction withdraws what no worker holds yet; the slot is FREE again.
        withdrawn = true;
        failure = Status(ErrorCode::kTimeout,
                         "model '" + model + "': request withdrawn, its client was closed");
        slot_freed.notify_all();
      } else {
        wake = std::min(wake, p.deadline_ns);
        ++i;
        continue;
      }
      if (!withdrawn && abandon_locked(p.ticket)) failure = Status();  // completed after all
    }
    finished.push_back({std::move(p), std::move(failure)});
    if (i + 1 != pending.size()) pending[i] = std::move(pending.back());
    pending.pop_back();
  }
  if (!orphans.empty()) reap_orphans_locked();
  if (finished.empty()) return 0;
  lock.unlock();
  // Read without the lock (the DONE slots are ours), release under it, then call back. A
  // zero-copy request that succeeded keeps its slot: its SlotResult releases it.
  std::vector<Result<InferResult>> results;
  std::vector<bool> keep(finished.size(), false);
  results.reserve(finished.size());
  for (size_t i = 0; i < finished.size(); ++i) {
    Finished& f = finished[i];
    if (!f.failure.is_ok()) {
      results.push_back(f.failure);
    } else if (f.request.slot_done) {
      Status verdict = worker_status(f.request.ticket);
      keep[i] = verdict.is_ok();
      results.push_back(std::move(verdict));
    } else {
      results.push_back(read_result(f.request.ticket, f.request.request_id));
    }
  }
  lock.lock();
  for (size_t i = 0; i < finished.size(); ++i) {
    if (finished[i].failure.is_ok() && !keep[i]) {
      SS_CHECK(lane->release(finished[i].request.ticket),
               "a DONE slot of this client moved under it");
    }
  }
  lock.unlock();
  slot_freed.notify_all();
  for (size_t i = 0; i < finished.size(); ++i) {
    Pending& p = finished[i].request;
    if (!p.slot_done) {
      p.done(std::move(results[i]));
    } else if (keep[i]) {
      p.slot_done(SlotResult(this, {p.ticket.slot, p.ticket.generation}, p.request_id));
    } else {
      p.slot_done(results[i].status());
    }
  }
  lock.lock();
  return finished.size();
}

void Client::State::set_polling(bool on) {
  std::unique_lock lock(mu);
  if (polling == on) return;
  polling = on;
  if (on) {
    if (next_liveness_ns == 0) next_liveness_ns = shm::monotonic_ns() + kLivenessCheckNs;
    return;
  }
  // Wake the completion thread only when it has something to take back.
  const bool hand_back = !pending.empty() || !orphans.empty();
  lock.unlock();
  if (hand_back) work.notify_one();
}

size_t Client::State::poll_completions() {
  std::unique_lock lock(mu);
  if (pending.empty() && orphans.empty()) return 0;
  uint64_t wake = 0;
  return finish_ready_locked(lock, wake);
}

void Client::State::shutdown() {
  if (!lane) return;
  {
    std::lock_guard lock(mu);
    stop = true;
  }
  work.notify_all();
  shm::ring_bell(completion_bell());
  if (completer.joinable()) completer.join();
  // Frees every slot no worker holds; if one still does, the lane goes to the controller's sweep.
  lane.reset();
}

// ---- PreparedRequest, SlotResult ----

PreparedRequest::PreparedRequest(Client::State* state, SlotHandle slot,
                                 std::span<const uint8_t> model_index)
    : state_(state), slot_(slot), n_inputs_(model_index.size()) {
  std::copy(model_index.begin(), model_index.end(), model_index_);
}

PreparedRequest::PreparedRequest(PreparedRequest&& other) noexcept
    : state_(std::exchange(other.state_, nullptr)), slot_(other.slot_), n_inputs_(other.n_inputs_) {
  std::copy_n(other.model_index_, shm::kMaxTensors, model_index_);
}

PreparedRequest::~PreparedRequest() {
  if (state_ == nullptr) return;
  {
    std::lock_guard lock(state_->mu);
    state_->lane->cancel({slot_.slot, slot_.generation});  // WRITING -> FREE
  }
  state_->slot_freed.notify_all();
}

std::span<std::byte> PreparedRequest::input(size_t i) const {
  SS_CHECK(state_ != nullptr && i < n_inputs_, "input of a submitted or moved-from request");
  const uint8_t index = model_index_[i];
  return {state_->segment.slot_data(slot_.slot) + state_->segment.input_offset(index),
          state_->spec().inputs[index].byte_size()};
}

SlotResult::SlotResult(Client::State* state, SlotHandle slot, uint64_t request_id)
    : state_(state), slot_(slot), request_id_(request_id) {}

SlotResult::SlotResult(SlotResult&& other) noexcept
    : state_(std::exchange(other.state_, nullptr)),
      slot_(other.slot_),
      request_id_(other.request_id_) {}

SlotResult::~SlotResult() {
  if (state_ != nullptr) state_->release({slot_.slot, slot_.generation});
}

std::span<const std::byte> SlotResult::output(size_t i) const {
  SS_CHECK(state_ != nullptr && i < state_->spec().n_outputs, "output of a moved-from result");
  return {state_->segment.slot_data(slot_.slot) + state_->segment.output_offset(uint32_t(i)),
          state_->spec().outputs[i].byte_size()};
}

const shm::ModelSpec& SlotResult::spec() const {
  SS_CHECK(state_ != nullptr, "use of a moved-from SlotResult");
  return state_->spec();
}

uint32_t SlotResult::batch_size() const { return state_->segment.slot(slot_.slot).batch_size; }

uint64_t SlotResult::queue_ns() const {
  const shm::SlotHeader& h = state_->segment.slot(slot_.slot);
  return h.claim_ns > h.enqueue_ns ? h.claim_ns - h.enqueue_ns : 0;
}

uint64_t SlotResult::compute_ns() const {
  const shm::SlotHeader& h = state_->segment.slot(slot_.slot);
  return h.done_ns > h.claim_ns ? h.done_ns - h.claim_ns : 0;
}

// ---- Client ----

Client::Client(std::unique_ptr<State> state) : state_(std::move(state)) {}
Client::Client(std::unique_ptr<TcpState> tcp) : tcp_(std::move(tcp)) {}
Client::Client(std::unique_ptr<HttpState> http) : http_(std::move(http)) {}
Client::Client(Client&& other) noexcept = default;
Client& Client::operator=(Client&& other) noexcept = default;
Client::~Client() = default;

Result<Client> Client::connect(std::string_view model, const ConnectOptions& options) {
  RETURN_IF_ERROR(shm::validate_name_part("instance", options.instance));
  if (!shm::validate_name_part("model name", model).is_ok()) {
    return unknown_model(options.instance, model);
  }
  ASSIGN_OR_RETURN(std::string name, shm::segment_name(options.instance, model));
  Result<shm::Segment> segment = shm::Segment::attach(name);
  if (!segment.is_ok()) {
    if (segment.status().code() == ErrorCode::kNotFound) {
      return unknown_model(options.instance, model);
    }
    return segment.status().with_context("model '" + std::string(model) + "'");
  }
  auto state = std::make_unique<State>(std::move(segment).value(), std::string(model), options);
  Result<shm::ClientLane> lane = shm::ClientLane::acquire(state->segment);
  if (!lane.is_ok()) return lane.status();
  state->lane.emplace(std::move(lane).value());
  return Client(std::move(state));
}

Result<Client> Client::connect_tcp(std::string_view model, std::string_view host, uint16_t port,
                                   const ConnectOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<TcpState> tcp, TcpState::connect(model, host, port, options));
  return Client(std::move(tcp));
}

Result<Client> Client::connect_http(std::string_view model, std::string_view host, uint16_t port,
                                    const ConnectOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<HttpState> http,
                   HttpState::connect(model, host, port, options));
  return Client(std::move(http));
}

const shm::ModelSpec& Client::spec() const {
  if (tcp_) return tcp_->spec();
  if (http_) return http_->spec();
  SS_CHECK(state_ != nullptr, "use of a moved-from Client");
  return state_->spec();
}

const std::string& Client::model() const {
  if (tcp_) return tcp_->model();
  if (http_) return http_->model();
  SS_CHECK(state_ != nullptr, "use of a moved-from Client");
  return state_->model;
}

const std::string& Client::instance() const {
  if (tcp_) return tcp_->address();
  if (http_) return http_->address();
  SS_CHECK(state_ != nullptr, "use of a moved-from Client");
  return state_->instance;
}

uint32_t Client::max_in_flight() const {
  if (tcp_) return tcp_->max_in_flight();
  if (http_) return http_->max_in_flight();
  SS_CHECK(state_ != nullptr, "use of a moved-from Client");
  return state_->lane->slots();
}

Result<InferResult> Client::infer(std::span<const Tensor> inputs,
                                  std::optional<std::chrono::milliseconds> timeout) {
  if (tcp_) return tcp_->infer(inputs, timeout.value_or(tcp_->default_timeout()));
  if (http_) return http_->infer(inputs, timeout.value_or(http_->default_timeout()));
  SS_CHECK(state_ != nullptr, "use of a moved-from Client");
  return state_->infer(inputs, deadline_after(timeout.value_or(state_->default_timeout)));
}

void Client::infer_async(std::span<const Tensor> inputs, Callback done,
                         std::optional<std::chrono::milliseconds> timeout) {
  SS_CHECK(done != nullptr, "infer_async needs a callback");
  if (tcp_) {
    return tcp_->infer_async(inputs, std::move(done), timeout.value_or(tcp_->default_timeout()));
  }
  if (http_) {
    return http_->infer_async(inputs, std::move(done),
                              timeout.value_or(http_->default_timeout()));
  }
  SS_CHECK(state_ != nullptr, "use of a moved-from Client");
  state_->infer_async(inputs, std::move(done),
                      deadline_after(timeout.value_or(state_->default_timeout)));
}

std::future<Result<InferResult>> Client::infer_async(
    std::vector<Tensor> inputs, std::optional<std::chrono::milliseconds> timeout) {
  auto promise = std::make_shared<std::promise<Result<InferResult>>>();
  std::future<Result<InferResult>> future = promise->get_future();
  infer_async(
      std::span<const Tensor>(inputs),
      [promise](Result<InferResult> result) { promise->set_value(std::move(result)); }, timeout);
  return future;
}

Result<PreparedRequest> Client::prepare(std::span<const TensorInfo> inputs,
                                        std::chrono::milliseconds wait) {
  if (tcp_ || http_) {
    return Status(ErrorCode::kUnavailable, "zero-copy requests need the shared-memory transport");
  }
  SS_CHECK(state_ != nullptr, "use of a moved-from Client");
  return state_->prepare(inputs, deadline_after(wait));
}

void Client::set_polling(bool on) {
  SS_CHECK(state_ != nullptr, "polling is for shm clients");
  state_->set_polling(on);
}

size_t Client::poll_completions() {
  SS_CHECK(state_ != nullptr, "polling is for shm clients");
  return state_->poll_completions();
}

void Client::submit(PreparedRequest request, SlotCallback done,
                    std::optional<std::chrono::milliseconds> timeout) {
  SS_CHECK(done != nullptr, "submit needs a callback");
  SS_CHECK(state_ != nullptr && request.state_ == state_.get(),
           "a prepared request goes to the Client that prepared it");
  state_->submit(request, std::move(done),
                 deadline_after(timeout.value_or(state_->default_timeout)));
}

}  // namespace sliceserve::client
