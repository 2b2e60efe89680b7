/* glibc functions that allocate internally (through malloc, which the preload replaces) and
 * whose results the program releases with free() or a glibc destructor that calls free():
 * strdup, strndup, getline, getdelim, asprintf, vasprintf, open_memstream, fmemopen,
 * fopen/fclose, tmpfile, regcomp/regfree, setlocale/newlocale/freelocale, qsort on a large array
 * (glibc mallocs its merge buffer), getaddrinfo/freeaddrinfo, scandir, realpath(path, NULL),
 * getcwd(NULL, 0), glob/globfree, opendir/readdir, iconv_open/iconv_close, strerror_l, popen.
 * Every result is checked for correct content, and everything is repeated so that a mismatch
 * between glibc-internal allocation and our free shows up as corruption or a crash. */
#include "../check.h"

#include <dirent.h>
#include <glob.h>
#include <iconv.h>
#include <limits.h>
#include <locale.h>
#include <malloc.h>
#include <netdb.h>
#include <regex.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static int my_vasprintf(char **out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int r = vasprintf(out, fmt, ap);
  va_end(ap);
  return r;
}

static int select_txt(const struct dirent *d) {
  size_t l = strlen(d->d_name);
  return l > 4 && strcmp(d->d_name + l - 4, ".txt") == 0;
}

int main(void) {
  CHECK_PRELOAD();
  size_t i;
  char tmpl[] = "/tmp/nebula-glibc-internal.XXXXXX";
  char *dir = mkdtemp(tmpl);
  CHECK(dir != NULL);

  /* ---- strdup / strndup ---- */
  for (unsigned rep = 0; rep < 2000; rep++) {
    size_t len = (rep * 37) % 3000;
    char *src = (char *)malloc(len + 1);
    CHECK(src != NULL);
    for (i = 0; i < len; i++) src[i] = (char)('a' + (i + rep) % 26);
    src[len] = 0;
    char *d = strdup(src);
    CHECK(d != NULL && strcmp(d, src) == 0 && d != src);
    CHECK(malloc_usable_size(d) >= len + 1);
    char *nd = strndup(src, len / 2);
    CHECK(nd != NULL && strlen(nd) == len / 2 && strncmp(nd, src, len / 2) == 0);
    free(src);
    free(nd);
    free(d);
  }

  /* ---- asprintf / vasprintf, up to 1 MiB strings ---- */
  for (unsigned rep = 0; rep < 200; rep++) {
    char *s = NULL;
    int w = (int)((rep * 5003) % NT_MIB(1));
    int r = asprintf(&s, "%d:%*s:%s", (int)rep, w, "x", "end");
    CHECK(r > 0 && s != NULL);
    CHECK((size_t)r == strlen(s));
    CHECK(strcmp(s + r - 4, ":end") == 0);
    char *v = NULL;
    r = my_vasprintf(&v, "%s|%s", s, "tail");
    CHECK(r > 0 && v != NULL && strncmp(v, s, strlen(s)) == 0);
    free(s);
    free(v);
  }

  /* ---- open_memstream grows its buffer with realloc; we free it ---- */
  for (unsigned rep = 0; rep < 20; rep++) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f != NULL);
    for (i = 0; i < 20000 + rep * 1000; i++) fprintf(f, "line %zu %u\n", i, rep);
    CHECK(fclose(f) == 0);
    CHECK(buf != NULL && len > 0 && strlen(buf) == len);
    CHECK(strncmp(buf, "line 0 ", 7) == 0);
    free(buf);
  }

  /* ---- fopen/fclose, getline/getdelim with long lines, tmpfile ---- */
  {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/lines.txt", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    for (i = 0; i < 300; i++) {
      size_t l = (i * i * 131) % 70000;
      for (size_t k = 0; k < l; k++) fputc('A' + (int)((i + k) % 26), f);
      fputc('\n', f);
    }
    CHECK(fclose(f) == 0);
    for (unsigned rep = 0; rep < 5; rep++) {
      f = fopen(path, "r");
      CHECK(f != NULL);
      char *line = NULL;
      size_t cap = 0;
      ssize_t got;
      i = 0;
      while ((got = getline(&line, &cap, f)) >= 0) {
        size_t l = (i * i * 131) % 70000;
        CHECKF((size_t)got == l + 1, "getline line %zu: length %zd, expected %zu", i, got, l + 1);
        CHECK(cap >= (size_t)got + 1);
        for (size_t k = 0; k < l; k += 997) CHECK(line[k] == 'A' + (int)((i + k) % 26));
        i++;
        if (rep & 1) { /* sometimes let getline start over from a fresh buffer */
          free(line);
          line = NULL;
          cap = 0;
        }
      }
      CHECK(i == 300);
      free(line);
      CHECK(fclose(f) == 0);
    }
    /* getdelim on a delimiter that occurs rarely */
    f = fopen(path, "r");
    CHECK(f != NULL);
    char *chunk = NULL;
    size_t cap = 0;
    ssize_t got = getdelim(&chunk, &cap, 'Z', f);
    CHECK(got > 0 && chunk[got - 1] == 'Z');
    free(chunk);
    fclose(f);
    /* many fopen/fclose pairs: each allocates a FILE and a buffer */
    for (unsigned rep = 0; rep < 3000; rep++) {
      f = fopen(path, (rep & 1) ? "r" : "a");
      CHECK(f != NULL);
      if (rep & 1) {
        char b[16];
        CHECK(fread(b, 1, sizeof b, f) == sizeof b);
      } else {
        CHECK(fputs("", f) >= 0);
      }
      CHECK(fclose(f) == 0);
    }
    f = tmpfile();
    CHECK(f != NULL);
    fputs("hello tmpfile", f);
    rewind(f);
    char b[32] = {0};
    CHECK(fgets(b, sizeof b, f) != NULL && strcmp(b, "hello tmpfile") == 0);
    fclose(f);
    /* fmemopen */
    char mem[64] = "alpha beta gamma";
    f = fmemopen(mem, strlen(mem), "r");
    CHECK(f != NULL);
    char w1[16], w2[16], w3[16];
    CHECK(fscanf(f, "%15s %15s %15s", w1, w2, w3) == 3 && strcmp(w3, "gamma") == 0);
    fclose(f);
  }

  /* ---- regcomp / regexec / regfree ---- */
  for (unsigned rep = 0; rep < 300; rep++) {
    regex_t re;
    const char *pat = (rep & 1) ? "^([a-z]+)-([0-9]{2,4})(x*)$" : "(ab|cd)+[[:digit:]]*e{1,3}";
    CHECK(regcomp(&re, pat, REG_EXTENDED) == 0);
    regmatch_t m[4];
    if (rep & 1) {
      CHECK(regexec(&re, "nebula-2024xx", 4, m, 0) == 0);
      CHECK(m[1].rm_so == 0 && m[1].rm_eo == 6 && m[2].rm_so == 7 && m[2].rm_eo == 11);
      CHECK(regexec(&re, "nebula-1", 4, m, 0) == REG_NOMATCH);
    } else {
      CHECK(regexec(&re, "zzabcdab123eez", 1, m, 0) == 0);
      CHECK(m[0].rm_so == 2 && m[0].rm_eo == 13);
    }
    regfree(&re);
  }
  {
    regex_t re;
    CHECK(regcomp(&re, "([unclosed", REG_EXTENDED) != 0); /* error path frees internally */
  }

  /* ---- locales ---- */
  for (unsigned rep = 0; rep < 20; rep++) {
    CHECK(setlocale(LC_ALL, "C.UTF-8") != NULL);
    CHECK(setlocale(LC_NUMERIC, "C") != NULL);
    char *cur = setlocale(LC_ALL, NULL);
    CHECK(cur != NULL);
    char *saved = strdup(cur);
    CHECK(saved != NULL);
    CHECK(setlocale(LC_ALL, "C") != NULL);
    CHECK(setlocale(LC_ALL, saved) != NULL);
    free(saved);
    locale_t l = newlocale(LC_ALL_MASK, "C.UTF-8", (locale_t)0);
    CHECK(l != (locale_t)0);
    locale_t l2 = duplocale(l);
    CHECK(l2 != (locale_t)0);
    CHECK(strerror_l(ENOENT, l2) != NULL);
    freelocale(l2);
    freelocale(l);
  }
  CHECK(setlocale(LC_ALL, "C") != NULL);

  /* ---- qsort on a big array (glibc mallocs the merge buffer for large inputs) ---- */
  {
    size_t n = (size_t)4 << 20; /* 4M elements, 16 MiB: merge buffer comes from malloc */
    uint32_t *a = (uint32_t *)malloc(n * sizeof *a);
    CHECK(a != NULL);
    uint64_t rng = 5;
    uint64_t sum = 0;
    for (i = 0; i < n; i++) {
      a[i] = (uint32_t)nt_rand(&rng);
      sum += a[i];
    }
    qsort(a, n, sizeof *a, cmp_u32);
    uint64_t sum2 = 0;
    for (i = 0; i < n; i++) {
      if (i) CHECKF(a[i - 1] <= a[i], "qsort result unsorted at %zu", i);
      sum2 += a[i];
    }
    CHECK(sum == sum2);
    free(a);
    /* and big records (qsort sorts pointers to them through an allocated index) */
    struct rec {
      uint32_t key;
      char pad[124];
    };
    size_t m = 100000;
    struct rec *r = (struct rec *)malloc(m * sizeof *r);
    CHECK(r != NULL);
    for (i = 0; i < m; i++) {
      r[i].key = (uint32_t)nt_rand(&rng);
      memset(r[i].pad, (int)(r[i].key & 0xFF), sizeof r[i].pad);
    }
    qsort(r, m, sizeof *r, cmp_u32);
    for (i = 0; i < m; i++) {
      if (i) CHECK(r[i - 1].key <= r[i].key);
      CHECK(r[i].pad[0] == (char)(r[i].key & 0xFF) && r[i].pad[123] == (char)(r[i].key & 0xFF));
    }
    free(r);
  }

  /* ---- getaddrinfo / freeaddrinfo ("localhost" comes from /etc/hosts, no network) ---- */
  for (unsigned rep = 0; rep < 50; rep++) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int r = getaddrinfo("localhost", "80", &hints, &res);
    CHECKF(r == 0, "getaddrinfo(localhost): %s", gai_strerror(r));
    CHECK(res != NULL);
    int n = 0;
    for (struct addrinfo *p = res; p; p = p->ai_next) {
      CHECK(p->ai_addr != NULL);
      CHECK(p->ai_family == AF_INET || p->ai_family == AF_INET6);
      n++;
    }
    CHECK(n >= 1);
    freeaddrinfo(res);
    res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = AI_NUMERICHOST;
    CHECK(getaddrinfo("127.0.0.1", NULL, &hints, &res) == 0 && res != NULL);
    freeaddrinfo(res);
  }

  /* ---- scandir / opendir / glob over a directory we populate ---- */
  {
    char path[PATH_MAX];
    for (i = 0; i < 300; i++) {
      snprintf(path, sizeof path, "%s/f%04zu.txt", dir, i);
      FILE *f = fopen(path, "w");
      CHECK(f != NULL);
      fclose(f);
    }
    for (unsigned rep = 0; rep < 20; rep++) {
      struct dirent **list = NULL;
      int n = scandir(dir, &list, select_txt, alphasort);
      CHECKF(n == 301, "scandir found %d .txt entries", n); /* 300 + lines.txt */
      CHECK(strcmp(list[0]->d_name, "f0000.txt") == 0);
      CHECK(strcmp(list[299]->d_name, "f0299.txt") == 0);
      for (int k = 0; k < n; k++) free(list[k]);
      free(list);
    }
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int cnt = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) cnt++;
    CHECK(cnt == 303); /* . .. lines.txt f*.txt */
    closedir(d);
    glob_t g;
    snprintf(path, sizeof path, "%s/f01*.txt", dir);
    CHECK(glob(path, 0, NULL, &g) == 0);
    CHECK(g.gl_pathc == 100);
    globfree(&g);
  }

  /* ---- realpath(path, NULL), getcwd(NULL, 0) ---- */
  for (unsigned rep = 0; rep < 500; rep++) {
    char in[PATH_MAX];
    snprintf(in, sizeof in, "%s/./../%s/f0007.txt", dir, strrchr(dir, '/') + 1);
    char *rp = realpath(in, NULL);
    CHECK(rp != NULL);
    char want[PATH_MAX];
    snprintf(want, sizeof want, "%s/f0007.txt", dir);
    char *want_real = realpath(want, NULL);
    CHECK(want_real != NULL && strcmp(rp, want_real) == 0);
    free(want_real);
    free(rp);
    char *cwd = getcwd(NULL, 0);
    CHECK(cwd != NULL && cwd[0] == '/');
    free(cwd);
  }

  /* ---- iconv ---- */
  for (unsigned rep = 0; rep < 50; rep++) {
    iconv_t cd = iconv_open("UTF-16LE", "UTF-8");
    CHECK(cd != (iconv_t)-1);
    char in[] = "nebula \xc3\xa9t\xc3\xa9";
    char out[64];
    char *ip = in, *op = out;
    size_t il = strlen(in), ol = sizeof out;
    CHECK(iconv(cd, &ip, &il, &op, &ol) != (size_t)-1);
    CHECK(il == 0 && sizeof out - ol == 2 * 10);
    iconv_close(cd);
  }

  /* ---- popen (fork+exec inside glibc; the FILE is ours to close) ---- */
  {
    FILE *p = popen("echo nebula-popen", "r");
    CHECK(p != NULL);
    char b[64] = {0};
    CHECK(fgets(b, sizeof b, p) != NULL && strcmp(b, "nebula-popen\n") == 0);
    CHECK(pclose(p) == 0);
  }

  /* cleanup (through glibc's nftw-free path: plain unlink/rmdir) */
  {
    char path[PATH_MAX];
    for (i = 0; i < 300; i++) {
      snprintf(path, sizeof path, "%s/f%04zu.txt", dir, i);
      CHECK(unlink(path) == 0);
    }
    snprintf(path, sizeof path, "%s/lines.txt", dir);
    CHECK(unlink(path) == 0);
    CHECK(rmdir(dir) == 0);
  }

  /* the heap is still consistent after all the mixing */
  for (i = 0; i < 10000; i++) {
    void *p = malloc(nt_opaque_size(1 + i % 3000));
    CHECK(p != NULL);
    memset(p, 0x5F, 1 + i % 3000);
    free(p);
  }

  printf("glibc_internal_test: ok (libc-allocated results freed by our free)\n");
  return 0;
}
