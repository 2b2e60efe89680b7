-- bench/real/tables.lua: tables and strings made, thinned and replaced (bench/real-programs.sh).
-- Lua's allocator calls realloc for every allocation, growth and shrink (free for a size of 0):
-- this script makes 400,000 records with strings up to 300 bytes, indexes half of them, joins
-- 200,000 strings, drops a third and collects, then replaces 300,000 small tables in a map.
local t = {}
for i = 1, 400000 do
  t[i] = { id = i, name = "item" .. i, vals = { i, i * 2, i * 3 }, s = string.rep("x", i % 300) }
end
local m = {}
for i = 1, #t, 2 do m[t[i].name] = t[i] end
local parts = {}
for i = 1, 200000 do parts[#parts + 1] = tostring(i) .. ":" .. (t[i].s or "") end
local big = table.concat(parts, ",")
for i = 1, #t, 3 do t[i] = nil end
collectgarbage()
local cnt = 0
for _, v in pairs(m) do cnt = cnt + #v.s end
for i = 1, 300000 do m["k" .. (i % 5000)] = { i, tostring(i) } end
assert(#big == 31379094 and cnt == 29995000, "unexpected result")
print(#big, cnt)
