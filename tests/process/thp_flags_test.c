/* Transparent huge pages on our memory, whatever the kernel's mode (docs/performance.md, log,
 * stop 50). The engine counts resident memory in 64 KiB slices; a kernel whose THP mode is
 * `always` would back 2 MiB at the first touch of one slice, memory that no count knows of and no
 * purge gives back (a program of a few small blocks held 5.7-7.7 MiB instead of 2.1). So:
 *
 *   - the mapping that holds small, medium and large blocks carries MADV_NOHUGEPAGE ("nh" in its
 *     VmFlags), as does the library's segment map (the biggest anonymous mapping right after the
 *     library's own, its sparse .bss);
 *   - a huge block of 8 MiB still asks for huge pages on its whole 2 MiB pages ("hg"), unless
 *     NEBULA_MEM_HUGE_PAGES is off (this test reads the variable);
 *   - where the kernel's mode is `always` (/sys/kernel/mm/transparent_hugepage/enabled), the
 *     small blocks' mapping has no AnonHugePages and the RSS of 4,000 blocks of 16-64 bytes stays
 *     under 3 MiB (before the flag: 5.7-7.7 MiB on a kernel in that mode). On any other mode the
 *     flags above are what decides, and they are checked on every machine. */
#include "../check.h"

static int has_flag(const struct nt_mapping *m, const char *flag) {
  char want[8];
  snprintf(want, sizeof want, " %s", flag);
  size_t k = strlen(want);
  for (const char *s = m->flags; (s = strstr(s, want)) != NULL; s += k)
    if (s[k] == ' ' || s[k] == '\n' || s[k] == 0) return 1;
  return 0;
}

static int thp_mode_always(void) {
  char buf[128] = {0};
  FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (f == NULL) return 0;
  size_t got = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[got] = 0;
  return strstr(buf, "[always]") != NULL;
}

enum { SMALL = 4000, CAP = 4096 };
static struct nt_mapping maps[CAP];

int main(void) {
  CHECK_PRELOAD();
  static void *small[SMALL];
  for (int i = 0; i < SMALL; ++i) {
    small[i] = malloc(16 + (size_t)(i % 4) * 16);
    CHECK(small[i] != NULL);
    memset(small[i], 1, 16);
  }
  const size_t rss = nt_rss_bytes();
  void *medium = malloc(20000), *large = malloc(300 << 10);
  const size_t huge_size = (size_t)8 << 20;
  char *huge = malloc(huge_size);
  CHECK(medium != NULL && large != NULL && huge != NULL);
  memset(medium, 2, 20000);
  memset(large, 3, 300 << 10);
  memset(huge, 4, huge_size);

  int n = nt_read_mappings(maps, CAP);
  CHECK(n > 0);

  const struct nt_mapping *blocks[3];
  const void *block_at[3] = {small[0], medium, large};
  const char *what[3] = {"small", "medium", "large"};
  for (int i = 0; i < 3; ++i) {
    const int k = nt_mapping_of(maps, n, block_at[i]);
    CHECKF(k >= 0, "no mapping holds the %s block", what[i]);
    blocks[i] = &maps[k];
    CHECKF(has_flag(blocks[i], "nh"), "the %s block's mapping %lx-%lx lacks MADV_NOHUGEPAGE: VmFlags:%s", what[i],
           (unsigned long)blocks[i]->lo, (unsigned long)blocks[i]->hi, blocks[i]->flags);
  }

  /* The huge block's first whole 2 MiB page. */
  const uintptr_t two = (uintptr_t)2 << 20;
  const char *mid = (const char *)(((uintptr_t)huge + two - 1) & ~(two - 1));
  const int hk = nt_mapping_of(maps, n, mid);
  CHECK(hk >= 0);
  const struct nt_mapping *hm = &maps[hk];
  const char *hp = getenv("NEBULA_MEM_HUGE_PAGES");
  const int hinted = hp == NULL || !(strcmp(hp, "0") == 0 || strcmp(hp, "off") == 0 || strcmp(hp, "false") == 0);
  if (hinted) {
    CHECKF(has_flag(hm, "hg"), "the huge block's 2 MiB pages at %p lack MADV_HUGEPAGE: VmFlags:%s", (const void *)mid,
           hm->flags);
  } else {
    CHECKF(!has_flag(hm, "hg") && has_flag(hm, "nh"),
           "with NEBULA_MEM_HUGE_PAGES=%s the huge block at %p should carry MADV_NOHUGEPAGE only: VmFlags:%s", hp,
           (const void *)mid, hm->flags);
  }

  /* The segment map (the library's sparse .bss: tens of MiB, of which a few bytes are used). */
  const int sk = nt_segment_map(maps, n);
  const struct nt_mapping *segmap = sk >= 0 ? &maps[sk] : NULL;
  CHECKF(segmap != NULL && segmap->hi - segmap->lo >= two,
         "no anonymous mapping of 2 MiB or more right after the library's (its segment map)");
  CHECKF(has_flag(segmap, "nh"), "the segment map's mapping %lx-%lx lacks MADV_NOHUGEPAGE: VmFlags:%s",
         (unsigned long)segmap->lo, (unsigned long)segmap->hi, segmap->flags);

  const int always = thp_mode_always();
  if (always) {
    CHECKF(blocks[0]->anon_huge_kib == 0, "the small blocks' mapping holds %ld KiB of huge pages",
           blocks[0]->anon_huge_kib);
    CHECKF(segmap->anon_huge_kib == 0, "the segment map holds %ld KiB of huge pages", segmap->anon_huge_kib);
    CHECKF(rss < NT_MIB(3), "RSS %zu KiB with %d small blocks, the kernel's THP mode `always`", rss >> 10, SMALL);
  }
  free(huge);
  free(large);
  free(medium);
  for (int i = 0; i < SMALL; ++i) free(small[i]);
  printf("thp_flags_test: blocks' mapping %lx-%lx [%s], segment map %lx-%lx, kernel THP mode %s, RSS %zu KiB with the small blocks\n",
         (unsigned long)blocks[0]->lo, (unsigned long)blocks[0]->hi, "nh", (unsigned long)segmap->lo,
         (unsigned long)segmap->hi, always ? "always" : "not always", rss >> 10);
  return 0;
}
