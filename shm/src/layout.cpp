#include "sliceserve/shm/layout.h"

namespace sliceserve::shm {

const char* worker_state_name(uint32_t state) {
  switch (WorkerState(state)) {
    case WorkerState::kUnused:
      return "unused";
    case WorkerState::kLoading:
      return "loading";
    case WorkerState::kReady:
      return "ready";
    case WorkerState::kServing:
      return "serving";
    case WorkerState::kDraining:
      return "draining";
    case WorkerState::kExited:
      return "exited";
    case WorkerState::kFailed:
      return "failed";
  }
  return "unknown";
}

const char* policy_action_name(PolicyAction action) {
  switch (action) {
    case PolicyAction::kGrow:
      return "grow";
    case PolicyAction::kShrink:
      return "shrink";
    case PolicyAction::kBatch:
      return "batch";
    case PolicyAction::kHold:
      return "hold";
  }
  return "unknown";
}

void store_text(SharedText& text, std::string_view value) {
  uint64_t seq = text.seq.load(std::memory_order_relaxed);
  text.seq.store(seq + 1, std::memory_order_relaxed);  // odd: write in progress
  // Release fence: a reader that sees any new word also sees the odd sequence.
  std::atomic_thread_fence(std::memory_order_release);
  for (size_t w = 0; w < SharedText::kWords; ++w) {
    uint64_t word = 0;
    for (size_t b = 0; b < 8; ++b) {
      size_t i = w * 8 + b;
      if (i < value.size() && i + 1 < SharedText::kWords * 8) {
        word |= uint64_t(static_cast<unsigned char>(value[i])) << (8 * b);
      }
    }
    text.words[w].store(word, std::memory_order_relaxed);
  }
  text.seq.store(seq + 2, std::memory_order_release);
}

std::string load_text(const SharedText& text) {
  for (;;) {
    uint64_t before = text.seq.load(std::memory_order_acquire);
    uint64_t words[SharedText::kWords];
    for (size_t w = 0; w < SharedText::kWords; ++w) {
      words[w] = text.words[w].load(std::memory_order_relaxed);
    }
    // Acquire fence: the words above were read before the sequence is checked again.
    std::atomic_thread_fence(std::memory_order_acquire);
    if ((before & 1) == 0 && text.seq.load(std::memory_order_relaxed) == before) {
      std::string out;
      for (uint64_t word : words) {
        for (size_t b = 0; b < 8; ++b) {
          char c = char((word >> (8 * b)) & 0xff);
          if (c == '\0') return out;
          out.push_back(c);
        }
      }
      return out;
    }
  }
}

}  // namespace sliceserve::shm
