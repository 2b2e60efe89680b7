/* The library's code that ordinary programs run must stay within one 64 KiB window of its code
 * mapping (docs/performance.md, log, stop 29). The kernel maps a fault's neighbours in 64 KiB
 * windows: a program that ran one function in each window of our code had all of it resident
 * (100 KiB), though it runs less than half. The link gathers the functions programs run
 * (platform/hot-code.ld, from tools/hot-code.py) at the start of the code, which starts on a
 * 64 KiB boundary; the symbol nebula_hot_code_end marks their end; and drops DT_INIT and DT_FINI (ld.so calling their stubs at
 * the two ends of the code mapped the first and last windows).
 *
 * Its read-only data lives in the RELRO pages (platform/rodata.ld, stop 30): the size-class
 * tables that every slow-path malloc reads had the whole read-only segment resident (the
 * kernel maps 64 KiB around a fault), 28 KiB that were mostly unwinding tables. The segment
 * left after the code, .eh_frame and its index, must have no resident page. The writable
 * globals that every process writes (the RELRO pages, .data, the small .bss, the arena table's
 * first entry) fill four OS pages; the ones written only when an option is set or a pressure
 * callback registered sit after the segment map.
 *
 * This program does what ordinary programs do (small, medium, large and huge blocks, calloc,
 * realloc growth, C strings, a second thread freeing the first one's blocks, a join, a sleep, a
 * poll, a block moved by realloc), then reads which pages of our code are resident
 * (/proc/self/pagemap): none may lie past the first 64 KiB window of the code. Fails when a
 * function on those paths is missing from the list (renamed, new: run tools/hot-code.py), when
 * the list has grown past the window as far as those functions, when the library is linked
 * without the list, or with DT_FINI or DT_INIT back (checked in its dynamic section: DT_FINI runs
 * after the check). */
#include "../check.h"

#include <elf.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>

enum { WINDOW = 64 << 10, PAGE = 4096, HANDOFF = 4096 };

static void *handed[HANDOFF];

/* n blocks of 16, 16 + step, 16 + 2 * step, ... bytes, allocated, then freed. */
static void alloc_then_free(int n, size_t step) {
  void *mine[256];
  CHECK(n <= 256);
  for (int i = 0; i < n; ++i) {
    mine[i] = malloc(16 + (size_t)i * step);
    CHECK(mine[i] != NULL);
  }
  for (int i = 0; i < n; ++i) free(mine[i]);
}

static void *freer(void *arg) {
  (void)arg;
  for (int i = 0; i < HANDOFF; ++i) free(handed[i]);  // blocks of another thread's pages
  alloc_then_free(256, 24);
  return NULL;
}

/* Threads that start and end together, as a pool does: they contend for the engine's locks (a
 * new thread's heap is set up under one), and a waiter that sleeps on a lock, and the unlock
 * that wakes it, run code of the library that the profile of tools/hot-code.py, made with
 * threads run one at a time, does not see. */
enum { TOGETHER = 16, ROUNDS = 40 };
static pthread_barrier_t start_line;

static void *together(void *arg) {
  (void)arg;
  pthread_barrier_wait(&start_line);
  alloc_then_free(32, 40);
  return NULL;
}

static void threads_together(void) {
  for (int round = 0; round < ROUNDS; ++round) {
    pthread_t t[TOGETHER];
    CHECK(pthread_barrier_init(&start_line, NULL, TOGETHER) == 0);
    for (int i = 0; i < TOGETHER; ++i) CHECK(pthread_create(&t[i], NULL, together, NULL) == 0);
    for (int i = 0; i < TOGETHER; ++i) CHECK(pthread_join(t[i], NULL) == 0);
    CHECK(pthread_barrier_destroy(&start_line) == 0);
  }
}

static void ordinary_work(void) {
  static void *keep[2000];
  unsigned seed = 12345;
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 2000; ++i) {
      seed = seed * 1103515245u + 12345u;
      size_t n = (seed >> 8) % (i % 50 == 0 ? 300000 : 2000) + 1;
      free(keep[i]);
      keep[i] = (i & 7) == 0 ? calloc(1, n) : malloc(n);
      CHECK(keep[i] != NULL);
      memset(keep[i], round, n < 64 ? n : 64);
    }
  }
  for (int i = 0; i < 2000; ++i) free(keep[i]);
  char *buf = NULL;  // a buffer grown by realloc, as string builders do
  size_t len = 0;
  for (int i = 0; i < 20000; ++i) {
    buf = realloc(buf, len + 100);
    CHECK(buf != NULL);
    memset(buf + len, 'x', 100);
    len += 100;
  }
  buf = realloc(buf, 100);
  CHECK(buf != NULL && buf[99] == 'x');
  free(buf);
  void *huge = malloc(6 << 20);
  CHECK(huge != NULL);
  memset(huge, 1, 6 << 20);
  free(huge);
  char *s = strdup("nebula-memory");
  CHECK(s != NULL);
  free(s);
  for (int i = 0; i < HANDOFF; ++i) {
    handed[i] = malloc((size_t)(16 + (i % 64) * 16));
    CHECK(handed[i] != NULL);
  }
  pthread_t t;
  CHECK(pthread_create(&t, NULL, freer, NULL) == 0);
  CHECK(pthread_join(t, NULL) == 0);
  threads_together();
  usleep(2000);
  poll(NULL, 0, 1);
}

struct lib {
  uintptr_t base;
  uintptr_t code, code_end;  // the executable PT_LOAD
  uintptr_t ro, ro_end;      // the read-only PT_LOAD after the code (unwinding tables)
  uintptr_t rw;              // the writable PT_LOAD
  int init_fini;             // DT_INIT and DT_FINI entries in its dynamic section
  char path[4096];
};

static int find_lib(struct dl_phdr_info *info, size_t size, void *arg) {
  (void)size;
  struct lib *l = arg;
  if (info->dlpi_name == NULL || strstr(info->dlpi_name, "libnebulamem") == NULL) return 0;
  l->base = info->dlpi_addr;
  snprintf(l->path, sizeof l->path, "%s", info->dlpi_name);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
      l->code = info->dlpi_addr + ph->p_vaddr;
      l->code_end = l->code + ph->p_memsz;
    }
    if (ph->p_type == PT_LOAD && ph->p_flags == PF_R && ph->p_offset != 0) {
      l->ro = info->dlpi_addr + ph->p_vaddr;
      l->ro_end = l->ro + ph->p_memsz;
    }
    if (ph->p_type == PT_LOAD && (ph->p_flags & PF_W)) l->rw = info->dlpi_addr + ph->p_vaddr;
    if (ph->p_type == PT_DYNAMIC) {
      for (const ElfW(Dyn) *d = (const ElfW(Dyn) *)(info->dlpi_addr + ph->p_vaddr);
           d->d_tag != DT_NULL; ++d)
        if (d->d_tag == DT_INIT || d->d_tag == DT_FINI) ++l->init_fini;
    }
  }
  return 1;
}

/* The value of a symbol of the library's file symbol table (.symtab: not loaded, and local
 * symbols are not in the dynamic one). */
static int symbol_of(const char *path, const char *name, uint64_t *value) {
  int fd = open(path, O_RDONLY);
  CHECKF(fd >= 0, "open %s", path);
  off_t len = lseek(fd, 0, SEEK_END);
  char *file = malloc((size_t)len);
  CHECK(file != NULL && pread(fd, file, (size_t)len, 0) == len);
  close(fd);
  const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)file;
  const ElfW(Shdr) *sh = (const ElfW(Shdr) *)(file + eh->e_shoff);
  int found = 0;
  for (int i = 0; i < eh->e_shnum && !found; ++i) {
    if (sh[i].sh_type != SHT_SYMTAB) continue;
    const ElfW(Sym) *syms = (const ElfW(Sym) *)(file + sh[i].sh_offset);
    const char *names = file + sh[sh[i].sh_link].sh_offset;
    for (size_t k = 0; k < sh[i].sh_size / sizeof *syms; ++k) {
      if (strcmp(names + syms[k].st_name, name) == 0) {
        *value = syms[k].st_value;
        found = 1;
        break;
      }
    }
  }
  free(file);
  return found;
}

static uint64_t pagemap_entry(int pm, uintptr_t p) {
  uint64_t e = 0;
  CHECK(pread(pm, &e, sizeof e, (off_t)(p / PAGE * sizeof e)) == sizeof e);
  return e;
}

static int present(int pm, uintptr_t p) { return (int)(pagemap_entry(pm, p) >> 63); }

/* Present and a page of its own (written: exclusive) or a file page: not the shared zero page
 * that a read of untouched zero memory maps, which costs no memory. */
static int resident_data(int pm, uintptr_t p) {
  uint64_t e = pagemap_entry(pm, p);
  return (int)((e >> 63) & ((e >> 56) | (e >> 61)) & 1);
}

/* The layout holds for the default options and for options that change no engine path: secure
 * mode and medium runs have code of their own, which ordinary programs do not run and which lies
 * past the window. A suite run with NEBULA_MEM_SECURE=1 or NEBULA_MEM_MEDIUM_RUNS=1 exported
 * would fail here for nothing: the program runs itself again without the allocator's variables
 * (the library reads them before main). Where CODE_FOOTPRINT_KEEP_OPTIONS is set, as
 * code_footprint_options_test sets it (a purge delay, a budget of a share of memory, medium runs
 * off: the option parser's paths for set values and a budget's accounting must lie in the
 * window too, stop 49), it drops only NEBULA_MEM_SECURE and NEBULA_MEM_COMMIT (strict commit's
 * code is its own too, stop 50; the test's own variables override the rest). */
extern char **environ;
static void run_with_default_options(char **argv) {
  const int keep = getenv("CODE_FOOTPRINT_KEEP_OPTIONS") != NULL;
  char names[64][128];
  int n = 0;
  for (char **e = environ; *e != NULL && n < 64; ++e) {
    const char *eq = strchr(*e, '=');
    if (strncmp(*e, "NEBULA_MEM_", 11) != 0 || eq == NULL || (size_t)(eq - *e) >= sizeof names[0]) continue;
    if (keep && strncmp(*e, "NEBULA_MEM_SECURE=", 18) != 0 && strncmp(*e, "NEBULA_MEM_COMMIT=", 18) != 0) continue;
    memcpy(names[n], *e, (size_t)(eq - *e));
    names[n++][eq - *e] = 0;
  }
  if (n == 0) return;
  for (int i = 0; i < n; ++i) CHECK(unsetenv(names[i]) == 0);
  execv("/proc/self/exe", argv);
  CHECKF(0, "execv /proc/self/exe: %s", strerror(errno));
}

int main(int argc, char **argv) {
  (void)argc;
  run_with_default_options(argv);
  ordinary_work();
  if (NT_AGAINST_GLIBC) {  /* tests/glibc_baseline.sh: no library, no layout to check */
    CHECK_PRELOAD();
    return 0;
  }

  struct lib l = {0};
  CHECK(dl_iterate_phdr(find_lib, &l) == 1);
  CHECKF(l.code != 0, "no executable segment in %s", l.path);
  uint64_t hot_end_addr = 0;
  CHECKF(symbol_of(l.path, "nebula_hot_code_end", &hot_end_addr),
         "%s has no symbol nebula_hot_code_end: linked without platform/hot-code.ld", l.path);
  // ld.so calls DT_FINI at exit, after this check: its stub at the end of the code would map
  // the last window then.
  CHECKF(l.init_fini == 0, "%s has DT_INIT or DT_FINI", l.path);
  CHECKF(l.code % WINDOW == 0, "the code starts at %#lx, not on a 64 KiB boundary",
         (unsigned long)(l.code - l.base));
  uintptr_t hot_end = l.base + hot_end_addr;
  // The first window: the list is ordered by how many of the profile's programs ran each
  // function, so what passes the window's end (at stop 47, 0.3 KiB of functions one program ran;
  // since stop 49 nothing: 65,035 bytes with g++, 62,543 with clang++, the option parser's paths
  // for set values among the last) maps the second only in a program that runs it. The window
  // that holds the list's end, the limit before, let the list outgrow the first window unseen:
  // realloc_move, renamed, fell out of the list and every program that moved a block mapped both
  // windows (124 KiB).
  uintptr_t limit = l.code + WINDOW;

  int pm = open("/proc/self/pagemap", O_RDONLY);
  CHECK(pm >= 0);
  unsigned resident = 0, beyond = 0;
  uintptr_t first_beyond = 0;
  for (uintptr_t p = l.code; p < l.code_end; p += PAGE) {
    if (!present(pm, p)) continue;
    ++resident;
    if (p >= limit) {
      ++beyond;
      if (first_beyond == 0) first_beyond = p;
    }
  }
  CHECKF(l.ro != 0, "%s has no read-only segment after its code", l.path);
  unsigned ro_resident = 0;
  for (uintptr_t p = l.ro & ~(uintptr_t)(PAGE - 1); p < l.ro_end; p += PAGE) ro_resident += present(pm, p);
  uint64_t segmap_addr = 0;
  CHECK(symbol_of(l.path, "_ZN6nebula8g_segmapE", &segmap_addr));
  unsigned rw_resident = 0;
  char rw_pages[256] = "";  // their offsets, for the failure message
  for (uintptr_t p = l.rw & ~(uintptr_t)(PAGE - 1); p < l.base + segmap_addr; p += PAGE) {
    if (!resident_data(pm, p)) continue;
    ++rw_resident;
    size_t used = strlen(rw_pages);
    snprintf(rw_pages + used, sizeof rw_pages - used, " %#lx", (unsigned long)(p - l.base));
  }
  close(pm);
  unsigned total = (unsigned)((l.code_end - l.code + PAGE - 1) / PAGE);
  printf("code_footprint_test: code %u pages, the functions programs run %lu bytes (%ld past the "
         "first window); resident %u pages, %u of them past the first window\n",
         total, (unsigned long)(hot_end - l.code), (long)(hot_end - limit), resident, beyond);
  CHECKF(beyond == 0,
         "%u resident code pages past the first window (the first at offset %#lx): a function "
         "that ordinary programs run is missing from platform/hot-code.ld (tools/hot-code.py), "
         "or DT_INIT/DT_FINI are back", beyond, (unsigned long)(first_beyond - l.base));
  // The library's destructor runs at every process's exit, after this check: its code must lie
  // in the window too (a peak RSS read at exit, as /usr/bin/time reports it, counted 44 KiB more
  // when the link put the .text.exit section after the list).
  uint64_t at_exit = 0;
  CHECK(symbol_of(l.path, "_ZN6nebulaL14nebula_at_exitEv", &at_exit));
  CHECKF(l.base + at_exit < limit,
         "the destructor run at exit (offset %#lx) lies past the first window (which ends at %#lx): "
         "platform/hot-code.ld does not place its .text.exit section (tools/hot-code.py)",
         (unsigned long)at_exit, (unsigned long)(limit - l.base));
  printf("code_footprint_test: read-only segment %lu bytes, %u pages resident\n",
         (unsigned long)(l.ro_end - l.ro), ro_resident);
  CHECKF(ro_resident == 0,
         "%u pages of the read-only segment after the code are resident: .rodata is back in it "
         "(platform/rodata.ld), or something read the unwinding tables", ro_resident);
  printf("code_footprint_test: writable data before the segment map: %u pages resident (at%s)\n",
         rw_resident, rw_pages);
  CHECKF(rw_resident <= 4,
         "%u OS pages of the library's writable data before the segment map are resident (at%s; "
         "at most 4: a global written by every process sits between globals it does not write?)",
         rw_resident, rw_pages);
  CHECK_PRELOAD();  // last: nebula_mem_is_active is not on the list (programs do not call it)
  return 0;
}
