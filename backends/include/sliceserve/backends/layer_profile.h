#pragma once
// Per-layer profiles for right-sizing (KRISP): `slicectl profile` times each layer of a model at a
// range of unit counts (CUs of a cumask slice, SMs of a greenctx slice, or threads of a cpu slice)
// and writes this file; a cumask worker with `right_size = true` launches each layer on the pooled
// stream of its right_size CUs inside the model's slice. On NVIDIA the profile is a measurement
// only: no per-layer launch uses it yet (docs/nvidia.md). docs/amd.md describes the format with an
// example.
//
// The file is JSON:
//   {"format": "sliceserve-layer-profile", "version": 1,
//    "model": "resnet18-32.onnx", "model_sha256": "<64 hex digits of the .onnx bytes>",
//    "device": "hip" | "cuda" | "cpu", "batch": 1, "repeats": 5,
//    "units": [4, 8, ...],                    // strictly increasing counts measured
//    "layers": [{"label": "node 'conv1' (Conv)", "ms": [..one per unit count..],
//                "right_size": 8}, ...]}
// Parsing is strict: an unknown format or version, a missing, extra or repeated key, a value of the
// wrong type, counts that do not increase, latencies that are negative or not finite, a repeated
// label or a right_size that was not measured are each an error naming what is wrong.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/status.h"

namespace sliceserve::backends {

inline constexpr std::string_view kLayerProfileFormat = "sliceserve-layer-profile";
inline constexpr int64_t kLayerProfileVersion = 1;
// A layer's right size: the fewest units within 5% of its latency at the full slice.
inline constexpr double kRightSizeTolerance = 0.05;
inline constexpr unsigned kMaxProfileUnits = 4096;  // threads or CUs a profile may count
inline constexpr int64_t kMaxProfileBatch = 4096;

struct LayerProfileEntry {
  std::string label;       // PlanOp::label
  std::vector<double> ms;  // median latency at each of LayerProfile::units, milliseconds
  unsigned right_size = 0;
};

struct LayerProfile {
  std::string model;         // the .onnx file's name (for messages)
  std::string model_sha256;  // of its bytes, lowercase hex: a profile of another model is refused
  std::string device;        // "hip" (units are CUs), "cuda" (green contexts' SMs), "cpu" (threads)
  int64_t batch = 1;
  unsigned repeats = 1;          // timed runs per count, median taken
  std::vector<unsigned> units;   // strictly increasing
  std::vector<LayerProfileEntry> layers;

  // The layer labelled `label`, or null.
  const LayerProfileEntry* find(std::string_view label) const;
};

// The smallest count of `units` (strictly increasing) whose latency is within `tolerance` of the
// latency at the largest count (the full slice). A layer faster on fewer units gets the fewest
// that are within it. kInvalidArgument for empty or mismatched spans, non-finite or negative
// latencies.
Result<unsigned> select_right_size(std::span<const unsigned> units, std::span<const double> ms,
                                   double tolerance = kRightSizeTolerance);

Result<LayerProfile> parse_layer_profile(std::string_view json);
// The JSON text of a profile (two-space indent, one layer per line); parse_layer_profile reads it
// back to an equal profile.
std::string format_layer_profile(const LayerProfile& profile);
// kNotFound for a missing file; parse errors carry the path.
Result<LayerProfile> read_layer_profile(const std::string& path);
Status write_layer_profile(const std::string& path, const LayerProfile& profile);

// SHA-256 (FIPS 180-4) of bytes, lowercase hex.
std::string sha256_hex(std::span<const std::byte> bytes);
Result<std::string> file_sha256(const std::string& path);

// kIncompatible unless the profile was measured on the model file at `model_path` (its SHA-256),
// saying which model it belongs to; kNotFound for a missing model file.
Status check_layer_profile_model(const LayerProfile& profile, const std::string& model_path);

}  // namespace sliceserve::backends
