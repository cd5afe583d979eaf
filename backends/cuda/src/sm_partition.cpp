#include "sliceserve/backends/cuda/sm_partition.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace sliceserve::backends {
namespace {

unsigned round_up(unsigned value, unsigned multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

}  // namespace

Status check_slice_percent(double percent) {
  if (!(percent > 0.0 && percent <= 100.0)) {  // also rejects NaN
    return Status(ErrorCode::kInvalidArgument,
                  "greenctx slice percent must be in (0, 100], got " + std::to_string(percent));
  }
  return Status::ok();
}

Result<SmGranularity> sm_granularity(unsigned sm_count, int cc_major, int cc_minor,
                                     unsigned reported_min, unsigned reported_alignment) {
  if (sm_count == 0) {
    return Status(ErrorCode::kInvalidArgument, "greenctx: the device reports 0 SMs");
  }
  SmGranularity granularity{sm_count, reported_min, reported_alignment};
  if (reported_min == 0 || reported_alignment == 0) {
    unsigned table_min = 0;
    unsigned table_alignment = 0;
    if (cc_major >= 9) {
      table_min = 8;
      table_alignment = 8;
    } else if (cc_major == 8) {
      table_min = 4;
      table_alignment = 2;
    } else if (cc_major >= 6) {
      table_min = 2;
      table_alignment = 2;
    } else {
      return Status(ErrorCode::kUnavailable,
                    "greenctx: compute capability " + std::to_string(cc_major) + "." +
                        std::to_string(cc_minor) +
                        " has no documented SM partitioning (green contexts need 6.0+)");
    }
    if (reported_min == 0) granularity.min_partition = table_min;
    if (reported_alignment == 0) granularity.alignment = table_alignment;
  }
  return granularity;
}

Status check_sm_granularity(const SmGranularity& granularity) {
  if (granularity.sm_count == 0 || granularity.min_partition == 0 || granularity.alignment == 0) {
    return Status(ErrorCode::kInvalidArgument,
                  "greenctx: SM granularity needs sm_count, min_partition and alignment > 0 (got " +
                      std::to_string(granularity.sm_count) + ", " +
                      std::to_string(granularity.min_partition) + ", " +
                      std::to_string(granularity.alignment) + ")");
  }
  return Status::ok();
}

Result<unsigned> sm_count_for_percent(double percent, const SmGranularity& granularity) {
  RETURN_IF_ERROR(check_slice_percent(percent));
  RETURN_IF_ERROR(check_sm_granularity(granularity));
  const double share = percent / 100.0 * granularity.sm_count;
  // Nearest multiple; the epsilon keeps a share computed back from an SM count (64.0000001 or
  // 63.9999999) on that count, so prepare(percent_for_sm_count(n)) finds n again.
  const double multiples = std::floor(share / granularity.alignment + 0.5 + 1e-9);
  unsigned sms = unsigned(std::max(0.0, multiples)) * granularity.alignment;
  sms = std::max(sms, round_up(granularity.min_partition, granularity.alignment));
  return std::min(sms, granularity.sm_count);
}

double percent_for_sm_count(unsigned sms, const SmGranularity& granularity) {
  if (granularity.sm_count == 0) return 0;
  return 100.0 * sms / granularity.sm_count;
}

Result<std::vector<unsigned>> green_context_sizes(const SmGranularity& granularity) {
  RETURN_IF_ERROR(check_sm_granularity(granularity));
  std::vector<unsigned> sizes;
  for (unsigned n = round_up(granularity.min_partition, granularity.alignment);
       n < granularity.sm_count; n += granularity.alignment) {
    sizes.push_back(n);
  }
  sizes.push_back(granularity.sm_count);
  return sizes;
}

Result<std::vector<unsigned>> distinct_sm_counts(const std::vector<double>& percents,
                                                 const SmGranularity& granularity) {
  std::vector<unsigned> counts;
  for (double percent : percents) {
    ASSIGN_OR_RETURN(unsigned sms, sm_count_for_percent(percent, granularity));
    counts.push_back(sms);
  }
  std::sort(counts.begin(), counts.end());
  counts.erase(std::unique(counts.begin(), counts.end()), counts.end());
  return counts;
}

Result<size_t> pool_entry_for_percent(double percent, const std::vector<unsigned>& entry_sms,
                                      const SmGranularity& granularity) {
  ASSIGN_OR_RETURN(unsigned sms, sm_count_for_percent(percent, granularity));
  for (size_t i = 0; i < entry_sms.size(); ++i) {
    if (entry_sms[i] == sms) return i;
  }
  return Status(ErrorCode::kNotFound, "greenctx pool has no entry of " + std::to_string(sms) +
                                          " SMs for " + std::to_string(percent) + "%");
}

}  // namespace sliceserve::backends
