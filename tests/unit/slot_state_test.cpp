#include <gtest/gtest.h>

#include "sliceserve/shm/latency_histogram.h"
#include "sliceserve/shm/layout.h"

#include <string>

namespace sliceserve::shm {
namespace {

TEST(SlotStateTest, PackedWordRoundTrips) {
  uint64_t w = pack_slot_word(0xdeadbeef, 0x123456, SlotState::kClaimed);
  EXPECT_EQ(slot_generation(w), 0xdeadbeefu);
  EXPECT_EQ(slot_epoch(w), 0x123456u);
  EXPECT_EQ(slot_state(w), SlotState::kClaimed);
}

TEST(SlotStateTest, EpochIsTruncatedTo24Bits) {
  uint64_t w = pack_slot_word(1, (1ULL << 24) + 5, SlotState::kDone);
  EXPECT_EQ(slot_epoch(w), 5u);
  EXPECT_EQ(slot_generation(w), 1u);
}

TEST(SlotStateTest, RingEntryRoundTrips) {
  uint64_t e = pack_ring_entry(77, 1023);
  EXPECT_EQ(ring_entry_generation(e), 77u);
  EXPECT_EQ(ring_entry_slot(e), 1023u);
}

TEST(LatencyHistogramTest, BucketsAreMonotonicAndContainTheirValue) {
  size_t previous = 0;
  for (uint64_t us = 0; us < 5'000'000; us = us < 100 ? us + 1 : us * 11 / 10) {
    size_t b = latency_bucket(us);
    EXPECT_GE(b, previous);
    previous = b;
    if (b + 1 < kLatencyBuckets) {
      EXPECT_LE(latency_bucket_floor(b), us);
      EXPECT_GT(latency_bucket_floor(b + 1), us);
    }
  }
}

TEST(LatencyHistogramTest, PercentilesOfUniformCounts) {
  LatencyCounts counts{};
  for (uint64_t us = 1; us <= 1000; ++us) ++counts[latency_bucket(us)];
  uint64_t p50 = percentile_us(counts, 0.5);
  uint64_t p99 = percentile_us(counts, 0.99);
  EXPECT_GE(p50, 500u);
  EXPECT_LE(p50, 560u);  // within one bucket (12.5%)
  EXPECT_GE(p99, 990u);
  EXPECT_LE(p99, 1130u);
  EXPECT_EQ(percentile_us(LatencyCounts{}, 0.5), 0u);
}

}  // namespace
}  // namespace sliceserve::shm

namespace sliceserve::shm {
namespace {

TEST(SharedTextTest, RoundTripsAndCutsLongText) {
  SharedText text{};
  EXPECT_EQ(load_text(text), "");
  store_text(text, "grow 30->45: p99 52ms > 0.8*50ms");
  EXPECT_EQ(load_text(text), "grow 30->45: p99 52ms > 0.8*50ms");
  store_text(text, "short");
  EXPECT_EQ(load_text(text), "short");
  std::string long_text(500, 'x');
  store_text(text, long_text);
  EXPECT_EQ(load_text(text), std::string(SharedText::kWords * 8 - 1, 'x'));
}

}  // namespace
}  // namespace sliceserve::shm
