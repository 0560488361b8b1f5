-- Paced requests: before each request a connection waits a delay (wrk's
-- delay() hook, in ms; wrk starts the latency clock only when the request is
-- written, so the wait is never counted as latency).
-- ${mean_ms} ms: the mean wait per connection.
-- ${poisson}: 1 draws the waits from an exponential distribution (Poisson
-- arrivals per connection, so connections do not march in step), 0 waits the
-- mean every time (one connection at a steady rate).
local MEAN_MS, POISSON = ${mean_ms}, ${poisson}
math.randomseed(os.time())

delay = function()
  if POISSON == 1 then
    return math.floor(-math.log(1 - math.random()) * MEAN_MS + 0.5)
  end
  return MEAN_MS
end

