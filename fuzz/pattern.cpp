// fuzz/pattern.cpp: the byte loops of the fuzz target (fill with the pattern, find the first
// wrong or nonzero byte). fuzz/build.sh compiles this file without the fuzzer's coverage
// instrumentation: compare tracing in these loops would cost most of the run time and tell the
// fuzzer nothing about the allocator.
#include <stddef.h>
#include <stdint.h>

#include "fuzz/pattern.hpp"

namespace fuzz {

void fill_bytes(uint8_t* p, size_t a, size_t b, uint64_t seed) {
  for (size_t i = a; i < b; ++i) p[i] = pattern_byte(seed, i);
}

size_t first_bad(const uint8_t* p, size_t a, size_t b, uint64_t seed) {
  for (size_t i = a; i < b; ++i)
    if (p[i] != pattern_byte(seed, i)) return i;
  return SIZE_MAX;
}

size_t first_nonzero(const uint8_t* p, size_t a, size_t b) {
  for (size_t i = a; i < b; ++i)
    if (p[i] != 0) return i;
  return SIZE_MAX;
}

}  // namespace fuzz
