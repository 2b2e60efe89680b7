// tests/unit/size_classes_test.cpp: the size-class table (core/size_classes.hpp).
#include <utility>

#include "support.hpp"

using namespace nebula;

namespace {

// Report at most a few failures per property, with the offending size, instead of one
// assertion per size.
struct Failures {
  int count = 0;
  void add(const char* what, size_t n, size_t got) {
    if (++count <= 8) FAIL_CHECK(what << ": n=" << n << " got " << got);
  }
};

}  // namespace

TEST_CASE("size classes: every request up to kMediumMax rounds up to a minimal, aligned class") {
  Failures f;
  unsigned prev_cls = 0;
  for (size_t n = 0; n <= kMediumMax; ++n) {
    unsigned c = size_to_class(n);
    if (c >= kClassCount) {
      f.add("class out of range", n, c);
      continue;
    }
    size_t cs = kClassSize[c];
    if (cs < n) f.add("class smaller than the request", n, cs);
    if (cs % 16 != 0) f.add("class size not a multiple of 16", n, cs);
    if (class_size_formula(c) != cs) f.add("table differs from the formula", n, cs);
    // Minimal: the previous class would not hold n.
    if (c > 0 && kClassSize[c - 1] >= n) f.add("a smaller class holds the request", n, kClassSize[c - 1]);
    // Round trip: the class of a class size is itself.
    if (size_to_class(cs) != c) f.add("class_size -> class does not round-trip", n, size_to_class(cs));
    // Monotonic in n.
    if (c < prev_cls) f.add("class decreases with a larger request", n, c);
    prev_cls = c;
    // The table lookup (n <= 1 KiB) and the formula agree.
    if (n >= 1 && size_to_class_formula(n) != c) f.add("size_to_class differs from the formula", n, size_to_class_formula(n));
    // Waste above 128 bytes stays within 25% of the request.
    if (n > 128 && (cs - n) * 4 > n) f.add("more than 25% waste", n, cs);
    // ... which is at most 20% of the block (the header's claim).
    if (n > 128 && (cs - n) * 5 > cs) f.add("more than 20% of the block wasted", n, cs);
    // Below 128 bytes, exact 16-byte steps.
    if (n >= 1 && n <= 128 && cs != (n + 15) / 16 * 16) f.add("not a 16-byte step below 128", n, cs);
  }
  CHECK(f.count == 0);
  CHECK(size_to_class(kMediumMax) == kClassCount - 1);
  CHECK(kClassSize[kClassCount - 1] == kMediumMax);
  CHECK(size_to_class(0) == 0);
  CHECK(kClassSize[0] == 16);
}

TEST_CASE("size classes: the table is strictly increasing and each class is reachable") {
  for (unsigned c = 0; c < kClassCount; ++c) {
    CAPTURE(c);
    if (c > 0) CHECK(kClassSize[c] > kClassSize[c - 1]);
    CHECK(size_to_class(kClassSize[c]) == c);
    if (c + 1 < kClassCount) CHECK(size_to_class(kClassSize[c] + 1) == c + 1);
    // Small classes fit 8+ blocks in one slice, medium ones up to 32 KiB 2+ (in the smallest
    // page that does), larger ones 4+; a page made smaller (min slices) still holds 2.
    unsigned slices = page_slices_for_class(c);
    size_t blocks = (static_cast<size_t>(slices) << kSliceShift) / kClassSize[c];
    if (kClassSize[c] <= kSmallMax) CHECK(slices == 1);
    CHECK(blocks >= (kClassSize[c] <= kSmallMax ? 8u : kClassSize[c] <= 32768 ? 2u : 4u));
    if (slices > 1) {
      // The smallest that does, or twice it where that takes a tail over 1/16 of the page under
      // (above 32 KiB, any count: see the test below).
      const size_t half = static_cast<size_t>(slices / 2) << kSliceShift, page = half * 2;
      const bool half_too_few = half / kClassSize[c] < (kClassSize[c] <= 32768 ? 2u : 4u);
      const bool tail_halved = kClassSize[c] <= 32768 && half % kClassSize[c] * 16 > half &&
                               page % kClassSize[c] * 16 <= page;
      CHECK((half_too_few || tail_halved));
    }
    unsigned min = page_min_slices_for_class(c);
    CHECK(min <= slices);
    CHECK((static_cast<size_t>(min) << kSliceShift) / kClassSize[c] >= 2);
  }
  // 16-byte steps to 256 bytes, 32-byte steps to 512, then four classes per power of two,
  // six in the octave of 4 KiB and five in that of 8 KiB.
  const std::pair<unsigned, uint32_t> expect[] = {{8, 144},    {15, 256},   {16, 288},   {23, 512},   {24, 640},
                                                   {35, 4096},  {36, 4368},  {37, 4608},  {38, 5120},  {42, 9216},
                                                   {46, 16384}, {47, 20480}, {55, 81920}};
  for (const auto& e : expect) CHECK_MESSAGE(kClassSize[e.first] == e.second, "class " << e.first);
  CHECK(kClassCount == 59);
}

TEST_CASE("size classes: up to 512 bytes a request rounds up by less than 16 bytes to 256 and 32 to 512") {
  // Objects of every size live here (LLVM's 136- and 272-byte nodes, jq's 392-byte values): with
  // four classes per octave these took 160, 320 and 448 bytes.
  CHECK(kClassSize[size_to_class(136)] == 144);
  CHECK(kClassSize[size_to_class(272)] == 288);
  CHECK(kClassSize[size_to_class(392)] == 416);
  for (size_t n = 1; n <= 512; ++n) {
    const size_t c = kClassSize[size_to_class(n)];
    CAPTURE(n);
    CHECK(c >= n);
    CHECK(c - n < (n <= 256 ? 16u : 32u));
  }
  CHECK(kClassSize[size_to_class(513)] == 640);
}

TEST_CASE("size classes: a page plus a small header rounds up by at most 1/8 in the 4 and 8 KiB octaves") {
  // sqlite's page-cache entries (4096 + 8), PATH_MAX + 1, BUFSIZ + 1, a buffer with a length
  // prefix: with four classes per octave these took the next class, a quarter more.
  for (size_t n : {size_t{4369}, size_t{4400}, size_t{4608}, size_t{8193}, size_t{8200}, size_t{9216}}) {
    CAPTURE(n);
    const size_t base = n > 8192 ? 8192 : 4096;
    CHECK(kClassSize[size_to_class(n)] == base + base / 8);
  }
  // In the 4 KiB octave, up to the largest block of which 15 fill a small page, 4368 bytes
  // (sqlite's page-cache entries: 27,800 live at its peak with a 200 MB cache).
  for (size_t n : {size_t{4097}, size_t{4104}, size_t{4352}, size_t{4368}}) {
    CAPTURE(n);
    CHECK(kClassSize[size_to_class(n)] == 4368);
  }
  CHECK(kSliceSize / 4368 == 15);
  CHECK(kSliceSize / 4384 == 14);
  CHECK(kClassSize[size_to_class(4609)] == 5120);
  CHECK(kClassSize[size_to_class(9217)] == 10240);
  // Elsewhere the octave keeps four classes (strings growing through the classes by realloc,
  // `strbuild`, kept 7% more resident with a fifth class in every octave from 4 KiB).
  CHECK(kClassSize[size_to_class(2049)] == 2560);
  CHECK(kClassSize[size_to_class(16385)] == 20480);
  CHECK(kClassSize[size_to_class(65537)] == 81920);
}

TEST_CASE("size classes: a page of blocks up to 32 KiB wastes at most 1/16 at its end where 2x the slices would") {
  // 24 KiB: two blocks in 64 KiB leave 16 KiB (25%); five in 128 KiB leave 8 KiB.
  CHECK(page_slices_for_class(size_to_class(24576)) == 2);
  // 14 KiB: four in 64 KiB leave 8 KiB (12.5%); nine in 128 KiB leave 2 KiB.
  CHECK(page_slices_for_class(size_to_class(14336)) == 2);
  // 28 KiB: 128 KiB leaves 16 KiB as well, so the page stays one slice.
  CHECK(page_slices_for_class(size_to_class(28672)) == 1);
  for (unsigned c = 0; c < kClassCount; ++c) {
    if (kClassSize[c] > 32768) break;
    CAPTURE(c);
    const size_t page = static_cast<size_t>(page_slices_for_class(c)) << kSliceShift;
    if (page % kClassSize[c] * 16 > page) CHECK(2 * page % kClassSize[c] * 16 > 2 * page);
  }
}

TEST_CASE("size classes: a page of blocks above 32 KiB is the fewest slices holding 4 with at most 1/16 at its end") {
  // 80 KiB: 4 blocks in 5 slices, nothing left over (a power of two, 8 slices, held 6 and 32 KiB
  // after them); 112 KiB: 4 in 7 slices (8 slices left 64 KiB); 48 KiB: 4 in 3 slices.
  CHECK(page_slices_for_class(size_to_class(81920)) == 5);
  CHECK(page_slices_for_class(size_to_class(114688)) == 7);
  CHECK(page_slices_for_class(size_to_class(49152)) == 3);
  for (unsigned c = 0; c < kClassCount; ++c) {
    if (kClassSize[c] <= 32768) continue;
    CAPTURE(c);
    const unsigned slices = page_slices_for_class(c);
    CHECK(slices <= kMediumPageSlices);
    const size_t page = static_cast<size_t>(slices) << kSliceShift;
    CHECK(page / kClassSize[c] >= 4);
    CHECK(page % kClassSize[c] * 16 <= page);
    // No smaller count of slices that holds 4 blocks would do.
    for (unsigned n = slices - 1; n >= 1; --n) {
      const size_t smaller = static_cast<size_t>(n) << kSliceShift;
      if (smaller / kClassSize[c] < 4) break;
      CHECK(smaller % kClassSize[c] * 16 > smaller);
    }
  }
}

TEST_CASE("size classes: the direct table agrees with the formula") {
  for (size_t i = 0; i < kDirectCount; ++i) {
    CAPTURE(i);
    CHECK(kDirectClass[i] == size_to_class_formula(i * 16));
    // Every request of the 16-byte step (i*16-15 .. i*16] maps to that class.
    size_t lo = i == 0 ? 0 : i * 16 - 15;
    for (size_t n = lo; n <= i * 16; ++n) {
      if (size_to_class_formula(n == 0 ? 1 : n) != kDirectClass[i]) {
        FAIL_CHECK("direct entry " << i << " disagrees for n=" << n);
        break;
      }
    }
  }
}

// block_index (core/engine.hpp): secure mode finds a block's live bit by multiplying its offset
// in the page by the page's div_magic instead of dividing by the block size. Exact for every
// offset a page can hold (medium pages are at most 512 KiB), checked here against the division
// for every class, and on blocks of a real page of each class.
TEST_CASE("size classes: block_index equals the division for every offset of every class") {
  unit::RunsOff classes;  // every class's own pages
  Failures f;
  for (unsigned c = 0; c < kClassCount; ++c) {
    const uint64_t d = kClassSize[c];
    const uint64_t magic = ~uint64_t{0} / d + 1;  // as page_init sets div_magic
    for (uint64_t x = 0; x < (uint64_t{512} << 10); x += (x & 15) == 0 ? 1 : 13) {
      const uint64_t q = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * magic) >> 64);
      if (q != x / d) f.add("mulhi quotient differs from the division", x, q);
    }
  }
  for (unsigned c = 0; c < kClassCount; ++c) {
    const size_t n = kClassSize[c];
    void* a = nebula::alloc(n);
    void* b = nebula::alloc(n);
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    for (void* p : {a, b}) {
      Segment* s = segment_of(p);
      Page* page = page_of(s, p);
      const size_t want = static_cast<size_t>(static_cast<uint8_t*>(p) - page_start(s, page)) / page->block_size;
      if (block_index(s, page, p) != want) f.add("block_index of a real block", n, block_index(s, page, p));
    }
    nebula::dealloc(a);
    nebula::dealloc(b);
  }
}
