#include "sliceserve/shm/segment.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "sliceserve/shm/process_identity.h"
#include "sliceserve/shm/segment_control.h"
#include "support/shm_test_util.h"

namespace sliceserve::shm {
namespace {

using sliceserve::testing::fork_child;
using sliceserve::testing::test_segment_options;
using sliceserve::testing::wait_child;

bool segment_exists(const std::string& name) {
  struct stat st {};
  return stat(("/dev/shm" + name).c_str(), &st) == 0;
}

TEST(SegmentTest, CreateIsPrivateToTheUserAndUnlinksOnDestruction) {
  auto options = test_segment_options("mode");
  {
    auto segment = Segment::create(options);
    ASSERT_TRUE(segment.is_ok()) << segment.status().to_string();
    struct stat st {};
    ASSERT_EQ(stat(("/dev/shm" + options.name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(std::string(segment->header().model_name), "mode");
  }
  EXPECT_FALSE(segment_exists(options.name));
}

TEST(SegmentTest, AttachSeesTheSameMemory) {
  auto options = test_segment_options("attach");
  auto created = Segment::create(options);
  ASSERT_TRUE(created.is_ok());
  auto attached = Segment::attach(options.name);
  ASSERT_TRUE(attached.is_ok()) << attached.status().to_string();
  EXPECT_FALSE(attached->is_creator());
  created->header().owner_epoch.store(42);
  EXPECT_EQ(attached->header().owner_epoch.load(), 42u);
  EXPECT_EQ(attached->spec().inputs[0].name_view(), "x");
  EXPECT_EQ(attached->slot_count(), options.lanes * options.slots_per_lane);
}

TEST(SegmentTest, TensorsStartAlignedInsideASlot) {
  auto options = test_segment_options("offsets");
  auto segment = Segment::create(options);
  ASSERT_TRUE(segment.is_ok());
  EXPECT_EQ(segment->input_offset(0), 0u);
  EXPECT_EQ(segment->output_offset(0), 64u);  // 16 floats, aligned to 64
  EXPECT_EQ(reinterpret_cast<uintptr_t>(segment->slot_data(3)) % 64, 0u);
}

TEST(SegmentTest, AttachToMissingSegmentIsNotFound) {
  auto r = Segment::attach("/sliceserve.nosuchinstance.nomodel");
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
}

TEST(SegmentTest, StaleSegmentOfDeadControllerIsRecreated) {
  auto options = test_segment_options("stale");
  // A "controller" that creates the segment and dies without cleaning up.
  pid_t child = fork_child([&] {
    auto s = Segment::create(options);
    if (!s.is_ok()) return 1;
    s->header().owner_epoch.store(99);
    std::abort();  // no destructor runs: the segment stays behind
  });
  EXPECT_EQ(wait_child(child, std::chrono::seconds(5)), -SIGABRT);
  ASSERT_TRUE(segment_exists(options.name));
  auto attach = Segment::attach(options.name);
  EXPECT_EQ(attach.status().code(), ErrorCode::kServerGone);

  auto fresh = Segment::create(options);
  ASSERT_TRUE(fresh.is_ok()) << fresh.status().to_string();
  EXPECT_EQ(fresh->header().owner_epoch.load(), 0u);  // not the old contents
  EXPECT_EQ(fresh->header().controller, self_identity());
}

TEST(SegmentTest, SegmentOfOtherLayoutIsRecreatedNotReused) {
  auto options = test_segment_options("layout");
  int fd = shm_open(options.name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  ASSERT_EQ(write(fd, "garbage", 7), 7);
  close(fd);
  auto attach = Segment::attach(options.name);
  EXPECT_EQ(attach.status().code(), ErrorCode::kIncompatible);
  auto fresh = Segment::create(options);
  ASSERT_TRUE(fresh.is_ok()) << fresh.status().to_string();
  EXPECT_EQ(fresh->header().magic, kSegmentMagic);
  EXPECT_TRUE(Segment::attach(options.name).is_ok());
}

TEST(SegmentTest, SegmentOfRunningControllerIsRefused) {
  auto options = test_segment_options("busy");
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t child = fork_child([&] {
    auto s = Segment::create(options);
    char c = s.is_ok() ? 'y' : 'n';
    if (write(ready[1], &c, 1) != 1) return 2;
    pause();
    return 0;
  });
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y');
  auto second = Segment::create(options);
  EXPECT_EQ(second.status().code(), ErrorCode::kAlreadyExists);
  EXPECT_NE(second.status().message().find(std::to_string(child)), std::string::npos);
  kill(child, SIGKILL);
  wait_child(child, std::chrono::seconds(5));
  Segment::unlink(options.name).is_ok();
  close(ready[0]);
  close(ready[1]);
}

TEST(SegmentTest, ClosedSegmentRefusesNewClients) {
  auto options = test_segment_options("closed");
  auto segment = Segment::create(options);
  ASSERT_TRUE(segment.is_ok());
  close_segment(*segment);
  EXPECT_EQ(Segment::attach(options.name).status().code(), ErrorCode::kServerGone);
}

TEST(SegmentTest, RejectsBadOptions) {
  auto options = test_segment_options("bad");
  options.lanes = 0;
  EXPECT_EQ(Segment::create(options).status().code(), ErrorCode::kInvalidArgument);
  options = test_segment_options("bad");
  options.lanes = kMaxLanes + 1;
  EXPECT_EQ(Segment::create(options).status().code(), ErrorCode::kInvalidArgument);
  options = test_segment_options("bad");
  options.slot_data_bytes = 8;  // smaller than one item
  EXPECT_EQ(Segment::create(options).status().code(), ErrorCode::kInvalidArgument);
  options = test_segment_options("bad");
  options.name = "no-slash";
  EXPECT_EQ(Segment::create(options).status().code(), ErrorCode::kInvalidArgument);
  options = test_segment_options("bad");
  options.spec.n_inputs = 0;
  EXPECT_EQ(Segment::create(options).status().code(), ErrorCode::kInvalidArgument);
}

TEST(SegmentTest, SegmentNamesAreValidated) {
  EXPECT_EQ(segment_name("demo", "resnet50").value(), "/sliceserve.demo.resnet50");
  EXPECT_FALSE(segment_name("demo", "a/b").is_ok());
  EXPECT_FALSE(segment_name("", "m").is_ok());
  EXPECT_FALSE(segment_name("demo", std::string(49, 'a')).is_ok());
}

TEST(SegmentTest, ListsTheModelsOfAnInstance) {
  std::string instance = "list" + std::to_string(getpid());
  auto a = test_segment_options("alpha");
  a.name = segment_name(instance, "alpha").value();
  auto b = test_segment_options("beta");
  b.name = segment_name(instance, "beta").value();
  auto sa = Segment::create(a);
  auto sb = Segment::create(b);
  ASSERT_TRUE(sa.is_ok() && sb.is_ok());
  EXPECT_EQ(list_segment_models(instance), (std::vector<std::string>{"alpha", "beta"}));
}

}  // namespace
}  // namespace sliceserve::shm

namespace sliceserve::shm {
namespace {

TEST(SegmentListTest, AModelsWeightRegionsAreNotListedAsModels) {
  std::string instance = "weights" + std::to_string(getpid());
  auto a = sliceserve::testing::test_segment_options("alpha");
  a.name = segment_name(instance, "alpha").value();
  auto sa = Segment::create(a);
  ASSERT_TRUE(sa.is_ok());
  std::string weights = a.name + ".w.synthetic";
  int fd = shm_open(weights.c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_EQ(list_segment_models(instance), (std::vector<std::string>{"alpha"}));
  shm_unlink(weights.c_str());
}

}  // namespace
}  // namespace sliceserve::shm
