// frag: fragmentation. Build a large tree, free 90% of it at random, keep going; report RSS.
//
// A binary search tree of `nodes` nodes with random keys, each node one malloc of a header and
// a payload of 16..240 bytes (blocks of 48..272 bytes spread over many size classes). Then 90%
// of the nodes, chosen at random, are deleted: the survivors are scattered over every page the
// tree used, which is what makes returning memory hard. Then the program keeps going with a tree
// of the remaining size: `after` operations, each inserting a node with a bigger payload
// (64..512 bytes: the program's objects changed) and deleting a random node, old or new, so the
// old nodes die out and the pages they pinned empty over the phase. The live size at the end is
// about a fifth of the peak: an allocator that reuses the holes for the new nodes and returns
// the pages that emptied ends near it; one that does neither stays at the peak.
//
// Prints rss_built_kib (the whole tree), rss_freed_kib (just after the 90% free) and
// rss_after_kib (resident memory at the end, after the keep-going phase): the driver reports the
// last one beside peak RSS.
//
// Verifies: after each phase, an in-order walk finds the keys sorted, the node count right, every
// payload intact, and the checksum of the live payloads equal to the one kept while inserting
// and deleting.
#include "common.hpp"

namespace {
struct Node {
  uint64_t key;
  Node* l;
  Node* r;
  uint32_t plen;
  uint32_t pad;
  unsigned char payload[];
};
Node* g_root = nullptr;
long g_count = 0;
uint64_t g_sum = 0;

uint64_t node_sum(uint64_t key, uint32_t plen) { return wl::mix(key) ^ plen; }

void insert(uint64_t key, uint32_t plen) {
  auto* n = static_cast<Node*>(malloc(sizeof(Node) + plen));
  if (!n) wl::fail("malloc failed");
  n->key = key;
  n->l = n->r = nullptr;
  n->plen = plen;
  wl::fill(n->payload, plen, key);
  Node** at = &g_root;
  while (*at) at = key < (*at)->key ? &(*at)->l : &(*at)->r;
  *at = n;
  g_count++;
  g_sum += node_sum(key, plen);
}

// Deletes `key`; with two children the node is replaced by its successor or predecessor
// (alternating at random keeps the tree from leaning).
void erase(uint64_t key, bool succ) {
  Node** at = &g_root;
  while (*at && (*at)->key != key) at = key < (*at)->key ? &(*at)->l : &(*at)->r;
  Node* z = *at;
  if (!z) wl::fail("key %llx missing from the tree", (unsigned long long)key);
  if (!wl::check(z->payload, z->plen, z->key)) wl::fail("node %llx: payload changed", (unsigned long long)key);
  if (!z->l) {
    *at = z->r;
  } else if (!z->r) {
    *at = z->l;
  } else if (succ) {
    Node** yp = &z->r;
    while ((*yp)->l) yp = &(*yp)->l;
    Node* y = *yp;
    *yp = y->r;
    y->l = z->l;
    y->r = z->r;
    *at = y;
  } else {
    Node** yp = &z->l;
    while ((*yp)->r) yp = &(*yp)->r;
    Node* y = *yp;
    *yp = y->l;
    y->l = z->l;
    y->r = z->r;
    *at = y;
  }
  g_count--;
  g_sum -= node_sum(z->key, z->plen);
  free(z);
}

void verify(const char* phase) {
  std::vector<Node*> stack;
  long n = 0;
  uint64_t sum = 0, last = 0;
  Node* cur = g_root;
  while (cur || !stack.empty()) {
    while (cur) {
      stack.push_back(cur);
      cur = cur->l;
    }
    cur = stack.back();
    stack.pop_back();
    if (n > 0 && cur->key <= last) wl::fail("%s: keys out of order", phase);
    if (!wl::check(cur->payload, cur->plen, cur->key)) wl::fail("%s: payload of node %llx changed", phase, (unsigned long long)cur->key);
    last = cur->key;
    sum += node_sum(cur->key, cur->plen);
    n++;
    cur = cur->r;
  }
  if (n != g_count) wl::fail("%s: %ld nodes in the tree, %ld expected", phase, n, g_count);
  if (sum != g_sum) wl::fail("%s: payload checksum mismatch", phase);
}
}  // namespace

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const long nodes = a.num("nodes", 500000, 20000);
  const long after = a.num("after", 500000, 20000);
  const long keep_pct = a.num("keep_pct", 10, 10);
  a.done("frag [--nodes 500000] [--after 500000] [--keep_pct 10] [--smoke]");
  if (nodes < 10 || after < 0 || keep_pct < 1 || keep_pct > 100 || nodes * keep_pct < 100) wl::usage_error("bad parameters");

  wl::Rng rng(31337);
  std::vector<uint64_t> keys(static_cast<size_t>(nodes));
  double t0 = wl::now();
  for (long i = 0; i < nodes; i++) {
    keys[static_cast<size_t>(i)] = wl::mix(static_cast<uint64_t>(i) + 1);  // distinct: mix is a bijection
    insert(keys[static_cast<size_t>(i)], static_cast<uint32_t>(rng.range(16, 240)));
  }
  verify("built");
  long rss_built = wl::rss_kib();

  // Free all but keep_pct% at random.
  for (size_t i = keys.size(); i > 1; i--) std::swap(keys[i - 1], keys[rng.below(i)]);
  size_t keep = keys.size() * static_cast<size_t>(keep_pct) / 100;
  for (size_t i = keep; i < keys.size(); i++) erase(keys[i], rng.below(2));
  keys.resize(keep);
  verify("freed");
  long rss_freed = wl::rss_kib();

  // Keep going at the smaller size, with bigger objects.
  uint64_t next = static_cast<uint64_t>(nodes) + 1;
  for (long i = 0; i < after; i++) {
    uint64_t k = wl::mix(next++ + 1);
    insert(k, static_cast<uint32_t>(rng.range(64, 512)));
    size_t victim = rng.below(keys.size());
    erase(keys[victim], rng.below(2));
    keys[victim] = k;
  }
  verify("after");
  double t1 = wl::now();
  long rss_after = wl::rss_kib();

  printf("rss_built_kib=%ld\nrss_freed_kib=%ld\nrss_after_kib=%ld\n", rss_built, rss_freed, rss_after);
  for (uint64_t k : keys) erase(k, true);
  if (g_count != 0 || g_root) wl::fail("tree not empty at the end");
  wl::report(t1 - t0);
  return 0;
}
