// slicectl as a subprocess (status, bench) against model segments served by this test: the test
// creates the segments (playing the controller, summary block included) and serves one of them
// from a thread with a WorkerPort computing y = 2x + 1.

#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment.h"
#include "sliceserve/shm/segment_control.h"
#include "sliceserve/shm/worker_port.h"
#include "support/cli_run.h"
#include "support/shm_test_util.h"

namespace sliceserve {
namespace {

using testing::CliRun;
using testing::slicectl;

nlohmann::json parse_last_line(const std::string& out) {
  std::string text = out;
  while (!text.empty() && text.back() == '\n') text.pop_back();
  const size_t nl = text.rfind('\n');
  const std::string line = nl == std::string::npos ? text : text.substr(nl + 1);
  return nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
}

class SlicectlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    instance_ = "st" + std::to_string(getpid()) + "x" + std::to_string(counter_++);
    served_.emplace(make_segment("m", 4));
    idle_.emplace(make_segment("idle", 2));
    shm::ControllerSummary& s = served_->header().summary;
    s.slice_percent.store(40);
    s.slo_ms.store(50);
    s.max_batch.store(8);
    s.restarts.store(2);
    s.arrival_milli_rps.store(123'500);
    s.completion_milli_rps.store(120'000);
    s.p50_us.store(1500);
    s.p99_us.store(7250);
    s.worker_pid.store(getpid());
    s.updated_ns.store(shm::monotonic_ns());
    shm::set_owner_epoch(*served_, 1);
    worker_ = std::thread([this] { serve(); });
  }
  void TearDown() override {
    stop_.store(true);
    shm::ring_bell(served_->header().submit_bell);
    worker_.join();
  }

  shm::Segment make_segment(const std::string& model, uint32_t lanes) {
    shm::SegmentOptions o;
    o.name = shm::segment_name(instance_, model).value();
    o.model_name = model;
    o.spec = testing::float_spec(16);
    o.lanes = lanes;
    o.slots_per_lane = 8;
    auto s = shm::Segment::create(o);
    EXPECT_TRUE(s.is_ok()) << s.status().to_string();
    return std::move(s).value();
  }

  void serve() {
    shm::WorkerPort port(*served_, 1);
    port.publish_state(shm::WorkerState::kServing);
    port.stats().slice_percent.store(40);
    std::vector<shm::ClaimedSlot> batch(8);
    while (!stop_.load()) {
      const uint32_t token = port.work_token();
      const size_t n = port.claim(batch);
      if (n == 0) {
        port.wait_for_work(token, 5'000'000);
        continue;
      }
      for (size_t i = 0; i < n; ++i) {
        shm::SlotHeader& h = served_->slot(batch[i].slot);
        std::byte* data = served_->slot_data(batch[i].slot);
        auto* x = reinterpret_cast<const float*>(data + served_->input_offset(0));
        auto* y = reinterpret_cast<float*>(data + served_->output_offset(0));
        for (int k = 0; k < 16; ++k) y[k] = x[k] * 2 + 1;
        h.batch_size = uint32_t(n);
        h.status_code = 0;
        port.complete(batch[i]);
        completed_.fetch_add(1);
      }
    }
  }

  std::string instance_;
  std::optional<shm::Segment> served_;
  std::optional<shm::Segment> idle_;
  std::thread worker_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> completed_{0};
  static inline std::atomic<int> counter_{0};
};

TEST_F(SlicectlTest, StatusJsonListsEveryModel) {
  CliRun r = slicectl("--instance " + instance_ + " status --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  nlohmann::json doc = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << r.out;
  EXPECT_EQ(doc["instance"], instance_);
  ASSERT_EQ(doc["models"].size(), 2u) << r.out;
  const nlohmann::json& idle = doc["models"][0];
  const nlohmann::json& m = doc["models"][1];
  EXPECT_EQ(idle["model"], "idle");
  EXPECT_EQ(idle["state"], "no worker");
  EXPECT_TRUE(idle["summary_age_ms"].is_null());
  EXPECT_EQ(m["model"], "m");
  EXPECT_EQ(m["state"], "serving");
  EXPECT_EQ(m["epoch"], 1);
  EXPECT_EQ(m["worker_pid"], getpid());
  EXPECT_EQ(m["slice_percent"], 40);
  EXPECT_DOUBLE_EQ(m["arrival_rps"].get<double>(), 123.5);
  EXPECT_DOUBLE_EQ(m["completion_rps"].get<double>(), 120.0);
  EXPECT_DOUBLE_EQ(m["p50_ms"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(m["p99_ms"].get<double>(), 7.25);
  EXPECT_EQ(m["slo_ms"], 50);
  EXPECT_EQ(m["max_batch"], 8);
  EXPECT_EQ(m["restarts"], 2);
  EXPECT_EQ(m["lanes"], 4);
  EXPECT_TRUE(m["summary_age_ms"].is_number());
}

TEST_F(SlicectlTest, StatusTableAndInstanceFromEnvironmentAndConfig) {
  CliRun r = slicectl("status", "SLICESERVE_INSTANCE=" + instance_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("MODEL"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("serving"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("no worker"), std::string::npos) << r.out;

  char path[] = "/tmp/slicectl_config_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    std::ofstream cfg(path);
    cfg << "[server]\ninstance = \"" << instance_ << "\"\n\n[[model]]\nname = \"m\"\n"
        << "slice = 40\ninputs = [ { name = \"x\", dtype = \"FP32\", shape = [16] } ]\n"
        << "outputs = [ { name = \"y\", dtype = \"FP32\", shape = [16] } ]\n";
  }
  CliRun c =
      slicectl(std::string("--config ") + path + " status --json", "SLICESERVE_INSTANCE=elsewhere");
  unlink(path);
  ASSERT_EQ(c.rc, 0) << c.err;
  EXPECT_EQ(nlohmann::json::parse(c.out, nullptr, false)["instance"], instance_) << c.out;
}

TEST_F(SlicectlTest, StatusWithoutModelsFails) {
  CliRun r = slicectl("--instance nobody" + std::to_string(getpid()) + " status");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("no models served by instance nobody"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("is sliceserved running?"), std::string::npos) << r.err;
}

TEST_F(SlicectlTest, BenchConcurrencyPrintsOneJsonLine) {
  CliRun r = slicectl("--instance " + instance_ + " bench m --concurrency 8 --duration 0.5 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  nlohmann::json j = parse_last_line(r.out);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["bench"], "slicectl");
  EXPECT_EQ(j["model"], "m");
  EXPECT_EQ(j["mode"], "concurrency");
  EXPECT_EQ(j["target"], 8);
  EXPECT_DOUBLE_EQ(j["duration_s"].get<double>(), 0.5);
  EXPECT_GT(j["requests"].get<uint64_t>(), 10u);
  EXPECT_EQ(j["errors"], 0);
  EXPECT_GT(j["throughput_rps"].get<double>(), 0);
  for (const char* k : {"p50_ms", "p90_ms", "p99_ms", "max_ms"}) {
    EXPECT_TRUE(j[k].is_number()) << k;
  }
  EXPECT_LE(j["p50_ms"].get<double>(), j["p99_ms"].get<double>());
  EXPECT_LE(j["p99_ms"].get<double>(), j["max_ms"].get<double>());
  EXPECT_GE(completed_.load(), j["requests"].get<uint64_t>());
  EXPECT_EQ(shm::slot_census(*served_).free, served_->slot_count()) << "bench left no slot";
  EXPECT_EQ(served_->header().active_lanes.load(), 0u) << "bench released its lanes";
}

TEST_F(SlicectlTest, BenchConcurrencyBeyondOneLaneUsesMoreLanes) {
  // 4 lanes x 8 slots: 20 in flight needs 3 lanes; 40 cannot be had.
  CliRun r =
      slicectl("--instance " + instance_ + " bench m --concurrency 20 --duration 0.3 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(parse_last_line(r.out)["errors"], 0) << r.out;
  CliRun too_many =
      slicectl("--instance " + instance_ + " bench m --concurrency 40 --duration 0.3");
  EXPECT_EQ(too_many.rc, 1);
  EXPECT_NE(too_many.err.find("client lanes"), std::string::npos) << too_many.err;
}

TEST_F(SlicectlTest, BenchRatePoissonWithProgress) {
  CliRun r = slicectl("--instance " + instance_ +
                      " bench m --rate 400 --poisson --duration 1.5 --json --progress");
  ASSERT_EQ(r.rc, 0) << r.err;
  nlohmann::json j = parse_last_line(r.out);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["mode"], "rate");
  EXPECT_EQ(j["target"], 400);
  EXPECT_EQ(j["errors"], 0);
  // 600 expected; Poisson arrivals over 1.5 s stay well inside this.
  EXPECT_GT(j["requests"].get<uint64_t>(), 400u);
  EXPECT_LT(j["requests"].get<uint64_t>(), 800u);
  EXPECT_NE(r.err.find("requests"), std::string::npos) << "a progress line: " << r.err;
  EXPECT_NE(r.err.find("p99"), std::string::npos) << r.err;
}

TEST_F(SlicectlTest, BenchHumanSummary) {
  CliRun r = slicectl("--instance " + instance_ + " bench m --rate 200 --duration 0.3");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("throughput"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("p99"), std::string::npos) << r.out;
}

TEST_F(SlicectlTest, BenchUnknownModelNamesTheServedOnes) {
  CliRun r = slicectl("--instance " + instance_ + " bench x --concurrency 1 --duration 0.1");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("unknown model 'x' (served: idle, m)"), std::string::npos) << r.err;
}

TEST_F(SlicectlTest, BenchWithoutAWorkerReportsTimeouts) {
  CliRun r = slicectl("--instance " + instance_ +
                      " bench idle --concurrency 1 --duration 0.2 --timeout-ms 50 --json");
  EXPECT_EQ(r.rc, 1) << "no request succeeded";
  nlohmann::json j = parse_last_line(r.out);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_GT(j["errors"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["errors_by_code"]["timeout"], j["errors"]);
}

}  // namespace
}  // namespace sliceserve
