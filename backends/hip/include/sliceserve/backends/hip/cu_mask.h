#pragma once
// CU masks: which compute units of an AMD GPU a cumask slice's stream may run on.
//
// A mask is the uint32 array hipExtStreamCreateWithCUMask takes: bit i of word i / 32 enables
// "CU i" of the user's numbering. That numbering is not physical: the kernel driver (amdkfd,
// mqd_symmetrically_map_cu_mask) deals the set bits out round-robin over the shader engines, so
// bit 0 -> SE0's first CU, bit 1 -> SE1's first CU, ..., bit #SE -> SE0's second CU (and, inside
// an engine, over its shader arrays the same way). On WGP parts (gfx10+) CUs are enabled in
// pairs: bits 2k and 2k+1 are one work-group processor, dealt out as one unit. So, with
// `unit` = a CU (or a CU pair on WGP parts) and E engines:
//
//   unit u = bits [u*g, u*g + g)  (g = 1, or 2 on WGP parts),  engine(u) = u mod E.
//
// Two policies (docs/amd.md shows the layouts):
//   - spread: the lowest units, 0 .. n-1. Balanced: every engine gets n / E of them. Its
//     granularity is one unit per engine (E units), so every engine holds the same count.
//   - pack:   fill engine 0 first (units 0, E, 2E, ...), then engine 1, and so on; granularity one
//     unit. A slice that fits in one engine stays in it.
// A share p% becomes the nearest multiple of the policy's granularity (halves up), at least one
// granule, at most the device. A mask is never all-zero (the runtime rejects it; invalid masks
// have hung it).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

enum class CuMaskPolicy { kSpread, kPack };

// "spread" / "pack", as [backend.cumask] policy and the worker's --cu-policy name them.
std::string_view cu_mask_policy_name(CuMaskPolicy policy);
Result<CuMaskPolicy> parse_cu_mask_policy(std::string_view name);

// The CU layout the masks are built for.
struct CuLayout {
  unsigned cu_count = 0;        // CUs the runtime may use (hipDeviceAttributeMultiprocessorCount)
  unsigned shader_engines = 0;  // >= 1
  bool wgp = false;             // CUs come in pairs (gfx10+): both bits of a pair go together
};

inline constexpr unsigned kMaxCus = 1024;          // 32 mask words
inline constexpr unsigned kMaxShaderEngines = 64;  // MI300X: 8 XCDs x 4 engines = 32

// cu_count in 1..kMaxCus, shader_engines in 1..kMaxShaderEngines and dividing cu_count (so every
// engine has as many CUs, which both policies assume), and on WGP parts an even count per engine.
// kInvalidArgument naming what is wrong.
Status check_cu_layout(const CuLayout& layout);

// What the device reports, and what [backend.cumask] says where HIP reports nothing.
struct CuDeviceFacts {
  std::string name;       // for messages
  unsigned cu_count = 0;  // from the runtime
  int gcn_arch = 0;       // 906, 908, 910 (gfx90a), 1030, ...; 0: not reported
};
struct CuLayoutConfig {
  unsigned shader_engines = 0;  // 0: from the architecture's table
  std::optional<bool> wgp;      // unset: from the architecture (gfx10+ are WGP parts)
};

// HIP does not report shader engines, so they come from the config or, for the architectures
// whose layout is fixed, from a table: gfx900/gfx906 (Vega, MI50/MI60) 4, gfx908 (MI100) and
// gfx90a (MI210/MI250) 8. WGP mode: gfx10xx and later. kInvalidArgument when the engines are
// neither configured nor in the table ("set [backend.cumask] shader_engines"), or the layout fails
// check_cu_layout.
Result<CuLayout> resolve_cu_layout(const CuDeviceFacts& facts, const CuLayoutConfig& config);

// CUs per unit (1, or 2 on WGP parts) and the policy's granularity in CUs.
unsigned cu_unit(const CuLayout& layout);
unsigned cu_granule(const CuLayout& layout, CuMaskPolicy policy);

// The CU count of a p% slice, rounded to the policy's granularity; kInvalidArgument for p outside
// (0, 100] or a bad layout.
Result<unsigned> cu_count_for_percent(double percent, const CuLayout& layout, CuMaskPolicy policy);
double percent_for_cu_count(unsigned cus, const CuLayout& layout);

// Placement. Each policy orders the device's units: spread's order is unit 0, 1, 2, ... (the
// driver's round-robin over the engines), pack's is engine 0's units, then engine 1's, ... A
// slice of n CUs at offset o holds the n CUs of positions o, o+1, ... in that order, wrapping
// round the end of the device. Offsets are whole granules, so a spread slice at any offset is as
// balanced as at 0 (every whole round of E units gives each engine one) and a pack slice fills
// engines in order.
//
// The mask of `cus` CUs under the policy, from CU position `offset`: ceil(cu_count / 32) words.
// kInvalidArgument unless cus is a positive multiple of the policy's granularity, at most the
// device, and offset a multiple of it below the device.
Result<std::vector<uint32_t>> cu_mask(const CuLayout& layout, CuMaskPolicy policy, unsigned cus,
                                      unsigned offset = 0);

// Where the slices of one device's cumask models sit: model i's initial share rounded to the
// policy (cu_count_for_percent) from the position where model i-1's ends (model 0 at 0), modulo
// the device. Shares adding up to more than 100% wrap round and overlap.
struct CuRange {
  unsigned offset = 0;  // first CU position, a whole number of granules
  unsigned cus = 0;
};
Result<std::vector<CuRange>> cu_placement(const CuLayout& layout, CuMaskPolicy policy,
                                          const std::vector<double>& shares);

// CUs two masks share.
unsigned cu_mask_overlap(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b);

// Set bits of a mask, and how many of them each engine gets (bits past cu_count ignored, as the
// driver does): a slice's real placement.
unsigned cu_mask_count(const std::vector<uint32_t>& mask);
std::vector<unsigned> cus_per_engine(const CuLayout& layout, const std::vector<uint32_t>& mask);
// "0x3fffffff", the most significant word first, without leading zeros (ROC_GLOBAL_CU_MASK's
// notation).
std::string cu_mask_hex(const std::vector<uint32_t>& mask);

}  // namespace sliceserve::backends
