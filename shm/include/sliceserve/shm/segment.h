#pragma once
// One model's shared-memory segment: creation (controller), attach (worker, client), unlink.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sliceserve/shm/layout.h"
#include "sliceserve/shm/status.h"

namespace sliceserve::shm {

struct SegmentOptions {
  std::string name;  // shm_open name, see segment_name()
  std::string model_name;
  ModelSpec spec;
  uint32_t lanes = 16;
  uint32_t slots_per_lane = 16;
  uint64_t slot_data_bytes = 0;  // 0: spec.item_bytes() rounded up to 64
  uint32_t mode = 0600;
};

// "/sliceserve.<instance>.<model>". Both parts must match [A-Za-z0-9_-]{1,48}.
Result<std::string> segment_name(std::string_view instance, std::string_view model);
Status validate_name_part(std::string_view what, std::string_view value);

// Model names of the segments of one instance present on this machine (scans /dev/shm).
std::vector<std::string> list_segment_models(std::string_view instance);

// Computes offsets and sizes; rejects zero or oversized parameters.
Result<SegmentGeometry> compute_geometry(const SegmentOptions& options);
uint64_t layout_checksum(const SegmentGeometry& geometry, const ModelSpec& spec);

class Segment {
 public:
  // Controller side. A segment left by a crashed controller (dead creator, or another layout)
  // is removed and recreated; one whose creator still runs is refused with kAlreadyExists.
  static Result<Segment> create(const SegmentOptions& options);
  // Worker/client side: maps an open segment and validates magic, version, checksum and size.
  static Result<Segment> attach(std::string_view name);
  static Status unlink(std::string_view name);

  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&& other) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();

  const std::string& name() const { return name_; }
  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }
  const SegmentGeometry& geometry() const { return header().geometry; }
  const ModelSpec& spec() const { return header().spec; }
  uint32_t slot_count() const { return geometry().slot_count(); }

  LaneHeader& lane(uint32_t index) const;
  std::atomic<uint64_t>* lane_ring(uint32_t index) const;
  SlotHeader& slot(uint32_t index) const;
  std::byte* slot_data(uint32_t index) const;
  // Every slot's data area, one contiguous block: what a device executor pins for DMA.
  std::span<std::byte> slot_data_area() const;
  WorkerStats& stats_block(uint64_t epoch) const;  // block epoch % kStatsBlocks
  Mailbox& mailbox() const;

  // Byte offsets of each input and output inside a slot's data area (spec order); computed
  // once, since the request path asks for them per item.
  size_t input_offset(uint32_t index) const { return input_offsets_[index]; }
  size_t output_offset(uint32_t index) const { return output_offsets_[index]; }

  // The creator unlinks the name when destroyed (clean shutdown).
  bool is_creator() const { return creator_; }

 private:
  Segment(std::string name, std::byte* base, size_t size, bool creator);
  void reset();
  void cache_offsets();

  std::string name_;
  std::byte* base_ = nullptr;
  size_t size_ = 0;
  bool creator_ = false;
  std::array<size_t, kMaxTensors> input_offsets_{};
  std::array<size_t, kMaxTensors> output_offsets_{};
};

}  // namespace sliceserve::shm
