#include "sliceserve/shm/segment.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "sliceserve/shm/check.h"
#include "sliceserve/shm/process_identity.h"

namespace sliceserve::shm {
namespace {

constexpr uint64_t kMaxSegmentBytes = uint64_t{64} << 30;
constexpr std::string_view kPrefix = "sliceserve.";

constexpr uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

uint64_t next_pow2(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Bytes a slot needs: every tensor starts 64-byte aligned.
uint64_t aligned_item_bytes(const ModelSpec& spec) {
  uint64_t total = 0;
  for (const auto& t : spec.input_specs()) total += align_up(t.byte_size(), 64);
  for (const auto& t : spec.output_specs()) total += align_up(t.byte_size(), 64);
  return total;
}

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ULL;
  void add(const void* p, size_t n) {
    auto b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ULL;
  }
  void add_u64(uint64_t v) { add(&v, sizeof v); }
};

void hash_tensor(Fnv& f, const TensorSpec& t) {
  f.add(t.name, strnlen(t.name, kMaxTensorName));
  f.add_u64(uint64_t(t.dtype));
  f.add_u64(t.ndims);
  for (uint8_t i = 0; i < t.ndims; ++i) f.add_u64(uint64_t(t.dims[i]));
}

Status validate_spec(const ModelSpec& spec) {
  if (spec.n_inputs == 0 || spec.n_inputs > kMaxTensors || spec.n_outputs == 0 ||
      spec.n_outputs > kMaxTensors) {
    return Status(ErrorCode::kInvalidArgument, "a model needs 1 to 8 inputs and 1 to 8 outputs");
  }
  for (const auto* list : {&spec.inputs, &spec.outputs}) {
    uint32_t n = list == &spec.inputs ? spec.n_inputs : spec.n_outputs;
    for (uint32_t i = 0; i < n; ++i) {
      const TensorSpec& t = (*list)[i];
      auto rebuilt = make_tensor_spec(t.name_view(), t.dtype, t.shape());
      if (!rebuilt.is_ok()) return rebuilt.status();
    }
  }
  return Status::ok();
}

// Header of an existing segment, read without trusting its size.
struct ExistingSegment {
  bool readable = false;
  uint64_t magic = 0;
  uint32_t version = 0;
  ProcessIdentity controller = 0;
};

ExistingSegment inspect_existing(int fd) {
  ExistingSegment out;
  struct stat st {};
  if (fstat(fd, &st) != 0 || size_t(st.st_size) < sizeof(SegmentHeader)) return out;
  void* p = mmap(nullptr, sizeof(SegmentHeader), PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return out;
  const auto* h = static_cast<const SegmentHeader*>(p);
  out.readable = true;
  out.magic = h->magic;
  out.version = h->layout_version;
  out.controller = h->controller;
  munmap(p, sizeof(SegmentHeader));
  return out;
}

}  // namespace

Status validate_name_part(std::string_view what, std::string_view value) {
  bool ok = !value.empty() && value.size() <= 48;
  for (char c : value) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-');
  }
  if (ok) return Status::ok();
  return Status(ErrorCode::kInvalidArgument,
                std::string(what) + " '" + std::string(value) + "' must match [A-Za-z0-9_-]{1,48}");
}

Result<std::string> segment_name(std::string_view instance, std::string_view model) {
  RETURN_IF_ERROR(validate_name_part("instance", instance));
  RETURN_IF_ERROR(validate_name_part("model name", model));
  // Appended piecewise: GCC 12 reports a false -Wrestrict on a chain of operator+ at -O3.
  std::string name = "/";
  name += kPrefix;
  name += instance;
  name += '.';
  name += model;
  return name;
}

std::vector<std::string> list_segment_models(std::string_view instance) {
  std::vector<std::string> models;
  std::string prefix = std::string(kPrefix) + std::string(instance) + ".";
  DIR* dir = opendir("/dev/shm");
  if (!dir) return models;
  while (dirent* e = readdir(dir)) {
    std::string_view n = e->d_name;
    // Model names have no '.', so "<model>.w.<key>" (a model's shared weights) is not a model.
    if (n.size() > prefix.size() && n.substr(0, prefix.size()) == prefix &&
        n.find('.', prefix.size()) == std::string_view::npos) {
      models.emplace_back(n.substr(prefix.size()));
    }
  }
  closedir(dir);
  std::sort(models.begin(), models.end());
  return models;
}

Result<SegmentGeometry> compute_geometry(const SegmentOptions& options) {
  RETURN_IF_ERROR(validate_spec(options.spec));
  if (options.lanes == 0 || options.lanes > kMaxLanes) {
    return Status(ErrorCode::kInvalidArgument, "lanes must be in 1.." + std::to_string(kMaxLanes));
  }
  if (options.slots_per_lane == 0 || options.slots_per_lane > kMaxSlotsPerLane) {
    return Status(ErrorCode::kInvalidArgument,
                  "slots_per_lane must be in 1.." + std::to_string(kMaxSlotsPerLane));
  }
  uint64_t needed = std::max<uint64_t>(64, aligned_item_bytes(options.spec));
  uint64_t slot_bytes =
      options.slot_data_bytes == 0 ? needed : align_up(options.slot_data_bytes, 64);
  if (slot_bytes < needed) {
    return Status(ErrorCode::kInvalidArgument, "slot_data_bytes " + std::to_string(slot_bytes) +
                                                   " is smaller than one item (" +
                                                   std::to_string(needed) + " bytes)");
  }
  SegmentGeometry g;
  g.lanes = options.lanes;
  g.slots_per_lane = options.slots_per_lane;
  g.ring_capacity = uint32_t(next_pow2(2ULL * options.slots_per_lane));
  g.slot_data_bytes = slot_bytes;
  g.lanes_offset = align_up(sizeof(SegmentHeader), 64);
  g.ring_entries_offset = g.lanes_offset + uint64_t(g.lanes) * sizeof(LaneHeader);
  g.slots_offset =
      align_up(g.ring_entries_offset + uint64_t(g.lanes) * g.ring_capacity * sizeof(uint64_t), 64);
  g.stats_offset = g.slots_offset + uint64_t(g.slot_count()) * sizeof(SlotHeader);
  g.mailbox_offset = g.stats_offset + kStatsBlocks * sizeof(WorkerStats);
  g.slot_data_offset = align_up(g.mailbox_offset + sizeof(Mailbox), 4096);
  g.total_bytes = align_up(g.slot_data_offset + uint64_t(g.slot_count()) * slot_bytes, 4096);
  if (g.total_bytes > kMaxSegmentBytes) {
    return Status(ErrorCode::kInvalidArgument,
                  "segment would need " + std::to_string(g.total_bytes >> 20) + " MiB (limit " +
                      std::to_string(kMaxSegmentBytes >> 20) +
                      " MiB): reduce lanes, slots_per_lane or the tensor sizes");
  }
  return g;
}

uint64_t layout_checksum(const SegmentGeometry& g, const ModelSpec& spec) {
  Fnv f;
  for (uint64_t v :
       {uint64_t(kLayoutVersion), uint64_t(sizeof(SegmentHeader)), uint64_t(sizeof(LaneHeader)),
        uint64_t(sizeof(SlotHeader)), uint64_t(sizeof(WorkerStats)), uint64_t(sizeof(Mailbox)),
        uint64_t(g.lanes), uint64_t(g.slots_per_lane), uint64_t(g.ring_capacity), g.slot_data_bytes,
        g.lanes_offset, g.ring_entries_offset, g.slots_offset, g.stats_offset, g.mailbox_offset,
        g.slot_data_offset, g.total_bytes}) {
    f.add_u64(v);
  }
  f.add_u64(spec.n_inputs);
  f.add_u64(spec.n_outputs);
  for (const auto& t : spec.input_specs()) hash_tensor(f, t);
  for (const auto& t : spec.output_specs()) hash_tensor(f, t);
  return f.h;
}

Result<Segment> Segment::create(const SegmentOptions& options) {
  if (options.name.size() < 2 || options.name[0] != '/' ||
      options.name.find('/', 1) != std::string::npos || options.name.size() > 200) {
    return Status(ErrorCode::kInvalidArgument,
                  "segment name '" + options.name + "' must be '/' followed by a file name");
  }
  RETURN_IF_ERROR(validate_name_part("model name", options.model_name));
  ASSIGN_OR_RETURN(SegmentGeometry g, compute_geometry(options));

  int fd = shm_open(options.name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, options.mode);
  if (fd == -1 && errno == EEXIST) {
    // A segment of this name exists. Refuse it if its controller still runs; otherwise it is
    // a stale leftover of a crashed run (or of another layout version): remove and recreate.
    int old = shm_open(options.name.c_str(), O_RDONLY | O_CLOEXEC, 0);
    if (old != -1) {
      ExistingSegment e = inspect_existing(old);
      close(old);
      if (e.readable && e.magic == kSegmentMagic && e.controller != self_identity() &&
          is_alive(e.controller)) {
        return Status(ErrorCode::kAlreadyExists,
                      "segment " + options.name + " belongs to a running sliceserved (pid " +
                          std::to_string(identity_pid(e.controller)) + ")");
      }
    }
    if (shm_unlink(options.name.c_str()) != 0 && errno != ENOENT) {
      return errno_status("shm_unlink(stale segment)", errno, __FILE__, __LINE__);
    }
    fd = shm_open(options.name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, options.mode);
  }
  if (fd == -1) return errno_status("shm_open", errno, __FILE__, __LINE__);

  auto fail = [&](const char* call) {
    Status s = errno_status(call, errno, __FILE__, __LINE__);
    close(fd);
    shm_unlink(options.name.c_str());
    return s;
  };
  // shm_open's mode is filtered by the umask; make it exactly what was asked.
  if (fchmod(fd, options.mode) != 0) return fail("fchmod");
  if (ftruncate(fd, off_t(g.total_bytes)) != 0) return fail("ftruncate");
  void* p = mmap(nullptr, g.total_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail("mmap");
  close(fd);

  // The fresh mapping is zero-filled: every atomic starts at 0, every state FREE with
  // generation 0, every lane free and empty.
  auto* h = static_cast<SegmentHeader*>(p);
  h->magic = kSegmentMagic;
  h->layout_version = kLayoutVersion;
  h->header_bytes = sizeof(SegmentHeader);
  h->geometry = g;
  h->layout_checksum = layout_checksum(g, options.spec);
  h->controller = self_identity();
  std::memcpy(h->model_name, options.model_name.data(), options.model_name.size());
  h->spec = options.spec;
  // Release: everything above is visible to whoever sees kOpen.
  h->lifecycle.store(uint32_t(Lifecycle::kOpen), std::memory_order_release);
  Segment segment(options.name, static_cast<std::byte*>(p), g.total_bytes, true);
  segment.cache_offsets();
  return segment;
}

Result<Segment> Segment::attach(std::string_view name_view) {
  std::string name(name_view);
  int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd == -1) {
    if (errno == ENOENT) return Status(ErrorCode::kNotFound, "no segment " + name);
    return errno_status("shm_open", errno, __FILE__, __LINE__);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    Status s = errno_status("fstat", errno, __FILE__, __LINE__);
    close(fd);
    return s;
  }
  if (size_t(st.st_size) < sizeof(SegmentHeader)) {
    close(fd);
    return Status(ErrorCode::kIncompatible, "segment " + name + " is too small to be ours");
  }
  void* p = mmap(nullptr, size_t(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int mmap_errno = errno;
  close(fd);
  if (p == MAP_FAILED) return errno_status("mmap", mmap_errno, __FILE__, __LINE__);
  Segment segment(name, static_cast<std::byte*>(p), size_t(st.st_size), false);

  const SegmentHeader& h = segment.header();
  if (h.magic == 0 &&
      h.lifecycle.load(std::memory_order_acquire) == uint32_t(Lifecycle::kInitializing)) {
    return Status(ErrorCode::kUnavailable, "segment " + name + " is still being created");
  }
  if (h.magic != kSegmentMagic) {
    return Status(ErrorCode::kIncompatible, "segment " + name + " has no SliceServe header");
  }
  if (h.layout_version != kLayoutVersion) {
    return Status(ErrorCode::kIncompatible, "segment " + name + " has layout version " +
                                                std::to_string(h.layout_version) + ", expected " +
                                                std::to_string(kLayoutVersion));
  }
  if (h.geometry.total_bytes != size_t(st.st_size) ||
      h.layout_checksum != layout_checksum(h.geometry, h.spec)) {
    return Status(ErrorCode::kIncompatible, "segment " + name + " fails its layout checksum");
  }
  if (h.lifecycle.load(std::memory_order_acquire) == uint32_t(Lifecycle::kClosing) ||
      !is_alive(h.controller)) {
    return Status(ErrorCode::kServerGone, "the server of segment " + name + " has stopped");
  }
  segment.cache_offsets();  // the spec is validated: the checksum matched
  return segment;
}

Status Segment::unlink(std::string_view name) {
  if (shm_unlink(std::string(name).c_str()) != 0 && errno != ENOENT) {
    return errno_status("shm_unlink", errno, __FILE__, __LINE__);
  }
  return Status::ok();
}

Segment::Segment(std::string name, std::byte* base, size_t size, bool creator)
    : name_(std::move(name)), base_(base), size_(size), creator_(creator) {}

Segment::Segment(Segment&& other) noexcept
    : name_(std::move(other.name_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      creator_(std::exchange(other.creator_, false)),
      input_offsets_(other.input_offsets_),
      output_offsets_(other.output_offsets_) {}

Segment& Segment::operator=(Segment&& other) noexcept {
  if (this != &other) {
    reset();
    name_ = std::move(other.name_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    creator_ = std::exchange(other.creator_, false);
    input_offsets_ = other.input_offsets_;
    output_offsets_ = other.output_offsets_;
  }
  return *this;
}

Segment::~Segment() { reset(); }

void Segment::reset() {
  if (!base_) return;
  munmap(base_, size_);
  if (creator_) shm_unlink(name_.c_str());
  base_ = nullptr;
}

LaneHeader& Segment::lane(uint32_t index) const {
  SS_CHECK(index < geometry().lanes, "lane index out of range");
  return reinterpret_cast<LaneHeader*>(base_ + geometry().lanes_offset)[index];
}

std::atomic<uint64_t>* Segment::lane_ring(uint32_t index) const {
  SS_CHECK(index < geometry().lanes, "lane index out of range");
  return reinterpret_cast<std::atomic<uint64_t>*>(base_ + geometry().ring_entries_offset) +
         uint64_t(index) * geometry().ring_capacity;
}

SlotHeader& Segment::slot(uint32_t index) const {
  SS_CHECK(index < slot_count(), "slot index out of range");
  return reinterpret_cast<SlotHeader*>(base_ + geometry().slots_offset)[index];
}

std::byte* Segment::slot_data(uint32_t index) const {
  SS_CHECK(index < slot_count(), "slot index out of range");
  return base_ + geometry().slot_data_offset + uint64_t(index) * geometry().slot_data_bytes;
}

std::span<std::byte> Segment::slot_data_area() const {
  return {base_ + geometry().slot_data_offset, uint64_t(slot_count()) * geometry().slot_data_bytes};
}

WorkerStats& Segment::stats_block(uint64_t epoch) const {
  return reinterpret_cast<WorkerStats*>(base_ + geometry().stats_offset)[epoch % kStatsBlocks];
}

Mailbox& Segment::mailbox() const {
  return *reinterpret_cast<Mailbox*>(base_ + geometry().mailbox_offset);
}

void Segment::cache_offsets() {
  size_t offset = 0;
  for (uint32_t i = 0; i < spec().n_inputs; ++i) {
    input_offsets_[i] = offset;
    offset += align_up(spec().inputs[i].byte_size(), 64);
  }
  for (uint32_t i = 0; i < spec().n_outputs; ++i) {
    output_offsets_[i] = offset;
    offset += align_up(spec().outputs[i].byte_size(), 64);
  }
}

}  // namespace sliceserve::shm
