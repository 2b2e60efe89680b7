// tools/size_classes.cpp: prints the size-class table with objects per page and tail waste
// (the source of docs/size-classes.md).
#include <cstdio>

#include "core/size_classes.hpp"

using namespace nebula;

int main() {
  printf("| class | size | step | page | blocks/page | tail waste | worst rounding waste |\n");
  printf("|---|---|---|---|---|---|---|\n");
  for (unsigned c = 0; c < kClassCount; ++c) {
    size_t s = kClassSize[c];
    size_t prev = c == 0 ? 0 : kClassSize[c - 1];
    size_t page = static_cast<size_t>(page_slices_for_class(c)) * kSliceSize;
    size_t n = page / s;
    size_t tail = page - n * s;
    double worst = 100.0 * static_cast<double>(s - (prev + 1)) / static_cast<double>(s);
    printf("| %u | %zu | %zu | %zu KiB | %zu | %zu B (%.1f%%) | %.1f%% |\n", c, s, s - prev, page / 1024, n,
           tail, 100.0 * static_cast<double>(tail) / static_cast<double>(page), worst);
  }
  return 0;
}
