#include "sliceserve/worker/engine/onnx_loader.h"

#include <fmt/format.h>
#include <onnx/onnx_pb.h>

#include <climits>
#include <fstream>
#include <map>
#include <set>

namespace sliceserve::worker::engine {
namespace {

Status invalid(std::string message) { return {ErrorCode::kInvalidArgument, std::move(message)}; }

Result<DataType> convert_dtype(int32_t onnx_type) { return data_type_from_onnx(onnx_type); }

template <typename Dst, typename Repeated>
void copy_repeated(const Repeated& field, std::vector<std::byte>& out) {
  out.resize(static_cast<size_t>(field.size()) * sizeof(Dst));
  for (int i = 0; i < field.size(); ++i) {
    const auto value = static_cast<Dst>(field.Get(i));
    std::memcpy(out.data() + static_cast<size_t>(i) * sizeof(Dst), &value, sizeof(Dst));
  }
}

// `what` names the tensor in errors ("initializer 'w'", "node 'c' (Constant): attribute 'value'").
Result<Tensor> convert_tensor(const onnx::TensorProto& proto, const std::string& what) {
  Tensor tensor;
  auto dtype = convert_dtype(proto.data_type());
  if (!dtype) return invalid(fmt::format("{}: {}", what, dtype.status().message()));
  tensor.dtype = *dtype;
  int64_t count = 1;
  for (int64_t dim : proto.dims()) {
    if (dim < 0 || (dim > 0 && count > (int64_t{1} << 40) / dim)) {
      return invalid(fmt::format("{}: bad dimension {}", what, dim));
    }
    tensor.dims.push_back(dim);
    count *= dim;
  }
  if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
    return invalid(fmt::format("{}: external data is not supported", what));
  }
  const size_t elem = shm::data_type_size(tensor.dtype);
  const size_t expected = static_cast<size_t>(count) * elem;
  if (proto.has_raw_data()) {
    const std::string& raw = proto.raw_data();
    if (raw.size() != expected) {
      return invalid(
          fmt::format("{}: raw_data has {} bytes, dims need {}", what, raw.size(), expected));
    }
    tensor.data.resize(raw.size());
    if (!raw.empty()) std::memcpy(tensor.data.data(), raw.data(), raw.size());
    return tensor;
  }
  switch (tensor.dtype) {
    case DataType::kFp32:
      copy_repeated<float>(proto.float_data(), tensor.data);
      break;
    case DataType::kFp64:
      copy_repeated<double>(proto.double_data(), tensor.data);
      break;
    case DataType::kInt64:
      copy_repeated<int64_t>(proto.int64_data(), tensor.data);
      break;
    case DataType::kUint32:
    case DataType::kUint64:
      if (tensor.dtype == DataType::kUint32) {
        copy_repeated<uint32_t>(proto.uint64_data(), tensor.data);
      } else {
        copy_repeated<uint64_t>(proto.uint64_data(), tensor.data);
      }
      break;
    case DataType::kInt32:
      copy_repeated<int32_t>(proto.int32_data(), tensor.data);
      break;
    case DataType::kInt16:
      copy_repeated<int16_t>(proto.int32_data(), tensor.data);
      break;
    case DataType::kUint16:
    case DataType::kFp16:  // bits in int32_data
      copy_repeated<uint16_t>(proto.int32_data(), tensor.data);
      break;
    case DataType::kInt8:
      copy_repeated<int8_t>(proto.int32_data(), tensor.data);
      break;
    case DataType::kUint8:
    case DataType::kBool:
      copy_repeated<uint8_t>(proto.int32_data(), tensor.data);
      break;
    default:
      return invalid(fmt::format("{}: unsupported dtype", what));
  }
  if (tensor.data.size() != expected) {
    return invalid(
        fmt::format("{}: has {} elements, dims need {}", what, tensor.data.size() / elem, count));
  }
  return tensor;
}

Result<ValueInfo> convert_value_info(const onnx::ValueInfoProto& proto) {
  ValueInfo info;
  info.name = proto.name();
  if (!proto.has_type() || !proto.type().has_tensor_type()) {
    return invalid(fmt::format("value '{}': only tensor types are supported", info.name));
  }
  const auto& tensor_type = proto.type().tensor_type();
  auto dtype = convert_dtype(tensor_type.elem_type());
  if (!dtype) return invalid(fmt::format("value '{}': {}", info.name, dtype.status().message()));
  info.dtype = *dtype;
  if (tensor_type.has_shape()) {
    info.has_shape = true;
    for (const auto& dim : tensor_type.shape().dim()) {
      info.shape.push_back(dim.has_dim_value() && dim.dim_value() >= 0 ? dim.dim_value() : -1);
    }
  }
  return info;
}

Result<Node> convert_node(const onnx::NodeProto& proto, size_t index) {
  Node node;
  node.op_type = proto.op_type();
  node.name = proto.name().empty() ? fmt::format("{}_{}", proto.op_type(), index) : proto.name();
  if (!proto.domain().empty() && proto.domain() != "ai.onnx") {
    return node.error(fmt::format("unsupported domain '{}'", proto.domain()));
  }
  node.inputs.assign(proto.input().begin(), proto.input().end());
  node.outputs.assign(proto.output().begin(), proto.output().end());
  for (const auto& attr : proto.attribute()) {
    Attribute out;
    switch (attr.type()) {
      case onnx::AttributeProto::INT:
        out.kind = Attribute::Kind::kInt;
        out.i = attr.i();
        break;
      case onnx::AttributeProto::FLOAT:
        out.kind = Attribute::Kind::kFloat;
        out.f = attr.f();
        break;
      case onnx::AttributeProto::STRING:
        out.kind = Attribute::Kind::kString;
        out.s = attr.s();
        break;
      case onnx::AttributeProto::INTS:
        out.kind = Attribute::Kind::kInts;
        out.ints.assign(attr.ints().begin(), attr.ints().end());
        break;
      case onnx::AttributeProto::FLOATS:
        out.kind = Attribute::Kind::kFloats;
        out.floats.assign(attr.floats().begin(), attr.floats().end());
        break;
      case onnx::AttributeProto::TENSOR: {
        out.kind = Attribute::Kind::kTensor;
        auto tensor = convert_tensor(
            attr.t(), fmt::format("{}: attribute '{}'", node.describe(), attr.name()));
        if (!tensor) return tensor.status();
        out.t = std::move(tensor).value();
        break;
      }
      default:
        out.kind = Attribute::Kind::kOther;  // graphs, sparse tensors: rejected by the op's user
        break;
    }
    node.attributes[attr.name()] = std::move(out);
  }
  return node;
}

// Kahn's algorithm, stable with respect to the file's order.
Status sort_nodes(Graph& graph) {
  std::set<std::string, std::less<>> available{""};
  for (const auto& input : graph.inputs) available.insert(input.name);
  for (const auto& [name, tensor] : graph.initializers) available.insert(name);
  std::map<std::string, size_t, std::less<>> producer;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    for (const auto& output : graph.nodes[i].outputs) {
      if (output.empty()) continue;
      if (available.count(output) != 0 || !producer.emplace(output, i).second) {
        return graph.nodes[i].error(fmt::format("output '{}' is defined twice", output));
      }
    }
  }
  std::vector<size_t> pending(graph.nodes.size(), 0);
  std::vector<std::vector<size_t>> consumers(graph.nodes.size());
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    for (const auto& input : graph.nodes[i].inputs) {
      if (available.count(input) != 0) continue;
      auto it = producer.find(input);
      if (it == producer.end()) {
        return graph.nodes[i].error(fmt::format("input '{}' is not defined", input));
      }
      ++pending[i];
      consumers[it->second].push_back(i);
    }
  }
  std::set<size_t> ready;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    if (pending[i] == 0) ready.insert(i);
  }
  std::vector<Node> sorted;
  sorted.reserve(graph.nodes.size());
  std::vector<bool> done(graph.nodes.size(), false);
  while (!ready.empty()) {
    const size_t i = *ready.begin();
    ready.erase(ready.begin());
    done[i] = true;
    for (size_t consumer : consumers[i]) {
      if (--pending[consumer] == 0) ready.insert(consumer);
    }
    sorted.push_back(std::move(graph.nodes[i]));
  }
  if (sorted.size() != graph.nodes.size()) {
    for (size_t i = 0; i < graph.nodes.size(); ++i) {
      if (!done[i]) return graph.nodes[i].error("is part of a cycle");
    }
  }
  graph.nodes = std::move(sorted);
  for (const auto& output : graph.outputs) {
    if (available.count(output.name) == 0 && producer.count(output.name) == 0) {
      return invalid(fmt::format("graph output '{}' is not defined", output.name));
    }
  }
  return Status::ok();
}

Status parse_model(std::span<const std::byte> bytes, onnx::ModelProto& model) {
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return invalid("model larger than 2 GiB is not supported (external data is not either)");
  }
  if (!model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return invalid("not a valid ONNX model (protobuf parse failed: truncated or corrupt)");
  }
  if (!model.has_graph()) return invalid("ONNX model has no graph");
  return Status::ok();
}

// Converts the parsed model, dropping each initializer's bytes from it once copied so that a
// large model is held at most twice at any time.
Result<Graph> convert_model(onnx::ModelProto& model) {
  Graph graph;
  for (const auto& opset : model.opset_import()) {
    if (opset.domain().empty() || opset.domain() == "ai.onnx") graph.opset = opset.version();
  }
  auto& proto = *model.mutable_graph();
  graph.name = proto.name();
  for (auto& init : *proto.mutable_initializer()) {
    auto tensor = convert_tensor(init, fmt::format("initializer '{}'", init.name()));
    if (!tensor) return tensor.status();
    graph.initializers[init.name()] = std::move(tensor).value();
    std::string().swap(*init.mutable_raw_data());  // frees the bytes, not only the size
    init.clear_float_data();
  }
  for (const auto& input : proto.input()) {
    if (graph.initializers.count(input.name()) != 0) continue;  // old exporters list weights too
    auto info = convert_value_info(input);
    if (!info) return info.status().with_context("graph input");
    graph.inputs.push_back(std::move(info).value());
  }
  for (const auto& output : proto.output()) {
    auto info = convert_value_info(output);
    if (!info) return info.status().with_context("graph output");
    graph.outputs.push_back(std::move(info).value());
  }
  graph.nodes.reserve(static_cast<size_t>(proto.node_size()));
  for (int i = 0; i < proto.node_size(); ++i) {
    auto node = convert_node(proto.node(i), static_cast<size_t>(i));
    if (!node) return node.status();
    graph.nodes.push_back(std::move(node).value());
  }
  RETURN_IF_ERROR(sort_nodes(graph));
  return graph;
}

}  // namespace

Result<Graph> load_onnx_bytes(std::span<const std::byte> bytes) {
  onnx::ModelProto model;
  RETURN_IF_ERROR(parse_model(bytes, model));
  return convert_model(model);
}

Result<Tensor> load_onnx_tensor(std::span<const std::byte> bytes) {
  onnx::TensorProto proto;
  if (bytes.size() > INT_MAX ||
      !proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return invalid("not a valid ONNX TensorProto");
  }
  return convert_tensor(proto, proto.name().empty() ? "tensor" : "tensor '" + proto.name() + "'");
}

Result<Graph> load_onnx_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return Status(ErrorCode::kNotFound, fmt::format("cannot open model '{}'", path));
  file.seekg(0, std::ios::end);
  const std::streamoff size = file.tellg();
  file.seekg(0, std::ios::beg);
  if (size < 0) return Status(ErrorCode::kInternal, fmt::format("cannot size '{}'", path));
  const std::string context = fmt::format("model '{}'", path);
  if (size > INT_MAX) {
    return invalid("model larger than 2 GiB is not supported (external data is not either)")
        .with_context(context);
  }
  onnx::ModelProto model;
  {
    std::vector<char> content(static_cast<size_t>(size));
    if (!file.read(content.data(), size)) {
      return Status(ErrorCode::kInternal, fmt::format("cannot read '{}'", path));
    }
    Status parsed = parse_model(std::as_bytes(std::span<const char>(content)), model);
    if (!parsed) return parsed.with_context(context);
  }  // the file's bytes are gone before the weights are copied out of the protobuf
  auto graph = convert_model(model);
  if (!graph) return graph.status().with_context(context);
  return graph;
}

}  // namespace sliceserve::worker::engine
