#include "sliceserve/backends/layer_profile.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>

namespace sliceserve::backends {
namespace {

using nlohmann::json;

Status bad(std::string why) {
  return Status(ErrorCode::kInvalidArgument, "layer profile: " + std::move(why));
}

// ---- SHA-256 (FIPS 180-4) ----

constexpr std::array<uint32_t, 64> kK = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

class Sha256 {
 public:
  void update(std::span<const std::byte> bytes) {
    for (std::byte b : bytes) {
      block_[fill_++] = uint8_t(b);
      if (fill_ == 64) compress();
    }
    length_ += bytes.size();
  }

  std::string hex() {
    const uint64_t bits = length_ * 8;
    const std::byte one{0x80};
    const std::byte zero{0};
    update({&one, 1});
    while (fill_ != 56) update({&zero, 1});
    for (int i = 7; i >= 0; --i) {
      const auto b = std::byte(uint8_t(bits >> (8 * i)));
      update({&b, 1});
    }
    std::string out;
    for (uint32_t word : h_) out += fmt::format("{:08x}", word);
    return out;
  }

 private:
  void compress() {
    std::array<uint32_t, 64> w{};
    for (int i = 0; i < 16; ++i) {
      w[i] = uint32_t(block_[4 * i]) << 24 | uint32_t(block_[4 * i + 1]) << 16 |
             uint32_t(block_[4 * i + 2]) << 8 | uint32_t(block_[4 * i + 3]);
    }
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    std::array<uint32_t, 8> v = h_;
    for (int i = 0; i < 64; ++i) {
      const uint32_t s1 = rotr(v[4], 6) ^ rotr(v[4], 11) ^ rotr(v[4], 25);
      const uint32_t ch = (v[4] & v[5]) ^ (~v[4] & v[6]);
      const uint32_t t1 = v[7] + s1 + ch + kK[i] + w[i];
      const uint32_t s0 = rotr(v[0], 2) ^ rotr(v[0], 13) ^ rotr(v[0], 22);
      const uint32_t maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
      const uint32_t t2 = s0 + maj;
      v = {t1 + t2, v[0], v[1], v[2], v[3] + t1, v[4], v[5], v[6]};
    }
    for (int i = 0; i < 8; ++i) h_[i] += v[i];
    fill_ = 0;
  }

  std::array<uint32_t, 8> h_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<uint8_t, 64> block_{};
  size_t fill_ = 0;
  uint64_t length_ = 0;
};

// ---- strict JSON reading ----

// The object's keys are exactly `keys`; every one present.
Status expect_keys(const json& object, std::string_view where,
                   std::initializer_list<std::string_view> keys) {
  if (!object.is_object()) return bad(fmt::format("{} must be an object", where));
  for (const auto& [key, value] : object.items()) {
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
      return bad(fmt::format("{}: unknown key '{}'", where, key));
    }
  }
  for (std::string_view key : keys) {
    if (!object.contains(key)) return bad(fmt::format("{}: missing key '{}'", where, key));
  }
  return Status::ok();
}

Result<std::string> read_string(const json& object, std::string_view key, std::string_view where) {
  const json& v = object.at(key);
  if (!v.is_string() || v.get_ref<const std::string&>().empty()) {
    return bad(fmt::format("{}'{}' must be a non-empty string", where, key));
  }
  return v.get<std::string>();
}

// A non-negative integer literal in [lo, hi].
Result<uint64_t> read_count(const json& v, std::string_view what, uint64_t lo, uint64_t hi) {
  if (!v.is_number_unsigned() || v.get<uint64_t>() < lo || v.get<uint64_t>() > hi) {
    return bad(fmt::format("{} must be an integer in {}..{}, got {}", what, lo, hi, v.dump()));
  }
  return v.get<uint64_t>();
}

bool is_lower_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

const LayerProfileEntry* LayerProfile::find(std::string_view label) const {
  for (const LayerProfileEntry& layer : layers) {
    if (layer.label == label) return &layer;
  }
  return nullptr;
}

Result<unsigned> select_right_size(std::span<const unsigned> units, std::span<const double> ms,
                                   double tolerance) {
  if (units.empty() || units.size() != ms.size()) {
    return bad(fmt::format("{} latencies for {} unit counts", ms.size(), units.size()));
  }
  for (double t : ms) {
    if (!std::isfinite(t) || t < 0) return bad(fmt::format("latency {} is not a duration", t));
  }
  const double limit = ms.back() * (1.0 + tolerance);
  for (size_t i = 0; i < units.size(); ++i) {
    if (ms[i] <= limit) return units[i];
  }
  return units.back();  // not reached: the last is within its own limit
}

Result<LayerProfile> parse_layer_profile(std::string_view text) {
  // nlohmann keeps the last of repeated keys; the callback sees every key of every object.
  std::vector<std::set<std::string>> open_objects;
  std::string repeated;
  json doc;
  try {
    doc = json::parse(
        text.begin(), text.end(),
        [&](int /*depth*/, json::parse_event_t event, json& parsed) {
          if (event == json::parse_event_t::object_start) {
            open_objects.emplace_back();
          } else if (event == json::parse_event_t::object_end) {
            if (!open_objects.empty()) open_objects.pop_back();
          } else if (event == json::parse_event_t::key && !open_objects.empty() &&
                     !open_objects.back().insert(parsed.get<std::string>()).second &&
                     repeated.empty()) {
            repeated = parsed.get<std::string>();
          }
          return true;
        });
  } catch (const json::exception& e) {
    return bad(fmt::format("not JSON: {}", e.what()));
  }
  if (!repeated.empty()) return bad(fmt::format("key '{}' appears twice in one object", repeated));
  if (!doc.is_object()) return bad("the document must be an object");
  // The format and version first, so a file of another kind or version says so, not "unknown key".
  if (!doc.contains("format") || doc["format"] != kLayerProfileFormat) {
    return bad(fmt::format("not a {} file (its 'format' is {})", kLayerProfileFormat,
                           doc.contains("format") ? doc["format"].dump() : "missing"));
  }
  if (!doc.contains("version") || !doc["version"].is_number_integer()) {
    return bad("missing integer key 'version'");
  }
  if (doc["version"].get<int64_t>() != kLayerProfileVersion) {
    return bad(fmt::format("unknown version {} (this build reads version {})",
                           doc["version"].dump(), kLayerProfileVersion));
  }
  RETURN_IF_ERROR(expect_keys(doc, "the document",
                              {"format", "version", "model", "model_sha256", "device", "batch",
                               "repeats", "units", "layers"}));
  LayerProfile profile;
  ASSIGN_OR_RETURN(profile.model, read_string(doc, "model", ""));
  ASSIGN_OR_RETURN(profile.model_sha256, read_string(doc, "model_sha256", ""));
  if (profile.model_sha256.size() != 64 || !is_lower_hex(profile.model_sha256)) {
    return bad("'model_sha256' must be 64 lowercase hex digits");
  }
  ASSIGN_OR_RETURN(profile.device, read_string(doc, "device", ""));
  if (profile.device != "hip" && profile.device != "cuda" && profile.device != "cpu") {
    return bad(
        fmt::format("'device' must be \"hip\", \"cuda\" or \"cpu\", got \"{}\"", profile.device));
  }
  ASSIGN_OR_RETURN(uint64_t batch, read_count(doc["batch"], "'batch'", 1, kMaxProfileBatch));
  profile.batch = int64_t(batch);
  ASSIGN_OR_RETURN(uint64_t repeats, read_count(doc["repeats"], "'repeats'", 1, 1'000'000));
  profile.repeats = unsigned(repeats);

  const json& units = doc["units"];
  if (!units.is_array() || units.empty()) return bad("'units' must be a non-empty array");
  for (size_t i = 0; i < units.size(); ++i) {
    ASSIGN_OR_RETURN(uint64_t n, read_count(units[i], fmt::format("units[{}]", i), 1,
                                            kMaxProfileUnits));
    if (!profile.units.empty() && n <= profile.units.back()) {
      return bad(fmt::format("'units' must increase: units[{}] = {} follows {}", i, n,
                             profile.units.back()));
    }
    profile.units.push_back(unsigned(n));
  }

  const json& layers = doc["layers"];
  if (!layers.is_array()) return bad("'layers' must be an array");
  std::set<std::string> labels;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string where = fmt::format("layers[{}]", i);
    RETURN_IF_ERROR(expect_keys(layers[i], where, {"label", "ms", "right_size"}));
    LayerProfileEntry layer;
    ASSIGN_OR_RETURN(layer.label, read_string(layers[i], "label", where + " "));
    if (!labels.insert(layer.label).second) {
      return bad(fmt::format("{}: label \"{}\" appears twice", where, layer.label));
    }
    const json& ms = layers[i]["ms"];
    if (!ms.is_array() || ms.size() != profile.units.size()) {
      return bad(fmt::format("{} ({}): 'ms' must be an array of {} latencies, one per unit count",
                             where, layer.label, profile.units.size()));
    }
    for (size_t k = 0; k < ms.size(); ++k) {
      // JSON has no NaN or infinity, and nlohmann refuses literals past a double's range; the
      // check holds whatever the library version does.
      if (!ms[k].is_number() || !std::isfinite(ms[k].get<double>()) || ms[k].get<double>() < 0) {
        return bad(fmt::format("{} ({}): ms[{}] must be a finite latency >= 0, got {}", where,
                               layer.label, k, ms[k].dump()));
      }
      layer.ms.push_back(ms[k].get<double>());
    }
    ASSIGN_OR_RETURN(uint64_t right, read_count(layers[i]["right_size"], where + " right_size", 1,
                                                kMaxProfileUnits));
    if (std::find(profile.units.begin(), profile.units.end(), right) == profile.units.end()) {
      return bad(fmt::format("{} ({}): right_size {} is not one of the measured 'units'", where,
                             layer.label, right));
    }
    layer.right_size = unsigned(right);
    profile.layers.push_back(std::move(layer));
  }
  return profile;
}

std::string format_layer_profile(const LayerProfile& profile) {
  // Built by hand so each layer is one line (a profile of a large model stays readable); the
  // values go through nlohmann so strings are escaped and doubles round-trip.
  std::string out = "{\n";
  out += fmt::format("  \"format\": {},\n", json(kLayerProfileFormat).dump());
  out += fmt::format("  \"version\": {},\n", kLayerProfileVersion);
  out += fmt::format("  \"model\": {},\n", json(profile.model).dump());
  out += fmt::format("  \"model_sha256\": {},\n", json(profile.model_sha256).dump());
  out += fmt::format("  \"device\": {},\n", json(profile.device).dump());
  out += fmt::format("  \"batch\": {},\n", profile.batch);
  out += fmt::format("  \"repeats\": {},\n", profile.repeats);
  out += fmt::format("  \"units\": {},\n", json(profile.units).dump());
  out += "  \"layers\": [";
  for (size_t i = 0; i < profile.layers.size(); ++i) {
    const LayerProfileEntry& layer = profile.layers[i];
    out += fmt::format("{}\n    {{\"label\": {}, \"ms\": {}, \"right_size\": {}}}",
                       i == 0 ? "" : ",", json(layer.label).dump(), json(layer.ms).dump(),
                       layer.right_size);
  }
  out += profile.layers.empty() ? "]\n}\n" : "\n  ]\n}\n";
  return out;
}

namespace {

Result<std::string> read_file(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    return Status(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kInvalidArgument,
                  fmt::format("{} {}: {}", what, path, std::strerror(err)));
  }
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    return Status(ErrorCode::kInternal, fmt::format("reading {} {} failed", what, path));
  }
  return bytes;
}

}  // namespace

Result<LayerProfile> read_layer_profile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, read_file(path, "layer profile"));
  Result<LayerProfile> profile = parse_layer_profile(text);
  if (!profile.is_ok()) return profile.status().with_context(path);
  return profile;
}

Status write_layer_profile(const std::string& path, const LayerProfile& profile) {
  // Written beside and renamed, so a reader never sees half a file.
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("cannot write {}: {}", temp, std::strerror(errno)));
    }
    out << format_layer_profile(profile);
    out.flush();
    if (!out) {
      return Status(ErrorCode::kInternal, fmt::format("writing {} failed", temp));
    }
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(temp.c_str());
    return Status(ErrorCode::kInternal,
                  fmt::format("rename({}, {}): {}", temp, path, std::strerror(err)));
  }
  return Status::ok();
}

std::string sha256_hex(std::span<const std::byte> bytes) {
  Sha256 hash;
  hash.update(bytes);
  return hash.hex();
}

Result<std::string> file_sha256(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, read_file(path, "model file"));
  return sha256_hex(std::as_bytes(std::span<const char>(bytes)));
}

Status check_layer_profile_model(const LayerProfile& profile, const std::string& model_path) {
  ASSIGN_OR_RETURN(std::string hash, file_sha256(model_path));
  if (hash != profile.model_sha256) {
    return Status(ErrorCode::kIncompatible,
                  fmt::format("the layer profile is of model '{}' (sha256 {}), not of {} (sha256 "
                              "{}): profile this model with slicectl profile",
                              profile.model, profile.model_sha256.substr(0, 12), model_path,
                              hash.substr(0, 12)));
  }
  return Status::ok();
}

}  // namespace sliceserve::backends
