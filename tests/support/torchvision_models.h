#pragma once
// The torchvision exports scripts/models caches under models/ at reduced input sizes
// (NAME-32.onnx, NAME-64.onnx; scripts/test builds them before the tests run).

#include <algorithm>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace sliceserve::testing {

// The models/NAME-<size>.onnx files for each of `sizes` ("32", "64"), sorted; empty when none.
inline std::vector<std::filesystem::path> reduced_models(
    std::initializer_list<std::string_view> sizes = {"32", "64"}) {
  std::vector<std::filesystem::path> files;
  const std::filesystem::path dir = std::filesystem::path(SLICESERVE_SOURCE_DIR) / "models";
  if (!std::filesystem::is_directory(dir)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string stem = entry.path().stem().string();
    const bool reduced = std::any_of(sizes.begin(), sizes.end(), [&](std::string_view size) {
      return stem.ends_with("-" + std::string(size));
    });
    if (entry.path().extension() == ".onnx" && reduced) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace sliceserve::testing
