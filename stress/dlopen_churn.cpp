// stress/dlopen_churn.cpp: libraries loaded and unloaded by many threads.
static const char* kAbout =
    "Models plug-in hosts and programs that load modules on demand (interpreters importing\n"
    "extension modules, NSS and iconv modules, codecs): threads dlopen and dlclose three test\n"
    "libraries (libstress-dl-0/1/2.so) over and over. Each library's constructors allocate\n"
    "(malloc, calloc, new, new[], strdup, C++ globals holding maps of vectors of strings) and\n"
    "its destructors verify and free all of it; while a library is loaded the threads call it\n"
    "to allocate blocks that the program frees after the library is gone, to free blocks the\n"
    "program made, and to run container work inside it. The loader itself allocates on every\n"
    "dlopen and dlclose. Checks: every block intact, every library unloaded as often as it\n"
    "was loaded.";

#include "common.hpp"

#include <limits.h>

#include <mutex>
#include <thread>
#include <vector>

using namespace stress;

namespace {
std::atomic<uint64_t> g_loads{0}, g_unloads{0}, g_lib_ops{0};
}

// Called by the libraries' constructors (event 0) and destructors (event 1).
extern "C" __attribute__((visibility("default"))) void stress_dl_report(int id, int event, uint64_t ops,
                                                                        uint64_t errors) {
  if (event == 0) {
    g_loads++;
    return;
  }
  g_unloads++;
  g_lib_ops += ops;
  if (errors != 0) error("dlopen_churn: library %d found %llu damaged blocks or containers in its destructor", id,
                         static_cast<unsigned long long>(errors));
}

namespace {

std::string g_dir;
std::atomic<uint64_t> g_ops{0}, g_dlopens{0};

void worker(const Options* o, unsigned id) {
  Rng r(o->seed * 17 + id);
  std::vector<Block> outlive;   // blocks made by a library, freed after it is closed
  uint64_t ops = 0, opens = 0;
  Bound bound(*o);
  for (uint64_t i = 0; bound.time_left() && (o->iters == 0 || i < o->iters); ++i) {
    int lib = static_cast<int>(r.below(3));
    std::string path = g_dir + "/libstress-dl-" + std::to_string(lib) + ".so";
    int flags = r.chance(50) ? (RTLD_NOW | RTLD_LOCAL) : (RTLD_LAZY | RTLD_GLOBAL);
    void* h = dlopen(path.c_str(), flags);
    if (h == nullptr) {
      error("dlopen_churn: dlopen(%s): %s", path.c_str(), dlerror());
      continue;
    }
    ++opens;
    auto make = reinterpret_cast<void* (*)(size_t, uint64_t)>(dlsym(h, "stress_dl_make"));
    auto take = reinterpret_cast<int (*)(void*, size_t, uint64_t)>(dlsym(h, "stress_dl_take"));
    auto work = reinterpret_cast<uint64_t (*)(unsigned)>(dlsym(h, "stress_dl_work"));
    auto ident = reinterpret_cast<int (*)()>(dlsym(h, "stress_dl_id"));
    if (!make || !take || !work || !ident) {
      error("dlopen_churn: %s lacks its functions", path.c_str());
      dlclose(h);
      continue;
    }
    if (ident() != lib) error("dlopen_churn: %s says it is library %d", path.c_str(), ident());
    for (int k = 0; k < 4; ++k) {
      size_t n = size_in_tier(r, r.chance(80) ? kSmall : kMedium, o->huge_max);
      uint64_t seed = r.next() | 1;
      void* p = make(n, seed);
      if (p == nullptr) error("dlopen_churn: library allocation of %zu returned NULL", n);
      else {
        Block b;
        b.p = p;
        b.n = n;
        b.seed = seed;
        if (verify(p, n, seed) != kIntact) error("dlopen_churn: block made by the library is damaged");
        outlive.push_back(b);
      }
      Block mine;
      if (!allocate(r, Api::kMalloc, n, &mine, id)) error("dlopen_churn: malloc(%zu) returned NULL", n);
      else if (take(mine.p, mine.n, mine.seed) != 0) error("dlopen_churn: the library found a block of %zu damaged", n);
      ops += 2;
    }
    uint64_t w = work(r.chance(50) ? 1 : 3);
    if (w == ~uint64_t{0}) error("dlopen_churn: container work inside the library went wrong");
    else ops += w;
    if (dlclose(h) != 0) error("dlopen_churn: dlclose: %s", dlerror());
    // free blocks of libraries that may be unloaded by now
    while (outlive.size() > 32) {
      size_t k = r.below(outlive.size());
      release(outlive[k], "dlopen_churn: free of a block made by an unloaded library");
      outlive[k] = outlive.back();
      outlive.pop_back();
      ++ops;
    }
  }
  for (Block& b : outlive) release(b, "dlopen_churn: final free");
  g_ops += ops + opens * 2;
  g_dlopens += opens;
}

}  // namespace

int main(int argc, char** argv) {
  // --dir DIR: where the libraries are; default: next to this program
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
      g_dir = argv[++i];
      continue;
    }
    args.push_back(argv[i]);
  }
  if (g_dir.empty()) {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) {
      buf[n] = 0;
      char* slash = strrchr(buf, '/');
      if (slash) *slash = 0;
      g_dir = buf;
    } else {
      g_dir = ".";
    }
  }
  Options o = parse_standard(static_cast<int>(args.size()), args.data(), kAbout, "dlopen_churn", 3);
  Run run(o);
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < o.threads; ++t) ts.emplace_back(worker, &o, t);
  for (auto& t : ts) t.join();
  if (g_loads.load() != g_unloads.load())
    error("dlopen_churn: libraries loaded %llu times but unloaded %llu times",
          static_cast<unsigned long long>(g_loads.load()), static_cast<unsigned long long>(g_unloads.load()));
  if (g_dlopens.load() > 0 && g_loads.load() == 0) error("dlopen_churn: the libraries' constructors never ran");
  return run.finish(g_ops + g_lib_ops, kv("dlopens", g_dlopens) + kv("loads", g_loads) + kv("unloads", g_unloads));
}
