"""`python -m bench [--quick]`: run every scenario against every contender, report."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import traceback

from bench import contenders, machine, peers, procs, report, scenarios
from bench.progress import Progress

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_ROOT = os.path.join(REPO_ROOT, "bench", "results")

# paced: seconds of each paced-latency run; micro: seconds per timed run of a
# microbenchmark; c_iterations: of the C parser loop.
FULL = {"rounds": 3, "duration": 8.0, "warmup": 1.0, "paced": 5.0, "bulk_gib": 1.0,
        "micro": 0.2, "c_iterations": 500000}
QUICK = {"rounds": 1, "duration": 2.0, "warmup": 1.0, "paced": 2.0, "bulk_gib": 0.5,
         "micro": 0.05, "c_iterations": 100000}
MICRO = "micro"
# The fd limit the run asks for (root may raise the hard limit): the idle
# scenario's client, the proxy and the upstream each hold ~1-2 fds per connection.
NOFILE_WANTED = 65536
MICRO_TIMEOUT_S = 300
PLOT_TIMEOUT_S = 120
# Busy share of a CPU, measured for 1 s before the run, above which the
# machine is reported as not quiet.
BACKGROUND_WARN = 0.10


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK['rounds']} round, {QUICK['duration']:g}s per load run (under 3 minutes)")
    ap.add_argument("--rounds", type=int,
                    help=f"rounds of A B A B (default {FULL['rounds']}, quick {QUICK['rounds']})")
    ap.add_argument("--duration", type=float, help="seconds of each measured wrk run (whole)")
    ap.add_argument("--warmup", type=float, help="seconds of wrk warm-up before each measured "
                    "run (whole; 0: none)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--bulk-gib", type=float,
                    help=f"GiB per bulk sample (default {FULL['bulk_gib']:g}, quick {QUICK['bulk_gib']:g})")
    ap.add_argument("--paced", type=float, help="seconds of each paced-latency run "
                    f"(default {FULL['paced']:g}, quick {QUICK['paced']:g})")
    ap.add_argument("--stream-connections", type=int, default=8,
                    help="wrk connections fetching 1 MiB bodies (default 8)")
    ap.add_argument("--idle-connections", type=int, default=10000,
                    help="idle keep-alive connections of the idle scenario (default 10000)")
    ap.add_argument("--workers", type=int, default=1,
                    help="proxy workers/threads: fastproxy workers, HAProxy nbthread, "
                         "Envoy --concurrency (default 1)")
    ap.add_argument("--proxy-cpus", default="1", help="taskset CPU list of the proxy (default 1)")
    ap.add_argument("--load-cpus", default="0",
                    help="taskset CPU list of load, upstream and harness (default 0)")
    ap.add_argument("--contenders", default=",".join(contenders.DEFAULT),
                    help=f"comma list from {','.join(contenders.ALL)}")
    ap.add_argument("--scenarios", "--only", default=",".join([*scenarios.ALL, MICRO]),
                    help=f"comma list from {','.join([*scenarios.ALL, MICRO])} (default all)")
    ap.add_argument("--haproxy-splice-auto", action="store_true",
                    help="HAProxy with option splice-auto in every scenario (default: forced "
                         "splicing for bulk, where splice-auto does not splice on loopback)")
    ap.add_argument("--no-install", action="store_true",
                    help="never apt-get/pip install missing programs; skip what needs them")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.rounds = args.rounds if args.rounds is not None else base["rounds"]
    args.duration = args.duration if args.duration is not None else base["duration"]
    args.warmup = args.warmup if args.warmup is not None else base["warmup"]
    args.paced = args.paced if args.paced is not None else base["paced"]
    args.bulk_gib = args.bulk_gib if args.bulk_gib is not None else base["bulk_gib"]
    args.micro_budget, args.c_iterations = base["micro"], base["c_iterations"]
    for flag, names, known in (("--contenders", args.contenders, contenders.ALL),
                               ("--scenarios", args.scenarios, [*scenarios.ALL, MICRO])):
        unknown = [n for n in names.split(",") if n not in known]
        if unknown:
            ap.error(f"{flag}: unknown {', '.join(unknown)}")
    if min(args.rounds, args.connections, args.workers, args.stream_connections,
           args.idle_connections) < 1 or min(args.duration, args.paced, args.bulk_gib) <= 0:
        ap.error("--rounds, --duration, --paced, --bulk-gib and the counts must be positive")
    try:
        scenarios.cpu_set(args.proxy_cpus) | scenarios.cpu_set(args.load_cpus)
    except ValueError:
        ap.error("--proxy-cpus/--load-cpus take taskset lists such as 1, 0-1 or 0,2")
    return args


def pinning(args: argparse.Namespace, say) -> report.Pinning:
    """Pin the harness to the load CPUs and say where everything runs; no pinning when impossible."""
    proxy, load = scenarios.cpu_set(args.proxy_cpus), scenarios.cpu_set(args.load_cpus)
    online = os.sched_getaffinity(0)
    why = None
    if not procs.taskset_available():
        why = "taskset missing"
    elif not (proxy | load) <= online or proxy & load:
        why = f"CPUs {sorted(proxy)} and {sorted(load)} not distinct and online (have {sorted(online)})"
    if why:
        say(f"no CPU pinning: {why}")
        return report.Pinning(None, None, f"none ({why}); proxy, load and upstream share all CPUs")
    os.sched_setaffinity(0, load)
    return report.Pinning(args.proxy_cpus, args.load_cpus, (
        f"proxy on CPU {args.proxy_cpus} (taskset -c {args.proxy_cpus}); "
        f"load (bench.blast send, wrk, bench.idle) and upstream (bench.blast recv, nginx) on "
        f"CPU {args.load_cpus} (taskset -c {args.load_cpus}); the harness itself runs on CPU "
        f"{args.load_cpus} too; except the onecore scenario (wrk, its nginx and the proxy all "
        f"on CPU {args.proxy_cpus}) and the microbenchmarks (on CPU {args.proxy_cpus})"))


def raise_fd_limit(wanted: int, say) -> int:
    """Raise this process's fd limit (inherited by everything it starts); the soft limit got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError) as e:
            say(f"could not raise the fd limit to {wanted}: {e}")
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return contenders.nofile_limit()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # SIGTERM ends the run like Ctrl-C does: through the finally that stops
    # every process by PID.
    signal.signal(signal.SIGTERM, _interrupt)
    started_at = dt.datetime.now()
    results_dir = os.path.join(RESULTS_ROOT, started_at.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(results_dir, exist_ok=True)
    progress = Progress()
    say = progress.say

    pin = pinning(args, say)
    nofile = raise_fd_limit(NOFILE_WANTED, say)
    # Each idle connection costs the proxy up to 2 fds (client side and upstream).
    idle_fit = max(1, (nofile - 1000) // 2)
    if args.idle_connections > idle_fit:
        say(f"fd limit {nofile} (could not raise it): the idle scenario opens {idle_fit} "
            f"connections, not {args.idle_connections}")
        args.idle_connections = idle_fit
    names = args.contenders.split(",")
    tools = peers.ensure_tools(install=not args.no_install,
                               want_envoy=any(n.startswith("envoy") for n in names), say=say)
    plot_python = peers.ensure_plotting(install=not args.no_install, say=say)
    setup = contenders.Setup(
        procs=procs.Processes(os.path.join(results_dir, "logs")), tools=tools,
        workdir=os.path.join(results_dir, "run"), workers=args.workers,
        proxy_cpu=pin.proxy_cpus, repo_root=REPO_ROOT)
    os.makedirs(setup.workdir, exist_ok=True)
    params = scenarios.Params(
        rounds=args.rounds, duration_s=args.duration, warmup_s=args.warmup,
        connections=args.connections, bulk_bytes=int(args.bulk_gib * 2**30),
        load_cpu=pin.load_cpus, proxy_cpu=pin.proxy_cpus, workers=args.workers,
        paced_s=args.paced, stream_connections=args.stream_connections,
        idle_connections=args.idle_connections)

    field = check_contenders(names, setup, args, say)
    wanted = args.scenarios.split(",")
    active, skipped = select_scenarios([n for n in wanted if n != MICRO], tools, say)
    background = machine.background_busy(1.0)
    noisy = {cpu: share for cpu, share in background.items() if share > BACKGROUND_WARN}
    if noisy:
        say("the machine is not quiet: CPU busy before the run "
            + ", ".join(f"CPU {c} {v * 100:.0f}%" for c, v in noisy.items())
            + "; numbers will be noisier (see the 'busy' columns)")

    samples: list[scenarios.Sample] = []
    micro = None
    interrupted = False
    try:
        run_rounds(setup, params, field, active, skipped, samples, progress, results_dir,
                   extra_steps=int(MICRO in wanted))
        if MICRO in wanted:
            progress.step("microbenchmarks")
            micro = run_micro(setup, args, pin, progress)
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted; stopping every process and writing what was measured")
    finally:
        # Cleanup is bounded (each stop waits at most 15 s); a second Ctrl-C
        # must not cut it short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for sc in active:
            sc.finish(setup)
        setup.procs.stop_all()
        progress.close()

    doc = report.build(report.Run(
        argv=sys.argv, quick=args.quick, params=params, workers=args.workers,
        started_at=started_at, duration_s=progress.elapsed(), interrupted=interrupted,
        results_dir=os.path.relpath(results_dir, REPO_ROOT), pinning=pin,
        machine={**machine.describe(), "background_busy_before_run": background},
        tools=tools, field=field, scenarios=active, skipped_scenarios=skipped, samples=samples,
        micro=micro))
    report.write_json(doc, results_dir)
    doc["plots"] = plot(plot_python, results_dir, say)
    report.write_json(doc, results_dir)
    report.write_markdown(doc, results_dir)
    print(report.stdout_text(doc))
    return 130 if interrupted else 0


def check_contenders(names: list[str], setup: contenders.Setup, args, say) -> list[contenders.Contender]:
    field = contenders.build(names)
    for c in field:
        if isinstance(c, contenders.HAProxyTcp):
            c.splice_auto_only = args.haproxy_splice_auto
        c.check(setup)
        if not c.available:
            say(f"skipping {c.name}: {c.reason}")
    return field


def select_scenarios(names: list[str], tools: peers.Tools, say):
    """(scenarios whose programs are all there, {skipped scenario: reason})."""
    active, skipped = [], {}
    for sc in (scenarios.ALL[n]() for n in names):
        missing = [t for t in sc.needs if tools.path(t) is None]
        if missing:
            skipped[sc.name] = f"missing {', '.join(missing)}"
            say(f"skipping scenario {sc.name}: {skipped[sc.name]}")
        else:
            active.append(sc)
    return active, skipped


def run_rounds(setup, params, field, active, skipped, samples, progress, results_dir,
               extra_steps: int = 0) -> None:
    """Every round: every scenario, each of its contenders in turn (A B A B); failures become samples."""
    runnable = [c for c in field if c.available]
    shared: dict = {}
    for sc in list(active):
        try:
            sc.prepare(setup, params, shared)
        except Exception as e:  # noqa: BLE001 - reported; the other scenarios still run
            skipped[sc.name] = f"upstream failed to start: {e}"
            progress.say(f"skipping scenario {sc.name}: {e}")
            active.remove(sc)
    progress.total = params.rounds * sum(
        1 for sc in active for c in runnable if sc.runs(c)) + extra_steps
    for round_no in range(1, params.rounds + 1):
        for sc in active:
            for c in (c for c in runnable if sc.runs(c)):
                progress.step(f"round {round_no}/{params.rounds} {sc.name}: {c.name}")
                try:
                    s = sc.sample(setup, params, c, round_no, progress.tick)
                except Exception as e:  # noqa: BLE001 - a failed sample is a result too
                    s = scenarios.Sample(sc.name, c.name, round_no, error=f"{type(e).__name__}: {e}")
                    with open(os.path.join(results_dir, "logs", "errors.log"), "a") as f:
                        f.write(f"round {round_no} {sc.name} {c.name}\n{traceback.format_exc()}\n")
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    progress.say(f"{sc.name} {c.name} failed: {first}")
                samples.append(s)


def run_micro(setup: contenders.Setup, args, pin: report.Pinning, progress) -> dict:
    """The microbenchmarks (bench.micro, with the C parser loop when it builds), on the proxy CPU."""
    c_bench = None
    source = os.path.join(REPO_ROOT, "tests", "c", "bench_http1.c")
    doc: dict = {}
    if os.path.exists(source):
        c_bench = os.path.join(setup.workdir, "bench_http1")
        build = ["gcc", "-std=gnu99", "-O2", "-Icsrc", "-o", c_bench, "tests/c/bench_http1.c",
                 "csrc/http1.c"]
        doc["c_build"] = procs.command_line(build)
        try:
            r = procs.run(build, timeout=120, cwd=REPO_ROOT)
            if r.returncode != 0:
                doc["c_build_error"] = (r.stderr or r.stdout).strip()[-500:]
                c_bench = None
        except (OSError, subprocess.TimeoutExpired) as e:
            doc["c_build_error"] = str(e)
            c_bench = None
    argv = [sys.executable, "-m", "bench.micro", "--budget", f"{args.micro_budget:g}",
            "--c-iterations", str(args.c_iterations)]
    if c_bench:
        argv += ["--c-bench", c_bench]
    doc["command"] = procs.command_line(procs.pinned(argv, pin.proxy_cpus))
    try:
        r = procs.run(argv, cpu=pin.proxy_cpus, timeout=MICRO_TIMEOUT_S, cwd=REPO_ROOT,
                      tick=progress.tick)
    except subprocess.TimeoutExpired:
        doc["error"] = f"timed out after {MICRO_TIMEOUT_S}s"
        return doc
    if r.returncode != 0:
        doc["error"] = f"exited {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}"
        progress.say(f"microbenchmarks failed: {doc['error'].splitlines()[-1]}")
        return doc
    doc.update(json.loads(r.stdout))
    return doc


def plot(python: str | None, results_dir: str, say) -> dict:
    """Draw the PNGs (bench.plots, in the venv that has matplotlib); {"files"} or {"error"}."""
    if python is None:
        return {"error": "matplotlib is not available (see tool notes)", "files": []}
    try:
        r = procs.run([python, "-m", "bench.plots", results_dir], timeout=PLOT_TIMEOUT_S,
                      cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"bench.plots timed out after {PLOT_TIMEOUT_S}s", "files": []}
    if r.returncode != 0:
        error = (r.stderr or r.stdout).strip()[-500:]
        say(f"plots failed: {error.splitlines()[-1] if error else r.returncode}")
        return {"error": error, "files": []}
    return {"files": json.loads(r.stdout)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
