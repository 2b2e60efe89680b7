// core/size_classes.hpp: the size classes of small and medium blocks.
//
// Sizes up to 128 bytes go in exact 16-byte steps (the minimum alignment); above, each power of
// two is split in 4 classes, so rounding a request up wastes at most 20% of a block and about
// 10% on average; the octaves of 4 and 8 KiB have a fifth class at 1.125 x their base (below).
// The table is computed at compile time from that rule and checked below; `tools/size-classes`
// prints it with objects per page and tail waste (docs/size-classes.md).
//
//   class  0..7    16, 32, ... 128            step 16
//   class  8..11   160, 192, 224, 256         step 32
//   class 12..15   320, 384, 448, 512         step 64
//   ...            (4 per power of two)
//   class 28..32   4608, 5120, 6144, 7168, 8192
//   class 33..37   9216, 10240, 12288, 14336, 16384
//   ...            (4 per power of two)
//   class 46..49   81920 .. 131072            step 16384
//
// Blocks up to kSmallMax (8 KiB) live in small pages (64 KiB), larger ones in medium pages
// (64-512 KiB, see page_slices_for_class). size -> class is a table lookup for sizes <=
// kDirectMax (4 KiB) and a bit-scan above.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "core/config.hpp"

namespace nebula {

// The octaves of 4 and 8 KiB get a fifth class at 1.125 x their base: a page plus a small
// header (sqlite's 4104-byte page-cache entries, PATH_MAX + 1, BUFSIZ + 1, buffers with a
// length prefix) wastes 1/9 of its block instead of 1/5 (sqlite with a 200 MB page cache: peak
// RSS 203.9 -> 192.3 MiB, glibc 182.1). Not in every octave: each class holds pages of its own, and
// where sizes spread evenly (strings grown by realloc, `strbuild`) a fifth class from 4 KiB up
// kept 7% more resident.
inline constexpr unsigned kFineShift = 12;  // octaves (2^k, 2^(k+1)] with k in [kFineShift, kFineEnd)
inline constexpr unsigned kFineEnd = 14;
inline constexpr unsigned kFineFirst = 8 + (kFineShift - 7) * 4;  // first class of the 4 KiB octave
inline constexpr unsigned kFineAfter = kFineFirst + (kFineEnd - kFineShift) * 5;
inline constexpr unsigned kClassCount = kFineAfter + (17 - kFineEnd) * 4;

constexpr size_t class_size_formula(unsigned c) {
  if (c < 8) return 16 * (c + 1);
  if (c >= kFineFirst && c < kFineAfter) {
    unsigned k = kFineShift + (c - kFineFirst) / 5;
    unsigned j = (c - kFineFirst) % 5;
    return (size_t{1} << k) + (j == 0 ? size_t{1} << (k - 3) : j * (size_t{1} << (k - 2)));
  }
  unsigned q = c < kFineFirst ? c - 8 : c - kFineAfter + (kFineEnd - 7) * 4;
  unsigned k = 7 + q / 4;
  unsigned j = q % 4;
  return (size_t{1} << k) + (j + 1) * (size_t{1} << (k - 2));
}

constexpr unsigned size_to_class_formula(size_t n) {
  if (n <= 128) return n == 0 ? 0 : static_cast<unsigned>((n + 15) / 16 - 1);
  unsigned k = 63 - static_cast<unsigned>(__builtin_clzll(n - 1));  // n in (2^k, 2^(k+1)]
  if (k >= kFineShift && k < kFineEnd) {
    unsigned e = static_cast<unsigned>((n - 1 - (size_t{1} << k)) >> (k - 3));  // eighth of the octave
    return kFineFirst + (k - kFineShift) * 5 + (e == 0 ? 0 : (e >> 1) + 1);
  }
  unsigned j = static_cast<unsigned>((n - 1 - (size_t{1} << k)) >> (k - 2));
  return k < kFineShift ? 8 + (k - 7) * 4 + j : kFineAfter + (k - kFineEnd) * 4 + j;
}

inline constexpr std::array<uint32_t, kClassCount> kClassSize = [] {
  std::array<uint32_t, kClassCount> t{};
  for (unsigned c = 0; c < kClassCount; ++c) t[c] = static_cast<uint32_t>(class_size_formula(c));
  return t;
}();

// Classes whose owner's frees into full pages go to the heap's cache of the class rather than to
// their page: the small classes from 4 KiB, whose pages hold 8 to 16 blocks (free_generic; see
// "Class caches" in docs/design.md).
constexpr bool class_caches_frees(unsigned c) { return kClassSize[c] >= 4096 && kClassSize[c] <= kSmallMax; }

// Class of a request of n <= kDirectMax bytes, indexed by (n + 15) / 16.
inline constexpr std::array<uint8_t, kDirectCount> kDirectClass = [] {
  std::array<uint8_t, kDirectCount> t{};
  for (size_t i = 0; i < kDirectCount; ++i) t[i] = static_cast<uint8_t>(size_to_class_formula(i * 16));
  return t;
}();

inline unsigned size_to_class(size_t n) {
  if (n <= kDirectMax) return kDirectClass[(n + 15) >> 4];
  return size_to_class_formula(n);
}

// Medium pages are the smallest of 1, 2, 4 or kMediumPageSlices slices that hold at least 2
// blocks for classes up to 32 KiB, and a count of slices (up to kMediumPageSlices) holding at
// least 4 above: a class with few live blocks (the usual case for blocks of 8 KiB and more)
// then pins little memory in free blocks, and a page change every few blocks costs little
// beside the program's own use of blocks this big. (`glibc-thread` peaked at 18.9 MiB with 8
// blocks per page, 17.5 with 4, 16.8 with 2 up to 32 KiB; 2 blocks above 32 KiB cost `mstress`
// 4% more.)
constexpr unsigned page_slices_for_class(unsigned c) {
  size_t size = class_size_formula(c);
  if (size <= kSmallMax) return 1u;
  if (size > 32768) {
    // Above 32 KiB: the fewest slices that hold 4 blocks with a tail (the bytes after the last
    // block) of at most 1/16 of the page (every class has one, checked below). Any count of
    // slices will do: 80 KiB blocks take 4 in 5 slices, where the power of two (8 slices) held 6
    // and 32 KiB after them, resident wherever the slices had been used before.
    unsigned n = static_cast<unsigned>((4 * size + kSliceSize - 1) / kSliceSize);
    while (n < kMediumPageSlices && (n * kSliceSize) % size * 16 > n * kSliceSize) ++n;
    return n;
  }
  unsigned slices = 1;
  while (slices < kMediumPageSlices && slices * kSliceSize < 2 * size) slices *= 2;
  // A page whose tail (the bytes after its last block) is over 1/16 of it takes twice as many
  // slices while that brings the tail under it.
  if ((slices * kSliceSize) % size * 16 > slices * kSliceSize &&
      (2 * slices * kSliceSize) % size * 16 <= 2 * slices * kSliceSize)
    slices *= 2;
  return slices;
}

// The smallest page a class may take instead, when only a shorter run of resident free slices
// is left (see span_alloc): one that still holds 2 blocks.
constexpr unsigned page_min_slices_for_class(unsigned c) {
  size_t size = class_size_formula(c);
  unsigned slices = 1;
  while (slices * kSliceSize < 2 * size) slices *= 2;
  return slices;
}

// ---- Checks of the table -------------------------------------------------------------------
consteval bool size_classes_are_sound() {
  for (unsigned c = 0; c < kClassCount; ++c) {
    size_t s = class_size_formula(c);
    if (s % kMinAlign != 0) return false;                        // keeps 16-byte alignment
    if (c > 0 && s <= class_size_formula(c - 1)) return false;   // strictly increasing
    if (size_to_class_formula(s) != c) return false;             // size -> class -> size
    if (size_to_class_formula(s + 1) != c + 1 && c + 1 < kClassCount) return false;
    if (c > 0 && size_to_class_formula(class_size_formula(c - 1) + 1) != c) return false;
  }
  return true;
}
static_assert(size_classes_are_sound(), "size classes: rounding must never shrink and must round-trip");
static_assert(class_size_formula(kClassCount - 1) == kMediumMax, "the last class must be kMediumMax");
static_assert(page_slices_for_class(size_to_class_formula(kSmallMax)) == 1);
static_assert(kSmallMax * 8 <= kSliceSize, "a small page holds at least 8 blocks");
static_assert(kMediumMax * 4 <= kMediumPageSlices * kSliceSize, "a medium page holds at least 4 blocks");
consteval bool medium_tails_are_small() {
  for (unsigned c = 0; c < kClassCount; ++c) {
    const size_t page = static_cast<size_t>(page_slices_for_class(c)) * kSliceSize;
    if (class_size_formula(c) > 32768 && page % class_size_formula(c) * 16 > page) return false;
  }
  return true;
}
static_assert(medium_tails_are_small(), "a medium page above 32 KiB leaves at most 1/16 after its last block");
// The second direct table (kDirect2Max) maps each 512-byte step above kDirectMax to one class.
consteval bool direct2_steps_are_whole() {
  if (kDirectMax % (size_t{1} << kDirect2Shift) != 0) return false;
  if (class_size_formula(size_to_class_formula(kDirect2Max)) != kDirect2Max) return false;
  for (unsigned c = 0; c < kClassCount; ++c) {
    size_t s = class_size_formula(c);
    if (s > kDirectMax && s <= kDirect2Max && s % (size_t{1} << kDirect2Shift) != 0) return false;
  }
  return true;
}
static_assert(direct2_steps_are_whole(), "every class between kDirectMax and kDirect2Max is a multiple of the second table's step");

}  // namespace nebula
