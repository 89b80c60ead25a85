-- The request every load script sends with wrk: a short chat completion the mock upstream
-- answers at once ("Paris is the capital of France.").
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-mock-script"] = "fast"
wrk.body = '{"model":"m","max_tokens":32,"messages":[{"role":"user","content":"What is the capital of France?"}]}'
