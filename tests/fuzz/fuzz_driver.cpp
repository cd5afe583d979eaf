// Stand-in for libFuzzer's main where the compiler has none (GCC): runs every seed file found
// under the given folders, then deterministic mutations of them (bit flips, truncations, byte
// splices) through LLVMFuzzerTestOneInput until --seconds have passed. Folders give their .onnx
// files; other seeds are named one by one.
//   onnx_loader_fuzz [--seconds N] [--max-seed-bytes N] DIR_OR_FILE...

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using Bytes = std::vector<uint8_t>;

void run(const Bytes& bytes) { LLVMFuzzerTestOneInput(bytes.data(), bytes.size()); }

Bytes read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  Bytes bytes(std::filesystem::file_size(path));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  bytes.resize(static_cast<size_t>(in.gcount()));
  return bytes;
}

Bytes mutate(const Bytes& seed, std::mt19937_64& rng) {
  Bytes out = seed;
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    const size_t pos = out.empty() ? 0 : rng() % out.size();
    switch (rng() % 4) {
      case 0:  // flip a bit
        if (!out.empty()) out[pos] = static_cast<uint8_t>(out[pos] ^ (1U << (rng() % 8)));
        break;
      case 1:  // truncate
        out.resize(pos);
        break;
      case 2:  // overwrite with an interesting byte
        if (!out.empty()) {
          static constexpr uint8_t kInteresting[] = {0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x12};
          out[pos] = kInteresting[rng() % sizeof(kInteresting)];
        }
        break;
      default:  // duplicate a slice in place
        if (!out.empty()) {
          const size_t length = std::min<size_t>(out.size() - pos, 1 + rng() % 32);
          const Bytes slice(out.begin() + static_cast<std::ptrdiff_t>(pos),
                            out.begin() + static_cast<std::ptrdiff_t>(pos + length));
          out.insert(out.begin() + static_cast<std::ptrdiff_t>(pos), slice.begin(), slice.end());
        }
        break;
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 5.0;
  size_t max_seed_bytes = 1 << 16;
  std::vector<Bytes> seeds;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (arg == "--max-seed-bytes" && i + 1 < argc) {
      max_seed_bytes = static_cast<size_t>(std::atoll(argv[++i]));
    } else if (std::filesystem::is_directory(arg)) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(arg)) {
        if (entry.is_regular_file() && entry.path().extension() == ".onnx" &&
            entry.file_size() <= max_seed_bytes) {
          seeds.push_back(read_file(entry.path()));
        }
      }
    } else if (std::filesystem::is_regular_file(arg)) {
      seeds.push_back(read_file(arg));
    }
  }
  seeds.push_back({});
  for (const Bytes& seed : seeds) run(seed);
  std::mt19937_64 rng(42);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t runs = seeds.size();
  while (std::chrono::steady_clock::now() < deadline) {
    for (int i = 0; i < 64; ++i, ++runs) run(mutate(seeds[rng() % seeds.size()], rng));
  }
  std::printf("%s: %zu seeds, %llu runs, no crash\n",
              std::filesystem::path(argv[0]).filename().c_str(), seeds.size(),
              static_cast<unsigned long long>(runs));
  return 0;
}
