#include <gtest/gtest.h>

#include <set>

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

class LaneRingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = Segment::create(test_segment_options("lane", 4, 4));
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    segment_.emplace(std::move(s).value());
  }
  Segment& seg() { return *segment_; }
  std::optional<Segment> segment_;
};

TEST_F(LaneRingTest, RequestGoesThroughEveryState) {
  auto lane = ClientLane::acquire(seg());
  ASSERT_TRUE(lane.is_ok());
  auto t = lane->take_slot();
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(slot_state(seg().slot(t->slot).state.load()), SlotState::kWriting);
  ASSERT_TRUE(lane->submit(*t, 7).is_ok());
  EXPECT_EQ(slot_state(seg().slot(t->slot).state.load()), SlotState::kQueued);

  set_owner_epoch(seg(), 1);
  WorkerPort worker(seg(), 1);
  worker.publish_state(WorkerState::kServing);
  ClaimedSlot claimed[4];
  ASSERT_EQ(worker.claim(claimed), 1u);
  EXPECT_EQ(claimed[0].slot, t->slot);
  EXPECT_EQ(seg().slot(t->slot).request_id, 7u);
  EXPECT_EQ(slot_state(seg().slot(t->slot).state.load()), SlotState::kClaimed);
  EXPECT_FALSE(lane->is_done(*t));
  EXPECT_TRUE(worker.complete(claimed[0]));
  EXPECT_TRUE(lane->is_done(*t));
  EXPECT_FALSE(worker.complete(claimed[0])) << "a second completion must fail";
  EXPECT_TRUE(lane->release(*t));
  uint64_t w = seg().slot(t->slot).state.load();
  EXPECT_EQ(slot_state(w), SlotState::kFree);
  EXPECT_EQ(slot_generation(w), t->generation + 1);
}

TEST_F(LaneRingTest, WorkerWithoutOwnershipClaimsNothing) {
  auto lane = ClientLane::acquire(seg());
  auto t = lane->take_slot();
  ASSERT_TRUE(lane->submit(*t, 1).is_ok());
  set_owner_epoch(seg(), 2);
  WorkerPort stranger(seg(), 1);
  ClaimedSlot out[4];
  EXPECT_EQ(stranger.claim(out), 0u);
  WorkerPort owner(seg(), 2);
  EXPECT_EQ(owner.claim(out), 1u);
}

TEST_F(LaneRingTest, TakeSlotOnFullLaneReturnsNothing) {
  auto lane = ClientLane::acquire(seg());
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(lane->take_slot().has_value());
  EXPECT_FALSE(lane->take_slot().has_value());
}

TEST_F(LaneRingTest, AcquireWhenAllLanesTakenIsBusy) {
  std::vector<ClientLane> lanes;
  for (int i = 0; i < 4; ++i) {
    auto l = ClientLane::acquire(seg());
    ASSERT_TRUE(l.is_ok());
    lanes.push_back(std::move(l).value());
  }
  EXPECT_EQ(ClientLane::acquire(seg()).status().code(), ErrorCode::kBusy);
  lanes.pop_back();  // released by its destructor
  EXPECT_TRUE(ClientLane::acquire(seg()).is_ok());
}

TEST_F(LaneRingTest, CancelledRequestIsSkippedByTheWorker) {
  auto lane = ClientLane::acquire(seg());
  auto a = lane->take_slot();
  ASSERT_TRUE(lane->submit(*a, 1).is_ok());
  EXPECT_TRUE(lane->cancel(*a));
  auto b = lane->take_slot();  // may reuse the same slot with the next generation
  ASSERT_TRUE(lane->submit(*b, 2).is_ok());
  set_owner_epoch(seg(), 1);
  WorkerPort worker(seg(), 1);
  ClaimedSlot out[4];
  ASSERT_EQ(worker.claim(out), 1u);
  EXPECT_EQ(seg().slot(out[0].slot).request_id, 2u);
}

TEST_F(LaneRingTest, CancelFailsOnceClaimed) {
  auto lane = ClientLane::acquire(seg());
  auto a = lane->take_slot();
  ASSERT_TRUE(lane->submit(*a, 1).is_ok());
  set_owner_epoch(seg(), 1);
  WorkerPort worker(seg(), 1);
  ClaimedSlot out[1];
  ASSERT_EQ(worker.claim(out), 1u);
  EXPECT_FALSE(lane->cancel(*a));
  EXPECT_TRUE(worker.complete(out[0]));
  EXPECT_TRUE(lane->release(*a));
}

TEST_F(LaneRingTest, ClaimIsRoundRobinAcrossLanes) {
  auto busy = ClientLane::acquire(seg());
  auto quiet = ClientLane::acquire(seg());
  for (int i = 0; i < 4; ++i) {
    auto t = busy->take_slot();
    ASSERT_TRUE(busy->submit(*t, 100 + i).is_ok());
  }
  auto q = quiet->take_slot();
  ASSERT_TRUE(quiet->submit(*q, 200).is_ok());
  set_owner_epoch(seg(), 1);
  WorkerPort worker(seg(), 1);
  ClaimedSlot out[2];
  ASSERT_EQ(worker.claim(out), 2u);
  std::set<uint64_t> ids{seg().slot(out[0].slot).request_id, seg().slot(out[1].slot).request_id};
  EXPECT_TRUE(ids.count(200)) << "the quiet client must not wait behind the busy one";
}

TEST_F(LaneRingTest, HandoverStopsTheOldOwnerAndStartsTheNew) {
  auto lane = ClientLane::acquire(seg());
  set_owner_epoch(seg(), 1);
  WorkerPort live(seg(), 1);
  WorkerPort shadow(seg(), 2);
  EXPECT_FALSE(live.handover_requested());
  request_handover(seg(), 2);
  EXPECT_TRUE(live.handover_requested());
  auto t = lane->take_slot();
  ASSERT_TRUE(lane->submit(*t, 5).is_ok());
  EXPECT_EQ(live.hand_over(), 2u);
  ClaimedSlot out[1];
  EXPECT_EQ(live.claim(out), 0u);
  EXPECT_TRUE(shadow.wait_for_ownership(0));
  EXPECT_EQ(shadow.claim(out), 1u);
}

TEST_F(LaneRingTest, OrphansOfADeadEpochAreRecoveredOnce) {
  auto lane = ClientLane::acquire(seg());
  auto t = lane->take_slot();
  ASSERT_TRUE(lane->submit(*t, 9).is_ok());
  set_owner_epoch(seg(), 1);
  // Epoch 1 runs in a child that claims the request and dies holding it.
  pid_t child = fork_child([&] {
    WorkerPort w(seg(), 1);
    w.publish_state(WorkerState::kServing);
    ClaimedSlot out[1];
    return w.claim(out) == 1 ? 0 : 1;
  });
  ASSERT_EQ(wait_child(child, std::chrono::seconds(5)), 0);
  EXPECT_EQ(slot_state(seg().slot(t->slot).state.load()), SlotState::kClaimed);

  set_owner_epoch(seg(), 2);
  WorkerPort next(seg(), 2);
  next.publish_state(WorkerState::kServing);
  auto orphans = next.recover_orphans();
  ASSERT_EQ(orphans.size(), 1u);
  EXPECT_TRUE(next.recover_orphans().empty());
  EXPECT_TRUE(next.complete(orphans[0]));
  EXPECT_TRUE(lane->is_done(*t));
}

TEST_F(LaneRingTest, SlotsOfALiveRetiringEpochAreNotStolen) {
  auto lane = ClientLane::acquire(seg());
  auto t = lane->take_slot();
  ASSERT_TRUE(lane->submit(*t, 9).is_ok());
  set_owner_epoch(seg(), 1);
  WorkerPort live(seg(), 1);  // this process: alive
  live.publish_state(WorkerState::kServing);
  ClaimedSlot out[1];
  ASSERT_EQ(live.claim(out), 1u);
  request_handover(seg(), 2);
  live.hand_over();
  WorkerPort next(seg(), 2);
  next.publish_state(WorkerState::kServing);
  EXPECT_TRUE(next.recover_orphans().empty());
  EXPECT_TRUE(live.complete(out[0]));
}

TEST_F(LaneRingTest, DeadClientSlotsAreReclaimed) {
  set_owner_epoch(seg(), 1);
  pid_t child = fork_child([&] {
    auto lane = ClientLane::acquire(seg());
    if (!lane.is_ok()) return 1;
    for (int i = 0; i < 3; ++i) {
      auto t = lane->take_slot();
      if (!t || !lane->submit(*t, i).is_ok()) return 2;
    }
    lane->take_slot();  // one left WRITING
    std::abort();       // dies without releasing anything
  });
  ASSERT_EQ(wait_child(child, std::chrono::seconds(5)), -SIGABRT);
  WorkerPort worker(seg(), 1);
  worker.publish_state(WorkerState::kServing);
  ClaimedSlot out[1];
  ASSERT_EQ(worker.claim(out), 1u);  // one of them is in the worker's hands

  ReclaimReport r = reclaim_dead_lanes(seg());
  EXPECT_EQ(r.slots_freed, 3u);
  EXPECT_EQ(r.slots_waiting, 1u);
  EXPECT_EQ(r.lanes_released, 0u);
  EXPECT_EQ(worker.claim(out), 0u) << "reclaimed requests are stale for the worker";

  ASSERT_TRUE(worker.complete(out[0]));
  r = reclaim_dead_lanes(seg());
  EXPECT_EQ(r.slots_freed, 1u);
  EXPECT_EQ(r.lanes_released, 1u);
  SlotCensus c = slot_census(seg());
  EXPECT_EQ(c.free, seg().slot_count());
}

TEST_F(LaneRingTest, LaneGivenUpWithRequestsInFlightIsSweptLater) {
  set_owner_epoch(seg(), 1);
  WorkerPort worker(seg(), 1);
  worker.publish_state(WorkerState::kServing);
  ClaimedSlot out[1];
  {
    auto lane = ClientLane::acquire(seg());
    auto t = lane->take_slot();
    ASSERT_TRUE(lane->submit(*t, 1).is_ok());
    ASSERT_EQ(worker.claim(out), 1u);
  }
  EXPECT_EQ(seg().lane(0).owner.load(), kLaneRetired);
  ASSERT_TRUE(worker.complete(out[0]));
  EXPECT_EQ(reclaim_dead_lanes(seg()).lanes_released, 1u);
  EXPECT_EQ(slot_census(seg()).free, seg().slot_count());
}

TEST_F(LaneRingTest, SleepingWorkerWakesOnSubmit) {
  set_owner_epoch(seg(), 1);
  pid_t child = fork_child([&] {
    WorkerPort w(seg(), 1);
    ClaimedSlot out[1];
    uint64_t deadline = monotonic_ns() + 5'000'000'000ULL;
    while (monotonic_ns() < deadline) {
      uint32_t token = w.work_token();
      if (w.claim(out) == 1) return w.complete(out[0]) ? 0 : 3;
      w.wait_for_work(token, 1'000'000'000);
    }
    return 2;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let it fall asleep
  auto lane = ClientLane::acquire(seg());
  auto t = lane->take_slot();
  ASSERT_TRUE(lane->submit(*t, 1).is_ok());
  uint64_t start = monotonic_ns();
  while (!lane->is_done(*t)) {
    uint32_t token = lane->completion_token();
    if (lane->is_done(*t)) break;
    ASSERT_TRUE(lane->wait_completion(token, 2'000'000'000));
  }
  EXPECT_LT(monotonic_ns() - start, 500'000'000u);
  EXPECT_EQ(wait_child(child, std::chrono::seconds(5)), 0);
}

TEST_F(LaneRingTest, MailboxCommandIsAnsweredByTheWorker) {
  pid_t child = fork_child([&] {
    Mailbox& m = seg().mailbox();
    uint64_t deadline = monotonic_ns() + 5'000'000'000ULL;
    while (monotonic_ns() < deadline) {
      uint64_t seq = m.request_seq.load(std::memory_order_acquire);
      if (seq != m.ack_seq.load(std::memory_order_relaxed)) {
        std::snprintf(m.message, sizeof m.message, "pong %lld", static_cast<long long>(m.args[0]));
        m.result = 0;
        m.ack_seq.store(seq, std::memory_order_release);
        return 0;
      }
    }
    return 1;
  });
  auto reply = send_command(seg(), 1, Command::kPing, 41, 5'000'000'000);
  ASSERT_TRUE(reply.is_ok()) << reply.status().to_string();
  EXPECT_EQ(*reply, "pong 41");
  EXPECT_EQ(wait_child(child, std::chrono::seconds(5)), 0);
}

TEST_F(LaneRingTest, UnansweredCommandTimesOut) {
  auto reply = send_command(seg(), 1, Command::kPing, 0, 20'000'000);
  EXPECT_EQ(reply.status().code(), ErrorCode::kTimeout);
  EXPECT_EQ(send_command(seg(), 1, Command::kPing, 0, 1'000'000).status().code(), ErrorCode::kBusy);
}

}  // namespace
}  // namespace sliceserve::shm
