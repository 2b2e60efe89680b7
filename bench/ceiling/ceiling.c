// bench/ceiling/ceiling.c: a measuring stick for thread scaling, not an allocator to use.
//
// `bench/run.py --scaling --allocators ceiling,...` preloads it to ask how far each threaded
// workload scales on this machine when the allocator costs next to nothing and never makes two
// threads meet: every thread has its own free lists and its own memory, a free goes onto the
// freeing thread's list whoever allocated the block, nothing is locked, nothing is atomic,
// nothing goes back to the OS. What stays between the workload and a speed-up of N at N threads
// is then mostly the program's own work on N cores: its memory traffic, the cache lines its
// threads hand each other, the machine. Not quite all: a block that another thread freed is
// reused by that thread, so two threads' blocks can end up side by side in one cache line (the
// engine sends such frees home instead), and memory only grows (a producer whose blocks another
// thread frees takes new memory for ever). Fine for a timed run of seconds, useless as a malloc.
//
// Blocks carry a 16-byte header (the size class; for an aligned block, the distance back to the
// block it lies in). Classes: 16-byte steps to 128 bytes, then four per octave. Blocks of more
// than kOwnMapping bytes get a mapping of their own, asking for huge pages, which realloc grows
// with mremap (no copy), as the real allocators in the table do, and such a block may serve a
// request up to two octaves smaller. A thread's lists outlive it: a new thread adopts the state
// of one that exited (one lock, at thread start and exit only).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

enum { kHeader = 16, kClasses = 168 };
static const size_t kRegion = (size_t)64 << 20;     // bump regions
static const size_t kOwnMapping = (size_t)4 << 20;  // above: a mapping per block
static const uint32_t kAligned = 0xffffffffu;        // header of an aligned block inside another

typedef struct Header {
  uint32_t cls;
  uint32_t unused;
  uint64_t back;  // aligned blocks: bytes back to the enclosing block's user pointer
} Header;

typedef struct State {
  void* free[kClasses];
  char* bump;
  char* bump_end;
  struct State* next_orphan;
} State;

static __thread State* t_state __attribute__((tls_model("initial-exec")));
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static State* g_orphans;
static pthread_key_t g_key;
static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;

static unsigned class_of(size_t n) {
  if (n <= 128) return n == 0 ? 1 : (unsigned)((n + 15) >> 4);
  unsigned k = 63u - (unsigned)__builtin_clzll((unsigned long long)(n - 1));
  unsigned sub = (unsigned)((n - 1) >> (k - 2)) & 3u;
  return 9u + (k - 7u) * 4u + sub;
}

static size_t class_size(unsigned c) {
  if (c <= 8) return (size_t)c * 16;
  unsigned k = (c - 9) / 4 + 7, sub = (c - 9) % 4;
  return ((size_t)1 << k) + ((size_t)(sub + 1) << (k - 2));
}

static void* map(size_t n) {
  void* p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static size_t mapping_len(size_t size) {
  size_t page = 4096;
  return (kHeader + size + page - 1) & ~(page - 1);
}

// The key's destructor, at the thread's exit. A free the thread makes after it (another
// destructor's) finds no state and takes one again, which comes back here.
static void orphan(void* s) {
  t_state = NULL;
  pthread_mutex_lock(&g_lock);
  ((State*)s)->next_orphan = g_orphans;
  g_orphans = (State*)s;
  pthread_mutex_unlock(&g_lock);
}

static void make_key(void) { pthread_key_create(&g_key, orphan); }

static State* state(void) {
  State* s = t_state;
  if (s != NULL) return s;
  pthread_mutex_lock(&g_lock);
  s = g_orphans;
  if (s != NULL) g_orphans = s->next_orphan;
  pthread_mutex_unlock(&g_lock);
  if (s == NULL) {
    s = (State*)map(sizeof(State));
    if (s == NULL) return NULL;
  }
  t_state = s;
  pthread_once(&g_key_once, make_key);
  pthread_setspecific(g_key, s);
  return s;
}

static Header* header_of(void* p) { return (Header*)((char*)p - kHeader); }

EXPORT void* malloc(size_t n) {
  if (n > ((size_t)1 << 46)) {
    errno = ENOMEM;
    return NULL;
  }
  unsigned c = class_of(n);
  State* s = state();
  if (s == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  void* p = s->free[c];
  // A block with a mapping of its own may come from a class up to two octaves bigger: realloc
  // moves blocks up the classes (it grows them in place), and without this the smaller classes
  // would take new memory, which the kernel faults in, for as long as the program runs.
  unsigned from = c;
  for (unsigned k = c + 1; p == NULL && class_size(c) > kOwnMapping && k < kClasses && k <= c + 8; ++k)
    if (s->free[k] != NULL) p = s->free[from = k];
  if (p != NULL) {
    s->free[from] = *(void**)p;
    return p;
  }
  size_t size = class_size(c);
  char* block;
  if (size > kOwnMapping) {
    block = (char*)map(mapping_len(size));
    // Huge pages where the kernel gives them on request, as the allocators in the table ask.
    if (block != NULL) madvise(block, mapping_len(size), MADV_HUGEPAGE);
  } else {
    if ((size_t)(s->bump_end - s->bump) < kHeader + size) {
      s->bump = (char*)map(kRegion);
      s->bump_end = s->bump == NULL ? NULL : s->bump + kRegion;
    }
    block = s->bump;
    if (block != NULL) s->bump += kHeader + size;
  }
  if (block == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  ((Header*)block)->cls = c;
  return block + kHeader;
}

EXPORT void free(void* p) {
  if (p == NULL) return;
  Header* h = header_of(p);
  if (h->cls == kAligned) {
    p = (char*)p - h->back;
    h = header_of(p);
  }
  State* s = state();
  if (s == NULL) return;  // (no memory for a state: the block is lost, never reused wrongly)
  *(void**)p = s->free[h->cls];
  s->free[h->cls] = p;
}

EXPORT size_t malloc_usable_size(void* p) {
  if (p == NULL) return 0;
  Header* h = header_of(p);
  if (h->cls == kAligned) return class_size(header_of((char*)p - h->back)->cls) - h->back;
  return class_size(h->cls);
}

EXPORT void* calloc(size_t count, size_t size) {
  size_t n;
  if (__builtin_mul_overflow(count, size, &n)) {
    errno = ENOMEM;
    return NULL;
  }
  void* p = malloc(n);
  if (p != NULL) memset(p, 0, n);
  return p;
}

EXPORT void* realloc(void* p, size_t n) {
  if (p == NULL) return malloc(n);
  if (n == 0) {
    free(p);
    return NULL;
  }
  size_t have = malloc_usable_size(p);
  if (n <= have) return p;
  Header* h = header_of(p);
  unsigned c = class_of(n);
  if (h->cls != kAligned && class_size(h->cls) > kOwnMapping && class_size(c) > kOwnMapping) {
    // A block with a mapping of its own grows by moving its page tables.
    void* q = mremap(h, mapping_len(class_size(h->cls)), mapping_len(class_size(c)), MREMAP_MAYMOVE);
    if (q != MAP_FAILED) {
      madvise(q, mapping_len(class_size(c)), MADV_HUGEPAGE);
      ((Header*)q)->cls = c;
      return (char*)q + kHeader;
    }
  }
  void* q = malloc(n);
  if (q == NULL) return NULL;
  memcpy(q, p, have);
  free(p);
  return q;
}

EXPORT int posix_memalign(void** out, size_t align, size_t n) {
  if (align < sizeof(void*) || (align & (align - 1)) != 0) return EINVAL;
  if (align <= kHeader) {
    void* p = malloc(n);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
  }
  if (n > ((size_t)1 << 46) || align > ((size_t)1 << 40)) return ENOMEM;
  char* p = (char*)malloc(n + align + kHeader);
  if (p == NULL) return ENOMEM;
  uintptr_t q = ((uintptr_t)p + kHeader + align - 1) & ~(uintptr_t)(align - 1);
  Header* h = header_of((void*)q);
  h->cls = kAligned;
  h->back = q - (uintptr_t)p;
  *out = (void*)q;
  return 0;
}

EXPORT void* aligned_alloc(size_t align, size_t n) {
  void* p = NULL;
  int e = posix_memalign(&p, align < sizeof(void*) ? sizeof(void*) : align, n);
  if (e != 0) {
    errno = e;
    return NULL;
  }
  return p;
}

EXPORT void* memalign(size_t align, size_t n) { return aligned_alloc(align, n); }
EXPORT void* valloc(size_t n) { return aligned_alloc(4096, n); }
EXPORT void* pvalloc(size_t n) { return aligned_alloc(4096, (n + 4095) & ~(size_t)4095); }
