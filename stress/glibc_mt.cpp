// stress/glibc_mt.cpp: glibc functions that allocate internally, from many threads.
static const char* kAbout =
    "Models ordinary C programs, whose allocations mostly come from inside libc: many threads\n"
    "call strdup/strndup/asprintf, fopen/fgets/fclose and open_memstream, regcomp/regexec/\n"
    "regfree, iconv_open/iconv/iconv_close, setlocale and newlocale/uselocale/freelocale,\n"
    "qsort of large arrays, opendir/readdir, getline, each result checked (the string copied,\n"
    "the regex matched, the text converted, the file read back). Blocks that libc allocates\n"
    "in one thread are often freed in another (strings handed over through a shared pool).\n"
    "Beside this each thread keeps pattern-filled blocks of its own that are verified all the\n"
    "time, so libc writing out of its blocks would show. setlocale changes the global locale\n"
    "under a write lock; the locale-dependent calls (regcomp, iconv, asprintf) hold it for\n"
    "reading, since glibc's setlocale is not safe beside them.";

#include "common.hpp"

#include <dirent.h>
#include <iconv.h>
#include <locale.h>
#include <regex.h>

#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

using namespace stress;

namespace {

std::shared_mutex g_locale_lock;
std::mutex g_pool_lock;
std::vector<std::pair<char*, std::string>> g_pool;   // strings made by one thread, freed by another
std::string g_file;                                   // a text file the threads read
std::atomic<uint64_t> g_ops{0};
std::atomic<uint64_t> g_calls[12] = {};
const char* kCallNames[12] = {"strdup", "asprintf", "fopen", "memstream", "regcomp", "iconv",
                              "setlocale", "newlocale", "qsort", "readdir", "getline", "handoff"};
bool g_have_utf8 = false;

int cmp_u32(const void* a, const void* b) {
  uint32_t x = *static_cast<const uint32_t*>(a), y = *static_cast<const uint32_t*>(b);
  return x < y ? -1 : x > y;
}

void worker(const Options* o, unsigned id) {
  Rng r(o->seed * 101 + id);
  std::vector<Block> keep(64);
  Bound bound(*o);
  uint64_t ops = 0;
  uint64_t calls[12] = {};
  for (uint64_t i = 0; bound.more(i); ++i) {
    // the thread's own blocks
    Block& b = keep[r.below(keep.size())];
    if (b.p) release(b, "glibc_mt: own block");
    else if (!allocate(r, pick_api(r, false), size_in_tier(r, r.chance(95) ? kSmall : kMedium, o->huge_max), &b, id))
      error("glibc_mt: allocation returned NULL");
    unsigned what = static_cast<unsigned>(r.below(12));
    ++calls[what];
    switch (what) {
      case 0: {  // strdup / strndup
        char src[300];
        size_t n = r.range(1, sizeof src - 1);
        for (size_t k = 0; k < n; ++k) src[k] = static_cast<char>('A' + (k + id) % 26);
        src[n] = 0;
        char* a = strdup(src);
        char* c = strndup(src, n / 2);
        if (!a || !c || strcmp(a, src) != 0 || strlen(c) != n / 2 || strncmp(c, src, n / 2) != 0)
          error("glibc_mt: strdup/strndup gave a wrong copy");
        free(a);
        free(c);
        break;
      }
      case 1: {  // asprintf
        std::shared_lock<std::shared_mutex> g(g_locale_lock);
        char* s = nullptr;
        unsigned long long v = r.next();
        int len = asprintf(&s, "thread %u value %llu %s", id, v, "and some text to make it longer");
        char want[128];
        snprintf(want, sizeof want, "thread %u value %llu %s", id, v, "and some text to make it longer");
        if (len < 0 || s == nullptr || strcmp(s, want) != 0) error("glibc_mt: asprintf gave '%s'", s ? s : "(null)");
        free(s);
        break;
      }
      case 2: {  // fopen / fgets / fclose (stdio buffers)
        FILE* f = fopen(g_file.c_str(), "r");
        if (!f) {
          error("glibc_mt: fopen(%s): %s", g_file.c_str(), strerror(errno));
          break;
        }
        char line[256];
        unsigned n = 0;
        bool ok = true;
        while (fgets(line, sizeof line, f)) {
          char want[64];
          snprintf(want, sizeof want, "line %u of the test file\n", n);
          if (strcmp(line, want) != 0) ok = false;
          ++n;
        }
        fclose(f);
        if (!ok || n != 2000) error("glibc_mt: read %u lines back from %s, wrong contents: %d", n, g_file.c_str(), !ok);
        break;
      }
      case 3: {  // open_memstream: a buffer that glibc grows with realloc
        char* buf = nullptr;
        size_t size = 0;
        FILE* f = open_memstream(&buf, &size);
        if (!f) {
          error("glibc_mt: open_memstream failed");
          break;
        }
        unsigned n = static_cast<unsigned>(r.range(10, 3000));
        for (unsigned k = 0; k < n; ++k) fprintf(f, "%08u", k);
        fclose(f);
        bool ok = size == n * 8u;
        for (unsigned k = 0; ok && k < n; k += 97) {
          char want[9];
          snprintf(want, sizeof want, "%08u", k);
          if (memcmp(buf + k * 8, want, 8) != 0) ok = false;
        }
        if (!ok) error("glibc_mt: open_memstream buffer of %zu bytes is wrong", size);
        free(buf);
        break;
      }
      case 4: {  // regcomp / regexec / regfree
        std::shared_lock<std::shared_mutex> g(g_locale_lock);
        regex_t re;
        const char* pat = r.chance(50) ? "^([a-z]+)-([0-9]+)\\.(txt|dat)$" : "(ab|cd)*e{2,5}[[:alpha:]]+";
        if (regcomp(&re, pat, REG_EXTENDED) != 0) {
          error("glibc_mt: regcomp failed");
          break;
        }
        regmatch_t m[4];
        bool ok;
        if (pat[0] == '^') {
          ok = regexec(&re, "hello-12345.txt", 4, m, 0) == 0 && m[2].rm_so == 6 && m[2].rm_eo == 11 &&
               regexec(&re, "Hello-1.txt", 0, nullptr, 0) == REG_NOMATCH;
        } else {
          ok = regexec(&re, "xxabcdabeeeZz", 1, m, 0) == 0 && regexec(&re, "abcd", 0, nullptr, 0) == REG_NOMATCH;
        }
        if (!ok) error("glibc_mt: regexec gave a wrong answer for %s", pat);
        regfree(&re);
        break;
      }
      case 5: {  // iconv_open / iconv / iconv_close (loads gconv modules, allocates)
        std::shared_lock<std::shared_mutex> g(g_locale_lock);
        const char* pairs[][2] = {{"UTF-8", "ISO-8859-1"}, {"UTF-16LE", "UTF-8"}, {"UTF-8", "ISO-8859-15"}};
        int k = static_cast<int>(r.below(3));
        iconv_t cd = iconv_open(pairs[k][0], pairs[k][1]);
        if (cd == reinterpret_cast<iconv_t>(-1)) {
          error("glibc_mt: iconv_open(%s, %s): %s", pairs[k][0], pairs[k][1], strerror(errno));
          break;
        }
        char in[64], out[256];
        size_t inlen;
        if (k == 0) {
          memcpy(in, "caf\xe9 cr\xe8me", 10);   // latin-1
          inlen = 10;
        } else if (k == 1) {
          memcpy(in, "caf\xc3\xa9", 5);          // utf-8
          inlen = 5;
        } else {
          memcpy(in, "\xa4 5", 3);               // latin-9 euro sign
          inlen = 3;
        }
        char* ip = in;
        char* op = out;
        size_t ol = sizeof out;
        size_t rc = iconv(cd, &ip, &inlen, &op, &ol);
        size_t produced = sizeof out - ol;
        bool ok = rc != static_cast<size_t>(-1) && inlen == 0;
        if (ok && k == 0) ok = produced == 12 && memcmp(out, "caf\xc3\xa9 cr\xc3\xa8me", 12) == 0;
        if (ok && k == 1) ok = produced == 8 && memcmp(out, "c\0a\0f\0\xe9\0", 8) == 0;
        if (ok && k == 2) ok = produced == 5 && memcmp(out, "\xe2\x82\xac 5", 5) == 0;
        if (!ok) error("glibc_mt: iconv %s <- %s converted wrongly", pairs[k][0], pairs[k][1]);
        iconv_close(cd);
        break;
      }
      case 6: {  // setlocale: the global locale, under the write lock
        std::unique_lock<std::shared_mutex> g(g_locale_lock);
        const char* want = (g_have_utf8 && r.chance(50)) ? "C.UTF-8" : "C";
        const char* got = setlocale(r.chance(50) ? LC_ALL : LC_CTYPE, want);
        if (got == nullptr || strcmp(got, want) != 0) error("glibc_mt: setlocale(%s) gave %s", want, got ? got : "NULL");
        const char* all = setlocale(LC_ALL, nullptr);
        if (all == nullptr) error("glibc_mt: setlocale(LC_ALL, NULL) returned NULL");
        if (r.chance(50)) setlocale(LC_ALL, "C");
        break;
      }
      case 7: {  // newlocale / uselocale / freelocale: per-thread locales
        locale_t l = newlocale(LC_ALL_MASK, g_have_utf8 && r.chance(50) ? "C.UTF-8" : "C", nullptr);
        if (l == nullptr) {
          error("glibc_mt: newlocale failed: %s", strerror(errno));
          break;
        }
        locale_t d = duplocale(l);
        locale_t old = uselocale(d);
        char buf[32];
        snprintf(buf, sizeof buf, "%.2f", 3.25);
        if (strcmp(buf, "3.25") != 0) error("glibc_mt: %%.2f under a C locale gave %s", buf);
        uselocale(old);
        freelocale(d);
        freelocale(l);
        break;
      }
      case 8: {  // qsort: glibc's qsort allocates a buffer for large arrays
        size_t n = r.range(1000, o->smoke ? 20000 : 100000);
        auto* v = static_cast<uint32_t*>(malloc(n * sizeof(uint32_t)));
        if (!v) {
          error("glibc_mt: malloc for qsort returned NULL");
          break;
        }
        for (size_t k = 0; k < n; ++k) v[k] = static_cast<uint32_t>(r.next());
        qsort(v, n, sizeof(uint32_t), cmp_u32);
        for (size_t k = 1; k < n; ++k)
          if (v[k - 1] > v[k]) {
            error("glibc_mt: qsort left the array unsorted");
            break;
          }
        free(v);
        break;
      }
      case 9: {  // opendir / readdir / closedir
        DIR* d = opendir("/proc/self");
        if (!d) {
          error("glibc_mt: opendir(/proc/self): %s", strerror(errno));
          break;
        }
        unsigned n = 0;
        bool status = false;
        while (struct dirent* e = readdir(d)) {
          ++n;
          if (strcmp(e->d_name, "status") == 0) status = true;
        }
        closedir(d);
        if (!status || n < 10) error("glibc_mt: readdir(/proc/self) saw %u entries, status %d", n, status);
        break;
      }
      case 10: {  // getline: a buffer grown by realloc inside glibc
        FILE* f = fopen(g_file.c_str(), "r");
        if (!f) {
          error("glibc_mt: fopen(%s): %s", g_file.c_str(), strerror(errno));
          break;
        }
        char* line = nullptr;
        size_t cap = 0;
        unsigned n = 0;
        while (getline(&line, &cap, f) > 0) ++n;
        free(line);
        fclose(f);
        if (n != 2000) error("glibc_mt: getline read %u lines, not 2000", n);
        break;
      }
      default: {  // strings made by strdup here, freed by another thread
        std::vector<std::pair<char*, std::string>> got;
        {
          std::lock_guard<std::mutex> g(g_pool_lock);
          if (g_pool.size() > 64 || r.chance(30)) got.swap(g_pool);
        }
        for (auto& [p, want] : got) {
          if (want != p) error("glibc_mt: a string handed over between threads changed");
          free(p);
        }
        std::string s = "handed over by thread " + std::to_string(id) + " " + std::to_string(r.next());
        char* p = strdup(s.c_str());
        if (!p) error("glibc_mt: strdup returned NULL");
        else {
          std::lock_guard<std::mutex> g(g_pool_lock);
          g_pool.emplace_back(p, s);
        }
        break;
      }
    }
    ops += 2;
    if ((i & 7) == 0)
      for (Block& k : keep) check(k, "glibc_mt: own block beside libc's");
  }
  for (Block& b : keep)
    if (b.p) release(b, "glibc_mt: final free");
  g_ops += ops;
  for (int k = 0; k < 12; ++k) g_calls[k] += calls[k];
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_standard(argc, argv, kAbout, "glibc_mt", 3);
  Run run(o);
  g_have_utf8 = newlocale(LC_ALL_MASK, "C.UTF-8", nullptr) != nullptr;
  // the text file
  char tmpl[] = "/tmp/nebula-glibc-mt-XXXXXX";
  int fd = mkstemp(tmpl);
  if (fd < 0) {
    perror("mkstemp");
    return 2;
  }
  FILE* f = fdopen(fd, "w");
  for (unsigned k = 0; k < 2000; ++k) fprintf(f, "line %u of the test file\n", k);
  fclose(f);
  g_file = tmpl;
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < o.threads; ++t) ts.emplace_back(worker, &o, t);
  for (auto& t : ts) t.join();
  for (auto& [p, want] : g_pool) {
    if (want != p) error("glibc_mt: a string handed over between threads changed");
    free(p);
  }
  g_pool.clear();
  unlink(tmpl);
  std::string extra;
  for (int k = 0; k < 12; ++k) extra += kv(kCallNames[k], g_calls[k]);
  return run.finish(g_ops, extra);
}
