# bench/real/grow.py: arrays that grow by appending, interleaved (bench/real-programs.sh).
# CPython grows a list's item array and a bytearray's buffer with realloc, by about 1/8 each
# time: three that grow together to 48 MB each keep getting in each other's way, so the
# allocator must move them, by copying or by remapping their pages.
a, b, c = [], [], bytearray()
for i in range(6_000_000):
    a.append(i)
    b.append(None)
    c += b"xxxxxxxx"
assert len(a) == len(b) == 6_000_000 and len(c) == 48_000_000
