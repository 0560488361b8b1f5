-- Prints wrk's totals and latency percentiles as one JSON line, so the
-- harness never scrapes wrk's human-readable text. Latencies are in us.
-- "curve" holds [percentile, us] pairs for the HDR-style plot.
local CURVE = {0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 96, 97, 98,
               99, 99.25, 99.5, 99.75, 99.9, 99.95, 99.99, 99.999}

done = function(summary, latency, requests)
  local e = summary.errors
  local points = {}
  for i, p in ipairs(CURVE) do
    points[i] = string.format("[%g,%d]", p, latency:percentile(p))
  end
  points[#points + 1] = string.format("[100,%d]", latency.max)
  io.write(string.format(
    'BENCH-JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p99_9":%d,"max":%d,"mean":%.1f},' ..
    '"curve":[%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, table.concat(points, ",")))
end
