// cfrac: small-object churn of a symbolic computation, modelled on cfrac (the continued-fraction
// factoring program in Zorn and Grunwald's allocator studies): big integers allocated fresh for
// every intermediate result and freed as soon as they are used.
//
// It expands sqrt(N) as a continued fraction, the inner loop of CFRAC factoring:
//   P' = a*Q - P,  Q' = (N - P'^2) / Q,  a' = (a0 + P') / Q',  p_k = a_k p_{k-1} + p_{k-2} mod N
// and, as CFRAC does, trial-divides every Q by a factor base of small primes to find smooth ones.
// Every big integer is an immutable malloc'd array of 32-bit limbs (16 to 64 bytes here).
//
// Verifies: the division for Q' is exact (remainder zero), and at every step the convergent
// identity p_k^2 = (-1)^(k+1) Q_{k+1} (mod N) holds, which checks every multiplication, division
// and reduction of the step. Prints the number of smooth Q found (same for every allocator).
#include "common.hpp"

namespace {

struct Big {
  uint32_t n;  // limbs in use, no leading zero limb; zero has n == 0
  uint32_t d[];
};

long g_live = 0;  // big integers alive (must be 0 at the end)

Big* make(uint32_t n) {
  auto* b = static_cast<Big*>(malloc(sizeof(Big) + sizeof(uint32_t) * (n ? n : 1)));
  if (!b) wl::fail("malloc failed");
  b->n = n;
  g_live++;
  return b;
}
void drop(Big* b) {
  g_live--;
  free(b);
}
Big* norm(Big* b) {
  while (b->n && b->d[b->n - 1] == 0) b->n--;
  return b;
}
Big* from_u64(uint64_t v) {
  Big* b = make(2);
  b->d[0] = static_cast<uint32_t>(v);
  b->d[1] = static_cast<uint32_t>(v >> 32);
  return norm(b);
}
Big* copy(const Big* a) {
  Big* b = make(a->n);
  memcpy(b->d, a->d, a->n * sizeof(uint32_t));
  return b;
}
int cmp(const Big* a, const Big* b) {
  if (a->n != b->n) return a->n < b->n ? -1 : 1;
  for (uint32_t i = a->n; i-- > 0;)
    if (a->d[i] != b->d[i]) return a->d[i] < b->d[i] ? -1 : 1;
  return 0;
}
Big* add(const Big* a, const Big* b) {
  if (a->n < b->n) std::swap(a, b);
  Big* r = make(a->n + 1);
  uint64_t c = 0;
  for (uint32_t i = 0; i < a->n; i++) {
    c += uint64_t{a->d[i]} + (i < b->n ? b->d[i] : 0);
    r->d[i] = static_cast<uint32_t>(c);
    c >>= 32;
  }
  r->d[a->n] = static_cast<uint32_t>(c);
  return norm(r);
}
Big* sub(const Big* a, const Big* b) {  // a >= b
  if (cmp(a, b) < 0) wl::fail("sub: negative result");
  Big* r = make(a->n);
  int64_t br = 0;
  for (uint32_t i = 0; i < a->n; i++) {
    int64_t t = int64_t{a->d[i]} - (i < b->n ? b->d[i] : 0) - br;
    br = t < 0;
    r->d[i] = static_cast<uint32_t>(t + (br << 32));
  }
  return norm(r);
}
Big* mul(const Big* a, const Big* b) {
  Big* r = make(a->n + b->n);
  memset(r->d, 0, r->n * sizeof(uint32_t));
  for (uint32_t i = 0; i < a->n; i++) {
    uint64_t c = 0;
    for (uint32_t j = 0; j < b->n; j++) {
      c += uint64_t{a->d[i]} * b->d[j] + r->d[i + j];
      r->d[i + j] = static_cast<uint32_t>(c);
      c >>= 32;
    }
    r->d[i + b->n] = static_cast<uint32_t>(c);
  }
  return norm(r);
}
Big* mul_small(const Big* a, uint32_t m, uint32_t add_in) {
  Big* r = make(a->n + 1);
  uint64_t c = add_in;
  for (uint32_t i = 0; i < a->n; i++) {
    c += uint64_t{a->d[i]} * m;
    r->d[i] = static_cast<uint32_t>(c);
    c >>= 32;
  }
  r->d[a->n] = static_cast<uint32_t>(c);
  return norm(r);
}
// Quotient by a small divisor; the remainder goes to *rem.
Big* div_small(const Big* a, uint32_t m, uint32_t* rem) {
  Big* q = make(a->n);
  uint64_t k = 0;
  for (uint32_t i = a->n; i-- > 0;) {
    uint64_t cur = (k << 32) | a->d[i];
    q->d[i] = static_cast<uint32_t>(cur / m);
    k = cur % m;
  }
  *rem = static_cast<uint32_t>(k);
  return norm(q);
}

// Knuth's algorithm D (the form in Warren, "Hacker's Delight", divmnu): q = u / v, r = u % v.
void divmod(const Big* u, const Big* v, Big** qo, Big** ro) {
  if (v->n == 0) wl::fail("division by zero");
  if (cmp(u, v) < 0) {
    if (qo) *qo = make(0);
    if (ro) *ro = copy(u);
    return;
  }
  const int m = static_cast<int>(u->n), n = static_cast<int>(v->n);
  if (n == 1) {
    uint32_t rem;
    Big* q = div_small(u, v->d[0], &rem);
    if (qo) *qo = q; else drop(q);
    if (ro) *ro = from_u64(rem);
    return;
  }
  constexpr uint64_t b = uint64_t{1} << 32;
  uint32_t un[130], vn[130];
  if (m > 128) wl::fail("divmod: operand too large");
  int s = __builtin_clz(v->d[n - 1]);
  for (int i = n - 1; i > 0; i--)
    vn[i] = (v->d[i] << s) | static_cast<uint32_t>(uint64_t{v->d[i - 1]} >> (32 - s));
  vn[0] = v->d[0] << s;
  un[m] = static_cast<uint32_t>(uint64_t{u->d[m - 1]} >> (32 - s));
  for (int i = m - 1; i > 0; i--)
    un[i] = (u->d[i] << s) | static_cast<uint32_t>(uint64_t{u->d[i - 1]} >> (32 - s));
  un[0] = u->d[0] << s;
  Big* q = make(static_cast<uint32_t>(m - n + 1));
  for (int j = m - n; j >= 0; j--) {
    uint64_t num = (uint64_t{un[j + n]} << 32) | un[j + n - 1];
    uint64_t qhat = num / vn[n - 1];
    uint64_t rhat = num - qhat * vn[n - 1];
    while (qhat >= b || qhat * vn[n - 2] > ((rhat << 32) | un[j + n - 2])) {
      qhat--;
      rhat += vn[n - 1];
      if (rhat >= b) break;
    }
    int64_t k = 0, t;
    for (int i = 0; i < n; i++) {
      uint64_t p = qhat * vn[i];
      t = int64_t{un[i + j]} - k - static_cast<int64_t>(p & 0xFFFFFFFFu);
      un[i + j] = static_cast<uint32_t>(t);
      k = static_cast<int64_t>(p >> 32) - (t >> 32);
    }
    t = int64_t{un[j + n]} - k;
    un[j + n] = static_cast<uint32_t>(t);
    q->d[j] = static_cast<uint32_t>(qhat);
    if (t < 0) {
      q->d[j]--;
      uint64_t c = 0;
      for (int i = 0; i < n; i++) {
        c += uint64_t{un[i + j]} + vn[i];
        un[i + j] = static_cast<uint32_t>(c);
        c >>= 32;
      }
      un[j + n] += static_cast<uint32_t>(c);
    }
  }
  norm(q);
  if (qo) *qo = q; else drop(q);
  if (ro) {
    Big* r = make(static_cast<uint32_t>(n));
    for (int i = 0; i < n - 1; i++)
      r->d[i] = (un[i] >> s) | static_cast<uint32_t>((uint64_t{un[i + 1]} << (32 - s)) & 0xFFFFFFFFu);
    r->d[n - 1] = un[n - 1] >> s;
    *ro = norm(r);
  }
}
Big* mod(const Big* a, const Big* m) {
  Big* r;
  divmod(a, m, nullptr, &r);
  return r;
}
Big* div(const Big* a, const Big* m) {
  Big* q;
  divmod(a, m, &q, nullptr);
  return q;
}
Big* isqrt(const Big* n) {  // floor(sqrt(n)) by Newton's method from above
  uint32_t bits = n->n * 32 - static_cast<uint32_t>(__builtin_clz(n->d[n->n - 1]));
  Big* one = from_u64(1);
  Big* x = make(bits / 64 + 2);
  memset(x->d, 0, x->n * sizeof(uint32_t));
  uint32_t e = (bits + 1) / 2 + 1;
  x->d[e / 32] = 1u << (e % 32);
  norm(x);
  for (;;) {
    Big* q = div(n, x);
    Big* s = add(x, q);
    uint32_t rem;
    Big* y = div_small(s, 2, &rem);
    drop(q);
    drop(s);
    if (cmp(y, x) >= 0) {
      drop(y);
      break;
    }
    drop(x);
    x = y;
  }
  drop(one);
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const long digits = a.num("digits", 60, 30);
  const long steps = a.num("steps", 900000, 2000);
  const long primes = a.num("primes", 60, 20);
  a.done("cfrac [--digits 60] [--steps 900000] [--primes 60] [--smoke]");
  if (digits < 10 || digits > 300 || steps < 1 || primes < 1) wl::usage_error("bad parameters");

  // N: a pseudo-random number of `digits` decimal digits, made odd and not a perfect square.
  wl::Rng rng(12345);
  Big* N = from_u64(1 + rng.below(9));
  for (long i = 1; i < digits; i++) {
    Big* t = mul_small(N, 10, static_cast<uint32_t>(rng.below(10)));
    drop(N);
    N = t;
  }
  N->d[0] |= 1;
  std::vector<uint32_t> base;
  for (uint32_t p = 2; static_cast<long>(base.size()) < primes; p++) {
    bool prime = true;
    for (uint32_t d = 2; d * d <= p; d++) if (p % d == 0) { prime = false; break; }
    if (prime) base.push_back(p);
  }

  double t0 = wl::now();
  Big* a0 = isqrt(N);
  {
    Big* sq = mul(a0, a0);
    if (cmp(sq, N) == 0) wl::fail("N is a perfect square");
    drop(sq);
  }
  Big* P = from_u64(0);
  Big* Q = from_u64(1);
  Big* ak = copy(a0);
  Big* p1 = from_u64(1);  // p_{k-1}
  Big* p2 = from_u64(0);  // p_{k-2}
  long smooth = 0;
  for (long k = 0; k < steps; k++) {
    // p_k = a_k p_{k-1} + p_{k-2} (mod N)
    Big* t = mul(ak, p1);
    Big* u = add(t, p2);
    Big* pk = mod(u, N);
    drop(t);
    drop(u);
    drop(p2);
    p2 = p1;
    p1 = pk;
    // P' = a Q - P;  Q' = (N - P'^2) / Q exactly;  a' = (a0 + P') / Q'
    Big* aq = mul(ak, Q);
    Big* P1 = sub(aq, P);
    drop(aq);
    Big* sq = mul(P1, P1);
    Big* diff = sub(N, sq);
    Big *Q1, *rem;
    divmod(diff, Q, &Q1, &rem);
    if (rem->n != 0) wl::fail("step %ld: (N - P^2) / Q is not exact", k);
    drop(sq);
    drop(diff);
    drop(rem);
    Big* s = add(a0, P1);
    Big* a1 = div(s, Q1);
    drop(s);
    // Identity: p_k^2 == (-1)^(k+1) Q_{k+1} (mod N).
    Big* pp = mul(pk, pk);
    Big* lhs = mod(pp, N);
    Big* rhs = (k % 2 == 1) ? copy(Q1) : sub(N, Q1);
    if (cmp(lhs, rhs) != 0) wl::fail("step %ld: convergent identity does not hold", k);
    drop(pp);
    drop(lhs);
    drop(rhs);
    // CFRAC's factor-base test: divide Q' by the small primes; smooth if nothing is left.
    Big* rest = copy(Q1);
    for (uint32_t pr : base) {
      for (;;) {
        uint32_t r;
        Big* qq = div_small(rest, pr, &r);
        if (r != 0) {
          drop(qq);
          break;
        }
        drop(rest);
        rest = qq;
      }
    }
    if (rest->n == 1 && rest->d[0] == 1) smooth++;
    drop(rest);
    drop(P);
    drop(Q);
    drop(ak);
    P = P1;
    Q = Q1;
    ak = a1;
  }
  double t1 = wl::now();
  for (Big* b : {N, a0, P, Q, ak, p1, p2}) drop(b);
  if (g_live != 0) wl::fail("%ld big integers leaked", g_live);
  printf("smooth=%ld\n", smooth);
  wl::report(t1 - t0);
  return 0;
}
