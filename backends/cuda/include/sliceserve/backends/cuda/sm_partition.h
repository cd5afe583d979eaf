#pragma once
// How a slice percent becomes a number of SMs for a green context. Pure functions: no device.
//
// A green context's SM group must hold at least `min_partition` SMs and a multiple of
// `alignment` SMs. The driver reports both in the device's SM resource (CUDA 12.8+ headers:
// minSmPartitionSize, smCoscheduledAlignment); older drivers leave them 0 and the guideline
// table by compute capability applies (NVIDIA's green-context docs):
//   9.0+ (Hopper, Blackwell): min 8, multiples of 8;  8.x: min 4, multiples of 2;
//   6.x, 7.x: min 2, multiples of 2.
//
// Rounding rule: share = percent / 100 x device SMs; the slice gets the multiple of `alignment`
// nearest to share (halves round up), at least min_partition rounded up to the alignment, and
// never 0. A count that reaches or passes the device's SM count is the whole device: exactly
// `sm_count` SMs, built from the device's resource without a split (so 100% of a 132-SM H100 is
// 132 SMs although 132 is not a multiple of 8, and 99% is 128). A device smaller than the
// minimum partition can only be used whole.

#include <cstddef>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

struct SmGranularity {
  unsigned sm_count = 0;       // SMs of the device, > 0
  unsigned min_partition = 0;  // smallest group the driver builds, > 0
  unsigned alignment = 0;      // a group's SM count is a multiple of this, > 0
};

// The granularity of a device with `sm_count` SMs and compute capability major.minor. Non-zero
// `reported_min` / `reported_alignment` (what the driver's SM resource says) win over the table.
// kInvalidArgument for sm_count 0; kUnavailable below compute capability 6.0 when the driver
// reported nothing (green contexts are not documented there).
Result<SmGranularity> sm_granularity(unsigned sm_count, int cc_major, int cc_minor,
                                     unsigned reported_min = 0, unsigned reported_alignment = 0);

// Checks the fields (all > 0). Every function below validates its granularity with it.
Status check_sm_granularity(const SmGranularity& granularity);

// kInvalidArgument unless percent is in (0, 100] (NaN included).
Status check_slice_percent(double percent);

// The SM count a slice of `percent` gets, by the rounding rule above. kInvalidArgument unless
// percent is in (0, 100].
Result<unsigned> sm_count_for_percent(double percent, const SmGranularity& granularity);

// The share of the device `sms` SMs are, in percent (100 x sms / device SMs).
double percent_for_sm_count(unsigned sms, const SmGranularity& granularity);

// Every SM count a green context of the device can hold, ascending: the multiples of the
// alignment from the minimum partition (rounded up to the alignment) below the device's count, then
// the whole device. For each, sm_count_for_percent(percent_for_sm_count(n)) is n: the counts
// `slicectl profile --device cuda:N` may measure. kInvalidArgument for a bad granularity.
Result<std::vector<unsigned>> green_context_sizes(const SmGranularity& granularity);

// The distinct SM counts a pool of percents needs, ascending: the green contexts to build.
Result<std::vector<unsigned>> distinct_sm_counts(const std::vector<double>& percents,
                                                 const SmGranularity& granularity);

// Which entry of a pool (entry i holds entry_sms[i] SMs) serves `percent`: the first entry with
// exactly the rounded SM count. kNotFound when none has it (prepare it first).
Result<size_t> pool_entry_for_percent(double percent, const std::vector<unsigned>& entry_sms,
                                      const SmGranularity& granularity);

}  // namespace sliceserve::backends
