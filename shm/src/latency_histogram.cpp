#include "sliceserve/shm/latency_histogram.h"

#include <bit>

namespace sliceserve::shm {
namespace {
constexpr uint64_t kLinear = 16;     // buckets 0..15 are exact microseconds
constexpr uint64_t kSubBuckets = 8;  // per power of two above that
}  // namespace

size_t latency_bucket(uint64_t micros) {
  if (micros < kLinear) return size_t(micros);
  unsigned log2 = 63 - unsigned(std::countl_zero(micros));    // >= 4
  uint64_t sub = (micros >> (log2 - 3)) & (kSubBuckets - 1);  // next 3 bits
  size_t bucket = kLinear + (log2 - 4) * kSubBuckets + sub;
  return bucket < kLatencyBuckets ? bucket : kLatencyBuckets - 1;
}

uint64_t latency_bucket_floor(size_t bucket) {
  if (bucket < kLinear) return bucket;
  uint64_t log2 = (bucket - kLinear) / kSubBuckets + 4;
  uint64_t sub = (bucket - kLinear) % kSubBuckets;
  return (uint64_t{1} << log2) + (sub << (log2 - 3));
}

LatencyCounts snapshot(const std::atomic<uint64_t> (&hist)[kLatencyBuckets]) {
  LatencyCounts out{};
  for (size_t i = 0; i < kLatencyBuckets; ++i) out[i] = hist[i].load(std::memory_order_relaxed);
  return out;
}

uint64_t count_within_us(const LatencyCounts& counts, uint64_t limit_us) {
  uint64_t within = 0;
  for (size_t i = 0; i + 1 < kLatencyBuckets && latency_bucket_floor(i + 1) <= limit_us; ++i) {
    within += counts[i];
  }
  return within;
}

uint64_t percentile_us(const LatencyCounts& counts, double q) {
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  if (total == 0) return 0;
  auto rank = uint64_t(q * double(total) + 0.999999);
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (size_t i = 0; i < kLatencyBuckets; ++i) {
    seen += counts[i];
    if (seen >= rank) {
      // Upper edge of the bucket: a percentile is never reported lower than it was.
      return i + 1 < kLatencyBuckets ? latency_bucket_floor(i + 1) : latency_bucket_floor(i);
    }
  }
  return latency_bucket_floor(kLatencyBuckets - 1);
}

LatencyCounts difference(const LatencyCounts& after, const LatencyCounts& before) {
  LatencyCounts out{};
  for (size_t i = 0; i < kLatencyBuckets; ++i) {
    out[i] = after[i] >= before[i] ? after[i] - before[i] : 0;
  }
  return out;
}

}  // namespace sliceserve::shm
