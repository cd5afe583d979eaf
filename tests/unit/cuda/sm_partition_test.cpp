#include "sliceserve/backends/cuda/sm_partition.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace sliceserve::backends {
namespace {

SmGranularity shape(unsigned sms, int major, int minor) {
  auto granularity = sm_granularity(sms, major, minor);
  EXPECT_TRUE(granularity.is_ok()) << granularity.status().to_string();
  return granularity.is_ok() ? *granularity : SmGranularity{};
}

unsigned sms_for(double percent, const SmGranularity& granularity) {
  auto sms = sm_count_for_percent(percent, granularity);
  EXPECT_TRUE(sms.is_ok()) << percent << "%: " << sms.status().to_string();
  return sms.is_ok() ? *sms : 0;
}

TEST(SmPartitionTest, TableByComputeCapability) {
  const SmGranularity h100 = shape(132, 9, 0);
  EXPECT_EQ(h100.sm_count, 132u);
  EXPECT_EQ(h100.min_partition, 8u);
  EXPECT_EQ(h100.alignment, 8u);
  const SmGranularity a100 = shape(108, 8, 0);
  EXPECT_EQ(a100.min_partition, 4u);
  EXPECT_EQ(a100.alignment, 2u);
  const SmGranularity ampere_86 = shape(84, 8, 6);
  EXPECT_EQ(ampere_86.min_partition, 4u);
  const SmGranularity v100 = shape(80, 7, 0);
  EXPECT_EQ(v100.min_partition, 2u);
  EXPECT_EQ(v100.alignment, 2u);
  const SmGranularity blackwell = shape(148, 10, 0);
  EXPECT_EQ(blackwell.min_partition, 8u);
  EXPECT_EQ(blackwell.alignment, 8u);
}

TEST(SmPartitionTest, ReportedValuesWinOverTheTable) {
  auto granularity = sm_granularity(132, 9, 0, 16, 4);
  ASSERT_TRUE(granularity.is_ok());
  EXPECT_EQ(granularity->min_partition, 16u);
  EXPECT_EQ(granularity->alignment, 4u);
  // One field reported, the other from the table.
  auto half = sm_granularity(132, 9, 0, 0, 2);
  ASSERT_TRUE(half.is_ok());
  EXPECT_EQ(half->min_partition, 8u);
  EXPECT_EQ(half->alignment, 2u);
  // Reported values make an old compute capability usable.
  EXPECT_TRUE(sm_granularity(16, 5, 2, 2, 2).is_ok());
}

TEST(SmPartitionTest, RejectsZeroSmsAndOldComputeCapability) {
  auto zero = sm_granularity(0, 9, 0);
  ASSERT_FALSE(zero.is_ok());
  EXPECT_EQ(zero.status().code(), ErrorCode::kInvalidArgument);
  auto old = sm_granularity(16, 5, 2);
  ASSERT_FALSE(old.is_ok());
  EXPECT_EQ(old.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(old.status().message().find("5.2"), std::string::npos) << old.status().message();
}

TEST(SmPartitionTest, RejectsPercentOutsideZeroToHundred) {
  const SmGranularity h100 = shape(132, 9, 0);
  for (double bad : {0.0, -1.0, 100.5, std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity()}) {
    auto sms = sm_count_for_percent(bad, h100);
    ASSERT_FALSE(sms.is_ok()) << bad;
    EXPECT_EQ(sms.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(sms.status().message().find("(0, 100]"), std::string::npos);
  }
}

TEST(SmPartitionTest, RejectsAnInvalidGranularity) {
  for (SmGranularity bad :
       {SmGranularity{0, 8, 8}, SmGranularity{132, 0, 8}, SmGranularity{132, 8, 0}}) {
    auto sms = sm_count_for_percent(50, bad);
    ASSERT_FALSE(sms.is_ok());
    EXPECT_EQ(sms.status().code(), ErrorCode::kInvalidArgument);
  }
}

TEST(SmPartitionTest, HopperRoundsToNearestMultipleOfEight) {
  for (unsigned device_sms : {132u, 132u}) {  // H100 SXM and H200: 132 SMs, cc 9.0
    const SmGranularity hopper = shape(device_sms, 9, 0);
    EXPECT_EQ(sms_for(50, hopper), 64u);    // 66 -> 64
    EXPECT_EQ(sms_for(25, hopper), 32u);    // 33 -> 32
    EXPECT_EQ(sms_for(10, hopper), 16u);    // 13.2 -> 16
    EXPECT_EQ(sms_for(75, hopper), 96u);    // 99 -> 96
    EXPECT_EQ(sms_for(1, hopper), 8u);      // 1.32 -> the minimum
    EXPECT_EQ(sms_for(0.01, hopper), 8u);   // never 0
    EXPECT_EQ(sms_for(3.04, hopper), 8u);   // 4.01 -> 8 (nearest)
    EXPECT_EQ(sms_for(99, hopper), 128u);   // 130.7 -> 128, the largest split
    EXPECT_EQ(sms_for(100, hopper), 132u);  // the whole device
  }
}

TEST(SmPartitionTest, HalvesRoundUp) {
  const SmGranularity h100 = shape(128, 9, 0);  // 128 SMs: 12.5% is 16, 9.375% is 12 = 1.5 x 8
  EXPECT_EQ(sms_for(9.375, h100), 16u);
  EXPECT_EQ(sms_for(12.5, h100), 16u);
}

TEST(SmPartitionTest, AmpereAndVolta) {
  const SmGranularity a100 = shape(108, 8, 0);
  EXPECT_EQ(sms_for(50, a100), 54u);
  EXPECT_EQ(sms_for(10, a100), 10u);  // 10.8 -> 10
  EXPECT_EQ(sms_for(1, a100), 4u);    // 1.08 -> the minimum of 4
  EXPECT_EQ(sms_for(99.5, a100), 108u);
  EXPECT_EQ(sms_for(100, a100), 108u);
  const SmGranularity v100 = shape(80, 7, 0);
  EXPECT_EQ(sms_for(50, v100), 40u);
  EXPECT_EQ(sms_for(33, v100), 26u);  // 26.4 -> 26
  EXPECT_EQ(sms_for(1, v100), 2u);
  EXPECT_EQ(sms_for(100, v100), 80u);
}

TEST(SmPartitionTest, MinimumIsRoundedUpToTheAlignment) {
  const SmGranularity odd{100, 5, 4};
  EXPECT_EQ(sms_for(1, odd), 8u);
}

TEST(SmPartitionTest, DeviceSmallerThanTheMinimumIsUsedWhole) {
  const SmGranularity tiny{6, 8, 8};
  EXPECT_EQ(sms_for(10, tiny), 6u);
  EXPECT_EQ(sms_for(100, tiny), 6u);
}

TEST(SmPartitionTest, EffectivePercentRoundTrips) {
  for (const SmGranularity& granularity : {shape(132, 9, 0), shape(108, 8, 0), shape(80, 7, 0)}) {
    for (double percent = 0.5; percent <= 100; percent += 0.5) {
      const unsigned sms = sms_for(percent, granularity);
      EXPECT_LE(sms, granularity.sm_count);
      EXPECT_GE(sms, std::min(granularity.min_partition, granularity.sm_count));
      EXPECT_TRUE(sms == granularity.sm_count || sms % granularity.alignment == 0) << sms;
      EXPECT_EQ(sms_for(percent_for_sm_count(sms, granularity), granularity), sms)
          << percent << "% of " << granularity.sm_count;
    }
  }
  EXPECT_NEAR(percent_for_sm_count(64, shape(132, 9, 0)), 48.4848, 1e-3);
}

TEST(SmPartitionTest, GreenContextSizesAreTheAlignedCountsThenTheWholeDevice) {
  auto h200 = green_context_sizes(shape(132, 9, 0));
  ASSERT_TRUE(h200.is_ok()) << h200.status().to_string();
  ASSERT_EQ(h200->size(), 17u);  // 8, 16, ..., 128, then 132 (not a multiple of 8)
  EXPECT_EQ(h200->front(), 8u);
  EXPECT_EQ((*h200)[15], 128u);
  EXPECT_EQ(h200->back(), 132u);
  const SmGranularity odd{100, 5, 4};
  const SmGranularity tiny{6, 8, 8};
  auto odd_sizes = green_context_sizes(odd);
  ASSERT_TRUE(odd_sizes.is_ok());
  EXPECT_EQ(odd_sizes->front(), 8u);  // the minimum rounded up to the alignment
  auto tiny_sizes = green_context_sizes(tiny);
  ASSERT_TRUE(tiny_sizes.is_ok());
  EXPECT_EQ(*tiny_sizes, (std::vector<unsigned>{6}));  // only whole
  // Each is a count a slice of its own share gets back: what a profile's pool entries hold.
  for (const SmGranularity& g : {shape(132, 9, 0), shape(108, 8, 0), shape(80, 7, 0), odd, tiny}) {
    auto sizes = green_context_sizes(g);
    ASSERT_TRUE(sizes.is_ok());
    for (size_t i = 0; i < sizes->size(); ++i) {
      const unsigned n = (*sizes)[i];
      EXPECT_TRUE(i == 0 || n > (*sizes)[i - 1]) << n;
      EXPECT_EQ(sms_for(percent_for_sm_count(n, g), g), n) << n << " of " << g.sm_count;
    }
  }
  EXPECT_EQ(green_context_sizes({0, 8, 8}).status().code(), ErrorCode::kInvalidArgument);
}

TEST(SmPartitionTest, DistinctSizesOfAPool) {
  const SmGranularity h200 = shape(132, 9, 0);
  auto sizes = distinct_sm_counts({100, 50, 48, 25, 24.5, 10, 1}, h200);
  ASSERT_TRUE(sizes.is_ok()) << sizes.status().to_string();
  EXPECT_EQ(*sizes, (std::vector<unsigned>{8, 16, 32, 64, 132}));
  auto empty = distinct_sm_counts({}, h200);
  ASSERT_TRUE(empty.is_ok());
  EXPECT_TRUE(empty->empty());
  auto bad = distinct_sm_counts({50, 0}, h200);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
}

TEST(SmPartitionTest, PoolEntryForPercent) {
  const SmGranularity h100 = shape(132, 9, 0);
  const std::vector<unsigned> entries{64, 132, 32};
  auto half = pool_entry_for_percent(50, entries, h100);
  ASSERT_TRUE(half.is_ok());
  EXPECT_EQ(*half, 0u);
  auto near_half = pool_entry_for_percent(47, entries, h100);  // 62 -> 64
  ASSERT_TRUE(near_half.is_ok());
  EXPECT_EQ(*near_half, 0u);
  auto whole = pool_entry_for_percent(100, entries, h100);
  ASSERT_TRUE(whole.is_ok());
  EXPECT_EQ(*whole, 1u);
  auto quarter = pool_entry_for_percent(25, entries, h100);
  ASSERT_TRUE(quarter.is_ok());
  EXPECT_EQ(*quarter, 2u);
  auto missing = pool_entry_for_percent(10, entries, h100);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.status().message().find("16 SMs"), std::string::npos);
  EXPECT_FALSE(pool_entry_for_percent(101, entries, h100).is_ok());
}

}  // namespace
}  // namespace sliceserve::backends
