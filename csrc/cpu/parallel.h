// OpenMP when the compiler has it; a serial build otherwise (the pragmas are then ignored).
#pragma once

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_max_threads() { return 1; }
#endif

namespace radengine::cpu {
inline int resolve_threads(int requested) {
  return requested > 0 ? requested : omp_get_max_threads();
}
}  // namespace radengine::cpu
