#!/bin/bash
# sqlite3 under the library: 100k rows inserted in one transaction (100k INSERT statements),
# an index, aggregate and join queries, integrity check, on a database file. Output identical to
# the glibc run.
source "$(dirname "$0")/common.sh"
need sqlite3 awk

awk 'BEGIN {
  print "PRAGMA journal_mode=WAL;"
  print "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, name TEXT NOT NULL, v REAL, blob BLOB);"
  print "BEGIN;"
  x = 12345
  for (i = 1; i <= 100000; i++) {
    x = (x * 1103515245 + 12345) % 2147483648
    k = x % 50000
    name = sprintf("n%05d-%s", x % 99991, substr("abcdefghijklmnopqrstuvwxyz", 1 + x % 26, 1 + i % 9))
    v = (x % 1000000) / 1000000.0
    printf "INSERT INTO t VALUES(%d,%d,'"'"'%s'"'"',%.6f,zeroblob(%d));\n", i, k, name, v, i % 200
  }
  print "COMMIT;"
}' >"$work/load.sql"

cat >"$work/query.sql" <<'SQL'
CREATE INDEX t_k ON t(k);
CREATE INDEX t_name ON t(name, v);
SELECT count(*), sum(k), printf('%.4f', total(v)), sum(length(blob)) FROM t;
SELECT k % 10 AS bucket, count(*), printf('%.6f', avg(v)), max(name), min(name) FROM t GROUP BY bucket ORDER BY bucket;
SELECT id, k, name FROM t WHERE k BETWEEN 1000 AND 1040 ORDER BY name, id LIMIT 25;
SELECT count(*) FROM t AS a JOIN t AS b ON a.k = b.id WHERE a.v > 0.5;
SELECT substr(name, 1, 2) AS p, count(DISTINCT k) FROM t GROUP BY p ORDER BY 2 DESC, p LIMIT 10;
SELECT group_concat(name, ',') FROM (SELECT name FROM t ORDER BY v DESC, id LIMIT 40);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
  SELECT count(*), sum(x) FROM c LEFT JOIN t ON t.id = c.x * 5;
DELETE FROM t WHERE k % 7 = 0;
UPDATE t SET name = name || '-upd' WHERE k % 11 = 0;
VACUUM;
SELECT count(*), sum(k) FROM t;
PRAGMA integrity_check;
SQL

run_sqlite() { # run_sqlite RUNNER DB
  $1 sqlite3 -batch -bail "$2" <"$work/load.sql" >/dev/null
  $1 sqlite3 -batch -bail "$2" <"$work/query.sql"
}

assert_active sqlite3 :memory: 'SELECT 1;'
run_sqlite plain "$work/plain.db" >"$work/plain.out"
run_sqlite preloaded "$work/pre.db" >"$work/pre.out"
same_output "sqlite3 queries" "$work/plain.out" "$work/pre.out"
[ "$(tail -1 "$work/pre.out")" = "ok" ] || fail "integrity_check: $(tail -1 "$work/pre.out")"
grep -q '^100000|' "$work/pre.out" || fail "row count is not 100000: $(head -1 "$work/pre.out")"
ok "sqlite $(sqlite3 --version | cut -d' ' -f1): $(head -1 "$work/pre.out")"
