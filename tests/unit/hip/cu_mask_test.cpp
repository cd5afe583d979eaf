// CU masks for the cumask backend: the layouts of the parts we target, both policies over every
// CU count and a fine sweep of shares, and every validation rule.

#include "sliceserve/backends/hip/cu_mask.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace sliceserve::backends {
namespace {

struct Shape {
  const char* name;
  CuLayout layout;
};

// MI50 (gfx906), MI100 (gfx908), MI210 (gfx90a), and a WGP part the size of a Navi 21 (gfx1030).
const Shape kShapes[] = {
    {"MI50", {60, 4, false}},
    {"MI100", {120, 8, false}},
    {"MI210", {104, 8, false}},
    {"WGP80", {80, 4, true}},
};
const CuMaskPolicy kPolicies[] = {CuMaskPolicy::kSpread, CuMaskPolicy::kPack};

bool bit(const std::vector<uint32_t>& mask, unsigned i) { return (mask[i / 32] >> (i % 32)) & 1u; }

TEST(CuMaskTest, PolicyNamesRoundTrip) {
  for (CuMaskPolicy policy : kPolicies) {
    auto parsed = parse_cu_mask_policy(cu_mask_policy_name(policy));
    ASSERT_TRUE(parsed.is_ok());
    EXPECT_EQ(*parsed, policy);
  }
  auto bad = parse_cu_mask_policy("balanced");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("(spread, pack)"), std::string::npos);
}

TEST(CuMaskTest, GranularityIsOneUnitPerEngineForSpreadAndOneUnitForPack) {
  EXPECT_EQ(cu_granule(kShapes[0].layout, CuMaskPolicy::kSpread), 4u);
  EXPECT_EQ(cu_granule(kShapes[0].layout, CuMaskPolicy::kPack), 1u);
  EXPECT_EQ(cu_granule(kShapes[1].layout, CuMaskPolicy::kSpread), 8u);
  EXPECT_EQ(cu_granule(kShapes[2].layout, CuMaskPolicy::kSpread), 8u);
  EXPECT_EQ(cu_granule(kShapes[3].layout, CuMaskPolicy::kSpread), 8u) << "4 engines x a CU pair";
  EXPECT_EQ(cu_granule(kShapes[3].layout, CuMaskPolicy::kPack), 2u);
}

// Every CU count each policy allows, on every shape: the mask's size and population, nothing past
// the device, never all-zero, spread = the lowest bits and equal per engine, pack = engines
// filled in order, and CU pairs together on WGP parts.
TEST(CuMaskTest, EveryCountOfEveryShapeHasTheLayoutOfItsPolicy) {
  for (const Shape& shape : kShapes) {
    const CuLayout& layout = shape.layout;
    const unsigned engines = layout.shader_engines;
    const unsigned per_engine = layout.cu_count / engines;
    for (CuMaskPolicy policy : kPolicies) {
      const unsigned granule = cu_granule(layout, policy);
      for (unsigned cus = granule; cus <= layout.cu_count; cus += granule) {
        SCOPED_TRACE(std::string(shape.name) + " " + std::string(cu_mask_policy_name(policy)) +
                     " " + std::to_string(cus));
        auto mask = cu_mask(layout, policy, cus);
        ASSERT_TRUE(mask.is_ok()) << mask.status().to_string();
        ASSERT_EQ(mask->size(), (layout.cu_count + 31) / 32);
        EXPECT_EQ(cu_mask_count(*mask), cus);
        for (unsigned i = layout.cu_count; i < mask->size() * 32; ++i) {
          ASSERT_FALSE(bit(*mask, i)) << "bit " << i << " is past the device";
        }
        const std::vector<unsigned> counts = cus_per_engine(layout, *mask);
        ASSERT_EQ(counts.size(), engines);
        if (policy == CuMaskPolicy::kSpread) {
          for (unsigned i = 0; i < layout.cu_count; ++i) ASSERT_EQ(bit(*mask, i), i < cus) << i;
          for (unsigned c : counts) EXPECT_EQ(c, cus / engines);
        } else {
          for (unsigned s = 0; s < engines; ++s) {
            const unsigned before = s * per_engine;
            const unsigned expected =
                cus <= before ? 0 : (cus - before < per_engine ? cus - before : per_engine);
            EXPECT_EQ(counts[s], expected) << "engine " << s;
          }
        }
        if (layout.wgp) {
          for (unsigned i = 0; i < layout.cu_count; i += 2) {
            ASSERT_EQ(bit(*mask, i), bit(*mask, i + 1)) << "pair " << i / 2;
          }
        }
      }
    }
  }
}

// pack puts a slice that fits in one engine into engine 0: bits 0, E, 2E, ...
TEST(CuMaskTest, PackFillsEngineZeroWithBitsEqualToZeroModuloTheEngines) {
  auto mi50 = cu_mask(kShapes[0].layout, CuMaskPolicy::kPack, 15);
  ASSERT_TRUE(mi50.is_ok());
  EXPECT_EQ(cu_mask_hex(*mi50), "0x111111111111111");  // bits 0, 4, ..., 56
  auto mi50_two = cu_mask(kShapes[0].layout, CuMaskPolicy::kPack, 17);
  ASSERT_TRUE(mi50_two.is_ok());
  EXPECT_EQ(cus_per_engine(kShapes[0].layout, *mi50_two), (std::vector<unsigned>{15, 2, 0, 0}));
  EXPECT_TRUE(bit(*mi50_two, 1) && bit(*mi50_two, 5) && !bit(*mi50_two, 9));
  // A WGP part deals pairs: engine 0 holds pairs 0, 4, 8, ... = bits 0-1, 8-9, 16-17, ...
  auto wgp = cu_mask(kShapes[3].layout, CuMaskPolicy::kPack, 6);
  ASSERT_TRUE(wgp.is_ok());
  EXPECT_EQ(cu_mask_hex(*wgp), "0x30303");
  auto mi100 = cu_mask(kShapes[1].layout, CuMaskPolicy::kPack, 120);
  ASSERT_TRUE(mi100.is_ok());
  EXPECT_EQ(cu_mask_hex(*mi100), "0xffffffffffffffffffffffffffffff");
}

TEST(CuMaskTest, SpreadIsTheLowestBits) {
  auto mi50 = cu_mask(kShapes[0].layout, CuMaskPolicy::kSpread, 16);
  ASSERT_TRUE(mi50.is_ok());
  EXPECT_EQ(cu_mask_hex(*mi50), "0xffff");
  auto whole = cu_mask(kShapes[0].layout, CuMaskPolicy::kSpread, 60);
  ASSERT_TRUE(whole.is_ok());
  EXPECT_EQ(*whole, (std::vector<uint32_t>{0xffffffffu, 0x0fffffffu}));
  EXPECT_EQ(cu_mask_hex(*whole), "0xfffffffffffffff");
  auto mi210 = cu_mask(kShapes[2].layout, CuMaskPolicy::kSpread, 104);
  ASSERT_TRUE(mi210.is_ok());
  EXPECT_EQ(*mi210, (std::vector<uint32_t>{~0u, ~0u, ~0u, 0xffu}));
}

TEST(CuMaskTest, CountsThePolicyCannotBuildAreRefused) {
  const CuLayout& mi50 = kShapes[0].layout;
  for (unsigned cus : {0u, 61u, 30u}) {  // none, past the device, not a multiple of 4
    auto mask = cu_mask(mi50, CuMaskPolicy::kSpread, cus);
    ASSERT_FALSE(mask.is_ok()) << cus;
    EXPECT_EQ(mask.status().code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_TRUE(cu_mask(mi50, CuMaskPolicy::kPack, 30).is_ok());
  EXPECT_FALSE(cu_mask(kShapes[3].layout, CuMaskPolicy::kPack, 3).is_ok()) << "half a pair";
}

TEST(CuMaskTest, SharesRoundToTheNearestGranule) {
  struct Case {
    int shape;
    CuMaskPolicy policy;
    double percent;
    unsigned cus;
  };
  const Case cases[] = {
      {0, CuMaskPolicy::kSpread, 50, 32},   // 30 CUs = 7.5 granules of 4: halves up
      {0, CuMaskPolicy::kPack, 50, 30},     //
      {0, CuMaskPolicy::kSpread, 25, 16},   // 15 -> 16
      {0, CuMaskPolicy::kSpread, 1, 4},     // never below one granule
      {0, CuMaskPolicy::kPack, 0.1, 1},     //
      {0, CuMaskPolicy::kSpread, 100, 60},  //
      {1, CuMaskPolicy::kSpread, 50, 64},   // MI100: 60 = 7.5 x 8
      {1, CuMaskPolicy::kPack, 10, 12},     //
      {2, CuMaskPolicy::kSpread, 50, 56},   // MI210: 52 = 6.5 x 8
      {2, CuMaskPolicy::kPack, 50, 52},     //
      {2, CuMaskPolicy::kSpread, 99, 104},  // 102.96 -> 12.87 x 8 -> 13 x 8
      {3, CuMaskPolicy::kPack, 10, 8},      // 8 CUs = 4 pairs
      {3, CuMaskPolicy::kSpread, 10, 8},    //
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(kShapes[c.shape].name) + " " +
                 std::string(cu_mask_policy_name(c.policy)) + " " + std::to_string(c.percent));
    auto cus = cu_count_for_percent(c.percent, kShapes[c.shape].layout, c.policy);
    ASSERT_TRUE(cus.is_ok()) << cus.status().to_string();
    EXPECT_EQ(*cus, c.cus);
  }
}

// Every share in 0.1% steps: a positive multiple of the granule within half a granule of the
// share (or the minimum), and the share of a count finds that count again.
TEST(CuMaskTest, EveryShareIsAGranuleMultipleNearItAndRoundTrips) {
  for (const Shape& shape : kShapes) {
    for (CuMaskPolicy policy : kPolicies) {
      SCOPED_TRACE(std::string(shape.name) + " " + std::string(cu_mask_policy_name(policy)));
      const unsigned granule = cu_granule(shape.layout, policy);
      for (int tenths = 1; tenths <= 1000; ++tenths) {
        const double percent = tenths / 10.0;
        auto cus = cu_count_for_percent(percent, shape.layout, policy);
        ASSERT_TRUE(cus.is_ok()) << percent;
        ASSERT_GE(*cus, granule);
        ASSERT_LE(*cus, shape.layout.cu_count);
        ASSERT_EQ(*cus % granule, 0u);
        const double wanted = percent / 100.0 * shape.layout.cu_count;
        if (wanted >= granule) {
          ASSERT_LE(std::abs(*cus - wanted), granule / 2.0 + 1e-9) << percent;
        }
      }
      for (unsigned n = granule; n <= shape.layout.cu_count; n += granule) {
        auto back =
            cu_count_for_percent(percent_for_cu_count(n, shape.layout), shape.layout, policy);
        ASSERT_TRUE(back.is_ok());
        EXPECT_EQ(*back, n);
      }
    }
  }
}

TEST(CuMaskTest, SharesOutsideTheDeviceAreRefused) {
  for (double percent : {0.0, -1.0, 100.5, std::nan("")}) {
    auto cus = cu_count_for_percent(percent, kShapes[0].layout, CuMaskPolicy::kSpread);
    ASSERT_FALSE(cus.is_ok()) << percent;
    EXPECT_EQ(cus.status().code(), ErrorCode::kInvalidArgument);
  }
}

TEST(CuMaskTest, LayoutsThatDoNotDivideEvenlyAreRefused) {
  struct Case {
    CuLayout layout;
    const char* what;
  };
  const Case cases[] = {
      {{0, 4, false}, "0 CUs"},
      {{kMaxCus + 1, 1, false}, "1025 CUs"},
      {{60, 0, false}, "0 shader engines"},
      {{64, kMaxShaderEngines + 1, false}, "65 shader engines"},
      {{60, 8, false}, "60 CUs do not divide into 8 shader engines"},
      {{60, 4, true}, "15 CUs per shader engine: a WGP part has CU pairs"},
  };
  for (const Case& c : cases) {
    Status s = check_cu_layout(c.layout);
    ASSERT_FALSE(s.is_ok()) << c.what;
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(s.message().find(c.what), std::string::npos) << s.message();
  }
  for (const Shape& shape : kShapes) EXPECT_TRUE(check_cu_layout(shape.layout).is_ok());
}

TEST(CuMaskTest, ShaderEnginesComeFromTheTableOrTheConfig) {
  auto mi50 = resolve_cu_layout({"MI50", 60, 906}, {});
  ASSERT_TRUE(mi50.is_ok()) << mi50.status().to_string();
  EXPECT_EQ(mi50->shader_engines, 4u);
  EXPECT_FALSE(mi50->wgp);
  auto mi100 = resolve_cu_layout({"MI100", 120, 908}, {});
  ASSERT_TRUE(mi100.is_ok());
  EXPECT_EQ(mi100->shader_engines, 8u);
  auto mi210 = resolve_cu_layout({"MI210", 104, 910}, {});
  ASSERT_TRUE(mi210.is_ok());
  EXPECT_EQ(mi210->shader_engines, 8u);
  EXPECT_EQ(mi210->cu_count, 104u);

  auto navi = resolve_cu_layout({"RX 6800", 60, 1030}, {});
  ASSERT_FALSE(navi.is_ok());
  EXPECT_EQ(navi.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(navi.status().message().find("shader engine count of RX 6800 (gfx1030, 60 CUs) is "
                                         "not known: set [backend.cumask] shader_engines"),
            std::string::npos)
      << navi.status().message();
  auto navi_set = resolve_cu_layout({"RX 6800", 60, 1030}, CuLayoutConfig{3, std::nullopt});
  ASSERT_TRUE(navi_set.is_ok()) << navi_set.status().to_string();
  EXPECT_TRUE(navi_set->wgp) << "gfx10+ is a WGP part";
  auto navi_cu = resolve_cu_layout({"RX 6800", 60, 1030}, CuLayoutConfig{3, false});
  ASSERT_TRUE(navi_cu.is_ok());
  EXPECT_FALSE(navi_cu->wgp);

  auto unknown = resolve_cu_layout({"gpu", 60, 0}, {});
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.status().message().find("architecture not reported"), std::string::npos);
  auto overridden = resolve_cu_layout({"MI50", 60, 906}, CuLayoutConfig{2, std::nullopt});
  ASSERT_TRUE(overridden.is_ok());
  EXPECT_EQ(overridden->shader_engines, 2u) << "the config wins over the table";
  auto bad = resolve_cu_layout({"MI50", 60, 906}, CuLayoutConfig{7, std::nullopt});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("MI50 (gfx906, 60 CUs)"), std::string::npos)
      << bad.status().message();
}

// The CUs a slice of `cus` at `offset` holds, derived from the bit layout the other way round:
// bit b is CU unit u = b / g, whose position in the policy's order is u itself (spread) or
// engine(u) x units per engine + its index in the engine (pack); the slice holds the positions
// offset .. offset + cus - 1, wrapped.
std::vector<bool> expected_bits(const CuLayout& layout, CuMaskPolicy policy, unsigned cus,
                                unsigned offset) {
  const unsigned g = layout.wgp ? 2 : 1;
  const unsigned units = layout.cu_count / g;
  const unsigned engines = layout.shader_engines;
  std::vector<bool> bits(layout.cu_count, false);
  for (unsigned b = 0; b < layout.cu_count; ++b) {
    const unsigned u = b / g;
    const unsigned position =
        policy == CuMaskPolicy::kSpread ? u : (u % engines) * (units / engines) + u / engines;
    bits[b] = (position + units - offset / g) % units < cus / g;
  }
  return bits;
}

// Every count at every offset, both policies, every shape (MI50 60 CUs / 4 engines, MI100 120 / 8,
// MI210 104 / 8, and a WGP part): the bits are those of the positions from the offset on, spread
// stays balanced wherever it starts, pack fills the engines in order from the offset's engine,
// a slice and the rest of the device from its end tile the device, and CU pairs stay together.
TEST(CuMaskTest, EveryCountAtEveryOffsetHoldsThePositionsFromTheOffset) {
  for (const Shape& shape : kShapes) {
    const CuLayout& layout = shape.layout;
    const unsigned n = layout.cu_count;
    const unsigned engines = layout.shader_engines;
    const unsigned per_engine = n / engines;
    const std::vector<uint32_t> full = *cu_mask(layout, CuMaskPolicy::kSpread, n);
    for (CuMaskPolicy policy : kPolicies) {
      const unsigned granule = cu_granule(layout, policy);
      for (unsigned offset = 0; offset < n; offset += granule) {
        for (unsigned cus = granule; cus <= n; cus += granule) {
          SCOPED_TRACE(std::string(shape.name) + " " + std::string(cu_mask_policy_name(policy)) +
                       " " + std::to_string(cus) + " CUs at " + std::to_string(offset));
          auto mask = cu_mask(layout, policy, cus, offset);
          ASSERT_TRUE(mask.is_ok()) << mask.status().to_string();
          ASSERT_EQ(mask->size(), (n + 31) / 32);
          ASSERT_EQ(cu_mask_count(*mask), cus);
          const std::vector<bool> expected = expected_bits(layout, policy, cus, offset);
          for (unsigned b = 0; b < mask->size() * 32; ++b) {
            ASSERT_EQ(bit(*mask, b), b < n && expected[b]) << "bit " << b;
          }
          const std::vector<unsigned> counts = cus_per_engine(layout, *mask);
          if (policy == CuMaskPolicy::kSpread) {
            for (unsigned c : counts) ASSERT_EQ(c, cus / engines) << "unbalanced";
          } else {
            // Engine by engine from the offset's, the first partly (from the offset), then whole.
            std::vector<unsigned> fill(engines, 0);
            unsigned left = cus;
            unsigned position = offset;
            while (left > 0) {
              const unsigned e = (position / per_engine) % engines;
              const unsigned take = std::min(left, per_engine - position % per_engine);
              fill[e] += take;
              left -= take;
              position = (position + take) % n;
            }
            ASSERT_EQ(counts, fill);
          }
          if (cus < n) {
            auto rest = cu_mask(layout, policy, n - cus, (offset + cus) % n);
            ASSERT_TRUE(rest.is_ok()) << rest.status().to_string();
            ASSERT_EQ(cu_mask_overlap(*mask, *rest), 0u);
            std::vector<uint32_t> both = *mask;
            for (size_t w = 0; w < both.size(); ++w) both[w] |= (*rest)[w];
            ASSERT_EQ(both, full) << "a slice and the rest of the device tile it";
          } else {
            ASSERT_EQ(*mask, full) << "the whole device from any offset";
          }
          if (layout.wgp) {
            for (unsigned i = 0; i < n; i += 2) ASSERT_EQ(bit(*mask, i), bit(*mask, i + 1)) << i;
          }
        }
      }
    }
  }
}

TEST(CuMaskTest, OffsetsThatAreNoWholeGranuleOrPastTheDeviceAreRefused) {
  const CuLayout& mi50 = kShapes[0].layout;
  for (unsigned offset : {2u, 60u, 64u}) {
    auto mask = cu_mask(mi50, CuMaskPolicy::kSpread, 8, offset);
    ASSERT_FALSE(mask.is_ok()) << offset;
    EXPECT_EQ(mask.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(mask.status().message().find("CU offset " + std::to_string(offset)),
              std::string::npos)
        << mask.status().message();
  }
  EXPECT_TRUE(cu_mask(mi50, CuMaskPolicy::kPack, 8, 59).is_ok()) << "pack: any CU";
  EXPECT_FALSE(cu_mask(kShapes[3].layout, CuMaskPolicy::kPack, 2, 1).is_ok()) << "half a pair";
}

TEST(CuMaskTest, SpreadSlicesAtAnOffsetTakeTheNextBits) {
  // MI50: 20 CUs from CU 20, then 24 from 40: the second wraps past CU 59 onto CUs 0-3.
  auto second = cu_mask(kShapes[0].layout, CuMaskPolicy::kSpread, 20, 20);
  ASSERT_TRUE(second.is_ok());
  EXPECT_EQ(cu_mask_hex(*second), "0xfffff00000");
  auto third = cu_mask(kShapes[0].layout, CuMaskPolicy::kSpread, 24, 40);
  ASSERT_TRUE(third.is_ok());
  EXPECT_EQ(cu_mask_hex(*third), "0xfffff000000000f");
  EXPECT_EQ(cus_per_engine(kShapes[0].layout, *third), (std::vector<unsigned>{6, 6, 6, 6}));
  // MI100 pack: 20 CUs from CU 15 are engine 1's 15 CUs and 5 of engine 2's.
  auto pack = cu_mask(kShapes[1].layout, CuMaskPolicy::kPack, 20, 15);
  ASSERT_TRUE(pack.is_ok());
  EXPECT_EQ(cus_per_engine(kShapes[1].layout, *pack),
            (std::vector<unsigned>{0, 15, 5, 0, 0, 0, 0, 0}));
}

// The device's models one after the other from their rounded initial shares; past 100% the
// next starts over at CU 0 and overlaps.
TEST(CuMaskTest, PlacementPutsEachModelAfterTheOneBefore) {
  const CuLayout& mi50 = kShapes[0].layout;
  auto placed = cu_placement(mi50, CuMaskPolicy::kSpread, {30, 30, 40});
  ASSERT_TRUE(placed.is_ok()) << placed.status().to_string();
  ASSERT_EQ(placed->size(), 3u);
  // 30% = 18 CUs: 4.5 granules of 4, halves up to 20.
  EXPECT_EQ((*placed)[0].offset, 0u);
  EXPECT_EQ((*placed)[0].cus, 20u);
  EXPECT_EQ((*placed)[1].offset, 20u);
  EXPECT_EQ((*placed)[1].cus, 20u);
  EXPECT_EQ((*placed)[2].offset, 40u);
  EXPECT_EQ((*placed)[2].cus, 24u) << "rounding took 4 CUs more than the device has";
  auto mask = [&](const CuRange& r) { return *cu_mask(mi50, CuMaskPolicy::kSpread, r.cus, r.offset); };
  EXPECT_EQ(cu_mask_overlap(mask((*placed)[0]), mask((*placed)[1])), 0u);
  EXPECT_EQ(cu_mask_overlap(mask((*placed)[2]), mask((*placed)[0])), 4u);

  // MI210 pack, 50 + 50 + 25: the third wraps to CU 0 and overlaps the first entirely.
  auto over = cu_placement(kShapes[2].layout, CuMaskPolicy::kPack, {50, 50, 25});
  ASSERT_TRUE(over.is_ok());
  EXPECT_EQ((*over)[1].offset, 52u);
  EXPECT_EQ((*over)[2].offset, 0u);
  EXPECT_EQ((*over)[2].cus, 26u);

  // MI100 spread: every model starts on a whole round of the 8 engines.
  auto mi100 = cu_placement(kShapes[1].layout, CuMaskPolicy::kSpread, {10, 15, 20, 55});
  ASSERT_TRUE(mi100.is_ok());
  unsigned next = 0;
  for (const CuRange& r : *mi100) {
    EXPECT_EQ(r.offset % 8, 0u);
    EXPECT_EQ(r.offset, next % 120);
    next += r.cus;
  }

  auto bad = cu_placement(mi50, CuMaskPolicy::kSpread, {30, 0});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("cumask model 1"), std::string::npos)
      << bad.status().message();
}

TEST(CuMaskTest, HexIsMostSignificantWordFirstWithoutLeadingZeros) {
  EXPECT_EQ(cu_mask_hex({}), "0x0");
  EXPECT_EQ(cu_mask_hex({0, 0}), "0x0");
  EXPECT_EQ(cu_mask_hex({0x1u, 0}), "0x1");
  EXPECT_EQ(cu_mask_hex({0x1u, 0x2u}), "0x200000001");
  EXPECT_EQ(cu_mask_count({0xffu, 0x1u}), 9u);
}

}  // namespace
}  // namespace sliceserve::backends
