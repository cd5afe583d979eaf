// The SLO policy in the real system: a real sliceserved, real workers on this machine's cores,
// open-loop load. Labelled slow: each test runs for several seconds and wants the cores to
// itself (RUN_SERIAL).

#include <gtest/gtest.h>

#include "sliceserve/controller/admin_socket.h"
#include "support/daemon_harness.h"
#include "support/load_driver.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using controller::admin_call;
using testing::DaemonProcess;
using testing::OpenLoopDriver;
using testing::read_file;
using testing::TempDir;
using testing::unique_instance;
using testing::wait_serving;

constexpr uint64_t kIntervalMs = 200;
// Resized in place: a shadow would have to start on cores the loaded models already saturate.
constexpr const char* kInPlace = "backend = \"cpu:affinity\"\n";

std::string model_table(const std::string& name, double slo_ms, double slice, double flops) {
  return "[[model]]\nname = \"" + name + "\"\nslo_ms = " + std::to_string(slo_ms) +
         "\nslice = " + std::to_string(slice) + "\nmax_batch = 4\nmax_queue_delay_us = 2000\n" +
         "flops_per_item = " + std::to_string(flops) + "\nslots_per_lane = 128\n" +
         "inputs = [ { name = \"x\", dtype = \"FP32\", shape = [16] } ]\n" +
         "outputs = [ { name = \"y\", dtype = \"FP32\", shape = [16] } ]\n";
}

std::string config_text(const std::string& instance, const std::string& models) {
  return "[server]\ninstance = \"" + instance +
         "\"\npolicy_interval_ms = " + std::to_string(kIntervalMs) +
         "\n[policy]\nshrink_after = 10\n" + models;
}

struct Snapshot {
  uint64_t t_ns;
  std::map<std::string, double> slice;
  double shortfall = 0;
  std::vector<std::string> short_models;
};

Snapshot take_snapshot(const std::string& instance) {
  Snapshot s{shm::monotonic_ns(), {}, 0, {}};
  auto reply = admin_call(instance, {{"cmd", "status"}});
  if (!reply.is_ok()) return s;
  for (const auto& m : (*reply)["models"]) s.slice[m["model"]] = m["slice"].get<double>();
  s.shortfall = (*reply)["shortfall"].get<double>();
  s.short_models = (*reply)["short_models"].get<std::vector<std::string>>();
  return s;
}

// Samples the daemon's slices every interval for `duration`.
std::vector<Snapshot> watch(const std::string& instance, std::chrono::milliseconds duration) {
  std::vector<Snapshot> out;
  const uint64_t end = shm::monotonic_ns() + uint64_t(duration.count()) * 1'000'000;
  while (shm::monotonic_ns() < end) {
    out.push_back(take_snapshot(instance));
    std::this_thread::sleep_for(std::chrono::milliseconds(kIntervalMs));
  }
  return out;
}

TEST(PolicyLoopTest, DoubledArrivalsAreAnsweredWithinFiveIntervalsWithoutOscillation) {
  TempDir dir;
  const std::string instance = unique_instance("policy");
  // About 0.1 ms of compute per item on the whole device: 500/s and 1000/s need a small share.
  DaemonProcess daemon(
      dir.write("c.toml", config_text(instance, model_table("alpha", 30, 10, 4e6))),
      dir.path() + "/log");
  ASSERT_NE(wait_serving(instance, "alpha", 10s), 0u) << read_file(dir.path() + "/log");
  OpenLoopDriver load(instance, "alpha", 500);
  watch(instance, 4s);  // settle at the first rate
  const uint64_t step_ns = shm::monotonic_ns();
  load.set_rate(1000);
  std::vector<Snapshot> after = watch(instance, 8s);
  load.stop();
  const std::string log = read_file(dir.path() + "/log");
  if (const char* keep = std::getenv("SLICESERVE_KEEP_LOG")) std::ofstream(keep) << log;

  // p99 per interval after the step: within the SLO from the 5th interval on.
  int first_good = -1;
  const int intervals = int(8000 / kIntervalMs);
  std::vector<double> p99;
  for (int i = 0; i < intervals; ++i) {
    uint64_t from = step_ns + uint64_t(i) * kIntervalMs * 1'000'000;
    p99.push_back(testing::p99_ms(load.samples(from, from + kIntervalMs * 1'000'000)));
  }
  // Recovered: the first of two intervals in a row within the SLO.
  for (int i = 0; i + 1 < intervals; ++i) {
    if (p99[size_t(i)] <= 30 && p99[size_t(i + 1)] <= 30) {
      first_good = i;
      break;
    }
  }
  std::string trace;
  for (double v : p99) trace += std::to_string(int(v)) + " ";
  EXPECT_GE(first_good, 0) << "p99 per interval after the step: " << trace << "\n" << log;
  EXPECT_LE(first_good, 5) << "p99 per interval after the step: " << trace;
  // And it stays recovered: a rare interval over the SLO (this machine is shared with the
  // test suite) is tolerated, a pattern is not.
  int over = 0;
  for (int i = std::max(first_good, 0); i < intervals - 1; ++i) over += p99[size_t(i)] > 30;
  EXPECT_LE(over, (intervals - std::max(first_good, 0)) / 10) << trace;
  // No oscillation: a shrink the policy has to undo is allowed once (it then remembers that
  // slice as a floor), a back-and-forth pattern is not.
  int flips = 0, last_dir = 0;
  std::string slices;
  for (size_t i = 1; i < after.size(); ++i) {
    double d = after[i].slice["alpha"] - after[i - 1].slice["alpha"];
    int dir_now = d > 0 ? 1 : (d < 0 ? -1 : 0);
    if (dir_now != 0 && last_dir != 0 && dir_now != last_dir) ++flips;
    if (dir_now != 0) last_dir = dir_now;
    slices += std::to_string(int(after[i].slice["alpha"])) + " ";
  }
  EXPECT_LE(flips, 2) << "slices: " << slices << "\n" << log;
  EXPECT_EQ(load.failures(), 0u);
  EXPECT_EQ(daemon.stop(), 0);
}

TEST(PolicyLoopTest, TwoModelsOnADeviceTooSmallShareItByTheirSloMargin) {
  TempDir dir;
  const std::string instance = unique_instance("short");
  // Between 4 and 13 ms per item on the whole device here: at 60/s each needs from a quarter
  // to most of the machine; together they usually need more than it has.
  DaemonProcess daemon(
      dir.write("c.toml", config_text(instance, model_table("tight", 60, 50, 2e8) + kInPlace +
                                                    model_table("loose", 600, 50, 2e8) + kInPlace)),
      dir.path() + "/log");
  ASSERT_NE(wait_serving(instance, "tight", 10s), 0u) << read_file(dir.path() + "/log");
  ASSERT_NE(wait_serving(instance, "loose", 10s), 0u);
  // (see the daemon's log for the policy's decisions)
  // The loose model's load comes first and settles; then the tight one's arrives and finds the
  // device taken: it is the one about to violate, so it must win and the loose one yield.
  OpenLoopDriver loose(instance, "loose", 60);
  std::vector<Snapshot> seen = watch(instance, 3s);
  OpenLoopDriver tight(instance, "tight", 60);
  std::vector<Snapshot> contest = watch(instance, 8s);
  seen.insert(seen.end(), contest.begin(), contest.end());
  const uint64_t end = shm::monotonic_ns();
  tight.stop();
  loose.stop();
  const std::string log = read_file(dir.path() + "/log");
  if (const char* keep = std::getenv("SLICESERVE_KEEP_LOG")) std::ofstream(keep) << log;

  for (const Snapshot& s : seen) {
    EXPECT_LE(s.slice.at("tight") + s.slice.at("loose"), 100 + 1e-9) << "the device is 100%";
  }
  const double tight_p99 = testing::p99_ms(tight.samples(end - 3'000'000'000, end));
  const double loose_p99 = testing::p99_ms(loose.samples(end - 3'000'000'000, end));
  const std::string seen_p99 =
      "tight " + std::to_string(tight_p99) + " ms, loose " + std::to_string(loose_p99) + " ms\n";
  // What a model's item costs here varies several-fold with the machine's state, so whether
  // the device is really too small is read from the policy's own report. (The simulator test
  // holds the shortage case fixed.)
  bool short_seen = false;
  for (const Snapshot& s : seen) {
    if (s.shortfall <= 0) continue;
    short_seen = true;
    // The model closest to violating wins: the one with the loose SLO is left short.
    EXPECT_EQ(s.short_models, std::vector<std::string>{"loose"}) << log;
  }
  if (short_seen) {
    EXPECT_GE(seen.back().slice.at("loose"), 5) << "the loser keeps at least min_slice";
    // The winner meets its SLO, or is at least served better than the model left short (on 2
    // cores the cpu backend's quotas are ceilings, not isolation).
    EXPECT_TRUE(tight_p99 <= 60 || tight_p99 / 60 < loose_p99 / 600) << seen_p99 << log;
  } else {
    // The device sufficed after all: then both must meet their SLOs.
    EXPECT_LE(tight_p99, 60) << seen_p99 << log;
    EXPECT_LE(loose_p99, 600) << seen_p99 << log;
  }
  EXPECT_EQ(daemon.stop(), 0);
}

}  // namespace
}  // namespace sliceserve
