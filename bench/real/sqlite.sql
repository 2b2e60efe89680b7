-- bench/real-programs.sh: sqlite3 in memory with a 200 MB page cache. 600,000 rows of random
-- text (16-63 bytes, hex) inserted, indexed, scanned through the index and grouped. Its page
-- cache allocates 4 KiB pages plus a header (4104 bytes) one by one.
PRAGMA cache_size=-200000;
CREATE TABLE t(a INTEGER, b TEXT, c REAL);
WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 600000)
  INSERT INTO t SELECT i, hex(randomblob(16 + i % 48)), i * 0.5 FROM r;
CREATE INDEX tb ON t(b);
SELECT count(*), sum(length(b)) FROM t WHERE b > '8';
SELECT a % 1000, count(*), max(b) FROM t GROUP BY a % 1000 ORDER BY 2 DESC LIMIT 3;
