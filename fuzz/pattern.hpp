// fuzz/pattern.hpp: the content pattern of the fuzz target. Byte i of a block with seed s is byte
// i%8 of a 64-bit mix of s and i/8; the seed mixes the block's address and size.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace fuzz {

inline uint64_t pattern_seed(const void* p, size_t n) {
  uint64_t x = reinterpret_cast<uintptr_t>(p) * 0x9E3779B97F4A7C15ull ^ n * 0xC2B2AE3D27D4EB4Full;
  x ^= x >> 31;
  return x | 1;
}

inline uint8_t pattern_byte(uint64_t seed, size_t i) {
  uint64_t x = seed ^ (static_cast<uint64_t>(i / 8) * 0x9E3779B97F4A7C15ull);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return static_cast<uint8_t>(x >> (8 * (i % 8)));
}

// Out of line (fuzz/pattern.cpp, built without coverage instrumentation).
void fill_bytes(uint8_t* p, size_t a, size_t b, uint64_t seed);
size_t first_bad(const uint8_t* p, size_t a, size_t b, uint64_t seed);   // SIZE_MAX: intact
size_t first_nonzero(const uint8_t* p, size_t a, size_t b);              // SIZE_MAX: all zero

}  // namespace fuzz
