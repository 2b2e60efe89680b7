// espresso: small-object churn of logic minimisation, modelled on espresso (the Berkeley
// two-level logic minimiser in Zorn and Grunwald's allocator studies): covers of cubes are built,
// cofactored, merged and thrown away by a recursive algorithm, every cube a small malloc'd set.
//
// For each problem it draws a random cover F of `cubes` cubes over `vars` variables, computes its
// complement by the unate recursive paradigm (Shannon expansion on the most binate variable,
// De Morgan at a single cube, single-cube containment after each merge), then complements the
// complement. Cubes use espresso's positional notation: two bits per variable (01 = x',
// 10 = x, 11 = don't care), `words` 64-bit words, one malloc per cube; covers are arrays of cube
// pointers grown with realloc.
//
// Verifies: on `samples` random minterms per problem (every minterm when vars <= 12) exactly one
// of F and its complement contains the minterm, and the double complement contains it exactly
// when F does. Prints the total number of cubes in all complements (same for every allocator).
#include "common.hpp"

namespace {

int g_vars = 16, g_words = 1;
long g_live = 0;

using Cube = uint64_t;  // a cube is a malloc'd array of g_words words

Cube* cube_new() {
  auto* c = static_cast<Cube*>(malloc(sizeof(Cube) * static_cast<size_t>(g_words)));
  if (!c) wl::fail("malloc failed");
  g_live++;
  return c;
}
void cube_free(Cube* c) {
  g_live--;
  free(c);
}
Cube* cube_copy(const Cube* a) {
  Cube* c = cube_new();
  memcpy(c, a, sizeof(Cube) * static_cast<size_t>(g_words));
  return c;
}
Cube* cube_universe() {
  Cube* c = cube_new();
  for (int w = 0; w < g_words; w++) {
    int bits = 2 * g_vars - 64 * w;
    c[w] = bits >= 64 ? ~0ull : ((1ull << bits) - 1);
  }
  return c;
}
inline unsigned lit(const Cube* c, int v) { return (c[v / 32] >> (2 * (v % 32))) & 3u; }
inline void set_lit(Cube* c, int v, unsigned x) {
  Cube& w = c[v / 32];
  int sh = 2 * (v % 32);
  w = (w & ~(3ull << sh)) | (uint64_t{x} << sh);
}
bool contains(const Cube* a, const Cube* b) {  // a contains b
  for (int w = 0; w < g_words; w++) if ((a[w] & b[w]) != b[w]) return false;
  return true;
}
// A minterm as a cube (one bit set per variable), so that membership is one AND per word.
struct Minterm {
  uint64_t w[2] = {0, 0};
  explicit Minterm(uint64_t m) {
    for (int v = 0; v < g_vars; v++) w[v / 32] |= uint64_t{((m >> v) & 1) ? 2u : 1u} << (2 * (v % 32));
  }
};
bool contains_minterm(const Cube* c, const Minterm& m) {
  for (int w = 0; w < g_words; w++) if ((c[w] & m.w[w]) != m.w[w]) return false;
  return true;
}

struct Cover {
  Cube** c = nullptr;
  int n = 0, cap = 0;
  void push(Cube* x) {
    if (n == cap) {
      cap = cap ? cap * 2 : 4;
      auto* nc = static_cast<Cube**>(realloc(c, sizeof(Cube*) * static_cast<size_t>(cap)));
      if (!nc) wl::fail("realloc failed");
      c = nc;
    }
    c[n++] = x;
  }
  void clear() {
    for (int i = 0; i < n; i++) cube_free(c[i]);
    free(c);
    c = nullptr;
    n = cap = 0;
  }
  bool has(const Minterm& m) const {
    for (int i = 0; i < n; i++) if (contains_minterm(c[i], m)) return true;
    return false;
  }
};

// Cofactor of F with respect to variable v = val (1 or 0): cubes that meet the half-space, with
// v raised to don't care.
Cover cofactor(const Cover& F, int v, unsigned val) {
  Cover r;
  unsigned want = val ? 2u : 1u;
  for (int i = 0; i < F.n; i++) {
    if (lit(F.c[i], v) & want) {
      Cube* x = cube_copy(F.c[i]);
      set_lit(x, v, 3);
      r.push(x);
    }
  }
  return r;
}

// Removes cubes contained in another cube of the cover.
void scc(Cover& F) {
  int out = 0;
  for (int i = 0; i < F.n; i++) {
    bool dead = false;
    for (int j = 0; j < F.n && !dead; j++) {
      if (j == i || !F.c[j]) continue;
      if (contains(F.c[j], F.c[i]) && (!contains(F.c[i], F.c[j]) || j < i)) dead = true;
    }
    if (dead) {
      cube_free(F.c[i]);
      F.c[i] = nullptr;
    }
  }
  for (int i = 0; i < F.n; i++) if (F.c[i]) F.c[out++] = F.c[i];
  F.n = out;
}

Cover complement(const Cover& F) {
  Cover r;
  if (F.n == 0) {
    r.push(cube_universe());
    return r;
  }
  for (int i = 0; i < F.n; i++) {
    bool univ = true;
    for (int v = 0; v < g_vars && univ; v++) univ = lit(F.c[i], v) == 3;
    if (univ) return r;  // F is a tautology: empty complement
  }
  if (F.n == 1) {  // De Morgan: one cube per literal, with the literal negated
    for (int v = 0; v < g_vars; v++) {
      unsigned l = lit(F.c[0], v);
      if (l == 3) continue;
      Cube* x = cube_universe();
      set_lit(x, v, l ^ 3u);
      r.push(x);
    }
    return r;
  }
  // Split on the most binate variable (appears in both phases in most cubes).
  int best = -1, best_score = -1;
  for (int v = 0; v < g_vars; v++) {
    int pos = 0, neg = 0;
    for (int i = 0; i < F.n; i++) {
      unsigned l = lit(F.c[i], v);
      pos += l == 2;
      neg += l == 1;
    }
    if (pos + neg == 0) continue;
    int score = (pos && neg ? 1000 : 0) + pos + neg;
    if (score > best_score) best_score = score, best = v;
  }
  if (best < 0) wl::fail("no splitting variable in a non-tautology cover");
  Cover f1 = cofactor(F, best, 1), f0 = cofactor(F, best, 0);
  Cover c1 = complement(f1), c0 = complement(f0);
  f1.clear();
  f0.clear();
  for (int i = 0; i < c1.n; i++) {
    set_lit(c1.c[i], best, 2);
    r.push(c1.c[i]);
  }
  for (int i = 0; i < c0.n; i++) {
    set_lit(c0.c[i], best, 1);
    r.push(c0.c[i]);
  }
  free(c1.c);
  free(c0.c);
  // Merge pairs that differ only in the split variable back into one cube, then drop contained.
  for (int i = 0; i < r.n; i++) {
    if (!r.c[i] || lit(r.c[i], best) != 2) continue;
    for (int j = 0; j < r.n; j++) {
      if (!r.c[j] || lit(r.c[j], best) != 1) continue;
      set_lit(r.c[j], best, 2);
      bool same = memcmp(r.c[i], r.c[j], sizeof(Cube) * static_cast<size_t>(g_words)) == 0;
      set_lit(r.c[j], best, 1);
      if (same) {
        set_lit(r.c[i], best, 3);
        cube_free(r.c[j]);
        r.c[j] = nullptr;
        break;
      }
    }
  }
  int out = 0;
  for (int i = 0; i < r.n; i++) if (r.c[i]) r.c[out++] = r.c[i];
  r.n = out;
  scc(r);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  g_vars = static_cast<int>(a.num("vars", 16, 10));
  const long cubes = a.num("cubes", 40, 12);
  const long problems = a.num("problems", 300, 10);
  const long samples = a.num("samples", 1000, 200);
  a.done("espresso [--vars 16] [--cubes 40] [--problems 300] [--samples 1000] [--smoke]");
  if (g_vars < 2 || g_vars > 64 || cubes < 1 || problems < 1) wl::usage_error("bad parameters");
  g_words = (2 * g_vars + 63) / 64;

  wl::Rng rng(4242);
  long total = 0;
  double t0 = wl::now();
  for (long p = 0; p < problems; p++) {
    Cover F;
    for (long i = 0; i < cubes; i++) {
      Cube* c = cube_universe();
      // About a third of the variables appear, in a random phase: cubes of useful size.
      for (int v = 0; v < g_vars; v++) {
        uint64_t r = rng.below(6);
        if (r < 2) set_lit(c, v, r ? 2u : 1u);
      }
      F.push(c);
    }
    Cover C = complement(F);
    Cover D = complement(C);
    total += C.n;
    const bool all = g_vars <= 12;
    const uint64_t count = all ? (1ull << g_vars) : static_cast<uint64_t>(samples);
    for (uint64_t s = 0; s < count; s++) {
      uint64_t m = all ? s : (g_vars == 64 ? rng.next() : rng.below(1ull << g_vars));
      Minterm mt(m);
      bool f = F.has(mt), c = C.has(mt), d = D.has(mt);
      if (f == c) wl::fail("problem %ld: minterm %llx is %s F and its complement", p,
                           (unsigned long long)m, f ? "in both" : "in neither");
      if (d != f) wl::fail("problem %ld: double complement differs from F at minterm %llx", p,
                           (unsigned long long)m);
    }
    F.clear();
    C.clear();
    D.clear();
  }
  double t1 = wl::now();
  if (g_live != 0) wl::fail("%ld cubes leaked", g_live);
  printf("complement_cubes=%ld\n", total);
  wl::report(t1 - t0);
  return 0;
}
