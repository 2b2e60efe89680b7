# Deterministic CPython workload for python_test.sh: dicts, strings, json round trips, a few
# threads, sorting. Prints a few summary lines and a digest; the output must be identical with
# glibc's malloc and under libnebulamem.
import collections
import hashlib
import json
import random
import sys
import threading

rnd = random.Random(20240611)
digest = hashlib.sha256()


def feed(*values):
    for v in values:
        digest.update(repr(v).encode())


# dicts: grow, delete half, regrow, iterate in sorted order
d = {}
for i in range(200000):
    d["key%07d" % i] = i * i
for i in range(0, 200000, 2):
    del d["key%07d" % i]
for i in range(100000):
    d[(i, str(i))] = [i] * (i % 7)
feed(len(d), sum(v for k, v in d.items() if isinstance(k, str)))
counter = collections.Counter(rnd.choice("abcdefghij") for _ in range(100000))
feed(sorted(counter.items()))

# strings: build, split, join, replace, format, encode/decode
words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(1, 12)))
         for _ in range(50000)]
text = " ".join(words)
feed(len(text), text.count("ab"), text.upper()[:1000], text.replace("a", "AA")[-1000:])
parts = text.split("e")
feed(len(parts), max(len(p) for p in parts))
feed("|".join(sorted(set(words)))[:5000].encode("utf-16").hex()[:2000])
s = ""
for i in range(20000):
    s += "%d:%s;" % (i, words[i % len(words)])
feed(hashlib.md5(s.encode()).hexdigest())

# json round trips
records = [{"id": i,
            "name": words[i % len(words)] * (1 + i % 5),
            "vals": [rnd.random() for _ in range(5)],
            "nested": {"a": [1, 2, {"b": None, "c": True}], "s": "x" * (i % 100)}}
           for i in range(20000)]
blob = json.dumps(records, sort_keys=True)
back = json.loads(blob)
assert back == records, "json round trip mismatch"
blob2 = json.dumps(back, sort_keys=True, indent=1)
assert json.loads(blob2) == records
feed(len(blob), hashlib.sha256(blob.encode()).hexdigest())

# threads: each with its own generator, results collected by index
results = [None] * 4


def work(idx):
    r = random.Random(idx)
    data = [r.randint(0, 10 ** 9) for _ in range(60000)]
    data.sort()
    m = {}
    for x in data[:20000]:
        m.setdefault(x % 1000, []).append(str(x))
    results[idx] = (data[0], data[-1], sum(data) % 1000003, len(m),
                    hashlib.sha1(",".join(m[min(m)]).encode()).hexdigest())


threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
feed(results)

# sorting: tuples, keys, stability
rows = [(rnd.randint(0, 1000), rnd.random(), words[i % len(words)]) for i in range(200000)]
rows.sort()
feed(rows[0], rows[-1], rows[100000])
rows.sort(key=lambda r: (r[2], -r[0]))
feed(rows[0], rows[-1], rows[12345])

print("dict entries:", len(d))
print("words:", len(words), "text length:", len(text))
print("json bytes:", len(blob))
print("thread results:", results)
print("digest:", digest.hexdigest())
sys.stdout.flush()
