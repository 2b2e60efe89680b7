// stress/aligned.cpp: aligned allocations of every alignment and tier.
static const char* kAbout =
    "Models code that asks for aligned memory (SIMD buffers, cache-line-aligned structures,\n"
    "page-aligned I/O buffers, allocators built on top of malloc): every thread allocates with\n"
    "posix_memalign, aligned_alloc, memalign, valloc, pvalloc and aligned operator new / new[]\n"
    "(plain and nothrow), alignments 16 B .. 8 MiB, sizes below, at and above the alignment in\n"
    "every tier, and 0 bytes. It checks the alignment, malloc_usable_size >= the request, that\n"
    "the usable ranges of a thread's live blocks never overlap, and the contents; it reallocs\n"
    "some aligned blocks (the interior-start path) and hands some to other threads to free.";

#include "common.hpp"

#include <map>
#include <mutex>
#include <thread>
#include <vector>

using namespace stress;

namespace {

struct Shared {
  Options o;
  std::mutex m;
  std::vector<Block> handoff;
  std::atomic<uint64_t> ops{0}, remote{0}, reallocs{0};
  std::atomic<uint64_t> by_align[24] = {};
  explicit Shared(const Options& opts) : o(opts) {}
};

enum Kind { kPosix, kC11, kMemalign, kValloc, kPvalloc, kNewA, kNewArrA, kNewANothrow, kKinds };
const char* kind_name(int k) {
  static const char* n[] = {"posix_memalign", "aligned_alloc", "memalign", "valloc", "pvalloc",
                            "new(align)", "new[](align)", "new(align, nothrow)"};
  return n[k];
}

void worker(Shared* sh, unsigned id) {
  const Options& o = sh->o;
  Rng r(o.seed * 131 + id);
  size_t slots = static_cast<size_t>((o.smoke ? 192 : 768) * o.scale);
  if (slots < 8) slots = 8;
  std::vector<Block> table(slots);
  std::map<uintptr_t, size_t> live;  // start -> end, for the overlap check
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  Bound bound(o);
  uint64_t ops = 0, remote = 0, reallocs = 0;
  uint64_t by_align[24] = {};
  size_t huge_live = 0, huge_cap = static_cast<size_t>((o.smoke ? 64 : 256) * MiB * o.scale);

  auto forget = [&](const Block& b) {
    live.erase(reinterpret_cast<uintptr_t>(b.p));
    if (b.n > 2 * MiB) huge_live -= b.n;
  };
  // the block's whole usable range must be its own
  auto remember = [&](const Block& b) {
    size_t us = malloc_usable_size(b.p);
    uintptr_t s = reinterpret_cast<uintptr_t>(b.p), e = s + (us > b.n ? us : b.n > 0 ? b.n : 1);
    auto it = live.upper_bound(s);
    if (it != live.end() && it->first < e)
      error("aligned: block %p+%zu overlaps live block at 0x%lx", b.p, b.n, static_cast<unsigned long>(it->first));
    if (it != live.begin()) {
      --it;
      if (it->second > s)
        error("aligned: block %p+%zu overlaps live block 0x%lx..0x%lx", b.p, b.n,
              static_cast<unsigned long>(it->first), static_cast<unsigned long>(it->second));
    }
    live[s] = e;
    if (b.n > 2 * MiB) huge_live += b.n;
  };

  for (uint64_t i = 0; bound.more(i); ++i) {
    Block& b = table[r.below(slots)];
    if (b.p != nullptr) {
      forget(b);
      unsigned what = static_cast<unsigned>(r.below(100));
      if (what < 10 && b.via == Via::kFree) {
        size_t n = r.chance(70) ? r.range(1, b.n + 4096) : size_in_tier(r, static_cast<unsigned>(r.below(3)), o.huge_max);
        if (!reallocate(b, n, "aligned: realloc of an aligned block")) error("aligned: realloc(%zu) returned NULL", n);
        remember(b);
        ++reallocs;
      } else if (what < 25 && o.threads > 1) {
        check(b, "aligned: before hand-over");
        std::lock_guard<std::mutex> g(sh->m);
        sh->handoff.push_back(b);
        b = Block{};
      } else {
        release(b, "aligned: free");
      }
      ++ops;
      continue;
    }
    // alignment: mostly up to 4 KiB, some up to 2 MiB, a few up to 8 MiB
    unsigned lg = r.chance(80) ? 4 + static_cast<unsigned>(r.below(9))
                               : (r.chance(90) ? 13 + static_cast<unsigned>(r.below(9)) : 22 + static_cast<unsigned>(r.below(2)));
    size_t align = size_t{1} << lg;
    unsigned tier = static_cast<unsigned>(r.below(100));
    size_t n;
    if (tier < 2) n = 0;                                       // nothing (a unique pointer)
    else if (tier < 30) n = r.range(1, align);                 // below the alignment
    else if (tier < 40) n = align * r.range(1, 4);             // a multiple of it
    else if (tier < 85) n = size_in_tier(r, kSmall, o.huge_max);
    else if (tier < 95) n = size_in_tier(r, kMedium, o.huge_max);
    else if (tier < 99) n = size_in_tier(r, kLarge, o.huge_max);
    else n = size_in_tier(r, kHuge, o.huge_max);
    if (n > 2 * MiB && huge_live + n > huge_cap) n = r.range(1, 4096);
    int kind = static_cast<int>(r.below(kKinds));
    void* p = nullptr;
    Via via = Via::kFree;
    size_t want_align = align;
    switch (kind) {
      case kPosix: {
        int rc = posix_memalign(&p, align, n);
        if (rc != 0) p = nullptr;
        break;
      }
      case kC11: n = (n + align - 1) & ~(align - 1); p = aligned_alloc(align, n); break;
      case kMemalign: p = memalign(align, n); break;
      case kValloc: want_align = page; p = valloc(n); break;
      case kPvalloc:
        want_align = page;
        p = pvalloc(n);
        n = (n + page - 1) & ~(page - 1);   // pvalloc rounds up to whole pages
        break;
      case kNewA:
        try { p = ::operator new(n, std::align_val_t(align)); } catch (const std::bad_alloc&) { p = nullptr; }
        via = Via::kDeleteAligned;
        break;
      case kNewArrA:
        try { p = ::operator new[](n, std::align_val_t(align)); } catch (const std::bad_alloc&) { p = nullptr; }
        via = Via::kDeleteArrayAligned;
        break;
      default:
        p = ::operator new(n, std::align_val_t(align), std::nothrow);
        via = Via::kDeleteAligned;
        break;
    }
    ++ops;
    if (p == nullptr) {
      error("aligned: %s(align %zu, %zu) returned NULL", kind_name(kind), want_align, n);
      continue;
    }
    if ((reinterpret_cast<uintptr_t>(p) & (want_align - 1)) != 0)
      error("aligned: %s(align %zu, %zu) = %p is misaligned", kind_name(kind), want_align, n, p);
    if (malloc_usable_size(p) < n)
      error("aligned: %s(align %zu, %zu) = %p: usable size %zu", kind_name(kind), want_align, n, p, malloc_usable_size(p));
    b = make_block(p, n, id, want_align, via);
    remember(b);
    by_align[lg]++;
    // take blocks other threads passed over now and then
    if ((i & 15) == 0) {
      std::vector<Block> got;
      {
        std::lock_guard<std::mutex> g(sh->m);
        if (!sh->handoff.empty()) got.swap(sh->handoff);
      }
      for (Block& x : got) {
        release(x, "aligned: cross-thread free");
        ++remote;
        ++ops;
      }
    }
  }
  for (Block& b : table)
    if (b.p) release(b, "aligned: final free");
  sh->ops += ops;
  sh->remote += remote;
  sh->reallocs += reallocs;
  for (int k = 0; k < 24; ++k) sh->by_align[k] += by_align[k];
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_standard(argc, argv, kAbout, "aligned");
  Run run(o);
  Shared sh(o);
  run_workers(&sh, o.threads, worker);
  for (Block& b : sh.handoff) release(b, "aligned: leftover");
  uint64_t big = 0;
  for (int k = 21; k < 24; ++k) big += sh.by_align[k];
  return run.finish(sh.ops, kv("cross_thread", sh.remote) + kv("reallocs", sh.reallocs) +
                                kv("align_ge_2MiB", big) + kv("align_4KiB", sh.by_align[12]));
}
