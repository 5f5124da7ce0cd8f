"""Drives a Tollgate edge with the official Anthropic and OpenAI SDKs.

Reads a JSON plan on stdin:
  {"base_url": "http://127.0.0.1:8080", "key": "tg_…", "parallel": 1,
   "steps": [ {"kind": "anthropic", "stream": false, "model": "…",
               "max_tokens": 64, "content": "…", "headers": {…}}, … ]}
kinds: "anthropic" (messages.create / messages.stream), "openai"
(chat.completions.create, stream or not; "include_usage": true to ask for
the usage chunk), "responses" (responses.create / responses.stream;
"max_output_tokens" optional), "count_tokens", "models", "raw" (urllib: method, path,
headers, body as a string, optional read_bytes to hang up early).

Writes one JSON object per step (in step order) to stdout, as a list:
what the client saw — status, usage as the SDK parsed it, error type and
message. Every call has a timeout; the SDKs' own retries are off, so each
step is exactly one HTTP request.
"""

import concurrent.futures
import json
import sys

import anthropic
import openai
import urllib.error
import urllib.request

TIMEOUT = 60.0


def anthropic_usage(u):
    if u is None:
        return None
    cc = getattr(u, "cache_creation", None)
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens or 0,
        "cache_read_input_tokens": u.cache_read_input_tokens or 0,
        "ephemeral_5m": getattr(cc, "ephemeral_5m_input_tokens", None) if cc else None,
        "ephemeral_1h": getattr(cc, "ephemeral_1h_input_tokens", None) if cc else None,
    }


def openai_usage(u):
    if u is None:
        return None
    cached = 0
    if u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens:
        cached = u.prompt_tokens_details.cached_tokens
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "cached_tokens": cached}


def error_result(e):
    body = getattr(e, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    return {
        "ok": False,
        "status": getattr(e, "status_code", None),
        "error_type": (err or {}).get("type") if isinstance(err, dict) else None,
        "error_code": (err or {}).get("code") if isinstance(err, dict) else None,
        "message": (err or {}).get("message") if isinstance(err, dict) else str(e),
        "exception": type(e).__name__,
    }


def run_anthropic(plan, step):
    client = anthropic.Anthropic(base_url=plan["base_url"], api_key=plan["key"], max_retries=0, timeout=TIMEOUT)
    kw = dict(
        model=step["model"],
        max_tokens=step.get("max_tokens", 64),
        messages=[{"role": "user", "content": step.get("content", "hello")}],
        extra_headers=step.get("headers", {}),
    )
    try:
        if step.get("stream"):
            events = []
            with client.messages.stream(**kw) as s:
                text = "".join(s.text_stream)
                final = s.get_final_message()
            return {"ok": True, "status": 200, "usage": anthropic_usage(final.usage), "text_len": len(text),
                    "id": final.id}
        msg = client.messages.create(**kw)
        text = "".join(b.text for b in msg.content if b.type == "text")
        return {"ok": True, "status": 200, "usage": anthropic_usage(msg.usage), "text_len": len(text), "id": msg.id}
    except anthropic.APIStatusError as e:
        return error_result(e)
    except anthropic.APIError as e:
        # An error event inside a stream after HTTP 200.
        r = error_result(e)
        r["status"] = r["status"] or 200
        return r


def responses_usage(u):
    if u is None:
        return None
    return {
        "input_tokens": u.input_tokens,
        "cached_tokens": u.input_tokens_details.cached_tokens,
        "output_tokens": u.output_tokens,
        "reasoning_tokens": u.output_tokens_details.reasoning_tokens,
    }


def run_responses(plan, step):
    client = openai.OpenAI(base_url=plan["base_url"] + "/v1", api_key=plan["key"], max_retries=0, timeout=TIMEOUT)
    kw = dict(model=step["model"], input=step.get("content", "hello"), extra_headers=step.get("headers", {}))
    if "max_output_tokens" in step:
        kw["max_output_tokens"] = step["max_output_tokens"]
    try:
        if step.get("stream"):
            events, text = [], ""
            with client.responses.stream(**kw) as s:
                for event in s:
                    events.append(event.type)
                    if event.type == "response.output_text.delta":
                        text += event.delta
                final = s.get_final_response()
            return {"ok": True, "status": 200, "usage": responses_usage(final.usage), "id": final.id,
                    "events": events, "text_len": len(text), "response_status": final.status}
        r = client.responses.create(**kw)
        return {"ok": True, "status": 200, "usage": responses_usage(r.usage), "id": r.id,
                "text_len": len(r.output_text), "response_status": r.status}
    except openai.APIStatusError as e:
        return error_result(e)
    except (openai.APIError, RuntimeError) as e:
        # An error event, or a stream that ended without response.completed.
        r = error_result(e)
        r["status"] = r["status"] or 200
        return r


def run_openai(plan, step):
    client = openai.OpenAI(base_url=plan["base_url"] + "/v1", api_key=plan["key"], max_retries=0, timeout=TIMEOUT)
    kw = dict(
        model=step["model"],
        max_tokens=step.get("max_tokens", 64),
        messages=[{"role": "user", "content": step.get("content", "hello")}],
        extra_headers=step.get("headers", {}),
    )
    try:
        if step.get("stream"):
            if step.get("include_usage"):
                kw["stream_options"] = {"include_usage": True}
            usage, chunks, text = None, 0, ""
            usage_chunks = 0
            for chunk in client.chat.completions.create(stream=True, **kw):
                chunks += 1
                if chunk.usage is not None:
                    usage = chunk.usage
                    usage_chunks += 1
                for c in chunk.choices:
                    if c.delta and c.delta.content:
                        text += c.delta.content
            return {"ok": True, "status": 200, "usage": openai_usage(usage), "usage_chunks": usage_chunks,
                    "chunks": chunks, "text_len": len(text)}
        r = client.chat.completions.create(**kw)
        return {"ok": True, "status": 200, "usage": openai_usage(r.usage), "id": r.id,
                "text_len": len(r.choices[0].message.content or "")}
    except openai.APIStatusError as e:
        return error_result(e)
    except openai.APIError as e:
        r = error_result(e)
        r["status"] = r["status"] or 200
        return r


def run_count_tokens(plan, step):
    client = anthropic.Anthropic(base_url=plan["base_url"], api_key=plan["key"], max_retries=0, timeout=TIMEOUT)
    try:
        r = client.messages.count_tokens(model=step["model"], messages=[{"role": "user", "content": step.get("content", "hi")}])
        return {"ok": True, "status": 200, "input_tokens": r.input_tokens}
    except anthropic.APIStatusError as e:
        return error_result(e)


def run_models(plan, step):
    client = anthropic.Anthropic(base_url=plan["base_url"], api_key=plan["key"], max_retries=0, timeout=TIMEOUT)
    try:
        ids = [m.id for m in client.models.list()]
        return {"ok": True, "status": 200, "ids": ids}
    except anthropic.APIStatusError as e:
        return error_result(e)


def run_raw(plan, step):
    body = step.get("body")
    req = urllib.request.Request(plan["base_url"] + step["path"], method=step.get("method", "POST"),
                                 data=body.encode() if isinstance(body, str) else None,
                                 headers=dict(step.get("headers", {})))
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            # "read_bytes": read only that much, then hang up (a client that
            # goes away mid-stream).
            n = step.get("read_bytes")
            status, text = r.status, (r.read(n) if n else r.read()).decode(errors="replace")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return {"ok": False, "status": None, "exception": type(e).__name__, "message": str(e)}
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return {"ok": status == 200, "status": status, "json": parsed, "text": text[:2000]}


KINDS = {"anthropic": run_anthropic, "openai": run_openai, "count_tokens": run_count_tokens,
         "models": run_models, "raw": run_raw, "responses": run_responses}


def main():
    plan = json.load(sys.stdin)
    steps = plan["steps"]
    run = lambda step: KINDS[step["kind"]](plan, step)
    parallel = max(1, int(plan.get("parallel", 1)))
    if parallel == 1:
        results = [run(s) for s in steps]
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            results = list(pool.map(run, steps))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
