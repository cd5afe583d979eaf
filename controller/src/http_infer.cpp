#include "http_infer.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "sliceserve/shm/element_conversions.h"

namespace sliceserve::controller::http_infer {
namespace {

using nlohmann::json;

Status bad(std::string message) { return Status(ErrorCode::kInvalidArgument, std::move(message)); }

std::string tensor_name(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string names(std::span<const shm::TensorSpec> specs) {
  std::string out;
  for (const shm::TensorSpec& s : specs) out += (out.empty() ? "" : ", ") + std::string(s.name_view());
  return out;
}

int find(std::span<const shm::TensorSpec> specs, std::string_view name) {
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].name_view() == name) return int(i);
  }
  return -1;
}

std::string shape_text(const json& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    out += (i ? "," : "") + (shape[i].is_number_integer() ? std::to_string(shape[i].get<int64_t>())
                                                           : std::string("?"));
  }
  return out + "]";
}

std::string declared_shape(const shm::TensorSpec& t) {
  std::string out = "[-1";
  for (int64_t d : t.shape()) out += "," + std::to_string(d);
  return out + "]";
}

template <typename T>
void store(std::byte* out, T v) {
  std::memcpy(out, &v, sizeof v);
}

// `where` names the element for an error message; it is only called on an error, since most
// requests have none and tensors have many elements.
template <typename T, typename Where>
Status put_int(const json& v, std::byte* out, const Where& where, std::string_view type) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<T>::max())) {
      return bad(where() + " is " + std::to_string(u) + ", out of range for " + std::string(type));
    }
    store(out, T(u));
    return Status::ok();
  }
  if (v.is_number_integer()) {  // negative
    const int64_t i = v.get<int64_t>();
    if (!std::numeric_limits<T>::is_signed || i < int64_t(std::numeric_limits<T>::min())) {
      return bad(where() + " is " + std::to_string(i) + ", out of range for " + std::string(type));
    }
    store(out, T(i));
    return Status::ok();
  }
  // Integers beyond 64 bits parse as floating point: out of every integer type's range too.
  return bad(where() + " is not an integer in " + std::string(type) + "'s range");
}

template <typename Where>
Status put_float(const json& v, std::byte* out, const Where& where, shm::DataType dtype) {
  if (!v.is_number()) return bad(where() + " is not a number");
  const double d = v.get<double>();
  switch (dtype) {
    case shm::DataType::kFp64:
      store(out, d);
      return Status::ok();
    case shm::DataType::kFp32: {
      const float f = float(d);
      if (std::isinf(f)) return bad(where() + " is out of range for FP32");
      store(out, f);
      return Status::ok();
    }
    default: {  // kFp16
      const uint16_t h = shm::double_to_half(float(d));  // via float, as the worker converts
      if ((h & 0x7c00) == 0x7c00) return bad(where() + " is out of range for FP16");
      store(out, h);
      return Status::ok();
    }
  }
}

// One element of `dtype` from a JSON scalar, written to `out`.
template <typename Where>
Status put(const json& v, shm::DataType dtype, std::byte* out, const Where& where) {
  using shm::DataType;
  switch (dtype) {
    case DataType::kBool:
      if (!v.is_boolean()) return bad(where() + " is not a boolean (true/false)");
      store(out, uint8_t(v.get<bool>() ? 1 : 0));
      return Status::ok();
    case DataType::kUint8:
      return put_int<uint8_t>(v, out, where, "UINT8");
    case DataType::kUint16:
      return put_int<uint16_t>(v, out, where, "UINT16");
    case DataType::kUint32:
      return put_int<uint32_t>(v, out, where, "UINT32");
    case DataType::kUint64:
      return put_int<uint64_t>(v, out, where, "UINT64");
    case DataType::kInt8:
      return put_int<int8_t>(v, out, where, "INT8");
    case DataType::kInt16:
      return put_int<int16_t>(v, out, where, "INT16");
    case DataType::kInt32:
      return put_int<int32_t>(v, out, where, "INT32");
    case DataType::kInt64:
      return put_int<int64_t>(v, out, where, "INT64");
    case DataType::kFp16:
    case DataType::kFp32:
    case DataType::kFp64:
      return put_float(v, out, where, dtype);
    case DataType::kInvalid:
      break;
  }
  return bad(where() + ": the model's datatype cannot be written from JSON");
}

struct Converter {
  const std::string& tensor;
  shm::DataType dtype;
  size_t elem;
  std::vector<int64_t> shape;  // the request's, batch first
  std::byte* out;
  size_t next = 0;  // elements written

  Status scalar(const json& v) {
    RETURN_IF_ERROR(put(v, dtype, out + next * elem, [this] {
      return "input " + tensor_name(tensor) + ": element " + std::to_string(next);
    }));
    ++next;
    return Status::ok();
  }

  // data nested as `shape` from dimension `dim` on; recursion depth is at most the rank.
  // `at` holds the indices down to here, for messages ("data[1][0]").
  Status nested(const json& v, size_t dim) {
    if (dim == shape.size()) {
      if (v.is_array() || v.is_object()) {
        return bad("input " + tensor_name(tensor) + ": " + path() +
                   " nests deeper than its shape " + shape_string());
      }
      return scalar(v);
    }
    if (!v.is_array() || v.size() != size_t(shape[dim])) {
      return bad("input " + tensor_name(tensor) + ": " + path() + " should be an array of " +
                 std::to_string(shape[dim]) + " (shape " + shape_string() + "), it is " +
                 (v.is_array() ? "an array of " + std::to_string(v.size()) : "not an array"));
    }
    for (size_t i = 0; i < v.size(); ++i) {
      at.push_back(i);
      RETURN_IF_ERROR(nested(v[i], dim + 1));
      at.pop_back();
    }
    return Status::ok();
  }

  std::string path() const {
    std::string text = "data";
    for (size_t i : at) text += "[" + std::to_string(i) + "]";
    return text;
  }
  std::vector<size_t> at{};
  std::string shape_string() const { return shm::shape_to_string(shape); }
};

// `data`, flat or nested row-major, into `out` (count elements of dtype).
Status convert(const json& data, Converter c, size_t count) {
  if (!data.is_array()) return bad("input " + tensor_name(c.tensor) + ": 'data' must be an array");
  // Shapes have a batch dimension and at least one more, so flat data is never fully nested.
  if (data.empty() || !data[0].is_array()) {
    if (data.size() != count) {
      return bad("input " + tensor_name(c.tensor) + " has " + std::to_string(data.size()) +
                 " elements, its shape " + c.shape_string() + " needs " + std::to_string(count));
    }
    for (const json& v : data) {
      if (v.is_array() || v.is_object()) {
        return bad("input " + tensor_name(c.tensor) + ": element " + std::to_string(c.next) +
                   " is an array in flat data (nest every level or none)");
      }
      RETURN_IF_ERROR(c.scalar(v));
    }
    return Status::ok();
  }
  return c.nested(data, 0);
}

Result<bool> optional_bool(const json& parameters, const char* key, const std::string& where) {
  if (!parameters.is_object() || !parameters.contains(key)) return false;
  const json& v = parameters[key];
  if (!v.is_boolean()) return bad(where + ": parameter '" + key + "' must be true or false");
  return v.get<bool>();
}

Status check_parameters(const json& j, const std::string& where) {
  if (j.contains("parameters") && !j["parameters"].is_object()) {
    return bad(where + ": 'parameters' must be an object");
  }
  return Status::ok();
}

// Appends one element as JSON text: integers as they are, floating point as the shortest text
// that reads back as the same value of its own type (FP32 0.1 is "0.1", not the double's
// "0.10000000149011612"; always with a point or an exponent), NaN and infinities as null (JSON has
// no words for them). Written directly: a DOM of thousands of numbers costs more than the numbers.
void append_element(std::string& out, const std::byte* p, shm::DataType dtype) {
  using shm::DataType;
  auto load = [p]<typename T>(T) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  char text[64];
  auto put = [&](auto v) {
    if constexpr (std::is_floating_point_v<decltype(v)>) {
      if (!std::isfinite(v)) {
        out.append("null");
        return;
      }
    }
    const auto [end, ec] = std::to_chars(text, text + sizeof text, v);
    out.append(text, ec == std::errc() ? end : text);
    // "2.0", not "2": a reader that tells integers from numbers keeps it a float, and -0.0 its
    // sign.
    if constexpr (std::is_floating_point_v<decltype(v)>) {
      if (std::find_if(text, end, [](char c) { return c == '.' || c == 'e'; }) == end) {
        out.append(".0");
      }
    }
  };
  switch (dtype) {
    case DataType::kBool:
      out.append(load(uint8_t{}) != 0 ? "true" : "false");
      return;
    case DataType::kUint8:
      put(unsigned(load(uint8_t{})));
      return;
    case DataType::kUint16:
      put(unsigned(load(uint16_t{})));
      return;
    case DataType::kUint32:
      put(load(uint32_t{}));
      return;
    case DataType::kUint64:
      put(load(uint64_t{}));
      return;
    case DataType::kInt8:
      put(int(load(int8_t{})));
      return;
    case DataType::kInt16:
      put(int(load(int16_t{})));
      return;
    case DataType::kInt32:
      put(load(int32_t{}));
      return;
    case DataType::kInt64:
      put(load(int64_t{}));
      return;
    case DataType::kFp16:
      put(float(shm::half_to_double(load(uint16_t{}))));
      return;
    case DataType::kFp32:
      put(load(float{}));
      return;
    case DataType::kFp64:
      put(load(double{}));
      return;
    case DataType::kInvalid:
      break;
  }
  out.append("null");
}

// A string as JSON text (invalid UTF-8 replaced, as the rest of the reply).
std::string json_text(std::string_view s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace

Result<Request> parse_request(std::string_view header, std::optional<uint64_t> binary_bytes,
                              const shm::ModelSpec& spec, std::string_view model,
                              uint32_t max_batch) {
  const json j = json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return bad("the request is not valid JSON");
  if (!j.is_object()) return bad("the request must be a JSON object");
  RETURN_IF_ERROR(check_parameters(j, "the request"));
  Request r;
  if (j.contains("id")) {
    if (!j["id"].is_string()) return bad("'id' must be a string");
    r.id = j["id"].get<std::string>();
  }
  const json no_parameters = json::object();
  const json& parameters = j.contains("parameters") ? j["parameters"] : no_parameters;
  ASSIGN_OR_RETURN(const bool binary_default,
                   optional_bool(parameters, "binary_data_output", "the request"));
  if (parameters.contains("timeout")) {
    if (!parameters["timeout"].is_number_unsigned()) {
      return bad("the request: parameter 'timeout' must be a whole number of microseconds");
    }
    r.timeout_us = parameters["timeout"].get<uint64_t>();
  }

  if (!j.contains("inputs") || !j["inputs"].is_array() || j["inputs"].empty()) {
    return bad("the request needs 'inputs', a non-empty array (model '" + std::string(model) +
               "' takes " + names(spec.input_specs()) + ")");
  }
  const json& inputs = j["inputs"];
  std::array<bool, shm::kMaxTensors> seen{};
  uint64_t binary_offset = 0;
  std::string batch_from;  // the input that set r.batch
  for (const json& in : inputs) {
    if (!in.is_object() || !in.contains("name") || !in["name"].is_string()) {
      return bad("every input must be an object with a string 'name'");
    }
    const std::string name = in["name"].get<std::string>();
    const std::string where = "input " + tensor_name(name);
    const int index = find(spec.input_specs(), name);
    if (index < 0) {
      return bad("model '" + std::string(model) + "' has no input " + tensor_name(name) +
                 " (inputs: " + names(spec.input_specs()) + ")");
    }
    if (seen[size_t(index)]) return bad(where + " is given twice");
    seen[size_t(index)] = true;
    const shm::TensorSpec& want = spec.inputs[index];

    if (!in.contains("datatype") || !in["datatype"].is_string()) {
      return bad(where + " needs a string 'datatype'");
    }
    const std::string datatype = in["datatype"].get<std::string>();
    if (datatype != shm::data_type_name(want.dtype)) {
      return bad(where + " has datatype " + datatype + ", model '" + std::string(model) +
                 "' declares " + std::string(shm::data_type_name(want.dtype)));
    }
    if (!in.contains("shape") || !in["shape"].is_array()) {
      return bad(where + " needs 'shape', an array of integers");
    }
    const json& shape = in["shape"];
    bool shape_ok = shape.size() == size_t(want.ndims) + 1;
    for (size_t d = 0; shape_ok && d < shape.size(); ++d) {
      shape_ok = shape[d].is_number_unsigned() &&
                 (d == 0 ? shape[d].get<uint64_t>() >= 1
                         : shape[d].get<uint64_t>() == uint64_t(want.dims[d - 1]));
    }
    if (!shape_ok) {
      return bad(where + " has shape " + shape_text(shape) + ", model '" + std::string(model) +
                 "' takes " + declared_shape(want) + " (the first dimension is the batch)");
    }
    const uint64_t batch = shape[0].get<uint64_t>();
    if (batch > max_batch) {
      return bad(where + " has a batch of " + std::to_string(batch) + "; one request carries at most " +
                 std::to_string(max_batch) + " items (one slot each) to model '" +
                 std::string(model) + "'");
    }
    if (r.batch == 0) {
      r.batch = uint32_t(batch);
      batch_from = name;
    } else if (batch != r.batch) {
      return bad(where + " has a batch of " + std::to_string(batch) + ", input " +
                 tensor_name(batch_from) + " of " + std::to_string(r.batch));
    }
    RETURN_IF_ERROR(check_parameters(in, where));

    Input out;
    out.model_index = uint32_t(index);
    const uint64_t bytes = uint64_t(r.batch) * want.byte_size();
    const bool has_data = in.contains("data");
    const bool has_size = in.contains("parameters") && in["parameters"].contains("binary_data_size");
    if (has_data && has_size) return bad(where + " has both 'data' and binary_data_size");
    if (has_size) {
      const json& size = in["parameters"]["binary_data_size"];
      if (!size.is_number_unsigned()) {
        return bad(where + ": binary_data_size must be a whole number of bytes");
      }
      if (size.get<uint64_t>() != bytes) {
        return bad(where + " has binary_data_size " + std::to_string(size.get<uint64_t>()) +
                   ", its shape " + shape_text(shape) + " of " + datatype + " needs " +
                   std::to_string(bytes) + " bytes");
      }
      out.binary = true;
      out.binary_offset = binary_offset;
      binary_offset += bytes;
    } else if (has_data) {
      out.data.resize(bytes);
      std::vector<int64_t> dims{int64_t(batch)};
      dims.insert(dims.end(), want.dims, want.dims + want.ndims);
      RETURN_IF_ERROR(convert(in["data"],
                              Converter{name, want.dtype, shm::data_type_size(want.dtype),
                                        std::move(dims), out.data.data()},
                              r.batch * want.element_count()));
    } else {
      return bad(where + " has neither 'data' nor parameters.binary_data_size");
    }
    r.inputs.push_back(std::move(out));
  }
  for (uint32_t i = 0; i < spec.n_inputs; ++i) {
    if (!seen[i]) {
      return bad("input " + tensor_name(spec.inputs[i].name_view()) + " of model '" +
                 std::string(model) + "' is missing");
    }
  }
  if (binary_bytes && binary_offset != *binary_bytes) {
    return bad("the binary part has " + std::to_string(*binary_bytes) +
               " bytes, the inputs' binary_data_size add up to " + std::to_string(binary_offset));
  }

  if (j.contains("outputs")) {
    const json& outputs = j["outputs"];
    if (!outputs.is_array()) return bad("'outputs' must be an array");
    std::array<bool, shm::kMaxTensors> asked{};
    for (const json& o : outputs) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) {
        return bad("every requested output must be an object with a string 'name'");
      }
      const std::string name = o["name"].get<std::string>();
      const int index = find(spec.output_specs(), name);
      if (index < 0) {
        return bad("model '" + std::string(model) + "' has no output " + tensor_name(name) +
                   " (outputs: " + names(spec.output_specs()) + ")");
      }
      if (asked[size_t(index)]) return bad("output " + tensor_name(name) + " is asked for twice");
      asked[size_t(index)] = true;
      RETURN_IF_ERROR(check_parameters(o, "output " + tensor_name(name)));
      Output out{uint32_t(index), binary_default};
      if (o.contains("parameters") && o["parameters"].contains("binary_data")) {
        ASSIGN_OR_RETURN(out.binary, optional_bool(o["parameters"], "binary_data",
                                                   "output " + tensor_name(name)));
      }
      r.outputs.push_back(out);
    }
  } else {
    for (uint32_t k = 0; k < spec.n_outputs; ++k) r.outputs.push_back({k, binary_default});
  }
  return r;
}

std::vector<Piece> binary_pieces(const Request& request, const shm::ModelSpec& spec) {
  std::vector<Piece> pieces;
  for (uint32_t i = 0; i < request.inputs.size(); ++i) {
    const Input& in = request.inputs[i];
    if (!in.binary) continue;
    for (uint32_t b = 0; b < request.batch; ++b) {
      pieces.push_back({i, b, spec.inputs[in.model_index].byte_size()});
    }
  }
  return pieces;
}

Reply build_reply(const Request& request, const shm::ModelSpec& spec, std::string_view model,
                  std::span<const ItemOutputs> items) {
  Reply reply;
  std::string& head = reply.body;
  std::string binary;
  head = "{\"model_name\":" + json_text(model) + ",\"model_version\":\"1\"";
  if (request.id) head += ",\"id\":" + json_text(*request.id);
  head += ",\"outputs\":[";
  for (size_t i = 0; i < request.outputs.size(); ++i) {
    const Output& o = request.outputs[i];
    const shm::TensorSpec& t = spec.outputs[o.model_index];
    head += (i > 0 ? ",{\"name\":" : "{\"name\":") + json_text(t.name_view()) + ",\"datatype\":\"" +
            std::string(shm::data_type_name(t.dtype)) + "\",\"shape\":[" +
            std::to_string(items.size());
    for (uint32_t d = 0; d < t.ndims; ++d) head += "," + std::to_string(t.dims[d]);
    head += "]";
    if (o.binary) {
      for (const ItemOutputs& item : items) {
        const std::span<const std::byte> bytes = item[o.model_index];
        binary.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      }
      head +=
          ",\"parameters\":{\"binary_data_size\":" + std::to_string(items.size() * t.byte_size()) +
          "}}";
      continue;
    }
    head += ",\"data\":[";
    const size_t elem = shm::data_type_size(t.dtype);
    bool first = true;
    for (const ItemOutputs& item : items) {
      const std::span<const std::byte> bytes = item[o.model_index];
      for (size_t off = 0; off + elem <= bytes.size(); off += elem) {
        if (!first) head += ',';
        first = false;
        append_element(head, bytes.data() + off, t.dtype);
      }
    }
    head += "]}";
  }
  head += "]}";
  reply.header_bytes = reply.body.size();
  reply.binary = !binary.empty() || std::any_of(request.outputs.begin(), request.outputs.end(),
                                                [](const Output& o) { return o.binary; });
  reply.body += binary;
  return reply;
}

}  // namespace sliceserve::controller::http_infer
