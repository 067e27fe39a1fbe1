// One BullMQ worker process for bench.js (started by it with child_process.fork; not run by hand).
// Its settings come in BENCH_WORKER (JSON): { valkey, queue, concurrency, workMs, track,
// lockDuration, stalledInterval, id }.
//
// The processor returns "ok" at once, or after workMs (fault modes, so that jobs are in flight
// when a worker is killed). With track on, it tells the parent over IPC:
//   {t:"s", seq, w}             the processor started job seq (sent, and its send awaited, before
//                               the processor does anything else, so a kill cannot hide it)
//   {t:"d", seq, w}             the processor finished job seq (before BullMQ records it)
//   {t:"c", seq, ts, fin}       BullMQ recorded the completion (moveToFinished succeeded):
//                               ts = job.timestamp (add time), fin = job.finishedOn
//   {t:"f", seq, reason}        BullMQ failed the job
// Always: {t:"ready"} once connected, {t:"bye", errors, failed} when closed by the parent.
const { Worker } = require("bullmq");

const cfg = JSON.parse(process.env.BENCH_WORKER);
const url = new URL(cfg.valkey);
const connection = {
  host: url.hostname,
  port: Number(url.port || 6379),
  // Required by BullMQ for a worker's blocking connection; commands wait for a reconnect
  // instead of failing after 20 retries.
  maxRetriesPerRequest: null,
};

function send(msg) {
  return new Promise((resolve) => {
    if (!process.connected) return resolve();
    process.send(msg, () => resolve());
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let processor;
if (cfg.track) {
  processor = async (job) => {
    const seq = job.data.seq;
    await send({ t: "s", seq, w: cfg.id });
    if (cfg.workMs > 0) await sleep(cfg.workMs);
    await send({ t: "d", seq, w: cfg.id });
    return "ok";
  };
} else if (cfg.workMs > 0) {
  processor = async () => {
    await sleep(cfg.workMs);
    return "ok";
  };
} else {
  processor = async () => "ok";
}

const errors = {};
let failed = 0;

const worker = new Worker(cfg.queue, processor, {
  connection,
  concurrency: cfg.concurrency,
  lockDuration: cfg.lockDuration,
  stalledInterval: cfg.stalledInterval,
  maxStalledCount: 1,
  autorun: false,
});

worker.on("error", (err) => {
  // Job ids and ports folded, so that one kind of error is one entry.
  const key = String((err && err.message) || err).slice(0, 120).replace(/\d+/g, "N");
  errors[key] = (errors[key] || 0) + 1;
});
worker.on("failed", (job, err) => {
  failed += 1;
  if (cfg.track && job) {
    send({ t: "f", seq: job.data.seq, reason: String((err && err.message) || err).slice(0, 120) });
  }
});
if (cfg.track) {
  worker.on("completed", (job) => {
    send({ t: "c", seq: job.data.seq, ts: job.timestamp, fin: job.finishedOn });
  });
}

process.on("message", async (msg) => {
  if (msg && msg.t === "close") {
    try {
      await Promise.race([worker.close(), sleep(5000)]);
    } catch (_) {
      // closing is best effort
    }
    await send({ t: "bye", w: cfg.id, errors, failed });
    process.exit(0);
  }
});
process.on("disconnect", () => process.exit(0));

(async () => {
  await worker.waitUntilReady();
  worker.run().catch((err) => {
    const key = "run: " + String((err && err.message) || err).slice(0, 120);
    errors[key] = (errors[key] || 0) + 1;
  });
  await send({ t: "ready", w: cfg.id });
})().catch((err) => {
  console.error(`worker ${cfg.id}:`, err);
  process.exit(1);
});
