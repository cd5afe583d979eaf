#pragma once
// ONNX's backend node tests (Debian libonnx-testdata): the ones whose ops the engine supports.

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "sliceserve/worker/engine/shape_inference.h"

namespace sliceserve::testing {

inline constexpr const char* kOnnxNodeTestDir = "/usr/share/libonnx-testdata/data/node";

inline bool read_proto(const std::filesystem::path& path, google::protobuf::MessageLite& message) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return message.ParseFromString(bytes);
}

struct NodeTest {
  std::filesystem::path dir;
  std::string op;  // the op type of the test's last node: what it tests
};

// Every test (sorted by name) whose nodes are all of supported ops in the default domain.
inline std::vector<NodeTest> supported_node_tests() {
  std::vector<std::filesystem::path> dirs;
  for (const auto& entry : std::filesystem::directory_iterator(kOnnxNodeTestDir)) {
    dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  std::vector<NodeTest> tests;
  for (const auto& dir : dirs) {
    onnx::ModelProto model;
    if (!read_proto(dir / "model.onnx", model) || model.graph().node_size() == 0) continue;
    bool supported = true;
    for (const auto& node : model.graph().node()) {
      if (worker::engine::supported_ops().count(node.op_type()) == 0 || !node.domain().empty()) {
        supported = false;
      }
    }
    if (supported) {
      tests.push_back({dir, model.graph().node(model.graph().node_size() - 1).op_type()});
    }
  }
  return tests;
}

}  // namespace sliceserve::testing
