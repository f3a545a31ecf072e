// Output-buffer hints for large CPU kernel outputs.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace radengine::cpu {

// A fresh multi-hundred-MB output is first touched by the kernel, and on virtual machines
// one 4 KB page fault per page can cost more than the arithmetic. Where transparent huge
// pages are in "madvise" mode, ask for 2 MB pages on the part of [p, p + bytes) made of
// whole 2 MB pages (so no neighbouring allocation is touched). Advisory only: failure and
// non-Linux systems are ignored, and results never depend on it.
inline void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace radengine::cpu
