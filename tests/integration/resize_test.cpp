// Hot reconfiguration end to end: a real sliceserved, its workers and checked client load.
// Every test counts what the clients got against what the workers completed over all epochs:
// none lost (no client error), none duplicated (the counts agree).

#include <gtest/gtest.h>

#include "sliceserve/controller/admin_socket.h"
#include "support/daemon_harness.h"
#include "support/load_driver.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using controller::admin_call;
using testing::DaemonProcess;
using testing::LoadDriver;
using testing::read_file;
using testing::TempDir;
using testing::unique_instance;
using testing::wait_serving;

std::string config_text(const std::string& instance, const std::string& model_extra,
                        const std::string& policy = "enabled = false\n") {
  return "[server]\ninstance = \"" + instance + "\"\npolicy_interval_ms = 100\n" +
         "restart_backoff_min_ms = 50\n[policy]\n" + policy + R"(
[[model]]
name = "alpha"
slice = 30
max_batch = 4
flops_per_item = 1e5
weights_mb = 8
inputs = [ { name = "x", dtype = "FP32", shape = [16] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [16] } ]
)" + model_extra;
}

nlohmann::json model_status(const std::string& instance) {
  auto reply = admin_call(instance, {{"cmd", "status"}});
  EXPECT_TRUE(reply.is_ok()) << reply.status().to_string();
  return reply.is_ok() ? (*reply)["models"][0] : nlohmann::json::object();
}

// Resizes and waits for the swap; returns the status afterwards.
nlohmann::json resize_and_wait(const std::string& instance, double slice) {
  auto reply = admin_call(instance, {{"cmd", "resize"}, {"model", "alpha"}, {"slice", slice}});
  EXPECT_TRUE(reply.is_ok() && (*reply)["ok"].get<bool>()) << (reply.is_ok() ? reply->dump() : "");
  for (int i = 0; i < 2000; ++i) {
    nlohmann::json m = model_status(instance);
    if (!m["resizing"].get<bool>()) return m;
    std::this_thread::sleep_for(2ms);
  }
  ADD_FAILURE() << "resize to " << slice << " did not finish";
  return model_status(instance);
}

// After the load stopped: the workers' completions over every epoch equal the clients' answers.
void expect_exactly_once(const std::string& instance, const LoadDriver& load) {
  EXPECT_EQ(load.errors(), 0u) << "first error: " << load.first_error();
  EXPECT_EQ(load.wrong(), 0u);
  EXPECT_GT(load.ok(), 0u);
  uint64_t completed = 0;
  for (int i = 0; i < 500; ++i) {  // a retired worker may still be counted in
    nlohmann::json m = model_status(instance);
    completed = m["completed_total"].get<uint64_t>();
    if (!m["resizing"].get<bool>() && completed == load.ok()) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(completed, load.ok()) << "workers completed " << completed << ", clients got "
                                  << load.ok();
}

class ResizeTest : public ::testing::Test {
 protected:
  TempDir dir_;
  std::string instance_ = unique_instance("resize");
  std::string log() const { return read_file(dir_.path() + "/log"); }
};

TEST_F(ResizeTest, ShadowResizesUnderLoadLoseNothingAndServeNothingTwice) {
  DaemonProcess daemon(dir_.write("c.toml", config_text(instance_, "")), dir_.path() + "/log");
  ASSERT_NE(wait_serving(instance_, "alpha", 10s), 0u) << log();
  uint64_t first_epoch = model_status(instance_)["epoch"].get<uint64_t>();
  LoadDriver load(instance_, "alpha", 3);
  constexpr int kResizes = 200;
  for (int i = 0; i < kResizes; ++i) {
    nlohmann::json m = resize_and_wait(instance_, i % 2 ? 30 : 40);
    ASSERT_EQ(m["failed_resizes"].get<int>(), 0) << m["last_resize"] << log();
  }
  load.stop();
  nlohmann::json m = model_status(instance_);
  EXPECT_EQ(m["resizes"].get<int>(), kResizes);
  EXPECT_EQ(m["epoch"].get<uint64_t>(), first_epoch + kResizes) << "one shadow per resize";
  EXPECT_EQ(m["restarts"].get<int>(), 0) << "a worker that handed over did not die";
  EXPECT_EQ(m["slice"].get<double>(), 30);
  expect_exactly_once(instance_, load);
  EXPECT_EQ(daemon.stop(), 0);
}

TEST_F(ResizeTest, InstantResizesUnderLoadLoseNothingAndKeepTheWorker) {
  DaemonProcess daemon(dir_.write("c.toml", config_text(instance_, "backend = \"cpu:affinity\"\n")),
                       dir_.path() + "/log");
  ASSERT_NE(wait_serving(instance_, "alpha", 10s), 0u) << log();
  nlohmann::json before = model_status(instance_);
  LoadDriver load(instance_, "alpha", 3);
  constexpr int kResizes = 1000;
  const double sizes[] = {10, 50, 100, 25};
  for (int i = 0; i < kResizes; ++i) {
    nlohmann::json m = resize_and_wait(instance_, sizes[i % 4]);
    ASSERT_EQ(m["failed_resizes"].get<int>(), 0) << m["last_resize"] << log();
  }
  load.stop();
  nlohmann::json m = model_status(instance_);
  EXPECT_EQ(m["resizes"].get<int>(), kResizes);
  EXPECT_EQ(m["epoch"], before["epoch"]) << "an instant resize keeps the worker";
  EXPECT_EQ(m["pid"], before["pid"]);
  EXPECT_EQ(m["slice"].get<double>(), 25);
  expect_exactly_once(instance_, load);
  EXPECT_EQ(daemon.stop(), 0);
}

// Every worker of this model takes 1.5 s to load (the initial one may take up to 10 s).
std::string slow_loading(const std::string& instance, const std::string& policy) {
  std::string text = config_text(instance, "load_delay_ms = 1500\n", policy);
  text.replace(text.find("restart_backoff_min_ms"), 0, "worker_ready_timeout_ms = 10000\n");
  return text;
}

TEST_F(ResizeTest, ShadowNotReadyInTimeFailsAndTheLiveWorkerKeepsServing) {
  DaemonProcess daemon(
      dir_.write("c.toml", slow_loading(instance_, "enabled = false\nresize_timeout_ms = 300\n")),
      dir_.path() + "/log");
  ASSERT_NE(wait_serving(instance_, "alpha", 15s), 0u) << log();
  nlohmann::json before = model_status(instance_);
  LoadDriver load(instance_, "alpha", 2);
  nlohmann::json m = resize_and_wait(instance_, 50);
  EXPECT_EQ(m["failed_resizes"].get<int>(), 1);
  EXPECT_NE(m["last_resize"].get<std::string>().find("not ready after 300 ms"), std::string::npos)
      << m["last_resize"];
  EXPECT_EQ(m["epoch"], before["epoch"]);
  EXPECT_EQ(m["slice"].get<double>(), 30);
  std::this_thread::sleep_for(200ms);  // the live worker still serves
  load.stop();
  expect_exactly_once(instance_, load);
  EXPECT_EQ(daemon.stop(), 0);
}

TEST_F(ResizeTest, ShadowThatCrashesFailsTheResizeWithItsReason) {
  DaemonProcess daemon(dir_.write("c.toml", slow_loading(instance_, "enabled = false\n")),
                       dir_.path() + "/log");
  ASSERT_NE(wait_serving(instance_, "alpha", 15s), 0u) << log();
  nlohmann::json before = model_status(instance_);
  LoadDriver load(instance_, "alpha", 2);
  auto reply = admin_call(instance_, {{"cmd", "resize"}, {"model", "alpha"}, {"slice", 60}});
  ASSERT_TRUE(reply.is_ok() && (*reply)["ok"].get<bool>());
  pid_t shadow = model_status(instance_)["shadow_pid"].get<pid_t>();
  ASSERT_GT(shadow, 0);
  ASSERT_EQ(kill(shadow, SIGKILL), 0);
  nlohmann::json m;
  for (int i = 0; i < 500; ++i) {
    m = model_status(instance_);
    if (!m["resizing"].get<bool>()) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(m["failed_resizes"].get<int>(), 1);
  EXPECT_NE(m["last_resize"].get<std::string>().find("killed by SIGKILL"), std::string::npos)
      << m["last_resize"];
  EXPECT_EQ(m["epoch"], before["epoch"]);
  EXPECT_EQ(m["pid"], before["pid"]);
  load.stop();
  expect_exactly_once(instance_, load);
  EXPECT_EQ(daemon.stop(), 0);
}

TEST_F(ResizeTest, BackendSwitchIsAShadowHandoverAndUnavailableBackendsAreRefused) {
  DaemonProcess daemon(dir_.write("c.toml", config_text(instance_, "")), dir_.path() + "/log");
  ASSERT_NE(wait_serving(instance_, "alpha", 10s), 0u) << log();
  LoadDriver load(instance_, "alpha", 2);
  nlohmann::json before = model_status(instance_);
  EXPECT_EQ(before["backend"], "cpu:process");

  // A synthetic model has no GPU backend: refused as unavailable, or (with the cuda or hip wing)
  // as a kind that runs on the cpu backend only.
  for (const char* gpu : {"mps", "cumask"}) {
    auto refused =
        admin_call(instance_, {{"cmd", "backend"}, {"model", "alpha"}, {"backend", gpu}});
    ASSERT_TRUE(refused.is_ok());
    EXPECT_FALSE((*refused)["ok"].get<bool>()) << gpu;
    const std::string error = (*refused)["error"].get<std::string>();
    EXPECT_TRUE(error.find("not available") != std::string::npos ||
                error.find("runs on the cpu backend only") != std::string::npos)
        << gpu << ": " << error;
  }
  EXPECT_EQ(model_status(instance_)["epoch"], before["epoch"]) << "nothing may change";

  auto reply =
      admin_call(instance_, {{"cmd", "backend"}, {"model", "alpha"}, {"backend", "cpu:affinity"}});
  ASSERT_TRUE(reply.is_ok() && (*reply)["ok"].get<bool>()) << reply->dump();
  nlohmann::json m;
  for (int i = 0; i < 500; ++i) {
    m = model_status(instance_);
    if (!m["resizing"].get<bool>()) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(m["backend"], "cpu:affinity");
  EXPECT_EQ(m["epoch"].get<uint64_t>(), before["epoch"].get<uint64_t>() + 1);
  // Now it resizes in place: same worker afterwards.
  m = resize_and_wait(instance_, 60);
  EXPECT_EQ(m["epoch"].get<uint64_t>(), before["epoch"].get<uint64_t>() + 1);
  EXPECT_EQ(m["slice"].get<double>(), 60);
  load.stop();
  expect_exactly_once(instance_, load);
  EXPECT_EQ(daemon.stop(), 0);
}

TEST_F(ResizeTest, AdminRequestsAreValidated) {
  DaemonProcess daemon(dir_.write("c.toml", config_text(instance_, "")), dir_.path() + "/log");
  ASSERT_NE(wait_serving(instance_, "alpha", 10s), 0u) << log();
  for (const nlohmann::json& bad :
       {nlohmann::json{{"cmd", "resize"}, {"model", "nope"}, {"slice", 10}},
        nlohmann::json{{"cmd", "resize"}, {"model", "alpha"}, {"slice", 0}},
        nlohmann::json{{"cmd", "resize"}, {"model", "alpha"}, {"slice", "ten"}},
        nlohmann::json{{"cmd", "resize"}, {"model", "alpha"}, {"slice", 130}},
        nlohmann::json{{"cmd", "policy"}, {"model", "alpha"}, {"on", "yes"}},
        nlohmann::json{{"cmd", "explode"}, {"model", "alpha"}},
        nlohmann::json{{"cmd", "backend"}, {"model", "alpha"}, {"backend", "tpu"}}}) {
    auto reply = admin_call(instance_, bad);
    ASSERT_TRUE(reply.is_ok());
    EXPECT_FALSE((*reply)["ok"].get<bool>()) << bad.dump();
    EXPECT_FALSE((*reply)["error"].get<std::string>().empty());
  }
  nlohmann::json m = model_status(instance_);
  EXPECT_EQ(m["resizes"].get<int>(), 0);
  EXPECT_EQ(m["slice"].get<double>(), 30);
  EXPECT_EQ(daemon.stop(), 0);
}

}  // namespace
}  // namespace sliceserve
