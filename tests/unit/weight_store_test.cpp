#include "sliceserve/backends/weight_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include "support/shm_test_util.h"

namespace sliceserve::backends {
namespace {

using sliceserve::testing::fork_child;
using sliceserve::testing::unique_segment_name;
using sliceserve::testing::wait_child;

constexpr size_t kMiB = size_t{1} << 20;

// ThreadSanitizer and AddressSanitizer keep shadow memory (anonymous, private) for every page a
// process touches, shared or not: memory measurements mean nothing under them.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

std::byte pattern(size_t i) { return std::byte(uint8_t((i * 131) ^ (i >> 12))); }

Status fill_pattern(std::span<std::byte> out) {
  for (size_t i = 0; i < out.size(); ++i) out[i] = pattern(i);
  return Status::ok();
}

bool has_pattern(const WeightRegion& region) {
  for (size_t i = 0; i < region.bytes; ++i) {
    if (region.data[i] != pattern(i)) return false;
  }
  return true;
}

// The kB fields of /proc/self/smaps_rollup.
std::map<std::string, long> smaps_rollup() {
  std::map<std::string, long> fields;
  std::ifstream in("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos || line.find(" kB") == std::string::npos) continue;
    fields[line.substr(0, colon)] = std::atol(line.c_str() + colon + 1);
  }
  return fields;
}

bool region_file_exists(const std::string& name) {
  struct stat st {};
  return stat(("/dev/shm" + name).c_str(), &st) == 0;
}

// Memory both processes of a test see (MAP_SHARED | MAP_ANONYMOUS, inherited by fork).
template <typename T>
T* shared_object() {
  void* p = mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  return new (p) T();
}

class WeightStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { segment_ = unique_segment_name("weights"); }
  void TearDown() override { remove_host_weights(segment_); }

  std::unique_ptr<WeightStore> open() {
    auto store = open_host_weight_store(segment_);
    EXPECT_TRUE(store.is_ok()) << store.status().to_string();
    return store.is_ok() ? std::move(store).value() : nullptr;
  }

  std::string segment_;
};

TEST_F(WeightStoreTest, CreatorFillsOncePublishesA0600Region) {
  auto store = open();
  ASSERT_TRUE(store);
  int fills = 0;
  auto region = store->get_or_create("synthetic", 3 * 4096 + 17, [&](std::span<std::byte> out) {
    ++fills;
    return fill_pattern(out);
  });
  ASSERT_TRUE(region.is_ok()) << region.status().to_string();
  EXPECT_EQ(fills, 1);
  EXPECT_FALSE(region->shared);
  EXPECT_EQ(region->bytes, 3u * 4096 + 17);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(region->data) % 4096, 0u);  // page-aligned weights
  EXPECT_TRUE(has_pattern(*region));
  EXPECT_EQ(store->mapped_bytes(), region->bytes);
  EXPECT_EQ(store->private_bytes(), region->bytes);

  const std::string name = segment_ + ".w.synthetic";
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm" + name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // The same key again from the same store: the same mapping, no second fill.
  auto again = store->get_or_create("synthetic", region->bytes, [&](std::span<std::byte>) {
    ++fills;
    return Status::ok();
  });
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(again->data, region->data);
  EXPECT_EQ(fills, 1);
  EXPECT_EQ(store->mapped_bytes(), region->bytes);
  EXPECT_EQ(store->get_or_create("synthetic", 5, fill_pattern).status().code(),
            ErrorCode::kInvalidArgument);
}

struct SharingReport {
  int fill_called = 0;
  int shared = 0;
  int bytes_ok = 0;
  size_t mapped = 0;
  size_t private_bytes = 0;
  long rss_kb = 0, pss_kb = 0, private_kb = 0, anonymous_kb = 0;  // growth in the child
};

TEST_F(WeightStoreTest, ASecondProcessMapsTheSameBytesWithoutItsOwnCopy) {
  constexpr size_t kBytes = 64 * kMiB;
  auto store = open();
  ASSERT_TRUE(store);
  auto region = store->get_or_create("synthetic", kBytes, fill_pattern);
  ASSERT_TRUE(region.is_ok()) << region.status().to_string();

  auto* report = shared_object<SharingReport>();
  ASSERT_NE(report, nullptr);
  const std::string segment = segment_;
  pid_t child = fork_child([&] {
    auto before = smaps_rollup();
    auto second = open_host_weight_store(segment);
    if (!second.is_ok()) return 10;
    auto mapped = (*second)->get_or_create("synthetic", kBytes, [&](std::span<std::byte>) {
      report->fill_called = 1;
      return Status::ok();
    });
    if (!mapped.is_ok()) return 11;
    report->shared = mapped->shared ? 1 : 0;
    report->bytes_ok = has_pattern(*mapped) ? 1 : 0;  // touches every page
    report->mapped = (*second)->mapped_bytes();
    report->private_bytes = (*second)->private_bytes();
    auto after = smaps_rollup();
    auto grew = [&](const char* field) { return after[field] - before[field]; };
    report->rss_kb = grew("Rss");
    report->pss_kb = grew("Pss");
    report->private_kb = grew("Private_Clean") + grew("Private_Dirty");
    report->anonymous_kb = grew("Anonymous");
    return 0;
  });
  ASSERT_EQ(wait_child(child, std::chrono::seconds(20)), 0);
  EXPECT_EQ(report->fill_called, 0) << "the second mapper must not fill";
  EXPECT_EQ(report->shared, 1);
  EXPECT_EQ(report->bytes_ok, 1);
  EXPECT_EQ(report->mapped, kBytes);
  EXPECT_EQ(report->private_bytes, 0u);
  const long region_kb = long(kBytes / 1024);
  std::printf(
      "second mapper of a %ld kB region: Rss +%ld kB, Pss +%ld kB, Private +%ld kB, "
      "Anonymous +%ld kB\n",
      region_kb, report->rss_kb, report->pss_kb, report->private_kb, report->anonymous_kb);
  RecordProperty("region_kb", std::to_string(region_kb));
  RecordProperty("second_rss_growth_kb", std::to_string(report->rss_kb));
  RecordProperty("second_pss_growth_kb", std::to_string(report->pss_kb));
  RecordProperty("second_private_growth_kb", std::to_string(report->private_kb));
  RecordProperty("second_anonymous_growth_kb", std::to_string(report->anonymous_kb));
  if (!kSanitized) {
    EXPECT_GE(report->rss_kb, region_kb * 9 / 10);  // it does map and touch the weights
    EXPECT_LT(report->private_kb, region_kb / 20);  // ... but holds no copy of its own
    EXPECT_LT(report->anonymous_kb, region_kb / 20);
    EXPECT_LT(report->pss_kb, region_kb * 6 / 10);  // half of the pages are charged to us
  }
  munmap(report, sizeof *report);
}

struct KillBoard {
  std::atomic<int> filling{0};
};

TEST_F(WeightStoreTest, ACreatorKilledMidFillIsReplacedByAWaiter) {
  constexpr size_t kBytes = 4 * kMiB;
  auto* board = shared_object<KillBoard>();
  ASSERT_NE(board, nullptr);
  const std::string segment = segment_;
  pid_t creator = fork_child([&] {
    auto store = open_host_weight_store(segment);
    if (!store.is_ok()) return 10;
    (void)(*store)->get_or_create("synthetic", kBytes, [&](std::span<std::byte> out) {
      std::memset(out.data(), 0xee, out.size() / 2);  // half-filled garbage
      board->filling.store(1);
      for (;;) pause();  // killed here
      return Status::ok();
    });
    return 11;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (board->filling.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(board->filling.load(), 1);

  // A waiter arrives while the creator is still filling, then the creator dies.
  auto store = open();
  ASSERT_TRUE(store);
  std::atomic<int> fills{0};
  Result<WeightRegion> region = Status(ErrorCode::kInternal, "not run");
  std::thread waiter([&] {
    region = store->get_or_create("synthetic", kBytes, [&](std::span<std::byte> out) {
      fills.fetch_add(1);
      return fill_pattern(out);
    });
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(fills.load(), 0) << "the waiter must wait for a live creator";
  kill(creator, SIGKILL);
  EXPECT_EQ(wait_child(creator, std::chrono::seconds(10)), -SIGKILL);  // reaped: really gone
  waiter.join();
  ASSERT_TRUE(region.is_ok()) << region.status().to_string();
  EXPECT_EQ(fills.load(), 1);
  EXPECT_FALSE(region->shared);
  EXPECT_TRUE(has_pattern(*region));

  // Later workers map the new copy.
  auto third = open();
  ASSERT_TRUE(third);
  auto mapped = third->get_or_create("synthetic", kBytes, [](std::span<std::byte>) {
    return Status(ErrorCode::kInternal, "must not fill");
  });
  ASSERT_TRUE(mapped.is_ok()) << mapped.status().to_string();
  EXPECT_TRUE(mapped->shared);
  EXPECT_TRUE(has_pattern(*mapped));
  munmap(board, sizeof *board);
}

TEST_F(WeightStoreTest, AFailedFillLeavesNothingBehind) {
  auto store = open();
  ASSERT_TRUE(store);
  auto failed = store->get_or_create("synthetic", 8192, [](std::span<std::byte>) {
    return Status(ErrorCode::kModelError, "bad weights file");
  });
  ASSERT_FALSE(failed.is_ok());
  EXPECT_EQ(failed.status().code(), ErrorCode::kModelError);
  EXPECT_NE(failed.status().message().find("bad weights file"), std::string::npos);
  EXPECT_FALSE(region_file_exists(segment_ + ".w.synthetic"));
  EXPECT_EQ(store->mapped_bytes(), 0u);
  auto retry = store->get_or_create("synthetic", 8192, fill_pattern);
  ASSERT_TRUE(retry.is_ok()) << retry.status().to_string();
  EXPECT_TRUE(has_pattern(*retry));
}

TEST_F(WeightStoreTest, ARegionOfAnotherSizeIsReplaced) {
  {
    auto old = open();
    ASSERT_TRUE(old);
    ASSERT_TRUE(old->get_or_create("synthetic", 4096, fill_pattern).is_ok());
  }
  auto store = open();
  ASSERT_TRUE(store);
  int fills = 0;
  auto region = store->get_or_create("synthetic", 3 * 4096, [&](std::span<std::byte> out) {
    ++fills;
    return fill_pattern(out);
  });
  ASSERT_TRUE(region.is_ok()) << region.status().to_string();
  EXPECT_EQ(fills, 1);
  EXPECT_TRUE(has_pattern(*region));
}

TEST_F(WeightStoreTest, RemoveUnlinksEveryRegionOfTheModelAndNoOther) {
  const std::string other = segment_ + "x";  // a model whose name extends this one's
  {
    auto store = open();
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->get_or_create("a", 4096, fill_pattern).is_ok());
    ASSERT_TRUE(store->get_or_create("b.c", 4096, fill_pattern).is_ok());
    auto other_store = open_host_weight_store(other);
    ASSERT_TRUE(other_store.is_ok());
    ASSERT_TRUE((*other_store)->get_or_create("a", 4096, fill_pattern).is_ok());
  }
  EXPECT_TRUE(region_file_exists(segment_ + ".w.a"));
  EXPECT_TRUE(region_file_exists(segment_ + ".w.b.c"));
  remove_host_weights(segment_);
  EXPECT_FALSE(region_file_exists(segment_ + ".w.a"));
  EXPECT_FALSE(region_file_exists(segment_ + ".w.b.c"));
  EXPECT_TRUE(region_file_exists(other + ".w.a"));
  remove_host_weights(other);
  EXPECT_FALSE(region_file_exists(other + ".w.a"));
}

TEST_F(WeightStoreTest, RejectsBadNamesAndSizes) {
  EXPECT_FALSE(open_host_weight_store("no-slash").is_ok());
  EXPECT_FALSE(open_host_weight_store("/a/b").is_ok());
  auto store = open();
  ASSERT_TRUE(store);
  for (const char* key : {"", "a/b", "..", "sp ace", "x%"}) {
    EXPECT_EQ(store->get_or_create(key, 16, fill_pattern).status().code(),
              ErrorCode::kInvalidArgument)
        << key;
  }
  EXPECT_EQ(store->get_or_create("k", 0, fill_pattern).status().code(),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace sliceserve::backends
