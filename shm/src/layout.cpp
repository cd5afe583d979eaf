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

}  // namespace sliceserve::shm
