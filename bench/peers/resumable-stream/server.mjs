// The bench's peer: Vercel's `resumable-stream` (2.x) on Redis, serving the
// same workload as our demo model, so `chatctl bench --only peer` can
// measure both systems side by side in one run. Plain Node http, no Next.js.
//
//   POST /chat/:id   body {"tokens": [...], "tokens_per_sec": 50, "first_token_ms": 150}
//     Starts stream :id with resumableStream() and streams it back as
//     server-sent events. The tokens are the demo model's (the bench sends
//     them: same words, same sizes); they are paced like the demo model
//     (token i due at start + first_token_ms + i / tokens_per_sec; 0 = no
//     delay at all). Each token is one event:
//       data: {"i":0,"t":<µs since the epoch when produced>,"x":"word "}\n\n
//     and the answer ends with  data: {"done":<tokens>}\n\n
//   GET /chat/:id?skip=N
//     Resumes stream :id after its first N characters (UTF-16 units, the
//     library's `skipCharacters`) with resumeExistingStream(). Once the
//     stream is done, the library returns null ("save the output to a
//     database"): as an app does in onFinish, the whole answer is SET in
//     Redis before the stream ends, and served from there.
//   GET /health
//
// Environment: REDIS_URL (required), PEER_PROCESSES (node processes behind
// one port, node:cluster; default 1), PORT (default 0: any free port).
// Ready line on stdout: "peer listening on 127.0.0.1:PORT".

import cluster from "node:cluster";
import http from "node:http";
import { once } from "node:events";
import { createClient } from "redis";
import { createResumableStreamContext } from "resumable-stream/redis";

const redisUrl = process.env.REDIS_URL;
if (!redisUrl) {
  console.error("REDIS_URL is required");
  process.exit(2);
}
const processes = Math.max(1, Number(process.env.PEER_PROCESSES || 1));
const ANSWER_TTL_SECS = 24 * 60 * 60;

if (cluster.isPrimary && processes > 1) {
  let listening = 0;
  for (let i = 0; i < processes; i++) cluster.fork();
  cluster.on("listening", (_worker, address) => {
    listening += 1;
    if (listening === processes) {
      console.log(`peer listening on 127.0.0.1:${address.port}`);
    }
  });
  cluster.on("exit", (worker, code) => {
    console.error(`peer process ${worker.process.pid} exited (${code})`);
    process.exit(1);
  });
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
      for (const w of Object.values(cluster.workers)) w.process.kill("SIGKILL");
      process.exit(0);
    });
  }
} else {
  await serve();
}

async function serve() {
  const publisher = createClient({ url: redisUrl });
  const subscriber = createClient({ url: redisUrl });
  for (const c of [publisher, subscriber]) {
    c.on("error", (e) => console.error("redis:", e.message));
  }
  await Promise.all([publisher.connect(), subscriber.connect()]);
  // A long-running server: no waitUntil needed (the docs' "pass in null").
  const ctx = createResumableStreamContext({ waitUntil: null, publisher, subscriber });
  const answerKey = (id) => `bench:answer:${id}`;

  /** Microseconds since the Unix epoch, the clock the bench reads too. */
  const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** The demo model's pacing over the given tokens, as SSE events. */
  function makeStream(id, tokens, tokensPerSec, firstTokenMs) {
    const paced = tokensPerSec > 0;
    const start = performance.now() + (paced ? firstTokenMs : 0);
    const sent = [];
    let i = 0;
    return new ReadableStream({
      async pull(controller) {
        if (i < tokens.length) {
          if (paced) {
            const wait = start + (i * 1000) / tokensPerSec - performance.now();
            if (wait > 0) await sleep(wait);
          }
          const event = `data: ${JSON.stringify({ i, t: nowUs(), x: tokens[i] })}\n\n`;
          i += 1;
          sent.push(event);
          controller.enqueue(event);
          return;
        }
        const done = `data: ${JSON.stringify({ done: tokens.length })}\n\n`;
        sent.push(done);
        // Stored before the library marks the stream done, so a resume
        // that finds it done finds the answer.
        await publisher.set(answerKey(id), sent.join(""), { EX: ANSWER_TTL_SECS });
        controller.enqueue(done);
        controller.close();
      },
    });
  }

  async function pipe(stream, res) {
    const reader = stream.getReader();
    let closed = false;
    res.on("close", () => {
      closed = true;
      reader.cancel().catch(() => {});
    });
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    // Headers now, not with the first token: a client learns at once that
    // its stream is on (an idle stream's first token may be far away).
    res.flushHeaders();
    for (;;) {
      const { done, value } = await reader.read();
      if (done || closed) break;
      if (!res.write(value)) {
        await Promise.race([once(res, "drain"), once(res, "close")]);
      }
    }
    res.end();
  }

  async function readBody(req) {
    const parts = [];
    for await (const part of req) parts.push(part);
    return JSON.parse(Buffer.concat(parts).toString("utf8"));
  }

  async function handle(req, res) {
    const url = new URL(req.url, "http://peer");
    if (url.pathname === "/health") {
      res.end("ok");
      return;
    }
    const match = /^\/chat\/([A-Za-z0-9_.-]+)$/.exec(url.pathname);
    if (!match) {
      res.writeHead(404).end();
      return;
    }
    const id = match[1];
    if (req.method === "POST") {
      const body = await readBody(req);
      const tokens = Array.isArray(body.tokens) ? body.tokens.map(String) : [];
      const stream = await ctx.resumableStream(id, () =>
        makeStream(id, tokens, Number(body.tokens_per_sec) || 0, Number(body.first_token_ms) || 0),
      );
      if (!stream) {
        res.writeHead(409).end("stream already done");
        return;
      }
      await pipe(stream, res);
    } else if (req.method === "GET") {
      const skip = Math.max(0, Number(url.searchParams.get("skip")) || 0);
      const stream = await ctx.resumeExistingStream(id, skip);
      if (stream === undefined) {
        res.writeHead(404).end("no such stream");
      } else if (stream === null) {
        const answer = await publisher.get(answerKey(id));
        if (answer === null) {
          res.writeHead(410).end("done, answer not stored");
          return;
        }
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.end(answer.slice(skip));
      } else {
        await pipe(stream, res);
      }
    } else {
      res.writeHead(405).end();
    }
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e) => {
      console.error("request failed:", e);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
    if (!cluster.isWorker) {
      console.log(`peer listening on 127.0.0.1:${server.address().port}`);
    }
  });
}
