#include "sliceserve/client/wire.h"

#include <cstring>

namespace sliceserve::client::wire {
namespace {

// The wire carries ErrorCode's numbers: they are part of the protocol and must not move.
static_assert(int(ErrorCode::kInvalidArgument) == 1 && int(ErrorCode::kUnknownModel) == 4 &&
              int(ErrorCode::kTensorTooLarge) == 6 && int(ErrorCode::kWrongShape) == 7 &&
              int(ErrorCode::kWrongDtype) == 8 && int(ErrorCode::kUnknownTensor) == 9 &&
              int(ErrorCode::kTimeout) == 10 && int(ErrorCode::kBusy) == 11 &&
              int(ErrorCode::kModelError) == 12 && int(ErrorCode::kIncompatible) == 13 &&
              int(ErrorCode::kInternal) == 15);

// Little-endian whatever the host: the protocol's byte order. Builds in a std::string, which
// GCC 12's overflow warnings follow correctly (they misfire on vector<std::byte> inserts).
class Writer {
 public:
  void u8(uint8_t v) { out_.push_back(char(v)); }
  void u16(uint16_t v) { put(v, 2); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void str(std::string_view s) {
    u16(uint16_t(s.size()));
    out_.append(s);
  }
  void tensors(std::span<const TensorDesc> list) {
    u8(uint8_t(list.size()));
    for (const TensorDesc& t : list) {
      str(t.name);
      u8(uint8_t(t.dtype));
      u8(uint8_t(t.shape.size()));
      for (int64_t d : t.shape) u64(uint64_t(d));
      u64(t.bytes);
    }
  }
  std::vector<std::byte> take() const {
    const auto* p = reinterpret_cast<const std::byte*>(out_.data());
    return std::vector<std::byte>(p, p + out_.size());
  }

 private:
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(char((v >> (8 * i)) & 0xff));
  }
  std::string out_;
};

// Reads fields until the first one that does not fit; then every later read yields zero and
// finish() reports the first failure.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  uint8_t u8() { return uint8_t(get(1)); }
  uint16_t u16() { return uint16_t(get(2)); }
  uint32_t u32() { return uint32_t(get(4)); }
  uint64_t u64() { return get(8); }
  std::string str(size_t max, std::string_view what) {
    const uint16_t n = u16();
    if (!ok()) return {};
    if (n > max) {
      fail(std::string(what) + " of " + std::to_string(n) + " bytes, at most " +
           std::to_string(max));
      return {};
    }
    if (in_.size() - pos_ < n) {
      fail("truncated " + std::string(what));
      return {};
    }
    std::string s(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  std::vector<TensorDesc> tensors(std::string_view what) {
    const uint8_t n = u8();
    std::vector<TensorDesc> out;
    if (n > shm::kMaxTensors) {
      fail(std::to_string(n) + " " + std::string(what) + " tensors, at most " +
           std::to_string(shm::kMaxTensors));
      return out;
    }
    for (uint8_t i = 0; i < n && ok(); ++i) {
      TensorDesc t;
      t.name = str(shm::kMaxTensorName - 1, "tensor name");
      const uint8_t dtype = u8();
      if (ok() && (dtype == 0 || dtype > uint8_t(shm::DataType::kFp64))) {
        fail("unknown dtype " + std::to_string(dtype) + " of tensor '" + t.name + "'");
      }
      t.dtype = shm::DataType(dtype);
      const uint8_t ndims = u8();
      if (ok() && ndims > shm::kMaxDims) {
        fail("tensor '" + t.name + "' has " + std::to_string(ndims) + " dimensions, at most " +
             std::to_string(shm::kMaxDims));
      }
      for (uint8_t d = 0; d < ndims && ok(); ++d) {
        const int64_t dim = int64_t(u64());
        if (ok() && dim < 0) fail("tensor '" + t.name + "' has a negative dimension");
        t.shape.push_back(dim);
      }
      t.bytes = u64();
      out.push_back(std::move(t));
    }
    return out;
  }
  bool ok() const { return error_.empty(); }
  void fail(std::string why) {
    if (ok()) error_ = std::move(why);
  }
  // The metadata must be consumed exactly: trailing bytes are as malformed as missing ones.
  Status finish(std::string_view frame) {
    if (ok() && pos_ != in_.size()) {
      fail(std::to_string(in_.size() - pos_) + " trailing bytes");
    }
    if (ok()) return Status::ok();
    return Status(ErrorCode::kInvalidArgument,
                  "malformed " + std::string(frame) + " frame: " + error_);
  }

 private:
  uint64_t get(size_t n) {
    if (!ok()) return 0;
    if (in_.size() - pos_ < n) {
      fail("truncated after " + std::to_string(pos_) + " bytes");
      return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t(in_[pos_ + i]) << (8 * i);
    pos_ += n;
    return v;
  }
  std::span<const std::byte> in_;
  size_t pos_ = 0;
  std::string error_;
};

template <typename T>
Result<T> finish(Reader& r, T value, std::string_view frame) {
  RETURN_IF_ERROR(r.finish(frame));
  return value;
}

}  // namespace

std::array<std::byte, kHeaderBytes> encode_header(const FrameHeader& h) {
  std::array<std::byte, kHeaderBytes> out{};
  auto put = [&](size_t at, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out[at + size_t(i)] = std::byte((v >> (8 * i)) & 0xff);
  };
  put(0, kMagic, 4);
  put(4, h.version, 1);
  put(5, uint8_t(h.type), 1);
  put(6, h.flags, 2);
  put(8, h.request_id, 8);
  put(16, h.header_len, 4);
  put(20, h.data_len, 4);
  return out;
}

Result<FrameHeader> decode_header(std::span<const std::byte> bytes, const Limits& limits) {
  if (bytes.size() < kHeaderBytes) {
    return Status(ErrorCode::kInvalidArgument,
                  "truncated frame header: " + std::to_string(bytes.size()) + " of " +
                      std::to_string(kHeaderBytes) + " bytes");
  }
  auto get = [&](size_t at, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t(bytes[at + size_t(i)]) << (8 * i);
    return v;
  };
  if (get(0, 4) != kMagic) {
    return Status(ErrorCode::kIncompatible, "not a SliceServe frame (bad magic)");
  }
  FrameHeader h;
  h.version = uint8_t(get(4, 1));
  if (h.version != kVersion) {
    return Status(ErrorCode::kIncompatible, "protocol version " + std::to_string(h.version) +
                                                " is not supported (this side speaks " +
                                                std::to_string(kVersion) + ")");
  }
  const uint64_t type = get(5, 1);
  if (type < uint8_t(FrameType::kHello) || type > uint8_t(FrameType::kError)) {
    return Status(ErrorCode::kInvalidArgument, "unknown frame type " + std::to_string(type));
  }
  h.type = FrameType(type);
  h.flags = uint16_t(get(6, 2));
  const uint16_t allowed = h.type == FrameType::kError ? kFlagFatal : 0;
  if ((h.flags & ~allowed) != 0) {
    return Status(ErrorCode::kInvalidArgument, "unknown flags " + std::to_string(h.flags));
  }
  h.request_id = get(8, 8);
  h.header_len = uint32_t(get(16, 4));
  h.data_len = uint32_t(get(20, 4));
  if (h.header_len > limits.max_header_bytes) {
    return Status(ErrorCode::kTensorTooLarge, "frame metadata of " + std::to_string(h.header_len) +
                                                  " bytes, at most " +
                                                  std::to_string(limits.max_header_bytes));
  }
  if (h.data_len > limits.max_data_bytes) {
    return Status(ErrorCode::kTensorTooLarge, "frame data of " + std::to_string(h.data_len) +
                                                  " bytes, at most " +
                                                  std::to_string(limits.max_data_bytes));
  }
  return h;
}

std::vector<std::byte> encode(const Hello& m) {
  Writer w;
  w.str(m.token);
  w.str(m.client);
  return w.take();
}

std::vector<std::byte> encode(const HelloOk& m) {
  Writer w;
  w.u32(m.limits.max_header_bytes);
  w.u32(m.limits.max_data_bytes);
  w.u32(m.max_in_flight);
  w.u32(m.idle_timeout_ms);
  return w.take();
}

std::vector<std::byte> encode(const ModelInfoRequest& m) {
  Writer w;
  w.str(m.model);
  return w.take();
}

std::vector<std::byte> encode(const ModelInfo& m) {
  Writer w;
  w.str(m.model);
  w.tensors(m.inputs);
  w.tensors(m.outputs);
  return w.take();
}

std::vector<std::byte> encode(const InferRequest& m) {
  Writer w;
  w.str(m.model);
  w.u32(m.timeout_ms);
  w.tensors(m.inputs);
  return w.take();
}

std::vector<std::byte> encode(const InferReply& m) {
  Writer w;
  w.u32(m.batch_size);
  w.u64(m.queue_ns);
  w.u64(m.compute_ns);
  w.tensors(m.outputs);
  return w.take();
}

std::vector<std::byte> encode(const ErrorReply& m) {
  Writer w;
  w.u16(m.code);
  w.str(std::string_view(m.message).substr(0, kMaxMessage));
  return w.take();
}

Result<Hello> decode_hello(std::span<const std::byte> meta) {
  Reader r(meta);
  Hello m;
  m.token = r.str(kMaxToken, "token");
  m.client = r.str(kMaxModelName, "client name");
  return finish(r, std::move(m), "hello");
}

Result<HelloOk> decode_hello_ok(std::span<const std::byte> meta) {
  Reader r(meta);
  HelloOk m;
  m.limits.max_header_bytes = r.u32();
  m.limits.max_data_bytes = r.u32();
  m.max_in_flight = r.u32();
  m.idle_timeout_ms = r.u32();
  if (r.ok() && m.max_in_flight == 0) r.fail("max_in_flight of 0");
  return finish(r, m, "hello reply");
}

Result<ModelInfoRequest> decode_model_info_request(std::span<const std::byte> meta) {
  Reader r(meta);
  ModelInfoRequest m;
  m.model = r.str(kMaxModelName, "model name");
  return finish(r, std::move(m), "model info");
}

Result<ModelInfo> decode_model_info(std::span<const std::byte> meta) {
  Reader r(meta);
  ModelInfo m;
  m.model = r.str(kMaxModelName, "model name");
  m.inputs = r.tensors("input");
  m.outputs = r.tensors("output");
  return finish(r, std::move(m), "model info reply");
}

Result<InferRequest> decode_infer_request(std::span<const std::byte> meta) {
  Reader r(meta);
  InferRequest m;
  m.model = r.str(kMaxModelName, "model name");
  m.timeout_ms = r.u32();
  m.inputs = r.tensors("input");
  return finish(r, std::move(m), "infer");
}

Result<InferReply> decode_infer_reply(std::span<const std::byte> meta) {
  Reader r(meta);
  InferReply m;
  m.batch_size = r.u32();
  m.queue_ns = r.u64();
  m.compute_ns = r.u64();
  m.outputs = r.tensors("output");
  return finish(r, std::move(m), "infer reply");
}

Result<ErrorReply> decode_error(std::span<const std::byte> meta) {
  Reader r(meta);
  ErrorReply m;
  m.code = r.u16();
  m.message = r.str(kMaxMessage, "error message");
  return finish(r, std::move(m), "error");
}

Status check_data_len(std::span<const TensorDesc> tensors, uint32_t data_len) {
  uint64_t sum = 0;
  for (const TensorDesc& t : tensors) {
    // Each is checked against the remaining total first, so the sum cannot overflow.
    if (t.bytes > uint64_t(data_len) - sum) {
      return Status(ErrorCode::kInvalidArgument,
                    "malformed frame: its tensors declare more than its " +
                        std::to_string(data_len) + " data bytes");
    }
    sum += t.bytes;
  }
  if (sum != data_len) {
    return Status(ErrorCode::kInvalidArgument, "malformed frame: its tensors declare " +
                                                   std::to_string(sum) + " of its " +
                                                   std::to_string(data_len) + " data bytes");
  }
  return Status::ok();
}

std::vector<std::byte> frame(FrameType type, uint64_t request_id, std::span<const std::byte> meta,
                             uint32_t data_len, uint16_t flags) {
  FrameHeader h;
  h.type = type;
  h.flags = flags;
  h.request_id = request_id;
  h.header_len = uint32_t(meta.size());
  h.data_len = data_len;
  const auto head = encode_header(h);
  std::vector<std::byte> out(kHeaderBytes + meta.size());
  std::memcpy(out.data(), head.data(), kHeaderBytes);
  if (!meta.empty()) std::memcpy(out.data() + kHeaderBytes, meta.data(), meta.size());
  return out;
}

uint16_t wire_code(ErrorCode code) { return uint16_t(code); }

Status error_status(const ErrorReply& reply) {
  if (reply.code == kErrorUnauthenticated) {
    return Status(ErrorCode::kInvalidArgument, "unauthenticated: " + reply.message);
  }
  const bool known = reply.code > 0 && reply.code <= uint16_t(ErrorCode::kInternal);
  return Status(known ? ErrorCode(reply.code) : ErrorCode::kInternal, reply.message);
}

}  // namespace sliceserve::client::wire
