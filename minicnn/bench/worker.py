"""The worker side: the command loop of ``python -m minicnn.bench --worker``.

The parent (:class:`minicnn.bench.processes.Worker`) sends one JSON command a line; the worker
sets up the cases it names and answers each command on one line of stdout, after ``MARK``.
"""

import json
import sys
import time

from .kernel_cases import KernelRunner
from .processes import MARK, peak_rss_mb
from .training_cases import ModelRunner


def serve():
    """Answer the parent's JSON commands on stdin, one line each: setup, time, rss, quit."""
    runner = None
    out = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        reply = {}
        try:
            if cmd["cmd"] == "kernels":
                runner = KernelRunner(cmd["lib"])
                for case in cmd["cases"]:
                    runner.setup(case)
                    runner.calls[case["name"]]()   # compile / warm up
            elif cmd["cmd"] == "model":
                t0 = time.perf_counter()
                runner = ModelRunner(cmd["lib"], cmd["model"], cmd["batch"], cmd["mode"])
                runner.call()
                reply["first_call_s"] = time.perf_counter() - t0
                for _ in range(cmd.get("warmup", 2)):
                    runner.call()
            elif cmd["cmd"] == "time":
                fn = runner.calls[cmd["case"]] if cmd.get("case") else runner.call
                times = []
                for _ in range(cmd["reps"]):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                reply["times"] = times
            elif cmd["cmd"] == "rss":
                reply["maxrss_mb"] = peak_rss_mb()
            elif cmd["cmd"] == "quit":
                break
        except Exception as err:   # reported to the parent, which says which case failed
            reply["error"] = f"{type(err).__name__}: {err}"
        out.write(MARK + json.dumps(reply) + "\n")
        out.flush()
