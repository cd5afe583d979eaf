// sliceserved as users run it: a real daemon process, real workers, real segments.

#include <gtest/gtest.h>

#include "sliceserve/shm/process_identity.h"
#include "support/daemon_harness.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using testing::DaemonProcess;
using testing::read_file;
using testing::TempDir;
using testing::unique_instance;
using testing::wait_serving;

std::string config_text(const std::string& instance, const std::string& extra_server = "") {
  return "[server]\ninstance = \"" + instance + "\"\npolicy_interval_ms = 100\n" +
         "restart_backoff_min_ms = 50\nshutdown_grace_ms = 2000\n" + extra_server + R"(
[[model]]
name = "alpha"
slice = 40
max_batch = 4
flops_per_item = 1e5
inputs = [ { name = "x", dtype = "FP32", shape = [16] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [16] } ]

[[model]]
name = "beta"
kind = "null"
slice = 20
inputs = [ { name = "x", dtype = "FP32", shape = [4] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [4] } ]
)";
}

pid_t worker_pid(const std::string& instance, const std::string& model) {
  auto seg = shm::Segment::attach(shm::segment_name(instance, model).value());
  if (!seg.is_ok()) return -1;
  return seg->stats_block(seg->header().owner_epoch.load()).pid.load();
}

class DaemonTest : public ::testing::Test {
 protected:
  TempDir dir_;
  std::string instance_ = unique_instance("daemon");
};

TEST_F(DaemonTest, StartsEveryModelAndStopsLeavingNothingBehind) {
  std::string config = dir_.write("ok.toml", config_text(instance_));
  DaemonProcess daemon(config, dir_.path() + "/log");
  ASSERT_NE(wait_serving(instance_, "alpha", 10s), 0u) << read_file(dir_.path() + "/log");
  ASSERT_NE(wait_serving(instance_, "beta", 10s), 0u);
  pid_t alpha = worker_pid(instance_, "alpha");
  pid_t beta = worker_pid(instance_, "beta");
  ASSERT_GT(alpha, 0);
  ASSERT_GT(beta, 0);

  EXPECT_EQ(daemon.stop(), 0) << read_file(dir_.path() + "/log");
  EXPECT_FALSE(testing::any_segment_of(instance_)) << "segments left behind";
  EXPECT_NE(kill(alpha, 0), 0) << "worker left behind";
  EXPECT_NE(kill(beta, 0), 0) << "worker left behind";
  EXPECT_NE(read_file(dir_.path() + "/log").find("no worker or segment left"), std::string::npos);
}

TEST_F(DaemonTest, KilledWorkerIsRestartedWithANewEpoch) {
  std::string config = dir_.write("ok.toml", config_text(instance_));
  DaemonProcess daemon(config, dir_.path() + "/log");
  uint64_t first = wait_serving(instance_, "alpha", 10s);
  ASSERT_NE(first, 0u);
  kill(worker_pid(instance_, "alpha"), SIGKILL);
  uint64_t second = wait_serving(instance_, "alpha", 10s, first);
  EXPECT_GT(second, first);
  std::string log = read_file(dir_.path() + "/log");
  EXPECT_NE(log.find("died (killed by SIGKILL)"), std::string::npos) << log;
  auto seg = shm::Segment::attach(shm::segment_name(instance_, "alpha").value());
  ASSERT_TRUE(seg.is_ok());
  EXPECT_EQ(seg->header().summary.restarts.load(), 1u);
  EXPECT_EQ(daemon.stop(), 0);
}

TEST_F(DaemonTest, WorkerThatKeepsFailingIsRestartedWithBackoff) {
  std::string config = dir_.write("failing.toml", config_text(instance_,
                                                              "worker_binary = \"/bin/false\"\n"
                                                              "restart_backoff_max_ms = 400\n"));
  DaemonProcess daemon(config, dir_.path() + "/log");
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(daemon.stop(), 0);
  std::string log = read_file(dir_.path() + "/log");
  // 50, 100, 200, 400, 400, ... ms: a handful of restarts in 1.5 s, not hundreds.
  size_t restarts = 0;
  for (size_t p = 0; (p = log.find("model alpha: worker epoch", p)) != std::string::npos; ++p) {
    if (log.find("died", p) < log.find('\n', p)) ++restarts;
  }
  EXPECT_GE(restarts, 3u) << log;
  EXPECT_LE(restarts, 8u) << log;
  EXPECT_NE(log.find("restart 2 in 100 ms"), std::string::npos) << log;
}

TEST_F(DaemonTest, SecondDaemonForTheSameInstanceIsRefused) {
  std::string config = dir_.write("ok.toml", config_text(instance_));
  DaemonProcess first(config, dir_.path() + "/log1");
  ASSERT_NE(wait_serving(instance_, "alpha", 10s), 0u);
  DaemonProcess second(config, dir_.path() + "/log2");
  EXPECT_EQ(second.wait(10s), 1);
  EXPECT_NE(read_file(dir_.path() + "/log2").find("a sliceserved already answers on"),
            std::string::npos)
      << read_file(dir_.path() + "/log2");
  EXPECT_NE(wait_serving(instance_, "alpha", 1s), 0u) << "the first daemon must be untouched";
  EXPECT_EQ(first.stop(), 0);
}

TEST_F(DaemonTest, StaleSegmentsOfAKilledDaemonAreReplaced) {
  std::string config = dir_.write("ok.toml", config_text(instance_));
  {
    DaemonProcess crashed(config, dir_.path() + "/log1");
    ASSERT_NE(wait_serving(instance_, "alpha", 10s), 0u);
    kill(crashed.pid(), SIGKILL);
    crashed.wait(5s);
  }
  ASSERT_TRUE(testing::any_segment_of(instance_)) << "a SIGKILLed daemon leaves its segments";
  DaemonProcess next(config, dir_.path() + "/log2");
  EXPECT_NE(wait_serving(instance_, "alpha", 10s), 0u) << read_file(dir_.path() + "/log2");
  EXPECT_EQ(next.stop(), 0);
  EXPECT_FALSE(testing::any_segment_of(instance_));
}

TEST_F(DaemonTest, ConfigErrorsNameFileLineAndKeyAndExitNonZero) {
  std::string text = config_text(instance_);
  text.replace(text.find("slice = 40"), 10, "slice = 140");
  std::string config = dir_.write("bad.toml", text);
  DaemonProcess daemon(config, dir_.path() + "/log");
  EXPECT_EQ(daemon.wait(10s), 2);
  std::string log = read_file(dir_.path() + "/log");
  EXPECT_NE(log.find("bad.toml:9: key 'model[0].slice'"), std::string::npos) << log;
  EXPECT_FALSE(testing::any_segment_of(instance_));
}

TEST_F(DaemonTest, MissingConfigFileIsReported) {
  DaemonProcess daemon(dir_.path() + "/nope.toml", dir_.path() + "/log");
  EXPECT_EQ(daemon.wait(10s), 2);
  EXPECT_NE(read_file(dir_.path() + "/log").find("nope.toml: cannot open"), std::string::npos)
      << read_file(dir_.path() + "/log");
}

}  // namespace
}  // namespace sliceserve
