// C++ operator new/delete through the preload: every form (plain, array, nothrow, sized,
// aligned, aligned+sized, aligned+nothrow, the nothrow deletes), the new-handler protocol
// (handler called, then std::bad_alloc once it is removed) for a size that cannot be satisfied,
// nothrow new returning nullptr, aligned new honouring 64 B .. 1 MiB, and heavy STL use
// (vector, string, map, unordered_map, shared_ptr, threads) with checksummed results.
#include "../check.h"

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

int handler_calls = 0;
int handler_limit = 0;
void counting_handler() {
  ++handler_calls;
  if (handler_calls >= handler_limit) std::set_new_handler(nullptr);
}

bool aligned_to(const void *p, size_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; }

template <size_t A>
struct alignas(A) Aligned {
  unsigned char bytes[A];
  static constexpr size_t align = A;
};

template <size_t A>
void check_aligned_type() {
  using T = Aligned<A>;
  static_assert(alignof(T) == A);
  T *one = new T;
  CHECKF(aligned_to(one, A), "new Aligned<%zu> = %p misaligned", A, static_cast<void *>(one));
  memset(one->bytes, 0x5A, sizeof one->bytes);
  T *arr = new T[3];
  CHECKF(aligned_to(arr, A), "new Aligned<%zu>[3] = %p misaligned", A, static_cast<void *>(arr));
  memset(static_cast<void *>(arr), 0x6B, 3 * sizeof(T));
  T *nt = new (std::nothrow) T;
  CHECK(nt != nullptr && aligned_to(nt, A));
  memset(nt->bytes, 0x7C, sizeof nt->bytes);
  CHECK(nt_find_not(one->bytes, sizeof one->bytes, 0x5A) == NT_OK);
  CHECK(nt_find_not(arr, 3 * sizeof(T), 0x6B) == NT_OK);
  delete nt;    // aligned sized delete (C++17 rules pick delete(void*, size_t, align_val_t))
  delete[] arr; // aligned array delete
  delete one;
}

template <size_t A>
void check_aligned_range() {
  check_aligned_type<A>();
  if constexpr (A < (size_t(1) << 20)) check_aligned_range<A * 2>();
}

void check_explicit_operators() {
  // every size class for the plain forms, sized delete with the exact size
  for (size_t n = 0; n <= 5000; n++) {
    size_t sz = nt_opaque_size(n);
    void *a = ::operator new(sz);
    CHECK(a != nullptr && aligned_to(a, 16));
    memset(a, 0xA1, sz);
    void *b = ::operator new[](sz);
    CHECK(b != nullptr && aligned_to(b, 16) && b != a);
    memset(b, 0xB2, sz);
    void *c = ::operator new(sz, std::nothrow);
    CHECK(c != nullptr && aligned_to(c, 16));
    void *d = ::operator new[](sz, std::nothrow);
    CHECK(d != nullptr && aligned_to(d, 16));
    memset(c, 0xC3, sz);
    memset(d, 0xD4, sz);
    CHECK(nt_find_not(a, sz, 0xA1) == NT_OK && nt_find_not(b, sz, 0xB2) == NT_OK);
    ::operator delete(a, sz);
    ::operator delete[](b, sz);
    if (n & 1) {
      ::operator delete(c, std::nothrow);
      ::operator delete[](d, std::nothrow);
    } else {
      ::operator delete(c);
      ::operator delete[](d);
    }
  }
  // large and huge tiers
  const size_t big[] = {100000, size_t(1) << 20, size_t(5) << 20, size_t(40) << 20};
  for (size_t sz : big) {
    char *p = static_cast<char *>(::operator new(nt_opaque_size(sz)));
    nt_fill(p, sz, sz);
    CHECK(nt_verify(p, sz, sz) == NT_OK);
    ::operator delete(p, sz);
    p = static_cast<char *>(::operator new[](nt_opaque_size(sz)));
    memset(p, 1, sz);
    ::operator delete[](p);
  }
  // aligned forms, every alignment 16 .. 1 MiB, with every matching delete
  for (size_t al = 16; al <= (size_t(1) << 20); al <<= 1) {
    std::align_val_t a{al};
    const size_t sizes[] = {1, al - 1, al, al + 1, 3 * al, 1000, 100000};
    for (size_t sz : sizes) {
      sz = nt_opaque_size(sz);
      void *p1 = ::operator new(sz, a);
      void *p2 = ::operator new[](sz, a);
      void *p3 = ::operator new(sz, a, std::nothrow);
      void *p4 = ::operator new[](sz, a, std::nothrow);
      for (void *p : {p1, p2, p3, p4}) {
        CHECKF(p != nullptr && aligned_to(p, al), "aligned new(%zu, %zu) = %p", sz, al, p);
        memset(p, 0xEE, sz);
      }
      CHECK(p1 != p2 && p2 != p3 && p3 != p4 && p1 != p4);
      ::operator delete(p1, sz, a);
      ::operator delete[](p2, sz, a);
      if (sz & 1) {
        ::operator delete(p3, a, std::nothrow);
        ::operator delete[](p4, a, std::nothrow);
      } else {
        ::operator delete(p3, a);
        ::operator delete[](p4, a);
      }
    }
  }
}

void check_failure_paths() {
  const size_t huge = nt_opaque_size(SIZE_MAX / 2);

  // no handler: bad_alloc straight away
  std::set_new_handler(nullptr);
  bool thrown = false;
  try {
    void *p = ::operator new(huge);
    ::operator delete(p);
  } catch (const std::bad_alloc &) {
    thrown = true;
  }
  CHECKF(thrown, "operator new(SIZE_MAX/2) did not throw std::bad_alloc");

  // handler installed: called (here 3 times) until it removes itself, then bad_alloc
  const struct {
    const char *what;
    int kind;
  } cases[] = {{"new", 0}, {"new[]", 1}, {"aligned new", 2}, {"aligned new[]", 3}};
  for (const auto &c : cases) {
    handler_calls = 0;
    handler_limit = 3;
    std::set_new_handler(counting_handler);
    thrown = false;
    try {
      void *p = nullptr;
      switch (c.kind) {
        case 0: p = ::operator new(huge); break;
        case 1: p = ::operator new[](huge); break;
        case 2: p = ::operator new(huge, std::align_val_t{64}); break;
        default: p = ::operator new[](huge, std::align_val_t{4096}); break;
      }
      (void)p;
    } catch (const std::bad_alloc &) {
      thrown = true;
    }
    CHECKF(thrown, "%s(SIZE_MAX/2) with a new-handler did not throw std::bad_alloc", c.what);
    CHECKF(handler_calls == 3, "%s: new-handler called %d times, expected 3", c.what, handler_calls);
    CHECK(std::get_new_handler() == nullptr);
  }

  // nothrow forms: nullptr, no exception
  std::set_new_handler(nullptr);
  CHECK(::operator new(huge, std::nothrow) == nullptr);
  CHECK(::operator new[](huge, std::nothrow) == nullptr);
  CHECK(::operator new(huge, std::align_val_t{256}, std::nothrow) == nullptr);
  CHECK(::operator new[](huge, std::align_val_t{256}, std::nothrow) == nullptr);
  CHECK(::operator new(nt_opaque_size(SIZE_MAX), std::nothrow) == nullptr);
  // nothrow new also runs the handler before giving up
  handler_calls = 0;
  handler_limit = 2;
  std::set_new_handler(counting_handler);
  CHECK(::operator new(huge, std::nothrow) == nullptr);
  CHECKF(handler_calls == 2, "nothrow new: new-handler called %d times, expected 2", handler_calls);
  std::set_new_handler(nullptr);

  // a new-expression with a huge element count (compiler-checked length)
  thrown = false;
  try {
    size_t count = nt_opaque_size(SIZE_MAX / 4);
    long *p = new long[count];
    delete[] p;
  } catch (const std::bad_alloc &) { // std::bad_array_new_length derives from bad_alloc
    thrown = true;
  }
  CHECK(thrown);

  // the allocator still works after the failures
  for (int i = 0; i < 1000; i++) {
    auto *v = new std::vector<int>(static_cast<size_t>(i), i);
    CHECK(v->size() == static_cast<size_t>(i));
    delete v;
  }
}

uint64_t stl_workload(uint64_t seed) {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ULL; };
  uint64_t rng = seed | 1;

  std::vector<std::string> words;
  for (int i = 0; i < 60000; i++) {
    std::string w;
    size_t len = 1 + nt_rand(&rng) % 40;
    for (size_t k = 0; k < len; k++) w.push_back(static_cast<char>('a' + nt_rand(&rng) % 26));
    words.push_back(std::move(w));
  }
  std::sort(words.begin(), words.end());
  for (size_t i = 0; i < words.size(); i += 97) mix(std::hash<std::string>{}(words[i]));

  std::map<std::string, int> counts;
  for (const auto &w : words) counts[w.substr(0, 3)]++;
  for (auto it = counts.begin(); it != counts.end();) {
    mix(static_cast<uint64_t>(it->second));
    if (it->second % 2) it = counts.erase(it);
    else ++it;
  }
  mix(counts.size());

  std::unordered_map<uint64_t, std::vector<uint32_t>> buckets;
  for (int i = 0; i < 100000; i++) buckets[nt_rand(&rng) % 5000].push_back(static_cast<uint32_t>(i));
  uint64_t total = 0;
  for (const auto &kv : buckets) total += kv.second.size();
  CHECK(total == 100000);
  buckets.clear();

  std::string big;
  for (int i = 0; i < 20000; i++) big += std::to_string(i) + ",";
  mix(big.size());
  mix(std::hash<std::string>{}(big));

  std::vector<std::shared_ptr<std::vector<char>>> shared;
  for (int i = 0; i < 3000; i++) {
    shared.push_back(std::make_shared<std::vector<char>>(static_cast<size_t>(i % 700), static_cast<char>(i)));
    if (i % 3 == 0) shared.erase(shared.begin() + static_cast<long>(shared.size() / 2));
  }
  for (const auto &s : shared) mix(s->size());
  return h;
}

} // namespace

int main() {
  CHECK_PRELOAD();

  // simple new-expressions
  for (int i = 0; i < 10000; i++) {
    int *p = new int(i);
    CHECK(*p == i);
    delete p;
    double *a = new double[static_cast<size_t>(i % 300) + 1];
    a[i % 300] = i;
    delete[] a;
    std::string *s = new (std::nothrow) std::string(static_cast<size_t>(i % 100), 'x');
    CHECK(s != nullptr && s->size() == static_cast<size_t>(i % 100));
    delete s;
  }
  void *z1 = ::operator new(nt_opaque_size(0));
  void *z2 = ::operator new(nt_opaque_size(0));
  CHECK(z1 != nullptr && z2 != nullptr && z1 != z2);
  ::operator delete(z1, size_t{0});
  ::operator delete(z2);

  check_explicit_operators();
  check_aligned_range<64>();
  check_failure_paths();

  // STL: single thread, then 4 threads doing the same work must agree
  uint64_t expect[4];
  for (int t = 0; t < 4; t++) expect[t] = stl_workload(static_cast<uint64_t>(t) + 1);
  uint64_t got[4] = {0, 0, 0, 0};
  {
    std::vector<std::thread> th;
    for (int t = 0; t < 4; t++) th.emplace_back([t, &got] { got[t] = stl_workload(static_cast<uint64_t>(t) + 1); });
    for (auto &x : th) x.join();
  }
  for (int t = 0; t < 4; t++) CHECKF(got[t] == expect[t], "STL workload %d differs across threads", t);

  printf("cxx_new_test: ok (all new/delete forms, new-handler + bad_alloc, nothrow, aligned 64 B..1 MiB, STL)\n");
  return 0;
}
