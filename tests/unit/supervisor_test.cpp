#include <gtest/gtest.h>

#include <algorithm>

#include "sliceserve/controller/config.h"
#include "sliceserve/controller/daemon.h"
#include "sliceserve/controller/model_supervisor.h"
#include "sliceserve/controller/stats_window.h"

namespace sliceserve::controller {
namespace {

Config two_models() {
  auto c = parse_config(R"(
[server]
instance = "unit"
[[model]]
name = "a"
slice = 45
max_batch = 4
inputs = [ { name = "x", dtype = "FP32", shape = [8] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [8] } ]
[[model]]
name = "b"
kind = "null"
slice = 30
inputs = [ { name = "x", dtype = "INT32", shape = [2, 3] } ]
outputs = [ { name = "y", dtype = "FP16", shape = [4] } ]
)",
                        "unit.toml");
  EXPECT_TRUE(c.is_ok()) << c.status().to_string();
  return c.value();
}

bool has_pair(const std::vector<std::string>& args, const std::string& k, const std::string& v) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == k && args[i + 1] == v) return true;
  }
  return false;
}

TEST(SupervisorTest, WorkerArgumentsCarryTheModelAndSlice) {
  Config c = two_models();
  auto args = worker_arguments(c, c.models[0], "/sliceserve.unit.a", 7, {2, 1});
  EXPECT_TRUE(has_pair(args, "--segment", "/sliceserve.unit.a"));
  EXPECT_TRUE(has_pair(args, "--epoch", "7"));
  EXPECT_TRUE(has_pair(args, "--slice", "45"));
  EXPECT_TRUE(has_pair(args, "--cores", "2"));
  EXPECT_TRUE(has_pair(args, "--first-core", "1"));
  EXPECT_TRUE(has_pair(args, "--max-batch", "4"));
  EXPECT_TRUE(has_pair(args, "--model-kind", "synthetic"));
  EXPECT_TRUE(has_pair(args, "--cpu-mode", "process"));
  EXPECT_EQ(std::count(args.begin(), args.end(), "--model-path"), 0);
}

TEST(SupervisorTest, ModelsAreLaidOutOneAfterAnotherOverTheCores) {
  Config c = two_models();
  auto p = place_models(c, 2);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].first_core, 0u);  // 0.9 cores
  EXPECT_EQ(p[1].first_core, 0u);  // starts at 0.9 -> core 0
  auto wide = place_models(c, 8);
  EXPECT_EQ(wide[1].first_core, 3u);  // after 3.6 cores
}

TEST(SupervisorTest, ModelSpecFollowsTheDeclaredTensors) {
  Config c = two_models();
  auto spec = model_spec(c.models[1]);
  ASSERT_TRUE(spec.is_ok());
  EXPECT_EQ(spec->n_inputs, 1u);
  EXPECT_EQ(spec->inputs[0].dtype, shm::DataType::kInt32);
  EXPECT_EQ(spec->inputs[0].byte_size(), 24u);
  EXPECT_EQ(spec->outputs[0].byte_size(), 8u);
}

TEST(StatsWindowTest, RatesAndPercentilesOverTheWindow) {
  StatsWindow w(10'000'000'000);
  StatsSample s;
  s.epoch = 1;
  s.time_ns = 1'000'000'000;
  w.add(s);
  s.time_ns = 2'000'000'000;
  s.arrivals = 100;
  s.completed = 90;
  s.batches = 30;
  s.busy_ns = 500'000'000;
  for (int i = 0; i < 90; ++i) ++s.latency[shm::latency_bucket(i < 89 ? 100 : 5000)];
  w.add(s);
  ModelRates r = w.rates();
  EXPECT_DOUBLE_EQ(r.arrival_rps, 100);
  EXPECT_DOUBLE_EQ(r.completion_rps, 90);
  EXPECT_DOUBLE_EQ(r.mean_batch, 3);
  EXPECT_DOUBLE_EQ(r.busy_fraction, 0.5);
  EXPECT_GE(r.p50_us, 100u);
  EXPECT_LE(r.p50_us, 120u);
  EXPECT_GE(r.p99_us, 5000u);
}

TEST(StatsWindowTest, ANewEpochDoesNotMakeRatesNegative) {
  StatsWindow w(10'000'000'000);
  StatsSample s;
  s.epoch = 1;
  s.time_ns = 1'000'000'000;
  s.completed = 1000;
  w.add(s);
  s.time_ns = 2'000'000'000;
  s.completed = 1100;
  w.add(s);
  s.epoch = 2;  // restart: counters begin again
  s.time_ns = 3'000'000'000;
  s.completed = 50;
  w.add(s);
  EXPECT_DOUBLE_EQ(w.rates().completion_rps, 75);  // (100 + 50) / 2 s
}

TEST(StatsWindowTest, OldSamplesLeaveTheWindow) {
  StatsWindow w(2'000'000'000);
  StatsSample s;
  s.epoch = 1;
  for (int t = 0; t <= 10; ++t) {
    s.time_ns = uint64_t(t) * 1'000'000'000;
    s.completed = t < 5 ? uint64_t(t) * 1000 : 5000 + uint64_t(t - 5) * 10;
    w.add(s);
  }
  EXPECT_NEAR(w.rates().completion_rps, 10, 1e-9);
}

}  // namespace
}  // namespace sliceserve::controller

namespace sliceserve::controller {
namespace {

TEST(StatsWindowTest, LatestCoversOnlyTheLastInterval) {
  StatsWindow w(10'000'000'000);
  StatsSample s;
  s.epoch = 1;
  for (int t = 0; t <= 4; ++t) {
    s.time_ns = uint64_t(t) * 1'000'000'000;
    s.completed = t < 4 ? uint64_t(t) * 100 : 300 + 1000;
    w.add(s);
  }
  EXPECT_DOUBLE_EQ(w.latest().completion_rps, 1000);
  EXPECT_DOUBLE_EQ(w.rates().completion_rps, 1300.0 / 4);
}

TEST(SupervisorTest, SlicePoolStepsFromTheMinimumToTheWholeDevice) {
  PolicyConfig p;
  p.min_slice = 5;
  p.min_step = 5;
  auto pool = slice_pool(p);
  ASSERT_EQ(pool.size(), 20u);
  EXPECT_DOUBLE_EQ(pool.front(), 5);
  EXPECT_DOUBLE_EQ(pool.back(), 100);
  p.min_slice = 10;
  p.min_step = 40;
  EXPECT_EQ(slice_pool(p), (std::vector<double>{10, 50, 90, 100}));
}

}  // namespace
}  // namespace sliceserve::controller
