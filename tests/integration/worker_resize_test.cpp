// The real sliceserve-worker binary, driven the way the controller drives it: instant resizes
// through the mailbox (cpu mode=affinity with a prepared slice pool) and a shadow resize (a
// second worker maps the first one's weights, loads slowly, reports READY, takes the ring over),
// all while client threads keep requests in flight. Every request must complete exactly once.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sliceserve/backends/weight_store.h"
#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment_control.h"
#include "support/request_flow.h"
#include "support/shm_test_util.h"

namespace sliceserve {
namespace {

using namespace std::chrono_literals;
using testing::FlowClient;
using testing::test_segment_options;
using testing::wait_child;

constexpr uint32_t kWeightsMb = 16;

// Starts the worker binary (from the test's main thread: the worker dies with the thread that
// forked it, PR_SET_PDEATHSIG).
pid_t spawn_worker(const std::string& segment, uint64_t epoch, std::vector<std::string> extra) {
  std::vector<std::string> args = {std::string(SLICESERVE_BIN_DIR) + "/sliceserve-worker",
                                   "--segment",
                                   segment,
                                   "--epoch",
                                   std::to_string(epoch),
                                   "--model-kind",
                                   "synthetic",
                                   "--flops-per-item",
                                   "2e4",
                                   "--weights-mb",
                                   std::to_string(kWeightsMb),
                                   "--cores",
                                   "2",
                                   "--max-batch",
                                   "4",
                                   "--max-queue-delay-us",
                                   "200",
                                   "--log-level",
                                   "warn"};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Rss and private (Private_Clean + Private_Dirty) kB of process `pid`'s mapping of `path`.
std::pair<long, long> mapping_memory_kb(pid_t pid, const std::string& path) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
  std::string line;
  bool inside = false;
  long rss = 0, private_kb = 0;
  while (std::getline(in, line)) {
    // A mapping's first line: "start-end perms offset dev inode [path]"; then "Field: n kB".
    const std::string first = line.substr(0, line.find(' '));
    if (first.find('-') != std::string::npos &&
        first.find_first_not_of("0123456789abcdef-") == std::string::npos) {
      inside = line.size() >= path.size() &&
               line.compare(line.size() - path.size(), path.size(), path) == 0;
      continue;
    }
    if (!inside) continue;
    auto field = [&](const char* name) {
      return line.rfind(name, 0) == 0 ? std::atol(line.c_str() + std::strlen(name)) : 0L;
    };
    rss += field("Rss:");
    private_kb += field("Private_Clean:") + field("Private_Dirty:");
  }
  return {rss, private_kb};
}

class WorkerResizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto options = test_segment_options("resize", 4, 8);
    auto created = shm::Segment::create(options);
    ASSERT_TRUE(created.is_ok()) << created.status().to_string();
    segment_ = std::make_unique<shm::Segment>(std::move(created).value());
  }
  void TearDown() override {
    for (pid_t pid : pids_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (segment_) backends::remove_host_weights(segment_->name());
  }

  shm::WorkerStats& stats(uint64_t epoch) { return segment_->stats_block(epoch); }
  bool in_state(uint64_t epoch, shm::WorkerState state) {
    return stats(epoch).epoch.load() == epoch && stats(epoch).state.load() == uint32_t(state);
  }
  // Waits for a worker to exit; its exit status, or -1 on timeout.
  int reap(pid_t pid, std::chrono::milliseconds timeout) {
    const int rc = wait_child(pid, timeout);
    std::erase(pids_, pid);
    return rc;
  }

  std::unique_ptr<shm::Segment> segment_;
  std::vector<pid_t> pids_;
};

TEST_F(WorkerResizeTest, InstantThenShadowResizeUnderTrafficLoseNothing) {
  const std::string name = segment_->name();
  pid_t live = spawn_worker(
      name, 1, {"--cpu-mode", "affinity", "--slice", "30", "--slice-pool", "30,60,100"});
  ASSERT_GT(live, 0);
  pids_.push_back(live);
  ASSERT_TRUE(wait_until([&] { return in_state(1, shm::WorkerState::kReady); }, 20s));
  EXPECT_EQ(stats(1).weight_bytes.load(), uint64_t{kWeightsMb} << 20);
  EXPECT_EQ(stats(1).weight_private_bytes.load(), uint64_t{kWeightsMb} << 20);  // it filled them
  shm::set_owner_epoch(*segment_, 1);

  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<FlowClient>> clients;
  std::vector<std::thread> threads;
  std::mutex mu;
  std::string errors;
  for (uint32_t c = 0; c < 3; ++c) clients.push_back(std::make_unique<FlowClient>(*segment_, c));
  for (auto& client : clients) {
    threads.emplace_back([&, c = client.get()] {
      std::string error = c->run(stop, 6);
      std::lock_guard lock(mu);
      if (!error.empty()) errors += error + "\n";
    });
  }
  auto served = [&](uint64_t epoch) { return stats(epoch).completed.load(); };
  ASSERT_TRUE(wait_until([&] { return served(1) > 200; }, 10s));

  // Instant resizes: the live worker switches between prepared shares between two batches.
  for (int i = 0; i < 200; ++i) {
    const int64_t percent = i % 2 == 0 ? 100 : 30;
    auto reply = shm::send_command(*segment_, 1, shm::Command::kSetSlice, percent, 5'000'000'000);
    ASSERT_TRUE(reply.is_ok()) << i << ": " << reply.status().to_string();
    ASSERT_EQ(stats(1).slice_percent.load(), uint32_t(percent));
  }

  // Shadow resize: a slow-loading shadow at 60% maps the live worker's weights.
  const uint64_t spawned = shm::monotonic_ns();
  pid_t shadow =
      spawn_worker(name, 2, {"--cpu-mode", "process", "--slice", "60", "--load-delay-ms", "300"});
  ASSERT_GT(shadow, 0);
  pids_.push_back(shadow);
  ASSERT_TRUE(wait_until([&] { return in_state(2, shm::WorkerState::kReady); }, 20s));
  EXPECT_GE(shm::monotonic_ns() - spawned, 300'000'000u);  // the load delay
  EXPECT_EQ(stats(2).weight_bytes.load(), uint64_t{kWeightsMb} << 20);
  EXPECT_EQ(stats(2).weight_private_bytes.load(), 0u);  // mapped, not copied
  const std::string region = "/dev/shm" + name + ".w.synthetic";
  const auto [shadow_rss, shadow_private] = mapping_memory_kb(shadow, region);
  std::printf("shadow's mapping of the %u MiB weights: Rss %ld kB, private %ld kB\n", kWeightsMb,
              shadow_rss, shadow_private);
  RecordProperty("shadow_weights_rss_kb", std::to_string(shadow_rss));
  RecordProperty("shadow_weights_private_kb", std::to_string(shadow_private));
  EXPECT_GE(shadow_rss, long{kWeightsMb} * 1024 * 9 / 10);  // mapped and populated
  EXPECT_LT(shadow_private, long{kWeightsMb} * 1024 / 20);  // but no copy of its own
  const uint64_t served_while_loading = served(1);
  EXPECT_GT(served_while_loading, 0u);

  shm::request_handover(*segment_, 2);
  EXPECT_EQ(reap(live, 10s), 0);  // handed over, finished its batch, exited cleanly
  EXPECT_TRUE(in_state(1, shm::WorkerState::kExited));
  EXPECT_EQ(segment_->header().owner_epoch.load(), 2u);
  const uint64_t before = served(2);
  ASSERT_TRUE(wait_until([&] { return served(2) > before + 200; }, 10s));
  EXPECT_GE(stats(2).first_batch_at_slice_ns.load(), stats(2).slice_changed_ns.load());
  EXPECT_EQ(stats(2).slice_percent.load(), 60u);

  stop = true;
  for (auto& t : threads) t.join();
  kill(shadow, SIGTERM);
  EXPECT_EQ(reap(shadow, 10s), 0);

  EXPECT_EQ(errors, "");
  uint64_t completed = 0, not_once = 0;
  for (const auto& c : clients) {
    completed += c->completed();
    not_once += c->not_once();
  }
  EXPECT_EQ(not_once, 0u);
  EXPECT_EQ(completed, served(1) + served(2));
  EXPECT_EQ(stats(1).failed.load() + stats(2).failed.load(), 0u);
  const shm::SlotCensus census = shm::slot_census(*segment_);
  EXPECT_EQ(census.free, segment_->slot_count());
  RecordProperty("completed", std::to_string(completed));
}

}  // namespace
}  // namespace sliceserve
