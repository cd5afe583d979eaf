// sliceserved with the cumask backend on a machine without an AMD GPU: the model's worker fails
// at load with a clear "no HIP device" (ROCm's runtime installed, no device) that the status, the
// log and slicectl show, and the daemon keeps running and restarts it.

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "sliceserve/backends/hip/hip_runtime.h"
#include "sliceserve/controller/admin_socket.h"
#include "support/cli_run.h"
#include "support/daemon_harness.h"
#include "support/onnx_model_builder.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using controller::admin_call;
using testing::DaemonProcess;
using testing::read_file;
using testing::TempDir;
using testing::unique_instance;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class CumaskDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (backends::load_hip_runtime().is_ok()) GTEST_SKIP() << "a HIP device is present";
    instance_ = unique_instance("cumask");
    testing::ModelBuilder b;
    b.input("x", {-1, 4});
    b.output("y", {-1, 4});
    b.node("Relu", {"x"}, {"y"}, "relu");
    model_ = dir_.write("m.onnx", b.bytes());
    log_ = dir_.path() + "/sliceserved.log";
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(controller::instance_runtime_dir(instance_), ec);
  }

  // No TCP front-end: parallel tests (and other daemons on the machine) would race for its port.
  std::string write_config() {
    return dir_.write("amd.toml",
                      "[server]\ninstance = \"" + instance_ +
                          "\"\nbackend = \"cumask\"\ntcp = \"\"\nrestart_backoff_min_ms = 100\n"
                          "restart_backoff_max_ms = 400\nshutdown_grace_ms = 2000\n"
                          "[backend.cumask]\npolicy = \"pack\"\nshader_engines = 4\n"
                          "[[model]]\nname = \"m\"\nkind = \"onnx\"\npath = \"" +
                          model_ + "\"\nslice = 40\n");
  }
  // The status once model 0's worker has died with a message containing `part`.
  std::optional<nlohmann::json> wait_worker_error(const std::string& part) const {
    const auto until = std::chrono::steady_clock::now() + 15s;
    while (std::chrono::steady_clock::now() < until) {
      auto reply = admin_call(instance_, {{"cmd", "status"}}, 2000);
      if (reply.is_ok() && reply->value("ok", false) &&
          contains((*reply)["models"][0].value("last_error", ""), part)) {
        return *reply;
      }
      std::this_thread::sleep_for(50ms);
    }
    return std::nullopt;
  }

  TempDir dir_;
  std::string instance_;
  std::string model_;
  std::string log_;
};

TEST_F(CumaskDaemonTest, AWorkerWithoutADeviceFailsClearlyAndTheDaemonStaysUp) {
  DaemonProcess daemon(write_config(), log_);
  auto status = wait_worker_error("no HIP device");
  ASSERT_TRUE(status) << read_file(log_);
  EXPECT_EQ((*status)["models"][0]["backend"], "cumask");
  EXPECT_TRUE(contains((*status)["models"][0].value("last_error", ""), "slice: "))
      << "at the slice";
  EXPECT_TRUE(contains(read_file(log_), "no HIP device")) << read_file(log_);
  // slicectl status shows the failed worker's message (between two restarts).
  std::string shown;
  for (int i = 0; i < 100 && !contains(shown, "worker failed: "); ++i) {
    shown = testing::slicectl("status --instance " + instance_).out;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(contains(shown, "worker failed: ")) << shown;
  EXPECT_TRUE(contains(shown, "no HIP device")) << shown;
  EXPECT_TRUE(contains(shown, "cumask")) << shown;
  // cumask has no CUDA weights to share: no fd broker.
  EXPECT_FALSE(
      std::filesystem::exists(controller::instance_runtime_dir(instance_) + "/m.weights.sock"));
  // Still up, still restarting the worker.
  auto again = admin_call(instance_, {{"cmd", "status"}}, 2000);
  ASSERT_TRUE(again.is_ok());
  EXPECT_TRUE(again->value("ok", false));
  EXPECT_EQ(daemon.stop(), 0) << read_file(log_);
}

}  // namespace
}  // namespace sliceserve
