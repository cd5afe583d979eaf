// The whole path as users run it: sliceserved, its workers, and several client processes using
// libsliceserve_client, with a worker killed mid-traffic.

#include <gtest/gtest.h>

#include "sliceserve/client/client.h"
#include "sliceserve/shm/segment_control.h"
#include "support/daemon_harness.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using testing::DaemonProcess;
using testing::fork_child;
using testing::read_file;
using testing::TempDir;
using testing::unique_instance;
using testing::wait_child;
using testing::wait_serving;

std::string config_text(const std::string& instance) {
  return "[server]\ninstance = \"" + instance + "\"\npolicy_interval_ms = 100\n" +
         "restart_backoff_min_ms = 50\n" + R"(
[[model]]
name = "alpha"
slice = 40
max_batch = 4
flops_per_item = 2e5
inputs = [ { name = "x", dtype = "FP32", shape = [16] } ]
outputs = [ { name = "y", dtype = "FP32", shape = [16] } ]

[[model]]
name = "beta"
kind = "null"
slice = 20
max_batch = 8
inputs = [ { name = "x", dtype = "INT32", shape = [4] } ]
outputs = [ { name = "y", dtype = "INT32", shape = [4] } ]
)";
}

// A client process: `requests` requests (sync, then async in flight), each checked against the
// model's documented function. Returns 0 when every answer was right.
int run_client(const std::string& instance, const std::string& model, int seed, int requests) {
  auto client = client::Client::connect(model, {.instance = instance});
  if (!client.is_ok()) return 10;
  const bool synthetic = model == "alpha";
  auto make_input = [&](int i, std::vector<std::byte>& bytes) {
    if (synthetic) {
      std::vector<float> x(16);
      for (int k = 0; k < 16; ++k) x[size_t(k)] = float(seed * 1000 + i + k);
      bytes.assign(reinterpret_cast<std::byte*>(x.data()),
                   reinterpret_cast<std::byte*>(x.data()) + 64);
      return client::Tensor{"x", shm::DataType::kFp32, {16}, bytes};
    }
    std::vector<int32_t> x = {seed, i, -i, 7};
    bytes.assign(reinterpret_cast<std::byte*>(x.data()),
                 reinterpret_cast<std::byte*>(x.data()) + 16);
    return client::Tensor{"x", shm::DataType::kInt32, {4}, bytes};
  };
  auto check = [&](int i, const client::InferResult& r) {
    if (synthetic) {
      auto y = r.outputs.at(0).as<float>();
      for (int k = 0; k < 16; ++k) {
        if (y[size_t(k)] != 2 * float(seed * 1000 + i + k) + 1) return false;
      }
      return true;
    }
    auto y = r.outputs.at(0).as<int32_t>();  // the null model echoes its input
    return y[0] == seed && y[1] == i && y[2] == -i && y[3] == 7;
  };
  std::vector<std::byte> bytes;
  for (int i = 0; i < requests / 2; ++i) {
    client::Tensor input = make_input(i, bytes);
    auto r = client->infer(std::span(&input, 1), 10s);
    if (!r.is_ok()) {
      std::fprintf(stderr, "sync request %d: %s\n", i, r.status().to_string().c_str());
      return 11;
    }
    if (!check(i, *r)) return 12;
  }
  std::vector<std::future<Result<client::InferResult>>> futures;
  std::vector<std::vector<std::byte>> keep(static_cast<size_t>(requests));
  for (int i = requests / 2; i < requests; ++i) {
    futures.push_back(client->infer_async({make_input(i, keep[size_t(i)])}, 10s));
  }
  for (int i = requests / 2; i < requests; ++i) {
    auto r = futures[size_t(i - requests / 2)].get();
    if (!r.is_ok()) {
      std::fprintf(stderr, "async request %d: %s\n", i, r.status().to_string().c_str());
      return 13;
    }
    if (!check(i, *r)) return 14;
  }
  return 0;
}

TEST(EndToEndTest, ClientProcessesAreServedAcrossAWorkerKillAndTheDaemonStopsClean) {
  TempDir dir;
  std::string instance = unique_instance("e2e");
  std::string log = dir.path() + "/log";
  DaemonProcess daemon(dir.write("e2e.toml", config_text(instance)), log);
  uint64_t epoch = wait_serving(instance, "alpha", 10s);
  ASSERT_NE(epoch, 0u) << read_file(log);
  ASSERT_NE(wait_serving(instance, "beta", 10s), 0u) << read_file(log);

  std::vector<pid_t> clients;
  for (int c = 0; c < 4; ++c) {
    std::string model = c % 2 ? "beta" : "alpha";
    clients.push_back(fork_child([=] { return run_client(instance, model, c, 2000); }));
  }
  // Kill alpha's worker while the clients run: they must see added latency, not errors.
  std::this_thread::sleep_for(100ms);
  pid_t worker = -1;
  {
    auto seg = shm::Segment::attach(shm::segment_name(instance, "alpha").value());
    ASSERT_TRUE(seg.is_ok());
    worker = seg->stats_block(epoch).pid.load();
    ASSERT_EQ(kill(worker, SIGKILL), 0);
    for (pid_t c : clients) EXPECT_EQ(wait_child(c, 60s), 0) << read_file(log);
    EXPECT_GT(seg->header().owner_epoch.load(), epoch) << "alpha's worker was replaced";
    // Every slot is back once the clients are gone.
    EXPECT_EQ(shm::slot_census(*seg).free, seg->slot_count());
  }

  EXPECT_EQ(daemon.stop(), 0) << read_file(log);
  EXPECT_FALSE(testing::any_segment_of(instance));
  EXPECT_NE(kill(worker, 0), 0);
}

}  // namespace
}  // namespace sliceserve
