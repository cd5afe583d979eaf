#include "sliceserve/backends/hip/cu_mask.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>

namespace sliceserve::backends {
namespace {

// Shader engines of the architectures whose engine count does not vary between their parts.
unsigned table_shader_engines(int gcn_arch) {
  switch (gcn_arch) {
    case 900:  // Vega 10
    case 906:  // Vega 20: MI50, MI60, Radeon VII
      return 4;
    case 908:  // MI100
    case 910:  // gfx90a: MI210, MI250(X) (per GCD)
      return 8;
    default:
      return 0;
  }
}

void set_bit(std::vector<uint32_t>& mask, unsigned bit) {
  mask[bit / 32] |= uint32_t{1} << (bit % 32);
}

}  // namespace

std::string_view cu_mask_policy_name(CuMaskPolicy policy) {
  return policy == CuMaskPolicy::kPack ? "pack" : "spread";
}

Result<CuMaskPolicy> parse_cu_mask_policy(std::string_view name) {
  if (name == "spread") return CuMaskPolicy::kSpread;
  if (name == "pack") return CuMaskPolicy::kPack;
  return Status(ErrorCode::kInvalidArgument,
                fmt::format("cumask: unknown CU mask policy '{}' (spread, pack)", name));
}

Status check_cu_layout(const CuLayout& layout) {
  auto bad = [](std::string why) {
    return Status(ErrorCode::kInvalidArgument, "cumask: CU layout: " + why);
  };
  if (layout.cu_count == 0 || layout.cu_count > kMaxCus) {
    return bad(fmt::format("{} CUs (must be 1..{})", layout.cu_count, kMaxCus));
  }
  if (layout.shader_engines == 0 || layout.shader_engines > kMaxShaderEngines) {
    return bad(
        fmt::format("{} shader engines (must be 1..{})", layout.shader_engines, kMaxShaderEngines));
  }
  if (layout.cu_count % layout.shader_engines != 0) {
    return bad(fmt::format("{} CUs do not divide into {} shader engines of the same size",
                           layout.cu_count, layout.shader_engines));
  }
  if (layout.wgp && (layout.cu_count / layout.shader_engines) % 2 != 0) {
    return bad(fmt::format("{} CUs per shader engine: a WGP part has CU pairs, an even count",
                           layout.cu_count / layout.shader_engines));
  }
  return Status::ok();
}

Result<CuLayout> resolve_cu_layout(const CuDeviceFacts& facts, const CuLayoutConfig& config) {
  CuLayout layout;
  layout.cu_count = facts.cu_count;
  layout.shader_engines =
      config.shader_engines != 0 ? config.shader_engines : table_shader_engines(facts.gcn_arch);
  layout.wgp = config.wgp.value_or(facts.gcn_arch >= 1000);
  const std::string arch = facts.gcn_arch > 0 ? fmt::format("gfx{}", facts.gcn_arch)
                                              : std::string("architecture not reported");
  if (layout.shader_engines == 0) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("cumask: the shader engine count of {} ({}, {} CUs) is not known: "
                              "set [backend.cumask] shader_engines",
                              facts.name, arch, facts.cu_count));
  }
  Status checked = check_cu_layout(layout);
  if (!checked.is_ok()) {
    return checked.with_context(fmt::format("{} ({}, {} CUs)", facts.name, arch, facts.cu_count));
  }
  return layout;
}

unsigned cu_unit(const CuLayout& layout) { return layout.wgp ? 2 : 1; }

unsigned cu_granule(const CuLayout& layout, CuMaskPolicy policy) {
  return policy == CuMaskPolicy::kSpread ? cu_unit(layout) * layout.shader_engines
                                         : cu_unit(layout);
}

Result<unsigned> cu_count_for_percent(double percent, const CuLayout& layout, CuMaskPolicy policy) {
  if (!(percent > 0.0 && percent <= 100.0)) {  // also rejects NaN
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("cumask slice percent must be in (0, 100], got {}", percent));
  }
  RETURN_IF_ERROR(check_cu_layout(layout));
  const unsigned granule = cu_granule(layout, policy);
  const double share = percent / 100.0 * layout.cu_count;
  // Nearest multiple; the epsilon keeps a share computed back from a CU count (29.9999999) on
  // that count, so prepare(percent_for_cu_count(n)) finds n again.
  const double multiples = std::floor(share / granule + 0.5 + 1e-9);
  const unsigned cus = unsigned(std::max(1.0, multiples)) * granule;
  return std::min(cus, layout.cu_count);
}

double percent_for_cu_count(unsigned cus, const CuLayout& layout) {
  if (layout.cu_count == 0) return 0;
  return 100.0 * cus / layout.cu_count;
}

Result<std::vector<uint32_t>> cu_mask(const CuLayout& layout, CuMaskPolicy policy, unsigned cus,
                                      unsigned offset) {
  RETURN_IF_ERROR(check_cu_layout(layout));
  const unsigned granule = cu_granule(layout, policy);
  if (cus == 0 || cus > layout.cu_count || cus % granule != 0) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("cumask: {} CUs is no {} slice of {} CUs (a multiple of {}, at "
                              "least one)",
                              cus, cu_mask_policy_name(policy), layout.cu_count, granule));
  }
  if (offset >= layout.cu_count || offset % granule != 0) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("cumask: CU offset {} is no {} offset on {} CUs (a multiple of {} "
                              "below the device)",
                              offset, cu_mask_policy_name(policy), layout.cu_count, granule));
  }
  const unsigned g = cu_unit(layout);
  const unsigned engines = layout.shader_engines;
  const unsigned units = layout.cu_count / g;
  const unsigned units_per_engine = units / engines;
  std::vector<uint32_t> mask((layout.cu_count + 31) / 32, 0);
  for (unsigned i = 0; i < cus / g; ++i) {
    const unsigned n = (offset / g + i) % units;  // the slice's i-th position, wrapped
    // spread: position n is unit n. pack: engine n / units_per_engine, its (n mod ...)-th unit.
    const unsigned unit = policy == CuMaskPolicy::kSpread
                              ? n
                              : n / units_per_engine + (n % units_per_engine) * engines;
    for (unsigned k = 0; k < g; ++k) set_bit(mask, unit * g + k);
  }
  return mask;
}

Result<std::vector<CuRange>> cu_placement(const CuLayout& layout, CuMaskPolicy policy,
                                          const std::vector<double>& shares) {
  std::vector<CuRange> ranges;
  uint64_t next = 0;  // CUs placed so far (no wrap yet: shares may add up past the device)
  for (size_t i = 0; i < shares.size(); ++i) {
    Result<unsigned> cus = cu_count_for_percent(shares[i], layout, policy);
    if (!cus.is_ok()) return cus.status().with_context(fmt::format("cumask model {}", i));
    ranges.push_back({unsigned(next % layout.cu_count), *cus});
    next += *cus;
  }
  return ranges;
}

unsigned cu_mask_overlap(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  unsigned count = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) count += unsigned(std::popcount(a[i] & b[i]));
  return count;
}

unsigned cu_mask_count(const std::vector<uint32_t>& mask) {
  unsigned count = 0;
  for (uint32_t word : mask) count += unsigned(std::popcount(word));
  return count;
}

std::vector<unsigned> cus_per_engine(const CuLayout& layout, const std::vector<uint32_t>& mask) {
  std::vector<unsigned> per_engine(layout.shader_engines, 0);
  if (layout.shader_engines == 0) return per_engine;
  const unsigned g = cu_unit(layout);
  for (unsigned bit = 0; bit < layout.cu_count && bit / 32 < mask.size(); ++bit) {
    if ((mask[bit / 32] >> (bit % 32)) & 1u) ++per_engine[(bit / g) % layout.shader_engines];
  }
  return per_engine;
}

std::string cu_mask_hex(const std::vector<uint32_t>& mask) {
  size_t top = mask.size();
  while (top > 0 && mask[top - 1] == 0) --top;
  if (top == 0) return "0x0";
  std::string hex = fmt::format("0x{:x}", mask[top - 1]);
  for (size_t i = top - 1; i-- > 0;) hex += fmt::format("{:08x}", mask[i]);
  return hex;
}

}  // namespace sliceserve::backends
