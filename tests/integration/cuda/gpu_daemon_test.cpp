// sliceserved with the mps and greenctx backends on a machine without a GPU: a fake
// nvidia-cuda-mps-control on PATH stands in for NVIDIA's. The daemon starts the control at load
// and quits it at shutdown; without the control it refuses to start (fallback = "error") or runs
// time-shared and says so (fallback = "timeshare"); a GPU model's worker fails with a clear
// "no CUDA device" that the status and the log show, and the daemon keeps running.

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "sliceserve/backends/cuda/cuda_driver.h"
#include "sliceserve/controller/admin_socket.h"
#include "sliceserve/shm/layout.h"
#include "sliceserve/shm/segment.h"
#include "support/cli_run.h"
#include "support/daemon_harness.h"
#include "support/fake_mps_control.h"
#include "support/onnx_model_builder.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using controller::admin_call;
using testing::DaemonProcess;
using testing::read_file;
using testing::ScopedEnv;
using testing::TempDir;
using testing::unique_instance;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// y = relu(x) on [N, 4]: the smallest model the config's parser reads.
std::string relu_model() {
  testing::ModelBuilder b;
  b.input("x", {-1, 4});
  b.output("y", {-1, 4});
  b.node("Relu", {"x"}, {"y"}, "relu");
  return b.bytes();
}

class GpuDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    instance_ = unique_instance("gpud");
    fake_ = testing::write_fake_mps_control(dir_.path());
    ASSERT_FALSE(fake_.empty());
    model_ = dir_.write("m.onnx", relu_model());
    log_ = dir_.path() + "/sliceserved.log";
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(controller::instance_runtime_dir(instance_), ec);
  }

  // A config with one onnx model on `backend`, with `tables` before it.
  std::string write_config(const std::string& backend, const std::string& tables) {
    return dir_.write("gpu.toml",
                      "[server]\ninstance = \"" + instance_ + "\"\nbackend = \"" + backend +
                          "\"\nrestart_backoff_min_ms = 100\n"
                          "restart_backoff_max_ms = 400\nshutdown_grace_ms = 2000\n" +
                          tables + "[[model]]\nname = \"m\"\nkind = \"onnx\"\npath = \"" + model_ +
                          "\"\nslice = 40\n");
  }
  // PATH with the fake control first, and what its script needs.
  std::string path_with_fake() const { return dir_.path() + "/bin:/usr/bin:/bin"; }
  std::string path_without_control() const { return dir_.path() + "/nowhere"; }

  // The daemon's status once it answers; nullopt after `timeout`.
  std::optional<nlohmann::json> wait_status(std::chrono::milliseconds timeout = 10s) const {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      auto reply = admin_call(instance_, {{"cmd", "status"}}, 2000);
      if (reply.is_ok() && reply->value("ok", false)) return *reply;
      std::this_thread::sleep_for(20ms);
    }
    return std::nullopt;
  }
  // The status once model 0's worker has died with a message containing `part`.
  std::optional<nlohmann::json> wait_worker_error(const std::string& part) const {
    const auto until = std::chrono::steady_clock::now() + 15s;
    while (std::chrono::steady_clock::now() < until) {
      auto status = wait_status(2s);
      if (status && contains((*status)["models"][0].value("last_error", ""), part)) return status;
      std::this_thread::sleep_for(50ms);
    }
    return std::nullopt;
  }
  std::string calls() const { return read_file(dir_.path() + "/calls.log"); }
  std::string pipe_dir() const { return controller::instance_runtime_dir(instance_) + "/mps/pipe"; }
  static bool have_device() { return backends::load_cuda_driver().is_ok(); }

  TempDir dir_;
  std::string instance_;
  std::string fake_;
  std::string model_;
  std::string log_;
};

TEST_F(GpuDaemonTest, StartsTheMpsControlAtLoadAndQuitsItAtShutdown) {
  const std::string config = write_config("mps", "[backend.mps]\ncontrol = \"start\"\n");
  ScopedEnv path("PATH", path_with_fake());
  DaemonProcess daemon(config, log_);
  auto status = wait_status();
  ASSERT_TRUE(status) << read_file(log_);
  EXPECT_EQ((*status)["mps"]["sharing"], "mps") << status->dump();
  EXPECT_EQ((*status)["mps"]["started"], true);
  EXPECT_EQ((*status)["mps"]["pipe_dir"], pipe_dir());
  EXPECT_EQ((*status)["models"][0]["backend"], "mps");
  EXPECT_TRUE(contains(calls(), "daemon args=-d pipe=" + pipe_dir())) << calls();
  EXPECT_TRUE(std::filesystem::exists(pipe_dir() + "/control"));
  if (!have_device()) {
    // The worker became an MPS client of the (fake) daemon, then found no device.
    auto failed = wait_worker_error("no CUDA device");
    EXPECT_TRUE(failed) << read_file(log_);
  }
  EXPECT_EQ(daemon.stop(), 0) << read_file(log_);
  EXPECT_TRUE(contains(calls(), "command quit pipe=" + pipe_dir())) << calls();
  EXPECT_FALSE(std::filesystem::exists(pipe_dir() + "/control")) << "the daemon was quit";
  EXPECT_TRUE(contains(read_file(log_), "MPS: control daemon quit")) << read_file(log_);
}

TEST_F(GpuDaemonTest, WithoutTheControlAndFallbackErrorItRefusesToStart) {
  const std::string config = write_config("mps", "[backend.mps]\nfallback = \"error\"\n");
  ScopedEnv path("PATH", path_without_control());
  DaemonProcess daemon(config, log_);
  EXPECT_EQ(daemon.wait(15s), 1);
  const std::string log = read_file(log_);
  EXPECT_TRUE(
      contains(log, "nvidia-cuda-mps-control not found on PATH (" + path_without_control() + ")"))
      << log;
  EXPECT_TRUE(contains(log, "starting an MPS control daemon (pipe dir " + pipe_dir() + ")")) << log;
  EXPECT_FALSE(testing::any_segment_of(instance_)) << "nothing is left behind";
}

TEST_F(GpuDaemonTest, WithoutTheControlAndFallbackTimeshareItRunsTimeSharedAndSaysSo) {
  const std::string config = write_config("mps", "[backend.mps]\nfallback = \"timeshare\"\n");
  ScopedEnv path("PATH", path_without_control());
  DaemonProcess daemon(config, log_);
  auto status = wait_status();
  ASSERT_TRUE(status) << read_file(log_);
  EXPECT_EQ((*status)["mps"]["sharing"], "time-shared") << status->dump();
  EXPECT_TRUE(contains((*status)["mps"].value("warning", ""), "MPS unavailable ("))
      << status->dump();
  EXPECT_EQ((*status)["models"][0]["backend"], "mps (time-shared)");
  EXPECT_TRUE(contains(read_file(log_), "running time-shared; slices are not enforced"))
      << read_file(log_);
  // What slicectl status shows: the controller's summary in the segment.
  auto segment = shm::Segment::attach(shm::segment_name(instance_, "m").value());
  ASSERT_TRUE(segment.is_ok()) << segment.status().to_string();
  EXPECT_EQ(shm::load_text(segment->header().summary.backend), "mps (time-shared)");
  EXPECT_EQ(daemon.stop(), 0) << read_file(log_);
}

TEST_F(GpuDaemonTest, AGreenctxWorkerWithoutADeviceFailsClearlyAndTheDaemonStaysUp) {
  if (have_device()) GTEST_SKIP() << "a CUDA device is present";
  const std::string config = write_config("greenctx", "");
  DaemonProcess daemon(config, log_);
  auto status = wait_worker_error("no CUDA device");
  ASSERT_TRUE(status) << read_file(log_);
  EXPECT_EQ((*status)["models"][0]["backend"], "greenctx");
  EXPECT_EQ((*status)["mps"]["sharing"], "none") << "greenctx without mps = true";
  EXPECT_TRUE(contains(read_file(log_), "no CUDA device")) << read_file(log_);
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/calls.log")) << "no MPS control was run";
  // slicectl status shows the failed worker's message (between two restarts).
  std::string shown;
  for (int i = 0; i < 100 && !contains(shown, "worker failed: "); ++i) {
    shown = testing::slicectl("status --instance " + instance_).out;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(contains(shown, "worker failed: ")) << shown;
  EXPECT_TRUE(contains(shown, "no CUDA device")) << shown;
  EXPECT_TRUE(contains(shown, "greenctx")) << shown;
  // The model's weight broker serves its workers from the first spawn, and goes at shutdown.
  const std::string broker = controller::instance_runtime_dir(instance_) + "/m.weights.sock";
  EXPECT_TRUE(std::filesystem::is_socket(broker)) << broker;
  EXPECT_EQ(daemon.stop(), 0) << read_file(log_);
  EXPECT_FALSE(std::filesystem::exists(broker)) << broker;
}

TEST_F(GpuDaemonTest, GreenctxRefusesAnInheritedMpsPercentageBelow100) {
  const std::string config = write_config("greenctx", "");
  ScopedEnv percentage("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "40");
  DaemonProcess daemon(config, log_);
  EXPECT_EQ(daemon.wait(15s), 1);
  EXPECT_TRUE(contains(read_file(log_),
                       "greenctx must not be combined with an MPS thread percentage below 100"))
      << read_file(log_);
}

}  // namespace
}  // namespace sliceserve
