#!/usr/bin/env python3
"""Redis-side cost of the enqueue script per job, for versions of it side by side.

    python3 bench/tools/enqueue_script_cost.py PORT ROUNDS NAME=REV [NAME=REV ...]

Run from the repository root. REV is a git revision, `.` for the working tree, or an
absolute path to a directory holding the scripts (a variant being tried). Each round, for
each version in turn: FLUSHALL, CONFIG RESETSTAT, then 200 script calls of 500 research
jobs (one agent, no batch, UUIDs in creation order like v7), and the EVALSHA time from
INFO commandstats divided by the 100,000 jobs. With PER_CALL=n in the environment, calls
of n jobs instead of 500 (PER_CALL=1: enqueue one at a time, 10,000 calls). Needs a redis-server of your own on
127.0.0.1:PORT (e.g. `redis-server --port PORT --save '' --appendonly no`): it is
flushed. A version before the listing indexes (no `_index.lua`) is called without the
index tail and membership arguments, as it was.
"""
import json
import socket
import subprocess
import sys
import os
import uuid

LUA = "shared/src/queue/lua/"
P = "fleet:{research}:"


def source(rev, name):
    if rev == "." or rev.startswith("/"):
        # the working tree, or a directory holding the scripts (a variant to try)
        path = LUA + name if rev == "." else os.path.join(rev, name)
        try:
            return open(path).read()
        except FileNotFoundError:
            return None
    r = subprocess.run(["git", "show", f"{rev}:{LUA}{name}"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def script(rev):
    # the order scripts.rs loads them in
    parts = [source(rev, n) for n in ("_index.lua", "_lib.lua", "_results.lua", "enqueue-n.lua")]
    # the index tail: ten keys with an `ix:running`, nine since `running` is read from
    # `active`; None before the indexes
    tail = None
    if parts[0] is not None:
        statuses = "queued retrying succeeded failed dead cancelled ended"
        if "ix:running" in parts[0]:
            statuses = "queued running retrying succeeded failed dead cancelled ended"
        tail = [P + "ix:" + s for s in statuses.split()] + [P + "hist:cur", P + "hist:log"]
    return "\n".join(p for p in parts if p is not None), tail


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.s.sendall(b"".join(out))
        return self.read()

    def read(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected reply {line!r}")


def main():
    port, rounds = int(sys.argv[1]), int(sys.argv[2])
    per_call = int(os.environ.get("PER_CALL", "500"))
    calls = 200 if per_call == 500 else max(1, (10_000 if per_call == 1 else 100_000) // per_call)
    jobs = calls * per_call
    versions = [a.split("=", 1) for a in sys.argv[3:]]
    c = Conn(port)
    loaded = {}
    for name, rev in versions:
        body, tail = script(rev)
        loaded[name] = (c.cmd("SCRIPT", "LOAD", body).decode(), tail)
    spec = json.dumps({"payload": {"kind": "research", "agent": "dexter",
                                   "query": "What was Acme's revenue in 2023, quarter by quarter?"},
                       "options": {}})
    counter = 0x0190_0000_0000_7000_8000_0000_0000_0000
    results = {name: [] for name, _ in versions}
    for _ in range(rounds):
        for name, _ in versions:
            sha, tail = loaded[name]
            c.cmd("FLUSHALL")
            c.cmd("CONFIG", "RESETSTAT")
            for _ in range(calls):
                ids = []
                for _ in range(per_call):
                    counter += 1
                    ids.append(str(uuid.UUID(int=counter)))
                keys = [P + "wait", P + "delayed", P + "marker"] + [P + "job:" + i for i in ids]
                if tail:
                    keys += [P + "ix:agent:dexter"] + tail
                    argv = [P, "0", "4", "1"]
                    for i in ids:
                        argv += [i, spec, "3\t0", "agent:dexter"]
                else:
                    argv = [P, "0", "3"]
                    for i in ids:
                        argv += [i, spec, "3\t0"]
                c.cmd("EVALSHA", sha, len(keys), *keys, *argv)
            assert int(c.cmd("LLEN", P + "wait")) == jobs
            stats = c.cmd("INFO", "commandstats").decode()
            line = next(l for l in stats.splitlines() if l.startswith("cmdstat_evalsha:"))
            results[name].append(int(line.split("usec=")[1].split(",")[0]) / jobs)
    for name, xs in results.items():
        median = sorted(xs)[len(xs) // 2]
        runs = " ".join(f"{x:.2f}" for x in xs)
        print(f"{name}: {median:.2f} µs per job in the script (median; runs {runs})")


if __name__ == "__main__":
    main()
