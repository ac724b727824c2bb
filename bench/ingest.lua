-- wrk script for bench/ingest.py: one status report per request, every smsMsgId unique.
--
--   INGEST_RESULT_FILE=F wrk -t T -c C -s bench/ingest.lua URL -- PATH MODE PREFIX [ACCOUNT]
--
-- MODE is "keep" (keep-alive) or "close" (a `Connection: close` header: a new connection, and a
-- new TLS handshake, per request). The ids are PREFIX-<thread>_<n>, n = 1, 2, ... per thread.
--
-- Exact zero-loss accounting needs to know WHICH ids got a 2xx, not just how many. wrk's
-- response() does not say which request it answers, so each request carries its id in
-- `X-Request-Id` too, and a server that is checked (ACCOUNT "ids": the receiver, and the naive
-- handler) answers with it, as the receiver does for any request id it is given. A thread keeps
-- the numbers it has sent and not yet seen answered; an answer other than 2xx puts its number on
-- the thread's list of unacknowledged ones, and so does every number still unanswered when wrk
-- stops (in flight, or lost with a broken connection). Every other number up to the thread's
-- counter was acknowledged. An answer that names none of the thread's outstanding requests is
-- written as "stray", and ingest.py stops: the server does not answer with the id. done()
-- writes this per thread to $INGEST_RESULT_FILE, with wrk's own summary and latency
-- percentiles. ACCOUNT "count" (the plain handler, which stores nothing) only counts the 2xx.

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
   track = args[4] ~= "count"
   headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
   if close then
      headers["Connection"] = "close"
   end
   counter = 0
   acked = 0
   unacked = {}
   outstanding = {}
   untracked = 0
   stray = 0
end

function request()
   counter = counter + 1
   local id = prefix .. counter
   if track then
      outstanding[counter] = true
   end
   headers["X-Request-Id"] = id
   -- An official sample (docs/protocol.md, Official samples) with our own id.
   local body = "sequence=1&total=1&orgCode=000&updateTime=2018-04-13T06%3A31%3A46Z&source=2&smsMsgId="
      .. id .. "&status=DELIVRD"
   return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
   local ok = status >= 200 and status < 300
   if not track then
      if ok then
         acked = acked + 1
      else
         untracked = untracked + 1
      end
      return
   end
   local id = headers["x-request-id"]
   if not id then
      for name, value in pairs(headers) do
         if string.lower(name) == "x-request-id" then
            id = value
         end
      end
   end
   local n = id and string.sub(id, 1, #prefix) == prefix and tonumber(string.sub(id, #prefix + 1))
   if not n or not outstanding[n] then
      -- Not one of this thread's requests (a server that does not answer with the id): its own
      -- request stays unacknowledged, and ingest.py stops the run, as the accounting is broken.
      stray = stray + 1
      return
   end
   outstanding[n] = nil
   if ok then
      acked = acked + 1
   else
      unacked[#unacked + 1] = n
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
      local n, ok = t:get("counter"), t:get("acked")
      if t:get("track") then
         local parts = {}
         for _, v in ipairs(t:get("unacked")) do parts[#parts + 1] = v end
         for v, _ in pairs(t:get("outstanding")) do parts[#parts + 1] = v end
         table.sort(parts)
         for i, v in ipairs(parts) do parts[i] = tostring(v) end
         out:write(string.format("thread %s %d %d %s\n", t:get("prefix"), n, ok, table.concat(parts, ",")))
         if t:get("stray") > 0 then
            out:write(string.format("stray %s %d\n", t:get("prefix"), t:get("stray")))
         end
      else
         out:write(string.format("counted %s %d %d\n", t:get("prefix"), n, ok))
      end
   end
   out:close()
end
