#include "sliceserve/controller/policy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "support/policy_simulator.h"

namespace sliceserve::controller {
namespace {

using testing::PolicySimulator;
using testing::SimModelSpec;

// The synthetic model of every case: a batch of b takes (2 + 0.5 b) ms on the whole device.
constexpr double kBaseMs = 2;
constexpr double kPerItemMs = 0.5;
constexpr double kIntervalMs = 500;

double full_ms(uint32_t b) { return kBaseMs + kPerItemMs * b; }

bool trace_enabled() { return std::getenv("SLICESERVE_POLICY_TRACE") != nullptr; }

void trace(int interval, const PolicyResult& result) {
  if (!trace_enabled()) return;
  for (const Decision& d : result.decisions) {
    std::printf("%3d %s: %s\n", interval, d.model.c_str(), d.reason.c_str());
  }
  if (result.shortfall > 0) std::printf("%3d shortfall %.1f\n", interval, result.shortfall);
}

double slice_sum(const PolicyResult& result) {
  double sum = 0;
  for (const Decision& d : result.decisions) sum += d.slice;
  return sum;
}

// One observation of a model that measured batches of 1, 2, 4 and 8 at its slice.
ModelObservation observe(const std::string& name, double slice, double arrival_rps,
                         double completion_rps, double p99_ms, uint32_t max_batch = 8) {
  ModelObservation obs;
  obs.name = name;
  obs.slo_ms = 50;
  obs.slice = slice;
  obs.max_batch = max_batch;
  obs.max_batch_cap = 16;
  obs.arrival_rps = arrival_rps;
  obs.completion_rps = completion_rps;
  obs.p99_ms = p99_ms;
  obs.busy_fraction = 0.9;
  obs.max_queue_delay_ms = 1;
  for (uint32_t b : {1u, 2u, 4u, 8u}) obs.exec_ms_by_batch[b] = full_ms(b) * 100 / slice;
  return obs;
}

PolicyResult decide_one(const PolicyConfig& config, const ModelObservation& obs,
                        PolicyMemory& memory) {
  return decide(config, std::span<const ModelObservation>(&obs, 1), memory);
}

SimModelSpec sim_model(const std::string& name, double slo_ms, double slice, double rps) {
  SimModelSpec spec;
  spec.name = name;
  spec.slo_ms = slo_ms;
  spec.slice = slice;
  spec.max_batch = 8;
  spec.max_batch_cap = 16;
  spec.arrival_rps = rps;
  spec.base_ms = kBaseMs;
  spec.per_item_ms = kPerItemMs;
  return spec;
}

// ---- learning -----------------------------------------------------------------------------

TEST(PolicyTest, LearnsExecutionTimeAtFullDeviceAndIgnoresEmptyMeasurements) {
  PolicyConfig config;
  PolicyMemory memory;
  ModelObservation obs = observe("m", 25, 100, 100, 10);
  obs.exec_ms_by_batch[3] = 0;    // nothing measured
  obs.exec_ms_by_batch[5] = NAN;  // garbage
  obs.exec_ms_by_batch[0] = 7;    // not a batch size
  decide_one(config, obs, memory);
  const ModelMemory& mem = memory.models.at("m");
  EXPECT_EQ(mem.exec_ms_full_device.size(), 4u);
  EXPECT_NEAR(mem.exec_ms_full_device.at(4), full_ms(4), 1e-9);  // 16 ms at 25% -> 4 ms
  // At a new slice, the same work measures the same at 100%: the average does not move.
  obs = observe("m", 50, 100, 100, 10);
  decide_one(config, obs, memory);
  EXPECT_NEAR(memory.models.at("m").exec_ms_full_device.at(8), full_ms(8), 1e-9);
  // A slower measurement moves the average by exec_ema_alpha of the difference.
  obs.exec_ms_by_batch = {{8, 2 * full_ms(8) * 100 / 50}};
  decide_one(config, obs, memory);
  EXPECT_NEAR(memory.models.at("m").exec_ms_full_device.at(8),
              full_ms(8) * (1 + config.exec_ema_alpha), 1e-9);
}

TEST(PolicyTest, PredictsUnmeasuredBatchSizesFromALine) {
  PolicyConfig config;
  PolicyMemory memory;
  for (int i = 0; i < 3; ++i) decide_one(config, observe("m", 40, 100, 100, 10), memory);
  const ModelMemory& mem = memory.models.at("m");
  // Measured 1, 2, 4, 8: 16 is extrapolated, 6 interpolated, on a + c*b.
  EXPECT_NEAR(*predicted_exec_ms(mem, 16, 100), full_ms(16), 1e-6);
  EXPECT_NEAR(*predicted_exec_ms(mem, 6, 50), full_ms(6) * 2, 1e-6);
  EXPECT_FALSE(predicted_exec_ms(ModelMemory{}, 4, 50).has_value());
  // One measured size only: proportional above it, flat below it (pessimistic both ways).
  ModelMemory single;
  single.exec_ms_full_device[4] = 8;
  EXPECT_NEAR(*predicted_exec_ms(single, 8, 100), 16, 1e-9);
  EXPECT_NEAR(*predicted_exec_ms(single, 2, 100), 8, 1e-9);
}

// ---- growth -------------------------------------------------------------------------------

TEST(PolicyTest, GrowsStraightToTheNeededSliceWhenThroughputFallsShort) {
  PolicyConfig config;
  PolicyMemory memory;
  ModelObservation obs = observe("m", 20, 600, 450, 120, 16);
  obs.exec_ms_by_batch[16] = full_ms(16) * 100 / 20;
  PolicyResult r = decide_one(config, obs, memory);
  const Decision& d = r.decisions[0];
  EXPECT_TRUE(d.slice_changed);
  // Batches of 16 need 100 * 10 ms * 0.6/ms / (0.8 * 16) = 46.9% to keep up at 80%.
  EXPECT_GE(d.slice, 46.8);
  EXPECT_NEAR(d.slice, d.needed_slice * (1 + config.grow_margin), 1e-9);
  EXPECT_GT(d.slice - obs.slice, 4 * config.min_step);  // one jump, not +min_step
  EXPECT_EQ(r.shortfall, 0);
  EXPECT_NE(d.reason.find("grow 20->"), std::string::npos) << d.reason;
  EXPECT_NE(d.reason.find("p99 120ms > 0.8*50ms"), std::string::npos) << d.reason;
  EXPECT_NE(d.reason.find("arrivals 600/s > completions 450/s"), std::string::npos) << d.reason;
  EXPECT_NE(d.reason.find("exec 50ms@20%"), std::string::npos) << d.reason;  // batch 16 at 20%
}

TEST(PolicyTest, GrowsWhenP99NearsTheSloEvenIfThroughputKeepsUp) {
  PolicyConfig config;
  PolicyMemory memory;
  // Keeps up (300/s) but p99 is at 0.9 x SLO: it must grow, by at least min_step.
  PolicyResult r = decide_one(config, observe("m", 15, 300, 300, 45), memory);
  EXPECT_TRUE(r.decisions[0].slice_changed);
  EXPECT_GE(r.decisions[0].slice, 15 + config.min_step);
}

TEST(PolicyTest, CooldownHoldsGrowthUnlessTheSloIsViolated) {
  PolicyConfig config;
  PolicyMemory memory;
  PolicyResult r = decide_one(config, observe("m", 20, 400, 350, 60), memory);
  ASSERT_TRUE(r.decisions[0].slice_changed);
  const double s1 = r.decisions[0].slice;
  // Next interval: arrivals rose again, p99 near but within the SLO: the cooldown holds.
  r = decide_one(config, observe("m", s1, 800, 700, 45), memory);
  EXPECT_FALSE(r.decisions[0].slice_changed) << r.decisions[0].reason;
  EXPECT_NE(r.decisions[0].reason.find("cooldown"), std::string::npos);
  // Still cooling down, but now the SLO is violated and the model agrees: grow now.
  r = decide_one(config, observe("m", s1, 800, 700, 70), memory);
  EXPECT_TRUE(r.decisions[0].slice_changed) << r.decisions[0].reason;
  EXPECT_GT(r.decisions[0].slice, s1 + config.min_step);
}

TEST(PolicyTest, ViolationRightAfterAGrowDoesNotGrowAgainWhenTheNewSliceSuffices) {
  PolicyConfig config;
  PolicyMemory memory;
  PolicyResult r = decide_one(config, observe("m", 20, 400, 300, 150), memory);
  ASSERT_TRUE(r.decisions[0].slice_changed);
  const double s1 = r.decisions[0].slice;
  // The backlog from before the grow still shows in p99: no second grow for it.
  r = decide_one(config, observe("m", s1, 400, 480, 90), memory);
  EXPECT_FALSE(r.decisions[0].slice_changed) << r.decisions[0].reason;
}

TEST(PolicyTest, GrowsByTheMeasuredRatioWithoutAnExecutionModel) {
  PolicyConfig config;
  PolicyMemory memory;
  ModelObservation obs = observe("m", 20, 300, 200, 100);
  obs.exec_ms_by_batch.clear();
  PolicyResult r = decide_one(config, obs, memory);
  EXPECT_NEAR(r.decisions[0].slice, 40, 1e-9);  // p99 100 / target 30 -> capped at 2x
  EXPECT_EQ(r.decisions[0].needed_slice, 0);
  EXPECT_NE(r.decisions[0].reason.find("need unknown"), std::string::npos);
}

// ---- shrinking ----------------------------------------------------------------------------

TEST(PolicyTest, LastingHeadroomShrinksToTheNeedPlusMargin) {
  PolicyConfig config;
  PolicyMemory memory;
  PolicyResult r;
  for (uint32_t i = 1; i < config.shrink_after; ++i) {
    r = decide_one(config, observe("m", 80, 200, 200, 10), memory);
    EXPECT_FALSE(r.decisions[0].slice_changed) << i << ": " << r.decisions[0].reason;
  }
  r = decide_one(config, observe("m", 80, 200, 200, 10), memory);
  const Decision& d = r.decisions[0];
  ASSERT_TRUE(d.slice_changed) << d.reason;
  EXPECT_LT(d.slice, 80 - config.min_step);
  EXPECT_GE(d.slice, config.min_slice);
  // To the need plus margin, but one step keeps at least half the slice.
  EXPECT_NEAR(d.slice,
              std::max({config.min_slice, d.needed_slice * (1 + config.shrink_margin), 80 * 0.5}),
              1e-6);
  EXPECT_NE(d.reason.find("shrink 80->"), std::string::npos) << d.reason;
}

TEST(PolicyTest, ShortHeadroomDoesNotShrink) {
  PolicyConfig config;
  PolicyMemory memory;
  for (int round = 0; round < 4; ++round) {
    for (uint32_t i = 1; i < config.shrink_after; ++i) {
      PolicyResult r = decide_one(config, observe("m", 80, 200, 200, 10), memory);
      EXPECT_FALSE(r.decisions[0].slice_changed);
    }
    // One interval in the band between the thresholds resets the streak.
    PolicyResult r = decide_one(config, observe("m", 80, 200, 200, 30), memory);
    EXPECT_FALSE(r.decisions[0].slice_changed);
    EXPECT_EQ(memory.models.at("m").headroom_streak, 0u);
  }
}

TEST(PolicyTest, IdleModelWithoutMeasurementsGivesTheDeviceBack) {
  PolicyConfig config;
  PolicyMemory memory;
  ModelObservation obs = observe("m", 40, 0, 0, 0);
  obs.exec_ms_by_batch.clear();
  PolicyResult r;
  // Halving at most per step: 40 -> 20 -> 10 -> 5, each after its own headroom streak.
  std::vector<double> steps;
  for (int i = 0; i < 100 && obs.slice > config.min_slice; ++i) {
    r = decide_one(config, obs, memory);
    if (r.decisions[0].slice_changed) {
      EXPECT_GE(r.decisions[0].slice, obs.slice * 0.5 - 1e-9) << r.decisions[0].reason;
      obs.slice = r.decisions[0].slice;
      steps.push_back(obs.slice);
    }
  }
  EXPECT_NEAR(obs.slice, config.min_slice, 1e-9);
  EXPECT_EQ(steps, (std::vector<double>{20, 10, 5}));
}

TEST(PolicyTest, ChangesBelowMinStepAreNotMade) {
  PolicyConfig config;
  config.min_step = 10;
  PolicyMemory memory;
  // Headroom, but the need plus margin is only a few points below the slice.
  PolicyResult r;
  double slice = 0;
  for (uint32_t i = 0; i < config.shrink_after; ++i) {
    r = decide_one(config, observe("m", 40, 100, 100, 10), memory);
  }
  const double target = r.decisions[0].needed_slice * (1 + config.shrink_margin);
  ASSERT_LT(target, 40);
  slice = std::max(target + 1, 40 - config.min_step + 1);  // just inside min_step
  memory = {};
  for (uint32_t i = 0; i < 3 * config.shrink_after; ++i) {
    r = decide_one(config, observe("m", slice, 100, 100, 10), memory);
    EXPECT_FALSE(r.decisions[0].slice_changed) << r.decisions[0].reason;
  }
}

TEST(PolicyTest, AShrinkThatHadToBeUndoneIsNotRepeated) {
  PolicyConfig config;
  PolicyMemory memory;
  PolicyResult r;
  for (uint32_t i = 0; i < config.shrink_after; ++i) {
    r = decide_one(config, observe("m", 80, 200, 200, 10), memory);
  }
  ASSERT_TRUE(r.decisions[0].slice_changed);
  const double shrunk = r.decisions[0].slice;
  // The model was wrong: at the smaller slice p99 nears the SLO and the policy grows back.
  for (int i = 0; i < 3; ++i) decide_one(config, observe("m", shrunk, 200, 200, 30), memory);
  r = decide_one(config, observe("m", shrunk, 200, 200, 45), memory);
  EXPECT_FALSE(r.decisions[0].slice_changed) << "the model disagrees: not on one interval";
  r = decide_one(config, observe("m", shrunk, 200, 200, 45), memory);
  ASSERT_TRUE(r.decisions[0].slice_changed) << r.decisions[0].reason;
  const double regrown = r.decisions[0].slice;
  ASSERT_GT(regrown, shrunk);
  EXPECT_EQ(memory.models.at("m").shrink_backoff, 1u);
  // Headroom again, even for long: it may shrink, but never back to the slice that failed.
  for (int i = 0; i < 60; ++i) {
    r = decide_one(config, observe("m", regrown, 200, 200, 10), memory);
    if (r.decisions[0].slice_changed) {
      EXPECT_GE(r.decisions[0].slice, shrunk + config.min_step - 1e-9);
      EXPECT_GE(i + 1, int(2 * config.shrink_after)) << "backoff doubles shrink_after";
      break;
    }
  }
}

// ---- batch size ---------------------------------------------------------------------------

TEST(PolicyTest, BatchGrowsUnderLoadWhenTheSloAllows) {
  PolicyConfig config;
  PolicyMemory memory;
  // Light load at 20%: a full batch of b takes (2 + 0.5 b) * 5 ms and must finish within
  // 0.8 * SLO behind another one, so b <= 3.
  PolicyResult r = decide_one(config, observe("m", 20, 100, 100, 15, 2), memory);
  EXPECT_EQ(r.decisions[0].max_batch, 3u) << r.decisions[0].reason;
  // Four times the load: the slice grows and, at the larger slice, so does the batch.
  r = decide_one(config, observe("m", 20, 400, 300, 60, 3), memory);
  ASSERT_TRUE(r.decisions[0].slice_changed);
  EXPECT_GT(r.decisions[0].max_batch, 3u) << r.decisions[0].reason;
  EXPECT_TRUE(r.decisions[0].batch_changed);
  EXPECT_NE(r.decisions[0].reason.find("batch 3->"), std::string::npos);
}

TEST(PolicyTest, BatchShrinksWhenItWouldViolateTheSlo) {
  PolicyConfig config;
  PolicyMemory memory;
  // The device is taken (a pinned neighbour holds 80%), so the slice cannot grow; at 20% a full
  // batch of 16 (50 ms, twice) cannot meet the SLO.
  std::vector<ModelObservation> obs = {observe("m", 20, 100, 100, 45, 16),
                                       observe("pinned", 80, 10, 10, 5)};
  obs[1].pinned = true;
  PolicyResult r = decide(config, obs, memory);
  EXPECT_FALSE(r.decisions[0].slice_changed);
  EXPECT_EQ(r.decisions[0].max_batch, 3u) << r.decisions[0].reason;
  EXPECT_TRUE(r.decisions[0].batch_changed);
  // A tighter SLO at 50%: from 15 down.
  memory = {};
  ModelObservation tight = observe("m", 50, 100, 100, 10, 15);
  r = decide_one(config, tight, memory);
  EXPECT_EQ(r.decisions[0].max_batch, 15u);
  tight.slo_ms = 25;
  r = decide_one(config, tight, memory);
  EXPECT_LT(r.decisions[0].max_batch, 15u);
}

TEST(PolicyTest, BatchStaysWithinTheConfiguredCap) {
  PolicyConfig config;
  PolicyMemory memory;
  ModelObservation obs = observe("m", 100, 100, 100, 5, 4);
  obs.max_batch_cap = 4;
  PolicyResult r = decide_one(config, obs, memory);
  EXPECT_EQ(r.decisions[0].max_batch, 4u);
}

// ---- pinned models and the device ---------------------------------------------------------

TEST(PolicyTest, PinnedModelsKeepSliceAndBatchAndCountAgainstTheDevice) {
  PolicyConfig config;
  PolicyMemory memory;
  std::vector<ModelObservation> obs = {observe("pinned", 60, 2000, 100, 500, 2),
                                       observe("free", 30, 1000, 500, 200)};
  obs[0].pinned = true;
  PolicyResult r = decide(config, obs, memory);
  EXPECT_FALSE(r.decisions[0].slice_changed);
  EXPECT_FALSE(r.decisions[0].batch_changed);
  EXPECT_EQ(r.decisions[0].slice, 60);
  EXPECT_EQ(r.decisions[0].max_batch, 2u);
  EXPECT_NE(r.decisions[0].reason.find("pinned 60"), std::string::npos);
  EXPECT_NEAR(r.decisions[1].slice, 40, 1e-9);  // all that is left
  EXPECT_LE(slice_sum(r), config.device_capacity + 1e-9);
  EXPECT_EQ(r.short_models, std::vector<std::string>{"free"});
  EXPECT_GT(r.shortfall, 0);
}

TEST(PolicyTest, ShortDeviceServesTheTightestMarginFirstAndReportsTheShortfall) {
  PolicyConfig config;
  PolicyMemory memory;
  // Both want more than half of the device; "tight" is closer to its SLO.
  std::vector<ModelObservation> obs = {observe("loose", 40, 900, 700, 48),
                                       observe("tight", 40, 900, 700, 90)};
  PolicyResult r = decide(config, obs, memory);
  const Decision& loose = r.decisions[0];
  const Decision& tight = r.decisions[1];
  EXPECT_NEAR(tight.slice, tight.needed_slice * (1 + config.grow_margin), 1e-6) << tight.reason;
  EXPECT_NEAR(loose.slice, config.device_capacity - tight.slice, 1e-6) << loose.reason;
  EXPECT_GE(loose.slice, config.min_slice);
  EXPECT_LE(slice_sum(r), config.device_capacity + 1e-9);
  EXPECT_EQ(r.short_models, std::vector<std::string>{"loose"});
  EXPECT_NEAR(r.shortfall, loose.needed_slice - loose.slice, 1e-6);
  EXPECT_TRUE(loose.short_of_device);
  EXPECT_NE(loose.reason.find("short"), std::string::npos) << loose.reason;
  // Next interval the loose one is far worse off (it was short), but the order holds.
  obs = {observe("loose", loose.slice, 900, 500, 400), observe("tight", tight.slice, 900, 900, 25)};
  r = decide(config, obs, memory);
  EXPECT_EQ(r.short_models, std::vector<std::string>{"loose"});
  EXPECT_GE(r.decisions[1].slice, tight.slice - 1e-9);
}

TEST(PolicyTest, EveryModelGetsMinSliceWhenTheDeviceIsShort) {
  PolicyConfig config;
  config.device_capacity = 30;
  PolicyMemory memory;
  std::vector<ModelObservation> obs;
  for (const char* name : {"a", "b", "c", "d"}) obs.push_back(observe(name, 7.5, 900, 100, 500));
  obs[0].p99_ms = 900;  // the tightest
  PolicyResult r = decide(config, obs, memory);
  EXPECT_LE(slice_sum(r), 30 + 1e-9);
  for (const Decision& d : r.decisions) EXPECT_GE(d.slice, config.min_slice - 1e-9) << d.reason;
  EXPECT_NEAR(r.decisions[0].slice, 30 - 3 * config.min_slice, 1e-9);
  EXPECT_EQ(r.short_models.size(), 4u);
}

// ---- closed loop: the simulator -----------------------------------------------------------

struct StepRun {
  int recovered_after = -1;        // intervals after the step until p99 is back for good
  int changes_after_recovery = 0;  // slice changes of the stepped model in the next 50
  int flips = 0;                   // grow after shrink or shrink after grow, any model
  double worst_p99_after = 0;
};

StepRun run_step(uint64_t seed) {
  constexpr int kWarmup = 40;
  constexpr int kAfter = 65;
  PolicyConfig config;
  PolicySimulator sim({sim_model("a", 50, 40, 300), sim_model("b", 100, 30, 200)}, kIntervalMs,
                      seed);
  PolicyMemory memory;
  std::vector<double> p99_a;
  std::vector<int> direction(2, 0);
  std::vector<int> changes_a;  // intervals (after the step) where a's slice changed
  StepRun run;
  for (int i = 0; i < kWarmup + kAfter; ++i) {
    if (i == kWarmup) sim.set_arrival_rps(0, 600);
    testing::SimInterval obs = sim.run_interval();
    PolicyResult r = decide(config, obs.observations, memory);
    trace(i, r);
    EXPECT_LE(slice_sum(r), config.device_capacity + 1e-9) << "interval " << i;
    if (i >= kWarmup) {
      p99_a.push_back(obs.observations[0].p99_ms);
      if (r.decisions[0].slice_changed) changes_a.push_back(i - kWarmup);
      for (size_t m = 0; m < 2; ++m) {
        const Decision& d = r.decisions[m];
        if (!d.slice_changed) continue;
        const int dir = d.slice > obs.observations[m].slice ? 1 : -1;
        if (direction[m] != 0 && dir != direction[m]) ++run.flips;
        direction[m] = dir;
      }
    }
    sim.apply(r);
  }
  // p99_a[k] was measured in the k-th interval after the step (k = 0: the rate doubled during
  // it), under the decisions taken before it. Recovered: back within the SLO for 10 intervals.
  for (int k = 0; k + 10 <= int(p99_a.size()); ++k) {
    bool good = true;
    for (int j = k; j < k + 10; ++j) good = good && p99_a[j] <= 50;
    if (good) {
      run.recovered_after = k;
      break;
    }
  }
  if (run.recovered_after >= 0) {
    // Further changes: after the recovery and after the response to the step itself.
    int from = run.recovered_after;
    if (!changes_a.empty() && changes_a.front() < 5) from = std::max(from, changes_a.front() + 1);
    for (int c : changes_a) run.changes_after_recovery += c >= from && c < from + 50;
    for (int j = run.recovered_after; j < int(p99_a.size()); ++j) {
      run.worst_p99_after = std::max(run.worst_p99_after, p99_a[j]);
    }
  }
  return run;
}

TEST(PolicySimTest, DoubledArrivalsRecoverWithinFiveIntervalsAndDoNotOscillate) {
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    SCOPED_TRACE(seed);
    const StepRun run = run_step(seed);
    std::printf(
        "seed %d: p99 back within the SLO %d interval(s) after the step, %d slice "
        "change(s) in the 50 intervals after, %d flip(s), worst p99 after %.1f ms\n",
        int(seed), run.recovered_after, run.changes_after_recovery, run.flips, run.worst_p99_after);
    EXPECT_GE(run.recovered_after, 0);
    EXPECT_LE(run.recovered_after, 5);
    EXPECT_LE(run.changes_after_recovery, 1);
    EXPECT_EQ(run.flips, 0);
  }
}

TEST(PolicySimTest, TwoModelsShareADeviceTooSmallForBoth) {
  PolicyConfig config;
  // "tight" (25 ms SLO) and "loose" (100 ms) each need more than half of the device.
  PolicySimulator sim({sim_model("loose", 100, 40, 600), sim_model("tight", 25, 40, 600)},
                      kIntervalMs, 7);
  PolicyMemory memory;
  int changes_late = 0;
  for (int i = 0; i < 60; ++i) {
    testing::SimInterval obs = sim.run_interval();
    PolicyResult r = decide(config, obs.observations, memory);
    trace(i, r);
    ASSERT_LE(slice_sum(r), config.device_capacity + 1e-9) << "interval " << i;
    for (const Decision& d : r.decisions) ASSERT_GE(d.slice, config.min_slice - 1e-9);
    if (i >= 20) {
      const Decision& loose = r.decisions[0];
      const Decision& tight = r.decisions[1];
      EXPECT_EQ(r.short_models, std::vector<std::string>{"loose"}) << "interval " << i;
      EXPECT_GT(r.shortfall, 0);
      EXPECT_FALSE(tight.short_of_device) << tight.reason;
      EXPECT_NEAR(loose.slice + tight.slice, config.device_capacity, config.min_step)
          << loose.reason;
      EXPECT_LE(obs.observations[1].p99_ms, 25) << "tight misses its SLO at " << i;
      changes_late += tight.slice_changed;
    }
    sim.apply(r);
  }
  EXPECT_LE(changes_late, 2);
}

TEST(PolicySimTest, LongHeadroomShrinksOnceAndStays) {
  PolicyConfig config;
  PolicySimulator sim({sim_model("m", 50, 90, 150)}, kIntervalMs, 11);
  PolicyMemory memory;
  int changes = 0;
  double final_slice = 90;
  for (int i = 0; i < 80; ++i) {
    testing::SimInterval obs = sim.run_interval();
    PolicyResult r = decide(config, obs.observations, memory);
    trace(i, r);
    if (i < int(config.shrink_after) - 1) {
      EXPECT_FALSE(r.decisions[0].slice_changed) << "shrank before the headroom lasted";
    }
    if (i > 0) {
      EXPECT_LE(obs.observations[0].p99_ms, 50) << "interval " << i;
    }
    changes += r.decisions[0].slice_changed;
    final_slice = r.decisions[0].slice;
    sim.apply(r);
  }
  EXPECT_LT(final_slice, 45);
  EXPECT_LE(changes, 2);
}

TEST(PolicySimTest, PinnedModelNeverChanges) {
  PolicyConfig config;
  SimModelSpec pinned = sim_model("pinned", 20, 50, 900);  // overloaded, but pinned
  pinned.pinned = true;
  PolicySimulator sim({pinned, sim_model("free", 50, 20, 700)}, kIntervalMs, 5);
  PolicyMemory memory;
  for (int i = 0; i < 30; ++i) {
    testing::SimInterval obs = sim.run_interval();
    PolicyResult r = decide(config, obs.observations, memory);
    trace(i, r);
    EXPECT_EQ(r.decisions[0].slice, 50);
    EXPECT_EQ(r.decisions[0].max_batch, 8u);
    EXPECT_FALSE(r.decisions[0].slice_changed || r.decisions[0].batch_changed);
    EXPECT_LE(r.decisions[1].slice, 50 + 1e-9);
    sim.apply(r);
  }
}

}  // namespace
}  // namespace sliceserve::controller
