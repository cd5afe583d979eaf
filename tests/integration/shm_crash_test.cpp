// Cross-process proof of the ring invariants: no request lost, none completed twice, no slot
// leaked, while workers and clients are killed with SIGKILL at random moments.

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <random>
#include <vector>

#include "sliceserve/shm/client_lane.h"
#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/segment_control.h"
#include "sliceserve/shm/worker_port.h"
#include "support/shm_test_util.h"

namespace sliceserve::shm {
namespace {

using sliceserve::testing::fork_child;
using sliceserve::testing::test_segment_options;
using sliceserve::testing::wait_child;

constexpr uint32_t kRequestsPerClient = 400;
constexpr uint32_t kMaxClients = 8;     // lanes of the segment
constexpr uint32_t kAuditClients = 16;  // distinct client ids over a test (victims come and go)

// Shared audit board, outside the segment: how often each request id was completed.
struct Audit {
  std::atomic<uint32_t> completions[kAuditClients * kRequestsPerClient];
};

// A worker loop: output = input * 2 + 1; records every successful completion in the audit.
int run_worker(Segment& seg, uint64_t epoch, Audit* audit) {
  WorkerPort w(seg, epoch);
  w.publish_state(WorkerState::kReady);
  if (!w.wait_for_ownership(10'000'000'000LL)) return 10;
  w.publish_state(WorkerState::kServing);
  std::vector<ClaimedSlot> batch = w.recover_orphans();
  ClaimedSlot claimed[4];
  for (;;) {
    uint32_t token = w.work_token();
    size_t n = w.claim(claimed);
    batch.insert(batch.end(), claimed, claimed + n);
    if (batch.empty()) {
      w.wait_for_work(token, 50'000'000);
      auto orphans = w.recover_orphans();
      batch.insert(batch.end(), orphans.begin(), orphans.end());
      continue;
    }
    for (const ClaimedSlot& c : batch) {
      auto* in = reinterpret_cast<const float*>(seg.slot_data(c.slot) + seg.input_offset(0));
      auto* out = reinterpret_cast<float*>(seg.slot_data(c.slot) + seg.output_offset(0));
      for (int i = 0; i < 16; ++i) out[i] = in[i] * 2 + 1;
      seg.slot(c.slot).status_code = 0;
      uint64_t id = seg.slot(c.slot).request_id;
      std::this_thread::sleep_for(std::chrono::microseconds(50));  // widen the kill window
      if (w.complete(c)) audit->completions[id].fetch_add(1);
    }
    batch.clear();
  }
}

// A client: submits its requests with up to `depth` in flight, checks every output. Exit 0 when
// all completed correctly, 20+ on a wrong or missing result.
int run_client(Segment& seg, uint32_t client, uint32_t depth) {
  auto lane = ClientLane::acquire(seg);
  if (!lane.is_ok()) return 20;
  struct InFlight {
    SlotTicket ticket;
    uint32_t id;
  };
  std::vector<InFlight> flight;
  uint32_t next = 0, done = 0;
  const uint64_t deadline = monotonic_ns() + 60'000'000'000ULL;
  while (done < kRequestsPerClient) {
    if (monotonic_ns() > deadline) return 21;
    while (next < kRequestsPerClient && flight.size() < depth) {
      auto t = lane->take_slot();
      if (!t) break;
      uint32_t id = client * kRequestsPerClient + next;
      auto* in = reinterpret_cast<float*>(seg.slot_data(t->slot) + seg.input_offset(0));
      for (int i = 0; i < 16; ++i) in[i] = float(id + i);
      if (!lane->submit(*t, id).is_ok()) return 22;
      flight.push_back({*t, id});
      ++next;
    }
    uint32_t token = lane->completion_token();
    bool progressed = false;
    for (size_t i = 0; i < flight.size();) {
      if (!lane->is_done(flight[i].ticket)) {
        ++i;
        continue;
      }
      const SlotHeader& h = seg.slot(flight[i].ticket.slot);
      auto* out = reinterpret_cast<const float*>(seg.slot_data(flight[i].ticket.slot) +
                                                 seg.output_offset(0));
      if (h.request_id != flight[i].id) return 23;
      for (int k = 0; k < 16; ++k) {
        if (out[k] != float(flight[i].id + k) * 2 + 1) return 24;
      }
      if (!lane->release(flight[i].ticket)) return 25;
      flight[i] = flight.back();
      flight.pop_back();
      ++done;
      progressed = true;
    }
    if (!progressed) lane->wait_completion(token, 20'000'000);
  }
  return 0;
}

class ShmCrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = Segment::create(test_segment_options("crash", kMaxClients, 8));
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    segment_.emplace(std::move(s).value());
    void* p =
        mmap(nullptr, sizeof(Audit), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    audit_ = static_cast<Audit*>(p);
  }
  void TearDown() override { munmap(audit_, sizeof(Audit)); }

  pid_t start_worker(uint64_t epoch) {
    pid_t pid = fork_child([this, epoch] { return run_worker(*segment_, epoch, audit_); });
    // Like the controller: the ring goes to the new epoch once the old worker is dead.
    set_owner_epoch(*segment_, epoch);
    return pid;
  }

  void expect_exactly_once(uint32_t clients) {
    for (uint32_t id = 0; id < clients * kRequestsPerClient; ++id) {
      ASSERT_LE(audit_->completions[id].load(), 1u) << "request " << id << " completed twice";
    }
  }

  std::optional<Segment> segment_;
  Audit* audit_ = nullptr;
};

TEST_F(ShmCrashTest, WorkerKilledAtRandomMomentsLosesNothingAndCompletesOnce) {
  constexpr uint32_t kClients = 4;
  std::vector<pid_t> clients;
  for (uint32_t c = 0; c < kClients; ++c) {
    clients.push_back(fork_child([this, c] { return run_client(*segment_, c, 1 + c * 2); }));
  }
  std::mt19937 rng(12345);
  uint64_t epoch = 1;
  pid_t worker = start_worker(epoch);
  int kills = 0;
  for (;;) {
    std::this_thread::sleep_for(std::chrono::microseconds(2000 + rng() % 20000));
    if (kills >= 15) break;
    kill(worker, SIGKILL);
    ASSERT_EQ(wait_child(worker, std::chrono::seconds(5)), -SIGKILL);
    ++kills;
    worker = start_worker(++epoch);
  }
  for (pid_t c : clients) EXPECT_EQ(wait_child(c, std::chrono::seconds(60)), 0);
  kill(worker, SIGKILL);
  wait_child(worker, std::chrono::seconds(5));
  expect_exactly_once(kClients);
  uint32_t completed = 0;
  for (uint32_t id = 0; id < kClients * kRequestsPerClient; ++id) {
    completed += audit_->completions[id].load();
  }
  // A worker killed between its DONE and the audit increment undercounts by one; no more.
  EXPECT_GE(completed, kClients * kRequestsPerClient - uint32_t(kills));
  EXPECT_EQ(slot_census(*segment_).free, segment_->slot_count()) << "no slot may leak";
}

TEST_F(ShmCrashTest, ClientsKilledMidRequestLeakNoSlotAndDoNotDisturbOthers) {
  pid_t worker = start_worker(1);
  std::mt19937 rng(777);
  // Survivors that must finish everything correctly while their neighbours are killed.
  std::vector<pid_t> survivors;
  for (uint32_t c = 0; c < 2; ++c) {
    survivors.push_back(fork_child([this, c] { return run_client(*segment_, c, 4); }));
  }
  for (int round = 0; round < 12; ++round) {
    uint32_t id_base = 2 + uint32_t(round);
    pid_t victim = fork_child([this, id_base] { return run_client(*segment_, id_base, 8); });
    std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % 5000));
    kill(victim, SIGKILL);
    int rc = wait_child(victim, std::chrono::seconds(5));
    EXPECT_TRUE(rc == -SIGKILL || rc == 0);
    reclaim_dead_lanes(*segment_);  // the controller's periodic sweep
  }
  for (pid_t c : survivors) EXPECT_EQ(wait_child(c, std::chrono::seconds(60)), 0);
  // Let the worker finish what it holds, then sweep until everything is back.
  uint64_t deadline = monotonic_ns() + 5'000'000'000ULL;
  while (slot_census(*segment_).free != segment_->slot_count() && monotonic_ns() < deadline) {
    reclaim_dead_lanes(*segment_);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  SlotCensus census = slot_census(*segment_);
  EXPECT_EQ(census.free, segment_->slot_count())
      << "writing " << census.writing << " queued " << census.queued << " claimed "
      << census.claimed << " done " << census.done;
  EXPECT_EQ(segment_->header().active_lanes.load(), 0u);
  expect_exactly_once(kAuditClients);
  kill(worker, SIGKILL);
  wait_child(worker, std::chrono::seconds(5));
}

}  // namespace
}  // namespace sliceserve::shm
