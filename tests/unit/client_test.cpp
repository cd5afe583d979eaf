// libsliceserve_client against an in-process server: the test creates the model segment (playing
// the controller) and serves it from a thread with a WorkerPort (playing the worker).

#include "sliceserve/client/client.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <optional>
#include <thread>
#include <vector>

#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment.h"
#include "sliceserve/shm/segment_control.h"
#include "sliceserve/shm/worker_port.h"
#include "support/shm_test_util.h"

namespace sliceserve::client {
namespace {

using namespace std::chrono_literals;
using shm::DataType;

std::string unique_instance() {
  static std::atomic<int> counter{0};
  return "ct" + std::to_string(getpid()) + "x" + std::to_string(counter++);
}

// Inputs "a" FP32 [4] and "b" INT32 [2,3]; outputs "y" FP32 [4] = 2a+1 and "z" INT64 [2] =
// {sum(b), request id}.
shm::ModelSpec two_input_spec() {
  shm::ModelSpec spec;
  const int64_t four[] = {4};
  const int64_t two_three[] = {2, 3};
  const int64_t two[] = {2};
  spec.n_inputs = 2;
  spec.n_outputs = 2;
  spec.inputs[0] = shm::make_tensor_spec("a", DataType::kFp32, four).value();
  spec.inputs[1] = shm::make_tensor_spec("b", DataType::kInt32, two_three).value();
  spec.outputs[0] = shm::make_tensor_spec("y", DataType::kFp32, four).value();
  spec.outputs[1] = shm::make_tensor_spec("z", DataType::kInt64, two).value();
  return spec;
}

// The model's segment plus a worker thread.
class TestServer {
 public:
  explicit TestServer(uint32_t lanes = 4, uint32_t slots_per_lane = 8, std::string model = "twin")
      : instance_(unique_instance()), model_(std::move(model)) {
    shm::SegmentOptions o;
    o.name = shm::segment_name(instance_, model_).value();
    o.model_name = model_;
    o.spec = two_input_spec();
    o.lanes = lanes;
    o.slots_per_lane = slots_per_lane;
    auto s = shm::Segment::create(o);
    EXPECT_TRUE(s.is_ok()) << s.status().to_string();
    segment_.emplace(std::move(s).value());
  }
  ~TestServer() { stop_worker(); }

  const std::string& instance() const { return instance_; }
  const std::string& model() const { return model_; }
  shm::Segment& segment() { return *segment_; }
  ConnectOptions options() const {
    ConnectOptions o;
    o.instance = instance_;
    o.default_timeout = 5000ms;
    return o;
  }

  void start_worker(uint64_t epoch = 1) {
    stop_.store(false);
    shm::set_owner_epoch(*segment_, epoch);
    worker_ = std::thread([this, epoch] { serve(epoch); });
  }
  void stop_worker() {
    stop_.store(true);
    if (worker_.joinable()) {
      shm::ring_bell(segment_->header().submit_bell);
      worker_.join();
    }
  }

  shm::SlotCensus census() const { return shm::slot_census(*segment_); }
  bool all_slots_free() const { return census().free == segment_->slot_count(); }

  std::atomic<int32_t> fail_code{0};      // ErrorCode the worker reports, 0: compute
  std::atomic<uint32_t> delay_ms{0};      // sleep before completing a batch
  std::atomic<uint32_t> max_in_batch{0};  // largest batch seen
  std::atomic<bool> hold{false};          // keep a claimed batch until this turns false

 private:
  void serve(uint64_t epoch) {
    shm::WorkerPort port(*segment_, epoch);
    port.publish_state(shm::WorkerState::kServing);
    std::vector<shm::ClaimedSlot> batch(8);
    while (!stop_.load()) {
      const uint32_t token = port.work_token();
      const size_t n = port.claim(batch);
      if (n == 0) {
        port.wait_for_work(token, 5'000'000);
        continue;
      }
      if (uint32_t d = delay_ms.load()) std::this_thread::sleep_for(std::chrono::milliseconds(d));
      while (hold.load() && !stop_.load()) std::this_thread::sleep_for(1ms);
      max_in_batch.store(std::max<uint32_t>(max_in_batch.load(), uint32_t(n)));
      for (size_t i = 0; i < n; ++i) {
        shm::SlotHeader& h = segment_->slot(batch[i].slot);
        std::byte* data = segment_->slot_data(batch[i].slot);
        h.batch_size = uint32_t(n);
        h.status_code = fail_code.load();
        if (h.status_code != 0) {
          std::snprintf(h.error, sizeof h.error, "boom in slot %u", batch[i].slot);
        } else {
          auto* a = reinterpret_cast<const float*>(data + segment_->input_offset(0));
          auto* b = reinterpret_cast<const int32_t*>(data + segment_->input_offset(1));
          auto* y = reinterpret_cast<float*>(data + segment_->output_offset(0));
          auto* z = reinterpret_cast<int64_t*>(data + segment_->output_offset(1));
          for (int k = 0; k < 4; ++k) y[k] = a[k] * 2 + 1;
          z[0] = 0;
          for (int k = 0; k < 6; ++k) z[0] += b[k];
          z[1] = int64_t(h.request_id);
        }
        EXPECT_TRUE(port.complete(batch[i]));
      }
    }
    port.publish_state(shm::WorkerState::kExited);
  }

  std::string instance_;
  std::string model_;
  std::optional<shm::Segment> segment_;
  std::thread worker_;
  std::atomic<bool> stop_{false};
};

// One request's data, kept alive by the test.
struct Request {
  explicit Request(float base) {
    for (int k = 0; k < 4; ++k) a[k] = base + float(k);
    for (int k = 0; k < 6; ++k) b[k] = int32_t(base) + k;
  }
  std::vector<Tensor> tensors() const {
    return {Tensor{"a", DataType::kFp32, {4}, std::as_bytes(std::span(a))},
            Tensor{"b", DataType::kInt32, {2, 3}, std::as_bytes(std::span(b))}};
  }
  void expect_answer(const Result<InferResult>& r) const {
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    ASSERT_EQ(r->outputs.size(), 2u);
    EXPECT_EQ(r->outputs[0].name, "y");
    EXPECT_EQ(r->outputs[0].dtype, DataType::kFp32);
    EXPECT_EQ(r->outputs[0].shape, std::vector<int64_t>{4});
    std::span<const float> y = r->outputs[0].as<float>();
    ASSERT_EQ(y.size(), 4u);
    for (int k = 0; k < 4; ++k) EXPECT_EQ(y[k], a[k] * 2 + 1);
    EXPECT_EQ(r->outputs[1].name, "z");
    EXPECT_EQ(r->outputs[1].shape, std::vector<int64_t>{2});
    std::span<const int64_t> z = r->outputs[1].as<int64_t>();
    ASSERT_EQ(z.size(), 2u);
    int64_t sum = 0;
    for (int32_t v : b) sum += v;
    EXPECT_EQ(z[0], sum);
    EXPECT_EQ(uint64_t(z[1]), r->request_id);
    EXPECT_GE(r->batch_size, 1u);
  }
  float a[4];
  int32_t b[6];
};

class ClientTest : public ::testing::Test {
 protected:
  Client connect() {
    auto c = Client::connect(server_.model(), server_.options());
    EXPECT_TRUE(c.is_ok()) << c.status().to_string();
    return std::move(c).value();
  }
  // Expects a client-side rejection with `code` that used no slot.
  void expect_rejected(Client& c, const std::vector<Tensor>& tensors, ErrorCode code) {
    auto r = c.infer(tensors);
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), code) << r.status().to_string();
    EXPECT_TRUE(server_.all_slots_free());
    auto f = c.infer_async(tensors).get();
    ASSERT_FALSE(f.is_ok());
    EXPECT_EQ(f.status().code(), code) << f.status().to_string();
  }

  TestServer server_;
};

TEST_F(ClientTest, SyncInferReturnsTheWorkersOutputs) {
  server_.start_worker();
  Client c = connect();
  EXPECT_EQ(c.model(), "twin");
  EXPECT_EQ(c.spec().n_inputs, 2u);
  EXPECT_EQ(c.max_in_flight(), 8u);
  for (int i = 0; i < 50; ++i) {
    Request req{float(i)};
    auto r = c.infer(req.tensors());
    req.expect_answer(r);
  }
  EXPECT_TRUE(server_.all_slots_free());
}

TEST_F(ClientTest, InputsInAnyOrderAndWithABatchDimensionOfOne) {
  server_.start_worker();
  Client c = connect();
  Request req(3);
  std::vector<Tensor> t = req.tensors();
  std::swap(t[0], t[1]);
  t[1].shape = {1, 4};
  req.expect_answer(c.infer(t));
}

TEST_F(ClientTest, SyncInferFromManyThreadsOnOneClient) {
  server_.start_worker();
  Client c = connect();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        Request req(float(t * 1000 + i));
        auto r = c.infer(req.tensors());
        req.expect_answer(r);
        if (r.is_ok()) ++ok;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 600);
  EXPECT_TRUE(server_.all_slots_free());
}

TEST_F(ClientTest, AsyncKeepsManyInFlightBeyondTheLanesSlots) {
  server_.delay_ms.store(1);
  server_.start_worker();
  Client c = connect();
  std::vector<Request> reqs;
  for (int i = 0; i < 200; ++i) reqs.emplace_back(float(i));
  std::vector<std::future<Result<InferResult>>> futures;
  for (const Request& req : reqs) futures.push_back(c.infer_async(req.tensors()));
  for (size_t i = 0; i < reqs.size(); ++i) reqs[i].expect_answer(futures[i].get());
  EXPECT_GT(server_.max_in_batch.load(), 1u) << "requests were in flight together";
  EXPECT_TRUE(server_.all_slots_free());
}

TEST_F(ClientTest, AsyncCallbackRunsOncePerRequest) {
  server_.start_worker();
  Client c = connect();
  std::atomic<int> done{0};
  std::promise<void> all;
  constexpr int kRequests = 64;
  Request req(7);
  for (int i = 0; i < kRequests; ++i) {
    std::vector<Tensor> t = req.tensors();
    c.infer_async(t, [&](Result<InferResult> r) {
      req.expect_answer(r);
      if (++done == kRequests) all.set_value();
    });
  }
  ASSERT_EQ(all.get_future().wait_for(10s), std::future_status::ready);
  EXPECT_EQ(done.load(), kRequests);
}

TEST_F(ClientTest, MixedSyncAndAsyncOnOneClient) {
  server_.start_worker();
  Client c = connect();
  std::thread sync_thread([&] {
    for (int i = 0; i < 200; ++i) {
      Request req{float(i)};
      req.expect_answer(c.infer(req.tensors()));
    }
  });
  std::vector<Request> reqs;
  for (int i = 0; i < 200; ++i) reqs.emplace_back(float(-i));
  std::vector<std::future<Result<InferResult>>> futures;
  for (const Request& req : reqs) futures.push_back(c.infer_async(req.tensors()));
  for (size_t i = 0; i < reqs.size(); ++i) reqs[i].expect_answer(futures[i].get());
  sync_thread.join();
  EXPECT_TRUE(server_.all_slots_free());
}

TEST_F(ClientTest, UnknownModelListsTheServedOnes) {
  auto c = Client::connect("nope", server_.options());
  ASSERT_FALSE(c.is_ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kUnknownModel);
  EXPECT_NE(c.status().message().find("unknown model 'nope' (served: twin)"), std::string::npos)
      << c.status().message();
  auto bad = Client::connect("no/such", server_.options());
  EXPECT_EQ(bad.status().code(), ErrorCode::kUnknownModel);
  ConnectOptions empty;
  empty.instance = unique_instance();
  auto none = Client::connect("twin", empty);
  EXPECT_EQ(none.status().code(), ErrorCode::kUnknownModel);
  EXPECT_NE(none.status().message().find("serves no models"), std::string::npos);
}

TEST_F(ClientTest, WrongDtypeIsRejected) {
  Client c = connect();
  Request req(1);
  std::vector<Tensor> t = req.tensors();
  t[1].dtype = DataType::kUint32;
  expect_rejected(c, t, ErrorCode::kWrongDtype);
}

TEST_F(ClientTest, WrongShapeIsRejected) {
  Client c = connect();
  Request req(1);
  std::vector<Tensor> t = req.tensors();
  t[1].shape = {3, 2};
  expect_rejected(c, t, ErrorCode::kWrongShape);
  t[1].shape = {2, 2, 3};
  expect_rejected(c, t, ErrorCode::kWrongShape);
}

TEST_F(ClientTest, UnknownAndDuplicateTensorsAreRejected) {
  Client c = connect();
  Request req(1);
  std::vector<Tensor> t = req.tensors();
  t.push_back(t[0]);
  t.back().name = "c";
  expect_rejected(c, t, ErrorCode::kUnknownTensor);
  t.back().name = "a";
  expect_rejected(c, t, ErrorCode::kUnknownTensor);
}

TEST_F(ClientTest, MissingInputIsRejected) {
  Client c = connect();
  Request req(1);
  std::vector<Tensor> t = req.tensors();
  t.pop_back();
  expect_rejected(c, t, ErrorCode::kUnknownTensor);
  auto r = c.infer({});
  EXPECT_EQ(r.status().code(), ErrorCode::kUnknownTensor);
  EXPECT_NE(r.status().message().find("'a'"), std::string::npos) << r.status().message();
}

TEST_F(ClientTest, ByteCountOrTensorCountMismatchIsTensorTooLarge) {
  Client c = connect();
  Request req(1);
  std::vector<Tensor> t = req.tensors();
  std::vector<std::byte> big(100);
  t[0].data = big;
  expect_rejected(c, t, ErrorCode::kTensorTooLarge);
  t[0].data = t[0].data.first(8);
  expect_rejected(c, t, ErrorCode::kTensorTooLarge);
  std::vector<Tensor> many(shm::kMaxTensors + 1, req.tensors()[0]);
  expect_rejected(c, many, ErrorCode::kTensorTooLarge);
}

TEST_F(ClientTest, TimesOutWhenNoWorkerServesAndFreesTheSlot) {
  shm::set_owner_epoch(server_.segment(), 1);  // an owner that never comes
  Client c = connect();
  Request req(1);
  const auto start = std::chrono::steady_clock::now();
  auto r = c.infer(req.tensors(), 50ms);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kTimeout);
  EXPECT_GE(took, 50ms);
  EXPECT_LT(took, 1s);
  EXPECT_TRUE(server_.all_slots_free()) << "the queued request was withdrawn";

  auto f = c.infer_async(req.tensors(), 50ms);
  ASSERT_EQ(f.wait_for(2s), std::future_status::ready);
  EXPECT_EQ(f.get().status().code(), ErrorCode::kTimeout);
  EXPECT_TRUE(server_.all_slots_free());
}

TEST_F(ClientTest, ManyTimeoutsWithoutAWorkerStayTimeoutsAndTheRingRecovers) {
  // Each withdrawn request leaves a stale entry in the lane's ring (2 x 8 entries) until a
  // worker skips it: the client waits for room instead of failing with kBusy.
  shm::set_owner_epoch(server_.segment(), 1);
  Client c = connect();
  Request req(1);
  for (int i = 0; i < 24; ++i) {
    auto r = c.infer(req.tensors(), 5ms);
    ASSERT_EQ(r.status().code(), ErrorCode::kTimeout) << i << ": " << r.status().to_string();
  }
  EXPECT_TRUE(server_.all_slots_free());
  server_.start_worker(1);
  req.expect_answer(c.infer(req.tensors()));
  for (int i = 0; i < 24; ++i) req.expect_answer(c.infer(req.tensors()));
}

TEST_F(ClientTest, TimeoutWhileAWorkerHoldsTheRequestReleasesItsSlotLater) {
  server_.hold.store(true);
  server_.start_worker();
  Client c = connect();
  Request req(1);
  auto r = c.infer(req.tensors(), 200ms);
  EXPECT_EQ(r.status().code(), ErrorCode::kTimeout);
  ASSERT_EQ(server_.census().claimed, 1u) << "the worker still holds it";
  server_.hold.store(false);
  while (server_.census().done != 1) std::this_thread::sleep_for(1ms);
  req.expect_answer(c.infer(req.tensors()));  // reaps the orphan on the way
  EXPECT_TRUE(server_.all_slots_free());
}

TEST_F(ClientTest, AsyncWaitsForAFreeSlotUntilItsTimeout) {
  shm::set_owner_epoch(server_.segment(), 1);  // nobody serves: every slot stays queued
  Client c = connect();
  Request req(1);
  std::vector<std::future<Result<InferResult>>> futures;
  for (uint32_t i = 0; i < c.max_in_flight(); ++i) {
    futures.push_back(c.infer_async(req.tensors(), 300ms));
  }
  const auto start = std::chrono::steady_clock::now();
  auto extra = c.infer_async(req.tensors(), 50ms);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 40ms) << "it waited for a slot";
  EXPECT_EQ(extra.get().status().code(), ErrorCode::kTimeout);
  for (auto& f : futures) EXPECT_EQ(f.get().status().code(), ErrorCode::kTimeout);
  EXPECT_TRUE(server_.all_slots_free());
}

TEST_F(ClientTest, ServerGoneAfterCloseSegment) {
  shm::set_owner_epoch(server_.segment(), 1);
  Client c = connect();
  Request req(1);
  auto pending = c.infer_async(req.tensors(), 10s);
  std::thread closer([&] {
    std::this_thread::sleep_for(50ms);
    shm::close_segment(server_.segment());
  });
  const auto start = std::chrono::steady_clock::now();
  auto r = c.infer(req.tensors(), 10s);
  closer.join();
  EXPECT_EQ(r.status().code(), ErrorCode::kServerGone) << r.status().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  ASSERT_EQ(pending.wait_for(2s), std::future_status::ready);
  EXPECT_EQ(pending.get().status().code(), ErrorCode::kServerGone);
  auto again = Client::connect(server_.model(), server_.options());
  EXPECT_EQ(again.status().code(), ErrorCode::kServerGone);
}

TEST(ClientServerTest, ServerGoneWhenTheControllerDies) {
  const std::string instance = unique_instance();
  const std::string name = shm::segment_name(instance, "m").value();
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t controller = sliceserve::testing::fork_child([&] {
    shm::SegmentOptions o;
    o.name = name;
    o.model_name = "m";
    o.spec = two_input_spec();
    auto s = shm::Segment::create(o);
    if (!s.is_ok()) return 1;
    shm::set_owner_epoch(*s, 1);
    char x = 1;
    if (write(ready[1], &x, 1) != 1) return 2;
    pause();
    return 0;
  });
  char x = 0;
  ASSERT_EQ(read(ready[0], &x, 1), 1);
  ConnectOptions o;
  o.instance = instance;
  auto c = Client::connect("m", o);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  kill(controller, SIGKILL);
  EXPECT_EQ(sliceserve::testing::wait_child(controller, 5s), -SIGKILL);
  Request req(1);
  const auto start = std::chrono::steady_clock::now();
  auto r = c->infer(req.tensors(), 10s);
  EXPECT_EQ(r.status().code(), ErrorCode::kServerGone) << r.status().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_EQ(Client::connect("m", o).status().code(), ErrorCode::kServerGone);
  close(ready[0]);
  close(ready[1]);
  EXPECT_TRUE(shm::Segment::unlink(name).is_ok());
}

TEST_F(ClientTest, WorkerFailureCodeAndTextPassThrough) {
  server_.fail_code.store(int32_t(ErrorCode::kModelError));
  server_.start_worker();
  Client c = connect();
  Request req(1);
  auto r = c.infer(req.tensors());
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kModelError);
  EXPECT_NE(r.status().message().find("boom in slot"), std::string::npos) << r.status().message();
  auto f = c.infer_async(req.tensors()).get();
  EXPECT_EQ(f.status().code(), ErrorCode::kModelError);
  server_.fail_code.store(int32_t(ErrorCode::kWrongShape));  // a worker-side validation failure
  EXPECT_EQ(c.infer(req.tensors()).status().code(), ErrorCode::kWrongShape);
  server_.fail_code.store(9999);  // not a code we know
  EXPECT_EQ(c.infer(req.tensors()).status().code(), ErrorCode::kModelError);
  EXPECT_TRUE(server_.all_slots_free());
}

TEST(ClientLanesTest, LanesExhaustedIsBusyUntilAClientGoes) {
  TestServer server(2, 4);
  auto a = Client::connect(server.model(), server.options());
  auto b = Client::connect(server.model(), server.options());
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  auto c = Client::connect(server.model(), server.options());
  ASSERT_FALSE(c.is_ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kBusy);
  { Client gone = std::move(a).value(); }
  auto d = Client::connect(server.model(), server.options());
  EXPECT_TRUE(d.is_ok()) << d.status().to_string();
}

TEST_F(ClientTest, DestructorLeavesNoSlotInUseAndReleasesTheLane) {
  server_.delay_ms.store(20);
  server_.start_worker();
  std::vector<Request> reqs;
  for (int i = 0; i < 40; ++i) reqs.emplace_back(float(i));
  std::vector<std::future<Result<InferResult>>> futures;
  {
    Client c = connect();
    EXPECT_EQ(server_.segment().header().active_lanes.load(), 1u);
    for (int i = 0; i < 8; ++i) futures.push_back(c.infer_async(reqs[i].tensors()));
  }
  for (size_t i = 0; i < futures.size(); ++i) {
    ASSERT_EQ(futures[i].wait_for(0s), std::future_status::ready) << "resolved by the destructor";
    auto r = futures[i].get();
    if (r.is_ok()) {
      reqs[i].expect_answer(r);
    } else {
      EXPECT_EQ(r.status().code(), ErrorCode::kTimeout) << r.status().to_string();
    }
  }
  EXPECT_TRUE(server_.all_slots_free());
  EXPECT_EQ(server_.segment().header().active_lanes.load(), 0u);
  for (uint32_t l = 0; l < server_.segment().geometry().lanes; ++l) {
    EXPECT_EQ(server_.segment().lane(l).owner.load(), 0u);
  }
}

TEST_F(ClientTest, MovedClientKeepsWorking) {
  server_.start_worker();
  Client a = connect();
  Request req(2);
  auto pending = a.infer_async(req.tensors());
  Client b = std::move(a);
  req.expect_answer(b.infer(req.tensors()));
  req.expect_answer(pending.get());
  Client c = connect();
  c = std::move(b);
  req.expect_answer(c.infer(req.tensors()));
  EXPECT_EQ(server_.segment().header().active_lanes.load(), 1u) << "the overwritten one let go";
}

TEST_F(ClientTest, ResultCarriesTimestampsAndAsChecksTheElementSize) {
  server_.start_worker();
  Client c = connect();
  Request req(1);
  auto r = c.infer(req.tensors());
  ASSERT_TRUE(r.is_ok());
  EXPECT_GT(r->queue_ns + r->compute_ns, 0u);
  EXPECT_TRUE(r->outputs[0].as<double>().empty());
  EXPECT_EQ(r->outputs[0].as<int32_t>().size(), 4u);  // same element size: a reinterpretation
}

// ---- zero-copy requests: prepare() hands out the slot's buffers, submit() a SlotResult ----

std::vector<TensorInfo> two_input_infos() {
  // "b" first: input(i) follows this order, not the model's.
  return {TensorInfo{"b", DataType::kInt32, {2, 3}, 24}, TensorInfo{"a", DataType::kFp32, {4}, 16}};
}

TEST_F(ClientTest, PreparedRequestIsWrittenInPlaceAndAnsweredFromTheSlot) {
  server_.start_worker();
  Client c = connect();
  for (int round = 0; round < 20; ++round) {
    auto prepared = c.prepare(two_input_infos(), 1000ms);
    ASSERT_TRUE(prepared.is_ok()) << prepared.status().to_string();
    ASSERT_EQ(prepared->input_count(), 2u);
    std::span<std::byte> b = prepared->input(0);
    std::span<std::byte> a = prepared->input(1);
    ASSERT_EQ(b.size(), 24u);
    ASSERT_EQ(a.size(), 16u);
    const float av[4] = {float(round), 1, 2, 3};
    const int32_t bv[6] = {1, 2, 3, 4, 5, round};
    std::memcpy(a.data(), av, sizeof av);
    std::memcpy(b.data(), bv, sizeof bv);
    std::promise<Result<SlotResult>> done;
    c.submit(std::move(prepared).value(),
             [&done](Result<SlotResult> r) { done.set_value(std::move(r)); });
    Result<SlotResult> r = done.get_future().get();
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_GE(r->batch_size(), 1u);
    float y[4];
    std::memcpy(y, r->output(0).data(), sizeof y);
    EXPECT_EQ(y[0], 2 * float(round) + 1);
    EXPECT_EQ(y[3], 7.0f);
    int64_t z[2];
    std::memcpy(z, r->output(1).data(), sizeof z);
    EXPECT_EQ(z[0], 15 + round);
    EXPECT_FALSE(server_.all_slots_free());  // the SlotResult holds its slot
  }
  EXPECT_TRUE(server_.all_slots_free());
}

TEST_F(ClientTest, WhilePollingAnswersComeOnThePollersThreadAndOffItTheCompletionThreads) {
  server_.start_worker();
  Client c = connect();
  c.set_polling(true);
  std::vector<Request> reqs;
  for (int i = 0; i < 6; ++i) reqs.emplace_back(float(i));
  std::atomic<int> answered{0};
  std::atomic<bool> elsewhere{false};
  const std::thread::id me = std::this_thread::get_id();
  for (const Request& req : reqs) {
    c.infer_async(req.tensors(), [&, req = &req](Result<InferResult> r) {
      req->expect_answer(r);
      if (std::this_thread::get_id() != me) elsewhere = true;
      ++answered;
    });
  }
  // The worker answers within milliseconds; nobody calls back until this thread polls.
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(answered.load(), 0) << "the completion thread stood aside";
  const auto until = std::chrono::steady_clock::now() + 5s;
  size_t polled = 0;
  while (answered < 6 && std::chrono::steady_clock::now() < until) polled += c.poll_completions();
  EXPECT_EQ(polled, 6u);
  EXPECT_EQ(answered.load(), 6);
  EXPECT_FALSE(elsewhere.load());
  EXPECT_EQ(c.poll_completions(), 0u);

  // Requests still out when polling ends go to the completion thread.
  server_.hold = true;
  std::promise<std::thread::id> where;
  c.infer_async(reqs[0].tensors(), [&](Result<InferResult> r) {
    reqs[0].expect_answer(r);
    where.set_value(std::this_thread::get_id());
  });
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(c.poll_completions(), 0u);
  c.set_polling(false);
  server_.hold = false;
  auto f = where.get_future();
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
  EXPECT_NE(f.get(), me);
  EXPECT_TRUE(server_.all_slots_free());
}

TEST_F(ClientTest, APolledRequestPastItsDeadlineTimesOutOnThePoll) {
  shm::set_owner_epoch(server_.segment(), 1);  // an owner that never comes
  Client c = connect();
  c.set_polling(true);
  Request req(1);
  std::optional<Result<InferResult>> got;
  c.infer_async(
      req.tensors(), [&](Result<InferResult> r) { got = std::move(r); }, 30ms);
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (!got && std::chrono::steady_clock::now() < until) c.poll_completions();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status().code(), ErrorCode::kTimeout) << got->status().to_string();
  EXPECT_TRUE(server_.all_slots_free()) << "the queued request was withdrawn";
}

TEST_F(ClientTest, PrepareValidatesAndSaysBusyWhenEverySlotIsTaken) {
  Client c = connect();
  std::vector<TensorInfo> wrong = two_input_infos();
  wrong[1].dtype = DataType::kFp64;
  EXPECT_EQ(c.prepare(wrong, 0ms).status().code(), ErrorCode::kWrongDtype);
  wrong = two_input_infos();
  wrong[0].bytes = 25;
  EXPECT_EQ(c.prepare(wrong, 0ms).status().code(), ErrorCode::kTensorTooLarge);
  std::vector<PreparedRequest> held;
  for (uint32_t i = 0; i < c.max_in_flight(); ++i) {
    auto p = c.prepare(two_input_infos(), 0ms);
    ASSERT_TRUE(p.is_ok()) << p.status().to_string();
    held.push_back(std::move(p).value());
  }
  EXPECT_EQ(c.prepare(two_input_infos(), 0ms).status().code(), ErrorCode::kBusy);
  held.clear();  // unsubmitted: the slots go back
  EXPECT_TRUE(server_.all_slots_free());
  EXPECT_TRUE(c.prepare(two_input_infos(), 0ms).is_ok());
}

}  // namespace
}  // namespace sliceserve::client
