// libFuzzer entry point for the HTTP front-end's infer request handling
// (controller/src/http_infer.cpp), which the server runs on every infer body a client sends: any
// bytes give a request or a kInvalidArgument, never a crash; a request's binary pieces tile the
// binary part exactly; its reply is valid JSON with the binary outputs after it.
// Input: two bytes little-endian N, then N bytes of JSON header, then the binary part.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "http_infer.h"
#include "sliceserve/shm/element_conversions.h"

namespace {

namespace hi = sliceserve::controller::http_infer;
namespace shm = sliceserve::shm;

// A model with one input of each datatype family.
shm::ModelSpec model() {
  shm::ModelSpec spec;
  const struct {
    const char* name;
    shm::DataType dtype;
    std::vector<int64_t> shape;
  } inputs[] = {{"x", shm::DataType::kFp32, {2, 2}}, {"i", shm::DataType::kInt8, {3}},
                {"h", shm::DataType::kFp16, {2}},    {"b", shm::DataType::kBool, {1}},
                {"u", shm::DataType::kUint64, {1}}};
  for (const auto& in : inputs) {
    spec.inputs[spec.n_inputs++] = shm::make_tensor_spec(in.name, in.dtype, in.shape).value();
  }
  spec.outputs[spec.n_outputs++] =
      shm::make_tensor_spec("y", shm::DataType::kFp16, std::vector<int64_t>{2}).value();
  spec.outputs[spec.n_outputs++] =
      shm::make_tensor_spec("z", shm::DataType::kInt64, std::vector<int64_t>{1}).value();
  return spec;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const shm::ModelSpec spec = model();
  if (size < 2) return 0;
  const size_t n = std::min<size_t>(size - 2, size_t(data[0]) | size_t(data[1]) << 8);
  const std::string_view header(reinterpret_cast<const char*>(data + 2), n);
  const uint64_t binary = size - 2 - n;
  auto request = hi::parse_request(header, binary, spec, "m", 4);
  if (!request.is_ok()) {
    if (request.status().code() != sliceserve::ErrorCode::kInvalidArgument) std::abort();
    return 0;
  }
  if (request->batch < 1 || request->batch > 4 || request->inputs.size() != spec.n_inputs) {
    std::abort();
  }
  uint64_t covered = 0;
  for (const hi::Piece& p : hi::binary_pieces(*request, spec)) {
    const hi::Input& in = request->inputs[p.input];
    if (!in.binary || p.item >= request->batch ||
        p.bytes != spec.inputs[in.model_index].byte_size()) {
      std::abort();
    }
    covered += p.bytes;
  }
  if (covered != binary) std::abort();
  for (const hi::Input& in : request->inputs) {
    if (!in.binary && in.data.size() != request->batch * spec.inputs[in.model_index].byte_size()) {
      std::abort();
    }
  }
  // Outputs made of the input's bytes, so odd values (NaN halves) reach the encoder too.
  std::vector<std::vector<std::byte>> storage;
  std::vector<hi::ItemOutputs> items(request->batch);
  for (uint32_t b = 0; b < request->batch; ++b) {
    for (uint32_t k = 0; k < spec.n_outputs; ++k) {
      std::vector<std::byte> bytes(spec.outputs[k].byte_size());
      for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::byte(data[(b + k + i) % size]);
      storage.push_back(std::move(bytes));
    }
  }
  for (uint32_t b = 0; b < request->batch; ++b) {
    for (uint32_t k = 0; k < spec.n_outputs; ++k) items[b][k] = storage[b * spec.n_outputs + k];
  }
  const hi::Reply reply = hi::build_reply(*request, spec, "m", items);
  if (reply.header_bytes > reply.body.size()) std::abort();
  const auto json = nlohmann::json::parse(reply.body.substr(0, reply.header_bytes), nullptr, false);
  if (json.is_discarded() || json["outputs"].size() != request->outputs.size()) std::abort();
  uint64_t binary_out = 0;
  for (const hi::Output& o : request->outputs) {
    if (o.binary) binary_out += request->batch * spec.outputs[o.model_index].byte_size();
  }
  if (reply.body.size() - reply.header_bytes != binary_out) std::abort();
  // Halves survive the trip through float that JSON tensors take (NaNs stay NaNs).
  for (size_t i = 0; i + 1 < size; i += 2) {
    const uint16_t h = uint16_t(data[i] | data[i + 1] << 8);
    const uint16_t back = shm::double_to_half(float(shm::half_to_double(h)));
    const bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
    if (nan ? ((back & 0x7c00) != 0x7c00 || (back & 0x3ff) == 0) : back != h) std::abort();
  }
  return 0;
}
