#pragma once
// Log-linear latency buckets in microseconds: exact below 16 us, then 8 buckets per power of
// two, up to about 2^23 us (8 s); the last bucket holds everything above.

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "sliceserve/shm/layout.h"

namespace sliceserve::shm {

size_t latency_bucket(uint64_t micros);
// Lower bound in microseconds of a bucket (its representative value for percentiles).
uint64_t latency_bucket_floor(size_t bucket);

using LatencyCounts = std::array<uint64_t, kLatencyBuckets>;

LatencyCounts snapshot(const std::atomic<uint64_t> (&hist)[kLatencyBuckets]);
// Percentile (0 < q <= 1) of counts, in microseconds (bucket upper edge); 0 when empty.
uint64_t percentile_us(const LatencyCounts& counts, double q);
// Requests whose bucket lies wholly at or below `limit_us` (its upper edge; the last bucket, which
// has none, never counts): "within a latency objective", exact to one bucket.
uint64_t count_within_us(const LatencyCounts& counts, uint64_t limit_us);
// after - before, bucket by bucket (counts are monotonic).
LatencyCounts difference(const LatencyCounts& after, const LatencyCounts& before);

}  // namespace sliceserve::shm
