// The serve loop against a real segment, with workers and clients as threads of this process:
// instant resize through the mailbox while requests flow, handover to a shadow while requests
// flow, the handover order (ring first, then the batch in hand), and set-slice on a slice that
// cannot resize in place. Every request must complete exactly once.

#include "sliceserve/worker/serve_loop.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "sliceserve/backends/cpu/cpu_slice.h"
#include "sliceserve/shm/client_lane.h"
#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment_control.h"
#include "sliceserve/shm/worker_port.h"
#include "support/request_flow.h"
#include "support/shm_test_util.h"

namespace sliceserve::worker {
namespace {

using namespace std::chrono_literals;
using sliceserve::testing::FlowClient;
using sliceserve::testing::kFlowElements;
using sliceserve::testing::test_segment_options;

// How often each request (x[1] = client tag, x[0] = request number) was run by a model.
class RunAudit {
 public:
  void record(const float* x) {
    std::lock_guard lock(mu_);
    ++runs_[(uint64_t(x[1]) << 32) | uint64_t(x[0])];
  }
  // Requests run other than exactly once, and all runs.
  std::pair<uint64_t, uint64_t> summary() {
    std::lock_guard lock(mu_);
    uint64_t not_once = 0, total = 0;
    for (const auto& [id, n] : runs_) {
      not_once += n != 1;
      total += n;
    }
    return {not_once, total};
  }

 private:
  std::mutex mu_;
  std::map<uint64_t, int> runs_;
};

// y = 2x + 1 over the batch's items, spread over the slice's threads; records every run. With a
// gate, run() holds on (after computing) while the gate is closed.
class CountingModel final : public Model {
 public:
  CountingModel(const shm::ModelSpec& spec, RunAudit& audit) : spec_(spec), audit_(audit) {}

  const shm::ModelSpec& spec() const override { return spec_; }
  Status warm_up(backends::ComputeContext&) override { return Status::ok(); }
  Status run(std::span<const ItemIO> batch, backends::ComputeContext& ctx) override {
    ctx.parallel_for(batch.size(), [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) {
        const auto* x = reinterpret_cast<const float*>(batch[i].inputs[0]);
        auto* y = reinterpret_cast<float*>(batch[i].outputs[0]);
        for (uint32_t k = 0; k < kFlowElements; ++k) y[k] = 2 * x[k] + 1;
      }
    });
    for (const ItemIO& item : batch) audit_.record(reinterpret_cast<const float*>(item.inputs[0]));
    if (gate_closed.load()) {
      entered.fetch_add(1);
      while (gate_closed.load()) std::this_thread::sleep_for(1ms);
    }
    return Status::ok();
  }

  std::atomic<bool> gate_closed{false};
  std::atomic<int> entered{0};

 private:
  shm::ModelSpec spec_;
  RunAudit& audit_;
};

// One worker as a thread: attach a port, build the slice (and its pool), wait for the ring,
// serve until stopped or handed over.
class WorkerThread {
 public:
  WorkerThread(shm::Segment& segment, uint64_t epoch, backends::CpuSliceOptions slice,
               std::vector<double> pool, Model& model, ServeOptions options) {
    thread_ = std::thread([=, this, &segment, &model] {
      shm::WorkerPort port(segment, epoch);
      port.publish_state(shm::WorkerState::kLoading);
      auto created = backends::create_cpu_slice(slice);
      if (!created.is_ok()) {
        error_ = created.status().to_string();
        finished_ = true;
        return;
      }
      for (double p : (*created)->resizes_in_place() ? pool : std::vector<double>{}) {
        if (auto index = (*created)->prepare(p); !index.is_ok()) {
          error_ = index.status().to_string();
          finished_ = true;
          return;
        }
      }
      ServeLoop loop(segment, port, model, **created, options);
      port.publish_state(shm::WorkerState::kReady);
      while (!port.wait_for_ownership(50'000'000, &stop_)) {
        if (stop_.load()) {
          finished_ = true;
          return;
        }
      }
      port.publish_state(shm::WorkerState::kServing);
      exit_ = loop.run(stop_);
      port.publish_state(shm::WorkerState::kExited);
      finished_ = true;
    });
  }
  ~WorkerThread() { stop(); }

  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  bool finished() const { return finished_.load(); }
  // Waits up to `timeout` for the thread to end by itself.
  bool wait_finished(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!finished_.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(1ms);
    }
    if (finished_.load() && thread_.joinable()) thread_.join();
    return finished_.load();
  }
  std::optional<ServeExit> exit() const { return exit_; }
  const std::string& error() const { return error_; }

 private:
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> finished_{false};
  std::optional<ServeExit> exit_;
  std::string error_;
};

// Client threads keeping requests flowing.
class Clients {
 public:
  Clients(shm::Segment& segment, uint32_t count, uint32_t depth) {
    for (uint32_t c = 0; c < count; ++c)
      clients_.push_back(std::make_unique<FlowClient>(segment, c));
    for (auto& client : clients_) {
      threads_.emplace_back([this, &client, depth] {
        std::string error = client->run(stop_, depth);
        if (!error.empty()) {
          std::lock_guard lock(mu_);
          errors_ += "client " + std::to_string(client->tag()) + ": " + error + "\n";
        }
      });
    }
  }
  ~Clients() { stop(); }
  void stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  uint64_t completed() const {
    uint64_t n = 0;
    for (const auto& c : clients_) n += c->completed();
    return n;
  }
  uint64_t not_once() const {
    uint64_t n = 0;
    for (const auto& c : clients_) n += c->not_once();
    return n;
  }
  const std::string& errors() const { return errors_; }

 private:
  std::vector<std::unique_ptr<FlowClient>> clients_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::string errors_;
};

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(200us);
  }
  return true;
}

class ServeLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spdlog::set_level(spdlog::level::warn);
    auto created = shm::Segment::create(test_segment_options("serve", 4, 8));
    ASSERT_TRUE(created.is_ok()) << created.status().to_string();
    segment_.emplace(std::move(created).value());
    spec_ = segment_->spec();
  }

  shm::WorkerStats& stats(uint64_t epoch) { return segment_->stats_block(epoch); }
  uint64_t completed(uint64_t epoch) { return stats(epoch).completed.load(); }

  // The slot census once every client is gone: nothing leaked, nothing in flight.
  void expect_all_slots_free() {
    const shm::SlotCensus census = shm::slot_census(*segment_);
    EXPECT_EQ(census.free, segment_->slot_count());
  }

  void expect_stats_consistent(uint64_t epoch) {
    shm::WorkerStats& st = stats(epoch);
    uint64_t exec = 0, batches = 0;
    for (size_t size = 0; size <= shm::kMaxBatch; ++size) {
      exec += st.batch_exec_ns[size].load();
      batches += st.batch_hist[size].load();
      if (st.batch_hist[size].load() == 0) {
        EXPECT_EQ(st.batch_exec_ns[size].load(), 0u) << size;
      }
    }
    EXPECT_EQ(exec, st.busy_ns.load());
    EXPECT_EQ(batches, st.batches.load());
    EXPECT_EQ(st.batch_exec_ns[0].load(), 0u);
    EXPECT_EQ(st.failed.load(), 0u);
  }

  std::optional<shm::Segment> segment_;
  shm::ModelSpec spec_;
  RunAudit audit_;
};

TEST_F(ServeLoopTest, InstantResizeWhileRequestsFlowLosesNothing) {
  const auto started = std::chrono::steady_clock::now();
  CountingModel model(spec_, audit_);
  shm::set_owner_epoch(*segment_, 1);
  // 30% of 2 cores: one thread at a 60% quota; 100%: two threads, no quota.
  WorkerThread worker(*segment_, 1, {30, "affinity", 2, 0}, {100}, model,
                      {.max_batch = 4, .max_queue_delay_us = 200});
  Clients clients(*segment_, 2, 6);
  ASSERT_TRUE(wait_until([&] { return completed(1) > 50; }, 5000ms)) << worker.error();

  constexpr int kResizes = 1000;
  const uint64_t before = completed(1);
  int ok = 0;
  uint64_t last_change = 0;
  for (int i = 0; i < kResizes; ++i) {
    const int64_t percent = i % 2 == 0 ? 100 : 30;
    auto reply = shm::send_command(*segment_, 1, shm::Command::kSetSlice, percent, 5'000'000'000);
    ASSERT_TRUE(reply.is_ok()) << "resize " << i << ": " << reply.status().to_string();
    ok += reply->find("slice " + std::to_string(percent) + "%") != std::string::npos;
    EXPECT_EQ(stats(1).slice_percent.load(), uint32_t(percent));
    const uint64_t changed = stats(1).slice_changed_ns.load();
    EXPECT_GT(changed, last_change);
    last_change = changed;
  }
  EXPECT_EQ(ok, kResizes);
  const uint64_t during = completed(1) - before;
  EXPECT_GT(during, 0u) << "requests must keep flowing during the resizes";
  // Requests still flow at the last slice; its first batch is timed.
  ASSERT_TRUE(wait_until([&] { return stats(1).first_batch_at_slice_ns.load() != 0; }, 2000ms));
  EXPECT_GE(stats(1).first_batch_at_slice_ns.load(), stats(1).slice_changed_ns.load());

  clients.stop();
  worker.stop();
  EXPECT_EQ(clients.errors(), "");
  EXPECT_EQ(worker.exit(), ServeExit::kStopped);
  EXPECT_EQ(clients.not_once(), 0u);
  EXPECT_EQ(clients.completed(), completed(1));
  const auto [not_once, runs] = audit_.summary();
  EXPECT_EQ(not_once, 0u);
  EXPECT_EQ(runs, clients.completed());
  expect_stats_consistent(1);
  expect_all_slots_free();
  RecordProperty("completed", std::to_string(clients.completed()));
  RecordProperty("completed_during_resizes", std::to_string(during));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
}

TEST_F(ServeLoopTest, HandoversWhileRequestsFlowLoseNothing) {
  // Three shadow resizes in a row, 1 -> 2 -> 3 -> 4 (every stats block in use), each while
  // three clients keep requests in flight.
  constexpr uint64_t kEpochs = 4;
  const auto started = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<CountingModel>> models;
  std::vector<std::unique_ptr<WorkerThread>> workers;
  auto start_worker = [&](uint64_t epoch) {
    models.push_back(std::make_unique<CountingModel>(spec_, audit_));
    workers.push_back(std::make_unique<WorkerThread>(
        *segment_, epoch, backends::CpuSliceOptions{epoch % 2 ? 50.0 : 100.0, "process", 2, 0},
        std::vector<double>{}, *models.back(),
        ServeOptions{.max_batch = 4, .max_queue_delay_us = 200}));
  };
  shm::set_owner_epoch(*segment_, 1);
  start_worker(1);
  Clients clients(*segment_, 3, 6);
  ASSERT_TRUE(wait_until([&] { return completed(1) > 1000; }, 5000ms)) << workers[0]->error();
  std::vector<uint64_t> asked(kEpochs + 1);
  for (uint64_t next = 2; next <= kEpochs; ++next) {
    start_worker(next);
    ASSERT_TRUE(wait_until(
        [&] { return stats(next).state.load() == uint32_t(shm::WorkerState::kReady); }, 2000ms));
    asked[next] = shm::monotonic_ns();
    shm::request_handover(*segment_, next);
    WorkerThread& old = *workers[next - 2];
    ASSERT_TRUE(old.wait_finished(2000ms));
    EXPECT_EQ(old.exit(), ServeExit::kHandedOver) << "epoch " << next - 1;
    EXPECT_EQ(segment_->header().owner_epoch.load(), next);
    ASSERT_TRUE(wait_until([&] { return completed(next) > 1000; }, 5000ms))
        << workers.back()->error();
  }
  clients.stop();
  workers.back()->stop();

  EXPECT_EQ(clients.errors(), "");
  EXPECT_EQ(workers.back()->exit(), ServeExit::kStopped);
  EXPECT_EQ(clients.not_once(), 0u);
  uint64_t served = 0;
  for (uint64_t epoch = 1; epoch <= kEpochs; ++epoch) {
    served += completed(epoch);
    expect_stats_consistent(epoch);
  }
  EXPECT_EQ(clients.completed(), served);
  const auto [not_once, runs] = audit_.summary();
  EXPECT_EQ(not_once, 0u);
  EXPECT_EQ(runs, clients.completed());
  // Each shadow's slice took effect when it took the ring, and its first batch came after.
  for (uint64_t epoch = 2; epoch <= kEpochs; ++epoch) {
    const uint64_t changed = stats(epoch).slice_changed_ns.load();
    EXPECT_GE(changed, asked[epoch]);
    EXPECT_GE(stats(epoch).first_batch_at_slice_ns.load(), changed);
    EXPECT_EQ(stats(epoch).slice_percent.load(), epoch % 2 ? 50u : 100u);
  }
  expect_all_slots_free();
  RecordProperty("completed", std::to_string(clients.completed()));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
}

// Submits one request on `lane` (request number n of tag 9).
shm::SlotTicket submit_one(shm::Segment& segment, shm::ClientLane& lane, uint32_t n) {
  auto ticket = lane.take_slot();
  EXPECT_TRUE(ticket.has_value());
  const shm::TensorSpec& in = segment.spec().inputs[0];
  shm::SlotHeader& h = segment.slot(ticket->slot);
  h.n_inputs = 1;
  h.inputs[0].dtype = in.dtype;
  h.inputs[0].ndims = in.ndims;
  for (uint8_t d = 0; d < in.ndims; ++d) h.inputs[0].dims[d] = in.dims[d];
  h.inputs[0].bytes = in.byte_size();
  auto* x = reinterpret_cast<float*>(segment.slot_data(ticket->slot) + segment.input_offset(0));
  for (uint32_t k = 0; k < kFlowElements; ++k) x[k] = float(k);
  x[0] = float(n);
  x[1] = 9;
  EXPECT_TRUE(lane.submit(*ticket, n).is_ok());
  return *ticket;
}

shm::SlotState state_of(shm::Segment& segment, const shm::SlotTicket& ticket) {
  return shm::slot_state(segment.slot(ticket.slot).state.load());
}

TEST_F(ServeLoopTest, HandoverPassesTheRingBeforeRunningTheBatchInHand) {
  CountingModel live_model(spec_, audit_);
  CountingModel shadow_model(spec_, audit_);
  live_model.gate_closed = true;  // the live worker's batch takes until we open the gate
  shm::set_owner_epoch(*segment_, 1);
  // A partial batch waits up to 5 s for more requests: the handover comes while it collects.
  WorkerThread live(*segment_, 1, {50, "process", 2, 0}, {}, live_model,
                    {.max_batch = 8, .max_queue_delay_us = 5'000'000});
  WorkerThread shadow(*segment_, 2, {50, "process", 2, 0}, {}, shadow_model,
                      {.max_batch = 8, .max_queue_delay_us = 100});
  auto lane = shm::ClientLane::acquire(*segment_);
  ASSERT_TRUE(lane.is_ok());
  const shm::SlotTicket first = submit_one(*segment_, *lane, 1);
  ASSERT_TRUE(
      wait_until([&] { return state_of(*segment_, first) == shm::SlotState::kClaimed; }, 2000ms));
  ASSERT_TRUE(wait_until(
      [&] { return stats(2).state.load() == uint32_t(shm::WorkerState::kReady); }, 2000ms));

  shm::request_handover(*segment_, 2);
  // The live worker passes the ring on first, then runs its batch (held at the gate).
  ASSERT_TRUE(wait_until([&] { return live_model.entered.load() == 1; }, 2000ms));
  EXPECT_EQ(segment_->header().owner_epoch.load(), 2u);
  const shm::SlotTicket second = submit_one(*segment_, *lane, 2);
  const bool second_done =
      wait_until([&] { return state_of(*segment_, second) == shm::SlotState::kDone; }, 2000ms);
  EXPECT_TRUE(second_done) << "the shadow must serve while the old worker runs its last batch";
  EXPECT_EQ(state_of(*segment_, first), shm::SlotState::kClaimed);
  EXPECT_FALSE(live.finished());

  live_model.gate_closed = false;
  ASSERT_TRUE(live.wait_finished(2000ms));
  EXPECT_EQ(live.exit(), ServeExit::kHandedOver);
  EXPECT_EQ(state_of(*segment_, first), shm::SlotState::kDone);
  ASSERT_TRUE(
      wait_until([&] { return state_of(*segment_, second) == shm::SlotState::kDone; }, 2000ms));
  EXPECT_EQ(completed(1), 1u);
  EXPECT_EQ(completed(2), 1u);
  EXPECT_TRUE(lane->release(first));
  EXPECT_TRUE(lane->release(second));
}

TEST_F(ServeLoopTest, SetSliceOnAProcessSliceAnswersUnavailableAndKeepsServing) {
  CountingModel model(spec_, audit_);
  shm::set_owner_epoch(*segment_, 1);
  WorkerThread worker(*segment_, 1, {50, "process", 2, 0}, {100}, model,
                      {.max_batch = 4, .max_queue_delay_us = 200});
  ASSERT_TRUE(wait_until(
      [&] { return stats(1).state.load() == uint32_t(shm::WorkerState::kServing); }, 2000ms));
  const uint64_t changed = stats(1).slice_changed_ns.load();
  EXPECT_NE(changed, 0u);  // the worker took the ring at its slice
  auto reply = shm::send_command(*segment_, 1, shm::Command::kSetSlice, 100, 2'000'000'000);
  ASSERT_FALSE(reply.is_ok());
  EXPECT_EQ(reply.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(reply.status().message().find("shadow resize"), std::string::npos)
      << reply.status().message();
  EXPECT_EQ(stats(1).slice_percent.load(), 50u);
  EXPECT_EQ(stats(1).slice_changed_ns.load(), changed);

  std::atomic<bool> stop{false};
  FlowClient client(*segment_, 0);
  EXPECT_EQ(client.run(stop, 4, 20), "");
  EXPECT_EQ(client.completed(), 20u);
  worker.stop();
  EXPECT_EQ(completed(1), 20u);
}

TEST_F(ServeLoopTest, SetSliceRejectsAShareOutsideTheDevice) {
  CountingModel model(spec_, audit_);
  shm::set_owner_epoch(*segment_, 1);
  WorkerThread worker(*segment_, 1, {50, "affinity", 2, 0}, {}, model, {});
  for (int64_t bad : {int64_t{0}, int64_t{-5}, int64_t{101}}) {
    auto reply = shm::send_command(*segment_, 1, shm::Command::kSetSlice, bad, 2'000'000'000);
    EXPECT_EQ(reply.status().code(), ErrorCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(stats(1).slice_percent.load(), 50u);
  // A share not in the pool is prepared on the spot.
  auto reply = shm::send_command(*segment_, 1, shm::Command::kSetSlice, 100, 2'000'000'000);
  ASSERT_TRUE(reply.is_ok()) << reply.status().to_string();
  EXPECT_EQ(stats(1).slice_percent.load(), 100u);
}

}  // namespace
}  // namespace sliceserve::worker
