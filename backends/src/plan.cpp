#include "sliceserve/backends/plan.h"

namespace sliceserve::backends {

int64_t PlanValue::element_count() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

size_t PlanValue::byte_size() const {
  return static_cast<size_t>(element_count()) * shm::data_type_size(dtype);
}

}  // namespace sliceserve::backends
