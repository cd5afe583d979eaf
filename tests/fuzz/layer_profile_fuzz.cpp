// libFuzzer entry point for the layer profile parser (KRISP right-sizing): any bytes give a
// profile or an error, never a crash; a profile that parses holds what the parser promises
// (increasing counts, one latency per count, finite latencies, measured right sizes, unique
// labels) and formats back to text that parses to the same profile.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string_view>

#include "sliceserve/backends/layer_profile.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sliceserve::backends;
  auto profile = parse_layer_profile({reinterpret_cast<const char*>(data), size});
  if (!profile.is_ok()) return 0;
  check(!profile->units.empty());
  for (size_t i = 1; i < profile->units.size(); ++i) {
    check(profile->units[i] > profile->units[i - 1]);
  }
  std::set<std::string_view> labels;
  for (const LayerProfileEntry& layer : profile->layers) {
    check(labels.insert(layer.label).second);
    check(layer.ms.size() == profile->units.size());
    for (double ms : layer.ms) check(std::isfinite(ms) && ms >= 0);
    bool measured = false;
    for (unsigned u : profile->units) measured = measured || u == layer.right_size;
    check(measured);
  }
  auto again = parse_layer_profile(format_layer_profile(*profile));
  check(again.is_ok());
  check(format_layer_profile(*again) == format_layer_profile(*profile));
  return 0;
}
