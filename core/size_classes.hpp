// core/size_classes.hpp: the size classes of small and medium blocks.
//
// Sizes up to 256 bytes go in exact 16-byte steps (the minimum alignment), those up to 512 bytes
// in 32-byte steps; above, each power of two is split in 4 classes, so rounding a request up
// wastes at most 20% of a block and about 10% on average; the octaves of 4 and 8 KiB have a
// fifth class at 1.125 x their base, and the 4 KiB octave a sixth of 4368 bytes (below). The
// table is computed at compile time from that rule and checked below; `tools/size-classes`
// prints it with objects per page and tail waste (docs/size-classes.md).
//
//   class  0..15   16, 32, ... 256            step 16
//   class 16..23   288, 320, ... 512          step 32
//   class 24..27   640, 768, 896, 1024        step 128
//   ...            (4 per power of two)
//   class 36..41   4368, 4608, 5120, 6144, 7168, 8192
//   class 42..46   9216, 10240, 12288, 14336, 16384
//   ...            (4 per power of two)
//   class 55..58   81920 .. 131072            step 16384
//
// Blocks up to kSmallMax (8 KiB) live in small pages (64 KiB), larger ones in medium pages
// (64-512 KiB, see page_slices_for_class). size -> class is a table lookup for sizes <=
// kDirectMax (4.5 KiB) and a bit-scan above.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "core/config.hpp"

namespace nebula {

// Up to 512 bytes the steps are 16 bytes (to 256) and 32 (to 512), from 128 bytes on at most
// 1/8 of the size, as glibc's 16-byte chunks nearly are: C structs and C++ nodes come in every
// size here, and with four classes per octave a 136-, 272- or 392-byte object took 160, 320 or
// 448 bytes. jq keeps 600,000 objects of 392 bytes and 200,000 of 272 while it transforms a
// 25 MB document: peak RSS 408 -> 384 MiB (glibc 375); `frag` (nodes of 48-512 bytes spread at
// random) 93.4 -> 90.2 MiB at its peak, and its resident memory after the tree thinned out
// 46.5 -> 41.5 MiB. The classes cost pages of their own: `xmalloc` (blocks of 16-512 bytes that a
// second thread frees) holds 3-4% more (docs/performance.md, log of changes).
inline constexpr unsigned kLinearMax = 256;  // 16-byte steps up to here
inline constexpr unsigned kLinearCount = kLinearMax / 16;
inline constexpr unsigned kEighthShift = 8;  // the octave (256, 512]: 8 classes, 32-byte steps
// The octaves of 4 and 8 KiB get a fifth class at 1.125 x their base: a page plus a small
// header (sqlite's 4104-byte page-cache entries, PATH_MAX + 1, BUFSIZ + 1, buffers with a
// length prefix) wastes 1/9 of its block instead of 1/5 (sqlite with a 200 MB page cache: peak
// RSS 203.9 -> 192.3 MiB, glibc 182.1). Not in every octave: each class holds pages of its own, and
// where sizes spread evenly (strings grown by realloc, `strbuild`) a fifth class from 4 KiB up
// kept 7% more resident.
inline constexpr unsigned kFineShift = 12;  // octaves (2^k, 2^(k+1)] with k in [kFineShift, kFineEnd)
inline constexpr unsigned kFineEnd = 14;

// The 4 KiB octave also has a class below that one: the largest block of which 15 fill a small
// page (4368 bytes, 4096 + 272; the 4608-byte class fits 14). sqlite's page cache (Debian 12's
// 3.40, 4 KiB pages) allocates its pages at exactly that size: with a 200 MB cache, 27,800 of
// them live at its peak, 1,986 pages of 14 or 1,854 of 15 (docs/performance.md, stop 35).
inline constexpr unsigned kDenseShift = 12;
inline constexpr size_t kDenseClass = (kSliceSize / 15) & ~size_t{15};
static_assert(kDenseClass == 4368 && kDenseClass * 15 <= kSliceSize);

// Classes in the octave (2^k, 2^(k+1)], for k from kEighthShift up.
constexpr unsigned octave_classes(unsigned k) {
  if (k == kEighthShift) return 8u;
  if (k == kDenseShift) return 6u;
  return (k >= kFineShift && k < kFineEnd) ? 5u : 4u;
}
// The first class of each octave (2^k, 2^(k+1)], k from kEighthShift to 17 (17: the class count).
inline constexpr std::array<uint8_t, 18> kOctaveFirst = [] {
  std::array<uint8_t, 18> t{};
  unsigned c = kLinearCount;
  for (unsigned k = kEighthShift; k < t.size(); ++k) {
    t[k] = static_cast<uint8_t>(c);
    c += octave_classes(k);
  }
  return t;
}();
inline constexpr unsigned kClassCount = kOctaveFirst[17];

constexpr size_t class_size_formula(unsigned c) {
  if (c < kLinearCount) return 16 * (c + 1);
  unsigned k = kEighthShift;
  while (c >= kOctaveFirst[k + 1]) ++k;
  const unsigned j = c - kOctaveFirst[k];
  const size_t base = size_t{1} << k;
  switch (octave_classes(k)) {
    case 8: return base + (j + 1) * (base >> 3);
    case 6: return j == 0 ? kDenseClass : base + (j == 1 ? base >> 3 : (j - 1) * (base >> 2));
    case 5: return base + (j == 0 ? base >> 3 : j * (base >> 2));
    default: return base + (j + 1) * (base >> 2);
  }
}

constexpr unsigned size_to_class_formula(size_t n) {
  if (n <= kLinearMax) return n == 0 ? 0 : static_cast<unsigned>((n + 15) / 16 - 1);
  const unsigned k = 63 - static_cast<unsigned>(__builtin_clzll(n - 1));  // n in (2^k, 2^(k+1)]
  const size_t over = n - 1 - (size_t{1} << k);
  if (k == kEighthShift) return kOctaveFirst[k] + static_cast<unsigned>(over >> (k - 3));
  if (k == kDenseShift) {
    if (n <= kDenseClass) return kOctaveFirst[k];
    if (over < (size_t{1} << (k - 3))) return kOctaveFirst[k] + 1;  // up to 1.125 x
    return kOctaveFirst[k] + 2 + static_cast<unsigned>(over >> (k - 2));
  }
  if (k >= kFineShift && k < kFineEnd) {
    const unsigned e = static_cast<unsigned>(over >> (k - 3));  // eighth of the octave
    return kOctaveFirst[k] + (e == 0 ? 0 : (e >> 1) + 1);
  }
  return kOctaveFirst[k] + static_cast<unsigned>(over >> (k - 2));
}

inline constexpr std::array<uint32_t, kClassCount> kClassSize = [] {
  std::array<uint32_t, kClassCount> t{};
  for (unsigned c = 0; c < kClassCount; ++c) t[c] = static_cast<uint32_t>(class_size_formula(c));
  return t;
}();

// Classes whose owner's frees into full pages go to the heap's cache of the class rather than to
// their page: from 4 KiB to 32 KiB, whose pages hold 2 to 16 blocks, so that a page runs out
// after a few allocations and a free into a full page makes it a page of one free block
// (free_generic; see "Class caches" in docs/design.md). Above 32 KiB a page changes every few
// blocks too, but beside the program's own use of blocks that big it costs little.
inline constexpr size_t kClassCacheMax = 32768;
constexpr bool class_caches_frees(unsigned c) { return kClassSize[c] >= 4096 && kClassSize[c] <= kClassCacheMax; }
// The blocks a heap's cache of a class holds at least before it sends some home (fc_limit): 16 KiB
// of blocks of other threads' pages (see fcache_push), 64 KiB of a class whose cache takes the
// owner's frees, and at least 4 blocks (128 KiB of 32 KiB blocks): malloc pops it once it holds
// half its limit, and with the 2 blocks of 24-32 KiB that 64 KiB holds, every other allocation
// took the slow path again (`medrep`, random replacement of 8-32 KiB blocks: 203 M instructions
// with 64 KiB alone, 174 M with at least 4 blocks, 141 M with 8; `glibc-thread` peak RSS +0.8%
// with 4, +2.3% with 8). A class whose cache takes the owner's frees may hold more, an eighth of
// the blocks of the heap's pages of the class (Heap::fc_limit).
inline constexpr uint32_t kFcLimitMax = 64;  // (either way)
inline constexpr std::array<uint8_t, kClassCount> kFcLimit = [] {
  std::array<uint8_t, kClassCount> t{};
  for (unsigned c = 0; c < kClassCount; ++c) {
    size_t n = (class_caches_frees(c) ? 65536 : 16384) / class_size_formula(c);
    if (class_caches_frees(c) && n < 4) n = 4;
    t[c] = static_cast<uint8_t>(n < 1 ? 1 : n > kFcLimitMax ? kFcLimitMax : n);
  }
  return t;
}();

// Those classes are consecutive: kCachedFirst and the kCachedCount after it.
inline constexpr unsigned kCachedFirst = [] {
  unsigned c = 0;
  while (!class_caches_frees(c)) ++c;
  return c;
}();
inline constexpr unsigned kCachedCount = [] {
  unsigned n = 0;
  while (kCachedFirst + n < kClassCount && class_caches_frees(kCachedFirst + n)) ++n;
  return n;
}();
static_assert([] {
  for (unsigned c = 0; c < kClassCount; ++c)
    if (class_caches_frees(c) != (c >= kCachedFirst && c < kCachedFirst + kCachedCount)) return false;
  return true;
}(), "the classes whose caches take the owner's frees are consecutive");

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
