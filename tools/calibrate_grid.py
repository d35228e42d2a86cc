#!/usr/bin/env python3
"""Issue 10's calibration grid in one GPU-machine call: build, collect, train, measure.

Run by tools/calibrate-gpu.sh (its header says how to prepare .deps and what
to carry). From the repository root:

    python3 tools/calibrate_grid.py OUTDIR [--preset default|small|dry] [--budget SECONDS] ...

Steps, as concurrent jobs under one clock (every job's start, end and exit
status go to OUTDIR/calibrate.log):

1. build commvq-train and libcommvq.so (CUDA, sm_90) in build-calib/;
2. collect calibration keys and values with tools/collect_kv.py --take, one
   KV file per mix of calib-text and calib-code, and held-out KV files
   (eval-dev essays and standard-library code, --allow-eval, measured on
   only) for commvq-train --eval;
3. "key runs": one commvq-train per (mix, EM step cap) with the largest key
   stage count any candidate needs (21 for 2 bits, 11 for 1 bit), run side
   by side on the GPU; "value runs": commvq-train --stages 1 (keys thrown
   away) for each (mix, bits, value encoder width I, value steps) no key run
   trains; candidates are spliced from the two (tools/codebook_splice.py:
   the keys of the first R stages and the values; bit for bit the file one
   commvq-train command with those options writes, which a check job
   verifies on this device);
4. tools/quality.py on held-out eval-dev text, domains "essays" (the four
   essays, every 2048-byte chunk) and "stdlib" (the middle chunk of each of
   the 63 standard-library files), split into shards (--shard I/N), one
   process and one thread per shard, all cores busy; the exact baseline's
   shards run during the build; candidates are measured shard by shard
   (shard 0 of every candidate before shard 1 of any), so when the time
   runs out every candidate has been measured on the same chunks;
   commvq-train --codebook --eval --calib gives each candidate's per-layer
   key and value error on held-out KV next to the calibration data's;
5. at the deadline everything still running is stopped; OUTDIR gets at most
   8 files: calibrate.log, summary.md (the table, also printed last),
   results.tgz (every log, the quality results per shard, results.json) and
   codebooks-N.tar (the candidate codebooks, at most 15.5 MiB per tar).

The bits per byte lost per domain are summed over shards as bits (bpb x
bytes) against the exact baseline of the same shards.
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
ESSAYS = ("langdes", "laundry", "vcsqueeze", "pow")
TARGETS = {  # issue 10: bits/byte lost, (1 bit, 2 bits)
    "essays": {1: 0.036, 2: 0.018},
    "stdlib": {1: 0.062, 2: 0.021},
}
REFERENCE = "issue 10, mix m32 (32768 + 32768), I = 256, 100 EM steps: stdlib +0.095 / +0.036, essays +0.048 / +0.022"


def stages_for(bits):
    return 11 if bits == 1 else 21


# ---------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------
# data: name -> [calib-text tokens, calib-code tokens] per layer (all trained on).
# key_runs: one commvq-train each; "bits" sets R (11 / 21) and the value
#   codebook it trains along (hidden = I, vsteps = value steps).
# candidates: [bits, data, key EM step cap, I, value steps], in priority order
#   (the order of measurement and of packing).
# checks: ["values", data, bits, I, vsteps] trains that value run even where
#   a key run provides the values, and compares the value tensors;
#   ["full", candidate] trains the candidate in one command and compares
#   fingerprints with the splice.
PRESETS = {
    "default": {
        "data": {"m32": [32768, 32768], "m64": [65536, 65536]},
        "key_runs": [
            # the first mix; R = 21 gives the 2-bit keys and (first 11 stages) the 1-bit keys
            {"data": "m32", "steps": 100, "bits": 2, "hidden": 256, "vsteps": 1000},
            # twice the tokens of each domain (1 bit only: R = 21 on 131072 tokens would not fit the call)
            {"data": "m64", "steps": 100, "bits": 1, "hidden": 256, "vsteps": 1000},
            # the EM step cap halved (1 bit)
            {"data": "m32", "steps": 50, "bits": 1, "hidden": 256, "vsteps": 1000},
        ],
        "candidates": [
            [1, "m32", 100, 256, 1000],   # the mix, as measured there (reference)
            [2, "m32", 100, 256, 1000],
            [1, "m32", 100, 512, 1000],   # encoder width: the method's default for 1 bit
            [2, "m32", 100, 1024, 1000],  # ... and for 2 bits
            [1, "m64", 100, 256, 1000],   # amount: twice the tokens
            [1, "m64", 100, 512, 1000],
            [1, "m32", 50, 256, 1000],    # EM step cap 50
            [2, "m32", 100, 1024, 3000],  # value steps with the wide encoder
            [1, "m64", 100, 512, 3000],
            [2, "m32", 100, 512, 1000],
        ],
        "checks": [["values", "m32", 1, 256, 1000]],
        "heldout_tokens": 8192,
        "shards": 10,
        "windows": [128],
        "essay_chunks_per_file": 0,
        "stdlib_files": 0,  # 0: all 63
    },
    # One key run (2 bits on m32) and the value settings: sure to fit.
    "small": {
        "data": {"m32": [32768, 32768]},
        "key_runs": [{"data": "m32", "steps": 100, "bits": 2, "hidden": 256, "vsteps": 1000}],
        "candidates": [
            [1, "m32", 100, 256, 1000],
            [2, "m32", 100, 256, 1000],
            [1, "m32", 100, 512, 1000],
            [2, "m32", 100, 1024, 1000],
            [1, "m32", 100, 512, 3000],
            [2, "m32", 100, 1024, 3000],
        ],
        "checks": [],
        "heldout_tokens": 8192,
        "shards": 10,
        "windows": [128],
        "essay_chunks_per_file": 0,
        "stdlib_files": 0,
    },
    # Every step at toy size on the CPU (commvq-train --device -1): for a
    # machine without a GPU, to check the script, not to measure.
    "dry": {
        "data": {"m32": [512, 512], "m64": [1024, 1024]},
        "key_runs": [
            {"data": "m32", "steps": 4, "bits": 2, "hidden": 32, "vsteps": 20},
            {"data": "m64", "steps": 4, "bits": 1, "hidden": 32, "vsteps": 20},
            {"data": "m32", "steps": 2, "bits": 1, "hidden": 32, "vsteps": 20},
        ],
        "candidates": [
            [1, "m32", 4, 32, 20],
            [2, "m32", 4, 32, 20],
            [1, "m32", 4, 64, 20],
            [2, "m32", 4, 64, 20],
            [1, "m64", 4, 32, 20],
            [1, "m32", 2, 32, 20],
        ],
        "checks": [["values", "m32", 1, 32, 20], ["full", "1b-m32-s4-i32-v20"], ["full", "2b-m32-s4-i64-v20"]],
        "heldout_tokens": 1024,
        "shards": 2,
        "windows": [128, 0],
        "essay_chunks_per_file": 1,
        "stdlib_files": 4,
    },
}


def cand_name(bits, data, steps, hidden, vsteps):
    return f"{bits}b-{data}-s{steps}-i{hidden}-v{vsteps}"


class Plan:
    """Key runs, value runs, candidates and checks resolved from a preset."""

    def __init__(self, preset):
        self.p = preset
        self.data = preset["data"]
        self.key_runs = {}
        for k in preset["key_runs"]:
            name = f"k-{k['data']}-s{k['steps']}-r{stages_for(k['bits'])}"
            self.key_runs[name] = dict(k, name=name, stages=stages_for(k["bits"]))
        self.value_runs = {}
        # A value run a check asks for also serves the candidates (so they do
        # not wait for a key run that merely trains the same values).
        for c in preset.get("checks", []):
            if c[0] == "values":
                self.add_value_run(*c[1:])
        self.candidates = []
        for bits, data, steps, hidden, vsteps in preset["candidates"]:
            name = cand_name(bits, data, steps, hidden, vsteps)
            R = stages_for(bits)
            keys = [k for k in self.key_runs.values() if k["data"] == data and k["steps"] == steps and
                    k["stages"] >= R]
            if not keys:
                raise SystemExit(f"candidate {name}: no key run on {data} with {steps} EM steps and >= {R} stages")
            keys = min(keys, key=lambda k: k["stages"])
            values = self.value_source(data, bits, hidden, vsteps)
            direct = values == keys["name"] and keys["stages"] == R
            self.candidates.append({"name": name, "bits": bits, "data": data, "steps": steps, "hidden": hidden,
                                    "vsteps": vsteps, "stages": R, "keys": keys["name"], "values": values,
                                    "direct": direct})
        self.checks = []
        for c in preset.get("checks", []):
            if c[0] == "values":
                _, data, bits, hidden, vsteps = c
                run = self.add_value_run(data, bits, hidden, vsteps)
                owner = [k["name"] for k in self.key_runs.values() if k["data"] == data and k["bits"] == bits and
                         k["hidden"] == hidden and k["vsteps"] == vsteps]
                if owner:
                    self.checks.append({"kind": "values", "name": f"check-{run}", "a": owner[0], "b": run})
            elif c[0] == "full":
                cand = next(x for x in self.candidates if x["name"] == c[1])
                self.checks.append({"kind": "full", "name": f"check-full-{cand['name']}", "cand": cand["name"]})
            else:
                raise SystemExit(f"unknown check {c}")

    def value_source(self, data, bits, hidden, vsteps):
        name = f"v-{data}-{bits}b-i{hidden}-v{vsteps}"
        if name in self.value_runs:
            return name
        for k in self.key_runs.values():
            if k["data"] == data and k["bits"] == bits and k["hidden"] == hidden and k["vsteps"] == vsteps:
                return k["name"]
        return self.add_value_run(data, bits, hidden, vsteps)

    def add_value_run(self, data, bits, hidden, vsteps):
        name = f"v-{data}-{bits}b-i{hidden}-v{vsteps}"
        self.value_runs.setdefault(name, {"name": name, "data": data, "bits": bits, "hidden": hidden,
                                          "vsteps": vsteps})
        return name


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------

class Job:
    def __init__(self, name, cmd, log, deps=(), prio=(9,), cpu=1, gpu=0, nice=0, deadline=None, group="",
                 cwd=REPO):
        self.name, self.cmd, self.log, self.deps = name, cmd, log, list(deps)
        self.prio, self.cpu, self.gpu, self.nice, self.deadline, self.group = prio, cpu, gpu, nice, deadline, group
        self.cwd = cwd
        self.state = "wait"  # wait, run, ok, fail, killed, skipped
        self.proc = self.t_start = self.t_end = self.rc = None


class Runner:
    def __init__(self, log, t0, cpu_slots, gpu_slots):
        self.jobs = {}
        self.log = log
        self.t0 = t0
        self.cpu_slots, self.gpu_slots = cpu_slots, gpu_slots

    def now(self):
        return time.time() - self.t0

    def add(self, job):
        assert job.name not in self.jobs, job.name
        self.jobs[job.name] = job
        return job

    def _start(self, j):
        os.makedirs(os.path.dirname(j.log), exist_ok=True)
        f = open(j.log, "w")
        f.write(f"# {' '.join(shlex.quote(c) for c in j.cmd)}\n# started at {self.now():.1f} s\n")
        f.flush()
        pre = (lambda: (os.setsid(), os.nice(j.nice))) if j.nice else os.setsid
        j.proc = subprocess.Popen(j.cmd, stdout=f, stderr=subprocess.STDOUT, cwd=j.cwd, preexec_fn=pre)
        f.close()
        j.state, j.t_start = "run", self.now()
        self.log(f"start {j.name}" + (f" (nice {j.nice})" if j.nice else ""), quiet=j.group == "eval")

    def kill(self, j, why):
        """SIGKILL to the job's process group (each job is a session of its
        own): nothing it leaves half-written is read (quality.py and the
        writers replace their files whole)."""
        if j.state != "run":
            return
        try:
            os.killpg(j.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        j.proc.wait()
        j.state, j.t_end, j.rc = "killed", self.now(), j.proc.returncode
        self.log(f"stopped {j.name} after {j.t_end - j.t_start:.0f} s: {why}", quiet=j.group == "eval")

    def step(self):
        """Reaps, enforces deadlines, starts what may start. Returns True while anything waits or runs."""
        for j in self.jobs.values():
            if j.state == "run" and j.proc.poll() is not None:
                j.rc, j.t_end = j.proc.returncode, self.now()
                j.state = "ok" if j.rc == 0 else "fail"
                self.log(f"{'done' if j.rc == 0 else 'FAILED'} {j.name} in {j.t_end - j.t_start:.0f} s"
                         + ("" if j.rc == 0 else f" (exit {j.rc}; {j.log})"), quiet=j.group == "eval" and j.rc == 0)
                if j.rc != 0:
                    self.log_tail(j)
        for j in self.jobs.values():
            if j.state == "run" and j.deadline is not None and self.now() > j.deadline:
                self.kill(j, f"deadline {j.deadline:.0f} s")
            if j.state == "wait" and j.deadline is not None and self.now() > j.deadline:
                j.state = "skipped"
                self.log(f"skipped {j.name}: deadline {j.deadline:.0f} s passed before it could start")
        changed = True
        while changed:
            changed = False
            for j in self.jobs.values():
                if j.state == "wait" and any(self.jobs[d].state in ("fail", "killed", "skipped") for d in j.deps):
                    j.state = "skipped"
                    bad = [d for d in j.deps if self.jobs[d].state in ("fail", "killed", "skipped")]
                    self.log(f"skipped {j.name}: {', '.join(bad)} did not finish", quiet=j.group == "eval")
                    changed = True
        running = [j for j in self.jobs.values() if j.state == "run"]
        cpu = sum(j.cpu for j in running)
        gpu = sum(j.gpu for j in running)
        ready = sorted((j for j in self.jobs.values() if j.state == "wait" and
                        all(self.jobs[d].state == "ok" for d in j.deps)), key=lambda j: j.prio)
        for j in ready:
            # Trainers wait for a GPU slot only (their core counts once they run, so measurements
            # back off); a measurement waits for a core; another pipeline job waiting for a core
            # keeps the measurements after it from taking one first.
            if j.gpu:
                if gpu + j.gpu > self.gpu_slots:
                    continue
            elif cpu + j.cpu > self.cpu_slots:
                if j.group == "eval":
                    continue
                break
            self._start(j)
            cpu += j.cpu
            gpu += j.gpu
        return any(j.state in ("wait", "run") for j in self.jobs.values())

    def log_tail(self, j, n=15):
        try:
            lines = open(j.log, errors="replace").read().splitlines()[-n:]
        except OSError:
            return
        for line in lines:
            self.log(f"  | {line}")

    def stop_all(self, why):
        stopped = [j.name for j in self.jobs.values() if j.state == "run"]
        for j in self.jobs.values():
            if j.state == "run":
                self.kill(j, why)
            elif j.state == "wait":
                j.state = "skipped"
        if stopped:
            self.log(f"stopped {len(stopped)} jobs ({why}): {', '.join(stopped)}")


# ---------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    env = os.environ.get
    ap.add_argument("--preset", default=env("PRESET", "default"), choices=sorted(PRESETS))
    ap.add_argument("--grid", default=env("GRID_FILE"), help="JSON file with a preset's keys, overriding them")
    ap.add_argument("--budget", type=float, default=float(env("BUDGET", "480")),
                    help="seconds from the start by which everything has stopped and the results are packed "
                         "(default 480; the device call allows about 540)")
    ap.add_argument("--train-end", type=float, default=float(env("TRAIN_END", "0")),
                    help="seconds from the start after which training still running is stopped "
                         "(default budget - 25: a candidate made late is not measured but its file comes back; "
                         "those made earlier are measured meanwhile)")
    ap.add_argument("--build-end", type=float, default=float(env("BUILD_END", "300")),
                    help="give up if the build has not finished by then (default 300)")
    ap.add_argument("--device", type=int, default=int(env("DEVICE", "0")),
                    help="commvq-train --device (CUDA ordinal; -1: the CPU trainer)")
    ap.add_argument("--cuda", default=env("CUDA", "ON"), choices=("ON", "OFF"), help="build with CUDA")
    ap.add_argument("--build-dir", default=env("BUILD_DIR", "build-calib"))
    ap.add_argument("--work", default=env("WORK", "/tmp/commvq-calib"), help="KV files, codebooks, logs")
    ap.add_argument("--model", default=env("MODEL_DIR"))
    ap.add_argument("--data", default=env("DATA_DIR"))
    ap.add_argument("--python", default=env("PYTHON", sys.executable))
    ap.add_argument("--collect-device", default=env("COLLECT_DEVICE"), help="torch device of collect_kv.py")
    ap.add_argument("--eval-device", default=env("EVAL_DEVICE", "cpu"),
                    help="torch device of the model in quality.py (the cache runs on the CPU either way)")
    ap.add_argument("--cores", type=int, default=int(env("CORES", "0")), help="CPU slots (default: all)")
    ap.add_argument("--gpu-jobs", type=int, default=int(env("GPU_JOBS", "5")),
                    help="commvq-train processes at once on the GPU (default 5: the key runs and two of the "
                         "short value runs)")
    ap.add_argument("--train-threads", type=int, default=int(env("TRAIN_THREADS", "2")))
    ap.add_argument("--shards", type=int, default=int(env("SHARDS", "0")), help="override the preset's")
    ap.add_argument("--windows", default=env("WINDOWS"), help="e.g. 128,0 (override the preset's)")
    ap.add_argument("--plan", action="store_true", help="print the jobs and their commands, run nothing")
    ap.add_argument("--fresh", action="store_true", default=env("FRESH", "0") == "1",
                    help="ignore what an earlier call left in --work (default: reuse KV files, codebooks and "
                         "quality shards found there, so a second call on a warm machine goes on)")
    return ap.parse_args()


def first_existing(*paths):
    for p in paths:
        if p and os.path.exists(p):
            return p
    return paths[-1]


def main():
    args = parse_args()
    t0 = time.time()
    preset = json.loads(json.dumps(PRESETS[args.preset]))
    if args.grid:
        preset.update(json.load(open(args.grid)))
    if args.shards:
        preset["shards"] = args.shards
    if args.windows:
        preset["windows"] = [int(w) for w in args.windows.split(",")]
    plan = Plan(preset)
    budget = args.budget
    train_end = args.train_end or budget - 25
    eval_end = budget - 12
    out = os.path.abspath(args.outdir)
    os.makedirs(out, exist_ok=True)
    # What an earlier call left is reused only when it was made from the same
    # data: the work directory is named by the preset and a hash of the mixes.
    ident = json.dumps([preset["data"], preset["heldout_tokens"]], sort_keys=True).encode()
    W = os.path.join(args.work, f"{args.preset}-{hashlib.sha1(ident).hexdigest()[:8]}")
    if args.fresh and os.path.isdir(W):
        shutil.rmtree(W)
    for d in ("kv", "cb", "q", "logs", "runs"):
        os.makedirs(os.path.join(W, d), exist_ok=True)
    model = args.model or first_existing(os.path.join(REPO, ".deps/shared/models/bytellama-13m"),
                                         "/work/shared/models/bytellama-13m")
    data = args.data or first_existing(os.path.join(REPO, ".deps/shared/data"), "/work/shared/data")
    model, data = os.path.abspath(model), os.path.abspath(data)
    logf = open(os.path.join(out, "calibrate.log"), "a")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)  # so that the jobs (sessions of their own) are stopped too

    def log(msg, quiet=False):
        line = f"[{time.time() - t0:6.1f}s] {msg}"
        logf.write(line + "\n")
        logf.flush()
        if not quiet:
            print(line, flush=True)

    nproc = args.cores or os.cpu_count()
    log(f"calibrate_grid: preset {args.preset}, budget {budget:.0f} s (training until {train_end:.0f} s), "
        f"{nproc} CPU slots, work {W}, model {model}, data {data}, python {args.python}")
    log(f"key runs: {', '.join(plan.key_runs)}; value runs: {', '.join(plan.value_runs) or 'none'}")
    log(f"candidates: {', '.join(c['name'] for c in plan.candidates)}")
    runner = Runner(log, t0, nproc, args.gpu_jobs)
    py = args.python
    try:
        import torch  # noqa: F401  (only to pick the collection device)
        have_cuda = torch.cuda.is_available()
    except Exception:
        have_cuda = False
    collect_device = args.collect_device or ("cuda" if have_cuda else "cpu")

    # 1. build ------------------------------------------------------------
    B = os.path.join(REPO, args.build_dir)
    lib = os.path.join(B, "libcommvq.so")
    trainer = os.path.join(B, "tools", "commvq-train")
    build_sh = (f"cmake -S . -B {shlex.quote(B)} -G Ninja -DCOMMVQ_CUDA={args.cuda} "
                + ("-DCMAKE_CUDA_ARCHITECTURES=90 " if args.cuda == "ON" else "")
                + "-DCOMMVQ_BUILD_BINDINGS=OFF -DCOMMVQ_BUILD_EXAMPLES=OFF -DCOMMVQ_BUILD_TESTS=OFF "
                f"&& cmake --build {shlex.quote(B)} -j{nproc} --target commvq-train commvq")
    runner.add(Job("build", ["bash", "-c", build_sh], f"{W}/logs/build.log", prio=(0,), cpu=0,
                   deadline=args.build_end))

    # 2. collection -------------------------------------------------------
    texts = sorted(f"{data}/calib-text/{f}" for f in os.listdir(f"{data}/calib-text") if f.endswith(".txt"))
    codes = sorted(f"{data}/calib-code/{f}" for f in os.listdir(f"{data}/calib-code") if f.endswith(".py"))
    stdlib_all = [f"{data}/eval-dev/stdlib/{l.strip()}" for l in open(f"{data}/eval-dev/stdlib-files.txt")
                  if l.strip()]
    essays = [f"{data}/eval-dev/{e}.txt" for e in ESSAYS]
    kv = {}

    def collect(name, takes, allow_eval=False, prio=(0,)):
        path = f"{W}/kv/{name}.safetensors"
        kv[name] = path
        if os.path.exists(path):
            log(f"reusing {path}")
            return None
        cmd = [py, "tools/collect_kv.py", "--model", model, "--device", collect_device, "-o", path]
        if allow_eval:
            cmd.append("--allow-eval")
        for n, files in takes:
            if n > 0:
                cmd += ["--take", str(n)] + files
        return runner.add(Job(f"collect-{name}", cmd, f"{W}/logs/collect-{name}.log", prio=prio, cpu=1))

    for name, (nt, nc) in plan.data.items():
        collect(name, [(nt, texts), (nc, codes)])
    H = preset["heldout_tokens"]
    collect("heldout-code", [(H, stdlib_all)], allow_eval=True, prio=(1,))
    collect("heldout-essays", [(H, essays)], allow_eval=True, prio=(1,))

    # What each candidate is, as the commands that make it in one go (recorded in the summary).
    plan.commands = {}
    for name, (nt, nc) in plan.data.items():
        plan.commands[name] = (f"python3 tools/collect_kv.py --device cuda -o {name}.safetensors"
                               + (f" --take {nt} $DATA/calib-text/*.txt" if nt else "")
                               + (f" --take {nc} $DATA/calib-code/*.py" if nc else ""))
    for c in plan.candidates:
        plan.commands[c["name"]] = (
            f"commvq-train -i {c['data']}.safetensors -o bytellama-13m-{c['bits']}bit.safetensors "
            f"--bits {c['bits']} --key-steps {c['steps']} --value-hidden {c['hidden']} --value-steps {c['vsteps']} "
            f"--q-heads 4 --rope-theta 500000 --model-name bytellama-13m --max-samples {sum(plan.data[c['data']])} "
            f"--device 0 --storage f16")

    def after(*names):
        return [n for n in names if n in runner.jobs]

    # 3. training ---------------------------------------------------------
    cb = {}  # run or candidate name -> codebook path

    def train_cmd(out_path, bits, stages, steps, hidden, vsteps, data_name, threads=args.train_threads):
        n = sum(plan.data[data_name])
        cmd = [trainer, "-i", kv[data_name], "-o", out_path, "--bits", str(bits), "--stages", str(stages),
               "--key-steps", str(steps), "--value-hidden", str(hidden), "--value-steps", str(vsteps),
               "--q-heads", "4", "--rope-theta", "500000", "--model-name", "bytellama-13m",
               "--max-samples", str(n), "--device", str(args.device) if args.device >= 0 else "cpu",
               "--threads", str(threads), "--storage", "f16"]
        return cmd

    for i, k in enumerate(plan.key_runs.values()):
        path = f"{W}/runs/{k['name']}.safetensors"
        cb[k["name"]] = path
        if os.path.exists(path):
            log(f"reusing {path}")
            continue
        runner.add(Job(k["name"], train_cmd(path, k["bits"], k["stages"], k["steps"], k["hidden"], k["vsteps"],
                                            k["data"]),
                       f"{W}/logs/train-{k['name']}.log", deps=after("build", f"collect-{k['data']}"),
                       prio=(1, i), cpu=1, gpu=1, deadline=train_end))
    # Value runs in the order of the first candidate that needs them (check-only ones last).
    first_use = {}
    for ci, c in enumerate(plan.candidates):
        first_use.setdefault(c["values"], ci)
    for v in plan.value_runs.values():
        i = first_use.get(v["name"], len(plan.candidates))
        path = f"{W}/runs/{v['name']}.safetensors"
        cb[v["name"]] = path
        if os.path.exists(path):
            log(f"reusing {path}")
            continue
        # Keys for one stage of 2 EM steps (thrown away): the values are those of a full run.
        # Most of a value run's time is the value MSE over every token on the host: 4 threads.
        runner.add(Job(v["name"], train_cmd(path, v["bits"], 1, 2, v["hidden"], v["vsteps"], v["data"], 4),
                       f"{W}/logs/train-{v['name']}.log", deps=after("build", f"collect-{v['data']}"),
                       prio=(2, i), cpu=1, gpu=1, deadline=train_end))

    for c in plan.candidates:
        path = f"{W}/cb/bytellama-13m-{c['name']}.safetensors"
        cb[c["name"]] = path
        if os.path.exists(path):
            log(f"reusing {path}")
            continue
        src = [c["keys"]] + ([] if c["direct"] else [c["values"]])
        if c["direct"]:
            cmd = ["bash", "-c", f"cp {shlex.quote(cb[c['keys']])} {shlex.quote(path)}.part && "
                                 f"mv {shlex.quote(path)}.part {shlex.quote(path)}"]
        else:
            cmd = [py, "tools/codebook_splice.py", "--keys", cb[c["keys"]], "--stages", str(c["stages"]),
                   "--values", cb[c["values"]], "-o", path]
        runner.add(Job(f"make-{c['name']}", cmd, f"{W}/logs/make-{c['name']}.log", deps=after(*src), prio=(1,),
                       cpu=0, deadline=eval_end))  # a second or so: never waits for a core

    for ch in plan.checks:
        if ch["kind"] == "values":
            cmd = [py, "-c", CHECK_VALUES, cb[ch["a"]], cb[ch["b"]]]
            runner.add(Job(ch["name"], cmd, f"{W}/logs/{ch['name']}.log", deps=after(ch["a"], ch["b"]),
                           prio=(1,), cpu=0, deadline=eval_end))
        else:
            c = next(x for x in plan.candidates if x["name"] == ch["cand"])
            full = f"{W}/runs/full-{c['name']}.safetensors"
            runner.add(Job(f"train-full-{c['name']}", train_cmd(full, c["bits"], c["stages"], c["steps"],
                                                                c["hidden"], c["vsteps"], c["data"]),
                           f"{W}/logs/train-full-{c['name']}.log", deps=after("build", f"collect-{c['data']}"),
                           prio=(3,), cpu=1, gpu=1, deadline=train_end))
            cmd = [py, "-c", CHECK_FULL, full, cb[c["name"]]]
            runner.add(Job(ch["name"], cmd, f"{W}/logs/{ch['name']}.log",
                           deps=after(f"train-full-{c['name']}", f"make-{c['name']}"), prio=(1,), cpu=0,
                           deadline=eval_end))

    # 4. measurement ------------------------------------------------------
    n_shards = preset["shards"]
    stdlib = stdlib_all[:preset["stdlib_files"]] if preset["stdlib_files"] else stdlib_all
    text_args = ["--text", "essays:" + essays[0]] + essays[1:] + ["--text", "stdlib:" + stdlib[0]] + stdlib[1:] + \
        ["--chunks-per-file", "stdlib=1"]
    if preset["essay_chunks_per_file"]:
        text_args += ["--chunks-per-file", f"essays={preset['essay_chunks_per_file']}"]
    qbase = [py, "tools/quality.py", "--model", model, "--eval-dir", f"{data}/eval-dev", "--threads", "1",
             "--device", args.eval_device, "--mse-chunks", "0"] + text_args
    q = {}  # (run, window, shard) -> results path
    for s in range(n_shards):
        path = f"{W}/q/exact-s{s}of{n_shards}.json"
        q[("exact", None, s)] = path
        if not os.path.exists(path):
            runner.add(Job(f"q-exact-s{s}", qbase + ["--settings", "exact", "--shard", f"{s}/{n_shards}",
                                                      "--results", path],
                           f"{W}/logs/q-exact-s{s}.log", prio=(2, s), cpu=1, nice=10, deadline=eval_end,
                           group="eval"))
    for wi, w in enumerate(preset["windows"]):
        for ci, c in enumerate(plan.candidates):
            make = after(f"make-{c['name']}")
            for s in range(n_shards):
                path = f"{W}/q/{c['name']}-w{w}-s{s}of{n_shards}.json"
                q[(c["name"], w, s)] = path
                if os.path.exists(path):
                    continue
                runner.add(Job(f"q-{c['name']}-w{w}-s{s}",
                               qbase + ["--library", lib, "--codebook", f"{c['bits']}={cb[c['name']]}",
                                        "--settings", f"commvq-{c['bits']}bit-w{w}", "--shard", f"{s}/{n_shards}",
                                        "--results", path],
                               f"{W}/logs/q-{c['name']}-w{w}-s{s}.log", deps=make + after("build"),
                               prio=(5, wi, s, ci), cpu=1, nice=10, deadline=eval_end, group="eval"))
            if wi == 0:
                heldout = [f"{REPO}/tests/data/bytellama_kv.safetensors", kv["heldout-essays"], kv["heldout-code"]]
                cmd = [trainer, "--codebook", cb[c["name"]], "--calib", kv[c["data"]], "--threads", "1"]
                for e in heldout:
                    cmd += ["--eval", e]
                runner.add(Job(f"heldout-{c['name']}", cmd, f"{W}/logs/heldout-{c['name']}.log",
                               deps=make + after("build", "collect-heldout-code", "collect-heldout-essays"),
                               prio=(5, 0, 0.5, ci), cpu=1, nice=10, deadline=eval_end, group="eval"))

    if args.plan:
        for j in sorted(runner.jobs.values(), key=lambda j: j.prio):
            print(f"{j.name}  prio {j.prio}  after {j.deps}\n    {' '.join(shlex.quote(c) for c in j.cmd)[:600]}")
        return 0

    # GPU utilization every 5 s, for planning the next call.
    mon = None
    if shutil.which("nvidia-smi") and args.device >= 0:
        mon = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,name,utilization.gpu,memory.used",
                                "--format=csv,noheader", "-l", "5"], stdout=open(f"{W}/logs/gpu.csv", "w"),
                               stderr=subprocess.DEVNULL)

    # 5. run --------------------------------------------------------------
    packed_cb = False
    last_summary = time.time()
    try:
        while runner.step():
            if runner.now() > eval_end:
                runner.stop_all(f"the budget ({budget:.0f} s) is reached")
                break
            b = runner.jobs.get("build")
            if b is not None and b.state in ("fail", "killed"):
                log("the build failed or ran out of time: nothing to train with")
                runner.stop_all("no build")
                break
            training = [j for j in runner.jobs.values() if j.gpu and j.state in ("wait", "run")]
            makes = [j for j in runner.jobs.values() if j.name.startswith("make-") and j.state in ("wait", "run")]
            if not packed_cb and not training and not makes:
                log("training done; packing the codebooks")
                pack_codebooks(plan, cb, out, log)
                packed_cb = True
            if time.time() - last_summary > 60:
                last_summary = time.time()
                write_results(plan, preset, q, runner, cb, W, out, log, args, final=False)
                ev = [j for j in runner.jobs.values() if j.group == "eval"]
                log(f"progress: measurement jobs {sum(j.state == 'ok' for j in ev)} done, "
                    f"{sum(j.state == 'run' for j in ev)} running, {sum(j.state == 'wait' for j in ev)} waiting")
            time.sleep(0.5)
    finally:
        runner.stop_all("shutting down")
        if mon is not None:
            mon.terminate()
        if not packed_cb:
            pack_codebooks(plan, cb, out, log)
        table = write_results(plan, preset, q, runner, cb, W, out, log, args, final=True)
        log(f"finished at {runner.now():.0f} s")
        print(table, flush=True)


CHECK_VALUES = r"""
import sys; sys.path.insert(0, "tools")
import codebook_splice as cs
a, b = sys.argv[1], sys.argv[2]
ma, ta = cs.read(a); mb, tb = cs.read(b)
names = [n for n in ta if ".values." in n]
same = [n for n in names if ta[n] == tb.get(n)]
print(f"value tensors of {a} and {b}: {len(same)} of {len(names)} identical")
print("CHECK values " + ("PASS" if len(same) == len(names) else "FAIL"))
sys.exit(0 if len(same) == len(names) else 3)
"""

CHECK_FULL = r"""
import sys; sys.path.insert(0, "tools")
import codebook_splice as cs
a, b = sys.argv[1], sys.argv[2]
fa, fb = cs.read(a)[0]["fingerprint"], cs.read(b)[0]["fingerprint"]
same = open(a, "rb").read() == open(b, "rb").read()
print(f"one-command training {a}: {fa}; splice {b}: {fb}; files {'byte-identical' if same else 'differ'}")
print("CHECK full " + ("PASS" if fa == fb else "FAIL"))
sys.exit(0 if fa == fb else 3)
"""


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

def load_shard(path, setting):
    """{domain: (bits, bytes, attention_rel_error)} of one setting in a shard's results file, or None."""
    try:
        r = json.load(open(path))
    except (OSError, ValueError):
        return None
    row = r.get("settings", {}).get(setting)
    if not row:
        return None
    return {l: (d["bpb"] * d["bytes"], d["bytes"], d.get("attention_rel_error")) for l, d in row["domains"].items()}


def trained_seconds(log_path):
    try:
        m = re.search(r"trained on (\d+) tokens per layer in (\d+) s", open(log_path, errors="replace").read())
    except OSError:
        return None
    return int(m.group(2)) if m else None


def heldout_errors(log_path):
    """{eval file basename: {"keys": [per layer], "values": [...]}} relative errors from commvq-train --calib."""
    out = {}
    try:
        text = open(log_path, errors="replace").read()
    except OSError:
        return out
    for block in text.split("domain check of ")[1:]:
        name = os.path.basename(block.split(" ", 1)[0])
        keys, values = [], []
        for m in re.finditer(r"layer (\d+)\s+keys ([0-9.e+-]+) .*?values ([0-9.e+-]+)", block):
            keys.append(float(m.group(2)))
            values.append(float(m.group(3)))
        out[name] = {"keys": keys, "values": values}
    return out


def write_results(plan, preset, q, runner, cb, W, out, log, args, final):
    n_shards = preset["shards"]
    exact = {s: load_shard(q[("exact", None, s)], "exact") for s in range(n_shards)}
    rows = []
    for c in plan.candidates:
        for w in preset["windows"]:
            shards = {s: load_shard(q[(c["name"], w, s)], f"commvq-{c['bits']}bit-w{w}") for s in range(n_shards)}
            done = sorted(s for s, r in shards.items() if r is not None and exact.get(s) is not None)
            rows.append({"cand": c, "window": w, "shards": shards, "done": done})
    measured = [r for r in rows if r["done"]]
    common = sorted(set.intersection(*[set(r["done"]) for r in measured])) if measured else []

    def delta(r, shard_set):
        res = {}
        for label in ("essays", "stdlib"):
            cb_bits = cb_bytes = ex_bits = 0.0
            for s in shard_set:
                if label in r["shards"][s] and label in exact[s]:
                    cb_bits += r["shards"][s][label][0]
                    cb_bytes += r["shards"][s][label][1]
                    ex_bits += exact[s][label][0]
            if cb_bytes:
                res[label] = {"delta": (cb_bits - ex_bits) / cb_bytes, "exact": ex_bits / cb_bytes,
                              "bytes": int(cb_bytes)}
        return res

    for r in rows:
        r["common"] = delta(r, common) if r["done"] else {}
        r["own"] = delta(r, r["done"])
    # The table.
    sizes = {c["name"]: os.path.getsize(cb[c["name"]]) if os.path.exists(cb[c["name"]]) else None
             for c in plan.candidates}
    times = {}
    for name in list(plan.key_runs) + list(plan.value_runs):
        j = runner.jobs.get(name)
        times[name] = {"trained_s": trained_seconds(f"{W}/logs/train-{name}.log"),
                       "wall_s": None if j is None or j.t_end is None else round(j.t_end - j.t_start, 1),
                       "state": "reused" if j is None else j.state}
    held = {c["name"]: heldout_errors(f"{W}/logs/heldout-{c['name']}.log") for c in plan.candidates}
    lines = [f"# Calibration grid ({args.preset}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    lines.append(f"Bits per byte lost against exact attention (tools/quality.py, CPU cache, model on "
                 f"{args.eval_device}); essays and stdlib as in docs/QUALITY.md's standard run, here cut into "
                 f"{n_shards} shards. Common shards: {common or 'none'} (every measured candidate has them). "
                 f"Targets (issue 10): 1 bit essays <= {TARGETS['essays'][1]}, stdlib <= {TARGETS['stdlib'][1]}; "
                 f"2 bits essays <= {TARGETS['essays'][2]}, stdlib <= {TARGETS['stdlib'][2]}. Reference: {REFERENCE}.")
    lines.append("")
    head = ["candidate", "bits", "data (text+code)", "EM cap", "I", "value steps", "window", "essays Δ", "stdlib Δ",
            "shards (own)", "essays Δ own", "stdlib Δ own", "file MB", "keys from", "values from"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(d, label, bits):
        if label not in d:
            return "—"
        x = d[label]["delta"]
        return f"{x:+.4f}" + (" ✓" if x <= TARGETS[label][bits] else "")

    for r in rows:
        c = r["cand"]
        dn = plan.data[c["data"]]
        lines.append("| " + " | ".join([
            c["name"], str(c["bits"]), f"{c['data']} ({dn[0]}+{dn[1]})", str(c["steps"]), str(c["hidden"]),
            str(c["vsteps"]), str(r["window"]), fmt(r["common"], "essays", c["bits"]),
            fmt(r["common"], "stdlib", c["bits"]), f"{len(r['done'])}/{n_shards}",
            fmt(r["own"], "essays", c["bits"]), fmt(r["own"], "stdlib", c["bits"]),
            f"{sizes[c['name']] / 1e6:.2f}" if sizes[c["name"]] else "—", c["keys"] + f"[:{c['stages']}]",
            c["values"]]) + " |")
    if common:
        ex = next((r["common"] for r in rows if r["common"]), {})
        lines += ["", "Exact bits per byte on the common shards: " +
                  ", ".join(f"{l} {d['exact']:.4f} ({d['bytes']} bytes)" for l, d in ex.items())]
    lines += ["", "Training (commvq-train's own \"trained ... in N s\"; wall includes loading and writing):", ""]
    for name, t in times.items():
        lines.append(f"- {name}: trained {t['trained_s']} s, wall {t['wall_s']} s, {t['state']}")
    lines += ["", "Held-out relative error per layer (commvq-train --codebook --eval --calib; MSE / mean square), "
              "values L0-L3 on code | on essays:", ""]
    for c in plan.candidates:
        h = held[c["name"]]
        code = next((v for k, v in h.items() if k.startswith("heldout-code")), None)
        ess = next((v for k, v in h.items() if k.startswith("heldout-essays")), None)
        if code or ess:
            f = lambda v: " ".join(f"{x:.3g}" for x in v["values"]) if v else "—"
            g = lambda v: " ".join(f"{x:.3g}" for x in v["keys"]) if v else "—"
            lines.append(f"- {c['name']}: values {f(code)} | {f(ess)}; keys {g(code)} | {g(ess)}")
    checks = []
    for ch in plan.checks:
        j = runner.jobs.get(ch["name"])
        text = open(j.log, errors="replace").read() if j and os.path.exists(j.log) else ""
        m = re.search(r"CHECK \w+ (PASS|FAIL)", text)
        checks.append(f"- {ch['name']}: {m.group(0) if m else (j.state if j else 'not run')}")
    if checks:
        lines += ["", "Checks (a splice equals the one-command training):", ""] + checks
    lines += ["", "Each candidate is the file of one command (the grid splices it from a key run and a value run; "
              "docs/TRAINING.md, \"Grids\"), on the KV file of its mix:", ""]
    lines += [f"- {name}: `{cmd}`" for name, cmd in plan.commands.items()]
    states = {}
    for j in runner.jobs.values():
        states[j.state] = states.get(j.state, 0) + 1
    lines += ["", f"Jobs: {states}; at {runner.now():.0f} s" + ("" if final else " (interim)")]
    table = "\n".join(lines) + "\n"
    results = {"preset": preset, "args": vars(args), "common_shards": common, "commands": plan.commands,
               "candidates": [{**r["cand"], "window": r["window"], "done": r["done"], "common": r["common"],
                               "own": r["own"], "bytes": sizes[r["cand"]["name"]],
                               "heldout": held[r["cand"]["name"]]} for r in rows],
               "training": times,
               "jobs": {j.name: {"state": j.state, "start": j.t_start, "end": j.t_end, "rc": j.rc, "log": j.log}
                        for j in runner.jobs.values()}}
    with open(f"{W}/results.json", "w") as f:
        json.dump(results, f, indent=1)
    with open(f"{W}/summary.md", "w") as f:
        f.write(table)
    tmp = f"{W}/results.tgz"
    with tarfile.open(tmp, "w:gz") as t:
        for d in ("logs", "q"):
            t.add(f"{W}/{d}", arcname=d)
        t.add(f"{W}/results.json", arcname="results.json")
        t.add(f"{W}/summary.md", arcname="summary.md")
    for name in ("results.tgz", "summary.md"):
        shutil.copyfile(f"{W}/{name}", f"{out}/{name}.part")
        os.replace(f"{out}/{name}.part", f"{out}/{name}")
    return table


def pack_codebooks(plan, cb, out, log, limit=int(15.5 * 2 ** 20), max_tars=5):
    """The candidates' files, in the grid's order, into at most max_tars tars of at most limit bytes."""
    files = [(c["name"], cb[c["name"]]) for c in plan.candidates if os.path.exists(cb[c["name"]])]
    bins = []
    left = []
    for name, path in files:
        size = os.path.getsize(path) + 1024
        for b in bins:
            if b["size"] + size <= limit:
                b["files"].append(path)
                b["size"] += size
                break
        else:
            if len(bins) < max_tars and size <= limit:
                bins.append({"files": [path], "size": size})
            else:
                left.append(name)
    for i, b in enumerate(bins, 1):
        tmp = f"{out}/codebooks-{i}.tar.part"
        with tarfile.open(tmp, "w") as t:
            for p in b["files"]:
                t.add(p, arcname=os.path.basename(p))
        os.replace(tmp, f"{out}/codebooks-{i}.tar")
        log(f"codebooks-{i}.tar: {', '.join(os.path.basename(p) for p in b['files'])}")
    if left:
        log(f"not returned (no room in {max_tars} tars of {limit} bytes): {', '.join(left)}")


if __name__ == "__main__":
    sys.exit(main())
