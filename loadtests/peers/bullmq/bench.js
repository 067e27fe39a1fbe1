#!/usr/bin/env node
// BullMQ work-queue benchmark: the peer agentwire's task queue is compared against, on the
// same Valkey. Enqueues --tasks jobs while --workers forked worker processes (worker.js, each a
// BullMQ Worker with --concurrency) complete them, and prints one JSON line on stdout (progress
// goes to stderr). See README.md for the fields and the BullMQ settings.
//
//   node bench.js --valkey redis://127.0.0.1:PORT [--tasks 10000] [--payload 256] [--workers 4]
//                 [--concurrency 50] [--batch 1] [--inflight 1] [--queue bench]
//                 [--fault kill-worker|valkey-restart] [--restart-cmd "<shell command>"]
//                 [--work-ms N] [--track on|off] [--lock-ms 5000] [--stalled-ms 2000]
//                 [--idle-timeout 20] [--timeout 110]
const path = require("path");
const { fork, exec } = require("child_process");
const { Queue } = require("bullmq");

// ---------------------------------------------------------------------------------------------
// Arguments

const DEFAULTS = {
  valkey: "redis://127.0.0.1:6379",
  tasks: 10000,
  payload: 256,
  workers: 4,
  concurrency: 50,
  batch: 1,
  inflight: 1,
  queue: "bench",
  fault: "",
  "restart-cmd": "",
  "work-ms": null, // 0 in throughput mode, 50 in fault modes
  track: null, // off in throughput mode, on in fault modes
  "lock-ms": 5000,
  "stalled-ms": 2000,
  "idle-timeout": 20,
  timeout: 110,
};

function parseArgs(argv) {
  const out = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) throw new Error(`unexpected argument ${arg}`);
    let key = arg.slice(2);
    let value;
    const eq = key.indexOf("=");
    if (eq >= 0) {
      value = key.slice(eq + 1);
      key = key.slice(0, eq);
    } else {
      value = argv[++i];
    }
    if (!(key in DEFAULTS)) throw new Error(`unknown option --${key}`);
    if (value === undefined) throw new Error(`--${key} needs a value`);
    out[key] = value;
  }
  const num = (k) => {
    const n = Number(out[k]);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${k} must be a number, got ${out[k]}`);
    return n;
  };
  const fault = out.fault;
  if (fault && fault !== "kill-worker" && fault !== "valkey-restart") {
    throw new Error(`--fault must be kill-worker or valkey-restart, got ${fault}`);
  }
  if (fault === "valkey-restart" && !out["restart-cmd"]) {
    throw new Error("--fault valkey-restart needs --restart-cmd (a shell command that restarts Valkey empty)");
  }
  const track = out.track === null ? Boolean(fault) : out.track === "on" || out.track === "true";
  const cfg = {
    valkey: out.valkey,
    tasks: Math.floor(num("tasks")),
    payload: Math.floor(num("payload")),
    workers: Math.max(1, Math.floor(num("workers"))),
    concurrency: Math.max(1, Math.floor(num("concurrency"))),
    batch: Math.max(1, Math.floor(num("batch"))),
    inflight: Math.max(1, Math.floor(num("inflight"))),
    queue: out.queue,
    fault,
    restartCmd: out["restart-cmd"],
    workMs: out["work-ms"] === null ? (fault ? 50 : 0) : num("work-ms"),
    track,
    lockMs: num("lock-ms"),
    stalledMs: num("stalled-ms"),
    idleTimeoutMs: num("idle-timeout") * 1000,
    timeoutMs: num("timeout") * 1000,
  };
  if (fault && !track) throw new Error("fault modes count runs over IPC: leave --track on");
  if (cfg.tasks > 65000 * 1000) throw new Error("--tasks too large");
  return cfg;
}

// ---------------------------------------------------------------------------------------------

const log = (...a) => console.error(`[bullmq ${new Date().toISOString().slice(11, 23)}]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const rank = Math.max(0, Math.ceil(p * sorted.length) - 1);
  return sorted[Math.min(rank, sorted.length - 1)];
}

async function main() {
  const cfg = parseArgs(process.argv.slice(2));
  const N = cfg.tasks;
  const url = new URL(cfg.valkey);
  const connection = { host: url.hostname, port: Number(url.port || 6379) };
  const payload = "x".repeat(cfg.payload);
  const mode = cfg.fault || "throughput";

  const queue = new Queue(cfg.queue, { connection });
  const queueErrors = {};
  queue.on("error", (err) => {
    const key = String((err && err.message) || err).slice(0, 120).replace(/\d+/g, "N");
    queueErrors[key] = (queueErrors[key] || 0) + 1;
  });
  await queue.waitUntilReady();
  await queue.obliterate({ force: true });

  // Per task (seq = 0..N-1): acknowledged by add, processor starts, processor ends, completions
  // BullMQ recorded (the worker's 'completed' event). Only the first two are kept without --track.
  const acked = new Uint8Array(N);
  const started = new Uint16Array(N);
  const done = new Uint16Array(N);
  const recorded = new Uint16Array(N);
  const failedSeq = new Uint8Array(N);
  const latencies = [];
  let ackedCount = 0;
  let addFailed = 0;
  let lastAddError = null;
  let doneUnique = 0;
  let recordedUnique = 0;
  let maxFinish = 0;
  let lastProgress = Date.now();
  const failReasons = {};
  const workerReports = [];

  // ---- workers
  const workerFile = path.join(__dirname, "worker.js");
  const children = new Map(); // id -> { child, inflight:Set }
  let nextWorkerId = 0;
  let faultInfo = null;
  let restartPromise = null;

  function onProgress() {
    lastProgress = Date.now();
    if (faultInfo || doneUnique < N / 2) return;
    if (cfg.fault === "kill-worker") killOne();
    if (cfg.fault === "valkey-restart") restartValkey();
  }

  function spawnWorker() {
    const id = nextWorkerId++;
    const child = fork(workerFile, [], {
      env: {
        ...process.env,
        BENCH_WORKER: JSON.stringify({
          id,
          valkey: cfg.valkey,
          queue: cfg.queue,
          concurrency: cfg.concurrency,
          workMs: cfg.workMs,
          track: cfg.track,
          lockDuration: cfg.lockMs,
          stalledInterval: cfg.stalledMs,
        }),
      },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    const entry = { id, child, inflight: new Set(), ready: null, exited: null };
    entry.ready = new Promise((resolve, reject) => {
      child.on("message", (msg) => {
        switch (msg.t) {
          case "s":
            started[msg.seq] += 1;
            entry.inflight.add(msg.seq);
            break;
          case "d":
            entry.inflight.delete(msg.seq);
            if (done[msg.seq]++ === 0) {
              doneUnique += 1;
              onProgress();
            }
            break;
          case "c":
            if (recorded[msg.seq]++ === 0) {
              recordedUnique += 1;
              latencies.push(msg.fin - msg.ts);
            }
            if (msg.fin > maxFinish) maxFinish = msg.fin;
            break;
          case "f":
            failedSeq[msg.seq] = 1;
            failReasons[msg.reason] = (failReasons[msg.reason] || 0) + 1;
            break;
          case "ready":
            resolve();
            break;
          case "bye":
            workerReports.push(msg);
            break;
          default:
            break;
        }
      });
      child.on("exit", (code, signal) => reject(new Error(`worker ${id} exited (${code ?? signal}) before it was ready`)));
    });
    entry.exited = new Promise((resolve) => child.on("exit", resolve));
    entry.ready.catch(() => {});
    children.set(id, entry);
    return entry;
  }

  function killOne() {
    // The worker with the most jobs in its processor right now.
    let victim = null;
    for (const entry of children.values()) {
      if (!victim || entry.inflight.size > victim.inflight.size) victim = entry;
    }
    faultInfo = {
      at_completed: doneUnique,
      killed_worker: victim.id,
      killed_inflight: victim.inflight.size,
      t_ms: Date.now(),
    };
    victim.child.kill("SIGKILL");
    children.delete(victim.id);
    log(`kill-worker: SIGKILL worker ${victim.id} with ${victim.inflight.size} jobs in its processor, after ${doneUnique} completions`);
    const replacement = spawnWorker();
    replacement.ready.then(() => {
      faultInfo.replacement_ready_ms = Date.now() - faultInfo.t_ms;
      log(`kill-worker: replacement worker ${replacement.id} ready`);
    });
  }

  function restartValkey() {
    faultInfo = { at_completed: doneUnique };
    restartPromise = (async () => {
      // What Valkey holds right now (jobs in "active" are in a worker's hands).
      try {
        faultInfo.counts_before = await queue.getJobCounts("wait", "active", "prioritized", "delayed", "completed");
      } catch (_) {
        // best effort
      }
      faultInfo.acked_at_restart = ackedCount;
      faultInfo.completed_at_restart = doneUnique;
      faultInfo.recorded_at_restart = recordedUnique;
      faultInfo.t_ms = Date.now();
      log(`valkey-restart: running the restart command after ${doneUnique} completions, ${ackedCount} acknowledged adds; before: ${JSON.stringify(faultInfo.counts_before)}`);
      await runRestartCmd();
    })();
  }

  function runRestartCmd() {
    // Asynchronous (not execSync) so that the producer keeps adding through the outage, as a
    // real producer would; the command returns once Valkey answers again.
    return new Promise((resolve) => {
      exec(cfg.restartCmd, { shell: "/bin/bash" }, (err, stdout, stderr) => {
        faultInfo.restart_cmd_ms = Date.now() - faultInfo.t_ms;
        if (err) {
          faultInfo.restart_error = String(stderr || err.message).slice(0, 300);
          log(`valkey-restart: the command failed: ${faultInfo.restart_error}`);
        } else {
          log(`valkey-restart: Valkey back after ${faultInfo.restart_cmd_ms} ms`);
        }
        resolve();
      });
    });
  }

  for (let i = 0; i < cfg.workers; i++) spawnWorker();
  await Promise.all([...children.values()].map((e) => e.ready));
  log(`${mode}: ${cfg.workers} workers x concurrency ${cfg.concurrency} ready; ${N} tasks of ${cfg.payload} B, batch ${cfg.batch}, ${cfg.inflight} add call(s) in flight`);

  // ---- producer (runs while the workers consume)
  const jobOpts = { removeOnComplete: false, removeOnFail: false, attempts: 1 };
  const t0 = Date.now();
  let producerDone = false;
  let tEnqueued = null;
  let next = 0;
  async function lane() {
    while (next < N) {
      const from = next;
      const to = Math.min(N, from + cfg.batch);
      next = to;
      try {
        if (cfg.batch === 1) {
          await queue.add("t", { seq: from, payload }, jobOpts);
        } else {
          const jobs = [];
          for (let seq = from; seq < to; seq++) jobs.push({ name: "t", data: { seq, payload }, opts: jobOpts });
          await queue.addBulk(jobs);
        }
        for (let seq = from; seq < to; seq++) acked[seq] = 1;
        ackedCount += to - from;
      } catch (err) {
        addFailed += to - from;
        lastAddError = String((err && err.message) || err).slice(0, 200);
      }
    }
  }
  const producer = Promise.all(Array.from({ length: cfg.inflight }, lane)).then(() => {
    producerDone = true;
    tEnqueued = Date.now();
    log(`enqueued ${ackedCount} in ${((tEnqueued - t0) / 1000).toFixed(2)} s (${addFailed} adds failed)`);
  });

  // ---- wait for the end
  const client = await queue.client;
  let finishedBy = "all completed";
  let lastCount = -1;
  for (;;) {
    await sleep(cfg.track ? 50 : 10);
    const now = Date.now();
    if (now - t0 > cfg.timeoutMs) {
      finishedBy = `timeout (${cfg.timeoutMs / 1000} s)`;
      break;
    }
    if (!cfg.track) {
      // Throughput mode: BullMQ's own counts, polled (ZCARD) - nothing per job on the hot path.
      let completed;
      let failed;
      try {
        [completed, failed] = await Promise.all([queue.getCompletedCount(), queue.getFailedCount()]);
      } catch (_) {
        continue;
      }
      if (completed !== lastCount) {
        lastCount = completed;
        lastProgress = Date.now();
      }
      if (producerDone && completed + failed >= ackedCount) break;
    } else {
      if (producerDone && doneUnique >= ackedCount && !restartPromise) {
        // Every acknowledged task ran; wait until BullMQ has nothing left active or waiting
        // either (a job whose processor finished on a killed worker but whose completion was
        // never recorded comes back through the stalled checker and runs again).
        let counts;
        try {
          counts = await queue.getJobCounts("active", "wait", "delayed", "prioritized", "paused");
        } catch (_) {
          continue;
        }
        const left = Object.values(counts).reduce((a, b) => a + b, 0);
        if (left === 0) break;
      }
      if (restartPromise && faultInfo.restart_cmd_ms !== undefined) restartPromise = null;
      if (restartPromise) lastProgress = now;
    }
    if (producerDone && now - lastProgress > cfg.idleTimeoutMs) {
      finishedBy = `no completion for ${cfg.idleTimeoutMs / 1000} s`;
      break;
    }
  }
  await producer;
  log(`stopped: ${finishedBy}`);

  // ---- figures
  let completed;
  let startedTwice = 0;
  let completedTwice = null;
  let ranUnrecorded = null;
  let lost;
  let bullmqCompleted;
  let latencyFrom;
  let failedJobs;
  if (!cfg.track) {
    // Read every completed job's hash once, after the run: timestamp (add), finishedOn, ats.
    const ids = await client.zrange(queue.toKey("completed"), 0, -1);
    const pipeline = client.pipeline();
    for (const id of ids) pipeline.hmget(queue.toKey(id), "timestamp", "finishedOn", "ats");
    const rows = ids.length ? await pipeline.exec() : [];
    for (const [err, row] of rows) {
      if (err || !row) continue;
      const ts = Number(row[0]);
      const fin = Number(row[1]);
      latencies.push(fin - ts);
      if (fin > maxFinish) maxFinish = fin;
      if (Number(row[2] || 0) > 1) startedTwice += 1;
    }
    completed = ids.length;
    bullmqCompleted = ids.length;
    failedJobs = await queue.getFailedCount();
    lost = Math.max(0, ackedCount - completed);
    latencyFrom = "job.timestamp -> job.finishedOn (read from the job hashes after the run)";
  } else {
    completed = 0;
    completedTwice = 0;
    ranUnrecorded = 0;
    lost = 0;
    failedJobs = 0;
    for (let seq = 0; seq < N; seq++) {
      if (done[seq] > 0) completed += 1;
      if (done[seq] > 1) completedTwice += 1;
      if (started[seq] > 1) startedTwice += 1;
      if (acked[seq] && done[seq] === 0) lost += 1;
      if (failedSeq[seq]) failedJobs += 1;
      if (done[seq] > 0 && recorded[seq] === 0) ranUnrecorded += 1;
    }
    bullmqCompleted = recordedUnique;
    latencyFrom = "job.timestamp -> job.finishedOn (sent by the worker's 'completed' event)";
  }
  latencies.sort((a, b) => a - b);
  const seconds = maxFinish > 0 ? (maxFinish - t0) / 1000 : null;

  // ---- close the workers
  for (const entry of children.values()) {
    if (entry.child.connected) entry.child.send({ t: "close" });
  }
  await Promise.race([Promise.all([...children.values()].map((e) => e.exited)), sleep(8000)]);
  for (const entry of children.values()) {
    if (entry.child.exitCode === null && entry.child.signalCode === null) entry.child.kill("SIGKILL");
  }
  const workerErrors = {};
  for (const r of workerReports) {
    for (const [k, v] of Object.entries(r.errors || {})) workerErrors[k] = (workerErrors[k] || 0) + v;
  }
  await queue.close();

  const round = (x, d = 1) => (x === null ? null : Math.round(x * 10 ** d) / 10 ** d);
  const result = {
    peer: "bullmq",
    mode,
    tasks: N,
    payload: cfg.payload,
    workers: cfg.workers,
    concurrency: cfg.concurrency,
    batch: cfg.batch,
    inflight: cfg.inflight,
    work_ms: cfg.workMs,
    seconds: round(seconds, 3),
    tasks_per_s: seconds ? round(completed / seconds, 0) : null,
    enqueue_seconds: tEnqueued ? round((tEnqueued - t0) / 1000, 3) : null,
    enqueue_per_s: tEnqueued ? round(ackedCount / ((tEnqueued - t0) / 1000), 0) : null,
    p50_ms: percentile(latencies, 0.5),
    p99_ms: percentile(latencies, 0.99),
    max_ms: latencies.length ? latencies[latencies.length - 1] : null,
    completed,
    ran_twice: completedTwice,
    started_twice: startedTwice,
    completed_twice: completedTwice,
    lost,
    acked: ackedCount,
    add_failed: addFailed,
    bullmq_completed: bullmqCompleted,
    ran_unrecorded: ranUnrecorded,
    bullmq_failed: failedJobs,
    runs_tracked: cfg.track ? "ipc (processor start/end, per job)" : "bullmq attemptsStarted (ats) only",
    latency_from: latencyFrom,
    lock_ms: cfg.lockMs,
    stalled_ms: cfg.stalledMs,
    stopped: finishedBy,
  };
  if (faultInfo) {
    delete faultInfo.t_ms;
    result.fault_info = faultInfo;
  }
  if (lastAddError) result.last_add_error = lastAddError;
  if (Object.keys(failReasons).length) result.fail_reasons = failReasons;
  if (Object.keys(workerErrors).length) result.worker_errors = workerErrors;
  if (Object.keys(queueErrors).length) result.queue_errors = queueErrors;
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
