// Host weight store: one POSIX shared-memory object per region, "<segment_name>.w.<key>", 0600.
//
//   [ RegionHeader, padded to kHeaderBytes ][ weights: `bytes` bytes ]
//
// Creator: shm_open(O_CREAT | O_EXCL), fchmod 0600, posix_fallocate (tmpfs reserves the pages
// now: a full /dev/shm is an error here, not a SIGBUS in the middle of the fill), map read-write,
// write magic/bytes and its process identity, fill, then store state = kReady with release and
// make the data read-only. Everyone else: open, wait (bounded) until state == kReady (acquire),
// check magic/version/bytes, map read-only. A region is stale — and is unlinked and created
// afresh — when its creator died before publishing (its identity is dead, or it never wrote one
// within kNoIdentityGrace), gave up (state kAbandoned), or the region is of another layout or
// size. Unlinking never disturbs a worker that already maps the region; it only loses sharing.
// Stale regions are unlinked under an flock on the stale object, after checking the name still
// names that object, so two recovering workers never unlink each other's fresh region.

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "sliceserve/backends/weight_store.h"
#include "sliceserve/shm/check.h"
#include "sliceserve/shm/futex.h"
#include "sliceserve/shm/process_identity.h"

namespace sliceserve::backends {
namespace {

constexpr uint64_t kRegionMagic = 0x53'53'57'45'49'47'48'31ULL;  // "SSWEIGH1"
constexpr uint32_t kRegionVersion = 1;
constexpr size_t kHeaderBytes = 4096;                    // the weights start page-aligned
constexpr uint64_t kReadyTimeoutNs = 30'000'000'000ULL;  // a slow fill of a large model
constexpr uint64_t kNoIdentityGrace = 2'000'000'000ULL;  // creator between O_EXCL and its header
constexpr size_t kMaxRegionBytes = size_t{1} << 40;

enum RegionState : uint32_t { kFilling = 0, kReady = 1, kAbandoned = 2 };

struct RegionHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t header_bytes;
  uint64_t bytes;
  std::atomic<uint64_t> creator;  // shm::ProcessIdentity of the filler; 0 until written
  std::atomic<uint32_t> state;    // RegionState; kReady stored with release after the fill
};
static_assert(sizeof(RegionHeader) <= kHeaderBytes);
static_assert(std::is_standard_layout_v<RegionHeader>);
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

// An open file descriptor, closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

struct Mapping {
  void* base = nullptr;
  size_t size = 0;
};

Status validate_segment_name(std::string_view name) {
  if (name.size() < 2 || name.size() > 160 || name[0] != '/' ||
      name.find('/', 1) != std::string_view::npos) {
    return Status(ErrorCode::kInvalidArgument,
                  "weight store needs a segment name \"/name\", got \"" + std::string(name) + "\"");
  }
  return Status::ok();
}

std::string dev_shm_path(const std::string& name) { return "/dev/shm" + name; }

// Unlinks `name` if it still names the object open as `fd`. Serialised by an flock on that
// object, so of several workers that found the same stale region exactly one unlinks it, and
// none can unlink the fresh region another one created meanwhile.
void unlink_if_same(const std::string& name, int fd) {
  if (flock(fd, LOCK_EX) != 0) return;  // cannot serialise: leave it, the caller retries
  struct stat mine {};
  struct stat named {};
  if (fstat(fd, &mine) == 0 && stat(dev_shm_path(name).c_str(), &named) == 0 &&
      mine.st_ino == named.st_ino && mine.st_dev == named.st_dev) {
    shm_unlink(name.c_str());
  }
  flock(fd, LOCK_UN);
}

class HostWeightStore final : public WeightStore {
 public:
  explicit HostWeightStore(std::string segment_name) : segment_name_(std::move(segment_name)) {}
  ~HostWeightStore() override {
    for (const auto& r : regions_) munmap(r.mapping.base, r.mapping.size);
  }
  HostWeightStore(const HostWeightStore&) = delete;
  HostWeightStore& operator=(const HostWeightStore&) = delete;

  Result<WeightRegion> get_or_create(
      std::string_view key, size_t bytes,
      const std::function<Status(std::span<std::byte>)>& fill) override {
    RETURN_IF_ERROR(validate_weight_key(key));
    if (bytes == 0 || bytes > kMaxRegionBytes) {
      return Status(ErrorCode::kInvalidArgument, "weight region size must be in 1.." +
                                                     std::to_string(kMaxRegionBytes) +
                                                     " bytes, got " + std::to_string(bytes));
    }
    for (const auto& r : regions_) {
      if (r.key != key) continue;
      if (r.region.bytes != bytes) {
        return Status(ErrorCode::kInvalidArgument,
                      "weight region \"" + std::string(key) + "\" is already mapped with " +
                          std::to_string(r.region.bytes) + " bytes, asked for " +
                          std::to_string(bytes));
      }
      return r.region;
    }
    const std::string name = segment_name_ + ".w." + std::string(key);
    const uint64_t deadline = shm::monotonic_ns() + kReadyTimeoutNs;
    for (;;) {
      if (shm::monotonic_ns() >= deadline) {
        return Status(ErrorCode::kTimeout, "weight region " + name + " stayed stale for " +
                                               std::to_string(kReadyTimeoutNs / 1'000'000'000) +
                                               " s (cannot remove it?)");
      }
      Result<Opened> opened = create(name, bytes, fill);
      if (!opened.is_ok() && opened.status().code() == ErrorCode::kAlreadyExists) {
        opened = attach(name, bytes, deadline);
      }
      if (!opened.is_ok()) {
        if (opened.status().code() == ErrorCode::kNotFound) continue;  // unlinked: start over
        return opened.status().with_context("weight region " + name);
      }
      regions_.push_back({std::string(key), opened->mapping, opened->region});
      mapped_ += bytes;
      if (!opened->region.shared) private_ += bytes;
      return opened->region;
    }
  }

  size_t mapped_bytes() const override { return mapped_; }
  size_t private_bytes() const override { return private_; }

 private:
  struct Opened {
    Mapping mapping;
    WeightRegion region;
  };
  struct Held {
    std::string key;
    Mapping mapping;
    WeightRegion region;
  };

  // Creates, fills and publishes the region; kAlreadyExists if someone else has the name.
  static Result<Opened> create(const std::string& name, size_t bytes,
                               const std::function<Status(std::span<std::byte>)>& fill) {
    const int raw = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (raw == -1) {
      if (errno == EEXIST) return Status(ErrorCode::kAlreadyExists, "exists");
      return errno_status("shm_open", errno, __FILE__, __LINE__);
    }
    Fd fd(raw);
    const size_t total = kHeaderBytes + bytes;
    void* base = MAP_FAILED;
    auto give_up = [&](Status status) {
      if (base != MAP_FAILED) munmap(base, total);
      shm_unlink(name.c_str());
      return status;
    };
    // shm_open's mode is filtered by the umask; make it exactly 0600.
    if (fchmod(fd.get(), 0600) != 0) {
      return give_up(errno_status("fchmod", errno, __FILE__, __LINE__));
    }
    if (ftruncate(fd.get(), off_t(total)) != 0) {
      return give_up(errno_status("ftruncate", errno, __FILE__, __LINE__));
    }
    base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (base == MAP_FAILED) return give_up(errno_status("mmap", errno, __FILE__, __LINE__));
    // The identity goes in first (one page touched), so waiters can tell a slow creator from a
    // dead one during the long steps below.
    auto* header = static_cast<RegionHeader*>(base);
    header->magic = kRegionMagic;
    header->version = kRegionVersion;
    header->header_bytes = uint32_t(kHeaderBytes);
    header->bytes = bytes;
    // Release: a waiter that sees our identity sees the fields above.
    header->creator.store(shm::self_identity(), std::memory_order_release);
    // posix_fallocate returns the error number instead of setting errno.
    if (int err = posix_fallocate(fd.get(), 0, off_t(total)); err != 0) {
      header->state.store(kAbandoned, std::memory_order_release);
      return give_up(errno_status("posix_fallocate", err, __FILE__, __LINE__)
                         .with_context("reserving " + std::to_string(total) + " bytes"));
    }
    auto* data = static_cast<std::byte*>(base) + kHeaderBytes;
    Status filled = fill(std::span<std::byte>(data, bytes));
    if (!filled.is_ok()) {
      // Waiters see kAbandoned (and that the name is gone) and start over.
      header->state.store(kAbandoned, std::memory_order_release);
      return give_up(filled.with_context("filling the weights"));
    }
    // Release: whoever acquires kReady sees the whole fill.
    header->state.store(kReady, std::memory_order_release);
    // The weights are read-only from now on, for us as for everyone else (best effort).
    (void)mprotect(data, bytes, PROT_READ);
    return Opened{{base, total}, {data, bytes, false}};
  }

  // Maps a region another worker created, waiting for it to be published. kNotFound when the
  // name vanished or turned out stale (then unlinked): the caller starts over.
  static Result<Opened> attach(const std::string& name, size_t bytes, uint64_t deadline) {
    const int raw = shm_open(name.c_str(), O_RDONLY | O_CLOEXEC, 0);
    if (raw == -1) {
      if (errno == ENOENT) return Status(ErrorCode::kNotFound, "vanished");
      return errno_status("shm_open", errno, __FILE__, __LINE__);
    }
    Fd fd(raw);
    const size_t total = kHeaderBytes + bytes;
    const uint64_t first_seen = shm::monotonic_ns();
    std::chrono::microseconds pause(50);
    Mapping mapping;
    auto unmap = [&] {
      if (mapping.base != nullptr) munmap(mapping.base, mapping.size);
      mapping = {};
    };
    auto stale = [&] {
      unmap();
      unlink_if_same(name, fd.get());
      return Status(ErrorCode::kNotFound, "stale");
    };
    for (;;) {
      struct stat st {};
      if (fstat(fd.get(), &st) != 0) {
        unmap();
        return errno_status("fstat", errno, __FILE__, __LINE__);
      }
      const uint64_t now = shm::monotonic_ns();
      if (st.st_size != 0) {
        // Any other size is another model configuration (or a layout we do not know): stale.
        if (size_t(st.st_size) != total) return stale();
        if (mapping.base == nullptr) {
          // MAP_POPULATE: the page tables are filled now, at load, not by page faults in the
          // first batches after this worker takes the ring.
          void* base = mmap(nullptr, total, PROT_READ, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
          if (base == MAP_FAILED) return errno_status("mmap", errno, __FILE__, __LINE__);
          mapping = {base, total};
        }
        const auto* header = static_cast<const RegionHeader*>(mapping.base);
        // Acquire pairs with the creator's release of kReady: the weights are all there.
        const uint32_t state = header->state.load(std::memory_order_acquire);
        const uint64_t creator = header->creator.load(std::memory_order_acquire);
        if (state == kReady) {
          if (header->magic != kRegionMagic || header->version != kRegionVersion ||
              header->header_bytes != kHeaderBytes || header->bytes != bytes) {
            return stale();
          }
          const auto* data = static_cast<const std::byte*>(mapping.base) + kHeaderBytes;
          return Opened{mapping, {data, bytes, true}};
        }
        if (state == kAbandoned) return stale();
        if (creator != 0 && !shm::is_alive(creator)) return stale();  // died mid-fill
        if (creator == 0 && now - first_seen > kNoIdentityGrace) return stale();
      } else if (now - first_seen > kNoIdentityGrace) {
        return stale();  // created, never sized: the creator died right after O_EXCL
      }
      if (now >= deadline) {
        unmap();
        return Status(ErrorCode::kTimeout, "another worker has been filling the weights for " +
                                               std::to_string(kReadyTimeoutNs / 1'000'000'000) +
                                               " s");
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(10'000));
    }
  }

  std::string segment_name_;
  std::vector<Held> regions_;
  size_t mapped_ = 0;
  size_t private_ = 0;
};

}  // namespace

Status validate_weight_key(std::string_view key) {
  constexpr size_t kMaxKey = 64;
  bool ok = !key.empty() && key.size() <= kMaxKey && key != "." && key != "..";
  for (char c : key) {
    ok = ok && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-' || c == '.');
  }
  if (!ok) {
    return Status(ErrorCode::kInvalidArgument, "weight region key \"" + std::string(key) +
                                                   "\" must match [A-Za-z0-9_.-]{1," +
                                                   std::to_string(kMaxKey) + "}");
  }
  return Status::ok();
}

Result<std::unique_ptr<WeightStore>> open_host_weight_store(std::string_view segment_name) {
  RETURN_IF_ERROR(validate_segment_name(segment_name));
  return std::unique_ptr<WeightStore>(std::make_unique<HostWeightStore>(std::string(segment_name)));
}

void remove_host_weights(std::string_view segment_name) {
  if (!validate_segment_name(segment_name).is_ok()) return;
  // Object names in /dev/shm drop the leading '/'.
  const std::string prefix = std::string(segment_name.substr(1)) + ".w.";
  std::vector<std::string> names;
  if (DIR* dir = opendir("/dev/shm")) {
    while (const dirent* e = readdir(dir)) {
      std::string_view n = e->d_name;
      if (n.size() > prefix.size() && n.substr(0, prefix.size()) == prefix) {
        names.emplace_back("/" + std::string(n));
      }
    }
    closedir(dir);
  }
  for (const std::string& name : names) shm_unlink(name.c_str());
}

}  // namespace sliceserve::backends
