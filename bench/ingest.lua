-- wrk script for bench/ingest.py: one status report per request, every smsMsgId unique.
--
--   INGEST_RESULT_FILE=F wrk -t N -c N -s bench/ingest.lua URL -- PATH MODE PREFIX
--
-- MODE is "keep" (keep-alive) or "close" (a `Connection: close` header: a new connection, and a
-- new TLS handshake, per request). The ids are PREFIX-<thread>_<n>, n = 1, 2, ... per thread.
--
-- Exact zero-loss accounting needs to know WHICH ids got a 2xx, not just how many. wrk's
-- response() does not say which request it answers, so ingest.py runs one connection per thread
-- (-c equal to -t): a thread then has at most one request outstanding, and every response
-- answers the thread's latest request. Each thread keeps the numbers of its requests that got
-- no 2xx (an error status, a broken connection, or still in flight when wrk stopped); every
-- other number up to its counter was acknowledged. done() writes this per thread to
-- $INGEST_RESULT_FILE, with wrk's own summary and latency percentiles.

local threads = {}
local next_tid = 0

function setup(thread)
   next_tid = next_tid + 1
   thread:set("tid", next_tid)
   table.insert(threads, thread)
end

function init(args)
   path = args[1]
   local close = args[2] == "close"
   prefix = args[3] .. "-" .. tid .. "_"
   headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
   if close then
      headers["Connection"] = "close"
   end
   counter = 0
   acked = 0
   unacked = {}
   pending = nil
end

function request()
   if pending then
      unacked[#unacked + 1] = pending
   end
   counter = counter + 1
   pending = counter
   -- An official sample (docs/protocol.md, Official samples) with our own id.
   local body = "sequence=1&total=1&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2&smsMsgId="
      .. prefix .. counter .. "&status=DELIVRD"
   return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
   if pending then
      if status >= 200 and status < 300 then
         acked = acked + 1
      else
         unacked[#unacked + 1] = pending
      end
      pending = nil
   end
end

function done(summary, latency, requests)
   local out = assert(io.open(os.getenv("INGEST_RESULT_FILE"), "w"))
   local e = summary.errors
   out:write(string.format(
      "summary %d %d %d %d %d %d %d\n",
      summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout))
   out:write(string.format(
      "latency %d %d %d %d %.1f %d\n",
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.mean, latency.max))
   for _, t in ipairs(threads) do
      local tid, n, ok = t:get("tid"), t:get("counter"), t:get("acked")
      local missing = t:get("unacked")
      local p = t:get("pending")
      local parts = {}
      for _, v in ipairs(missing) do parts[#parts + 1] = tostring(v) end
      if p then parts[#parts + 1] = tostring(p) end
      out:write(string.format("thread %s %d %d %s\n", t:get("prefix"), n, ok, table.concat(parts, ",")))
   end
   out:close()
end
