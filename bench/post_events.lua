-- wrk script: POST pre-signed Customer.io webhooks, each one once, from a file of
-- "<timestamp>\t<signature>\t<body>" lines (one file per wrk thread).
local requests = {}
local index = 0
local count = 0

function setup(thread)
  thread:set("id", count)
  count = count + 1
end

function init(args)
  local path = args[1] .. "." .. id
  for line in io.lines(path) do
    local stamp, signature, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", "/webhooks/customerio", {
      ["Content-Type"] = "application/json",
      ["X-CIO-Timestamp"] = stamp,
      ["X-CIO-Signature"] = signature,
    }, body)
  end
end

function request()
  index = index + 1
  if index > #requests then
    index = 1  -- out of distinct events: repeats are counted as duplicates by the relay
  end
  return requests[index]
end

function done(summary, latency, requests_)
  io.write(string.format(
    "JSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"errors\": %d, \"non2xx\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, summary.errors.status))
end
