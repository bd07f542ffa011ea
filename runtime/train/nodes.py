"""The worker's side of a run on several nodes (torchrun's c10d rendezvous, by hand or under Slurm). Light: no torch.

After the rendezvous each process knows its node (GROUP_RANK). Every process records where it runs
(`rank-logs/rank-R.json`: node, host, its pid and its launcher's); the first process of each node links that node's
launcher output as `rank-logs/node-N.log`, and rank 0 links node 0's as `train.log`. When a node is lost, the
survivors read those records to name it: a record on this host whose processes are gone, else the host in the
communication error, else the only other node.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from ftune.runtime.files import write_atomic
from ftune.runtime.rundir import RunDir

# how a lost peer shows in torch.distributed (gloo and NCCL) errors
PEER_LOST = re.compile(r"connection (closed|reset) by peer|broken pipe|connection refused|socket timeout|"
                       r"timed out|ncclRemoteError|remote process exited|DistNetworkError|DistBackendError", re.IGNORECASE)


def where() -> dict[str, int]:
    """This process's place in a torchrun group, from the environment torchrun sets."""
    env = os.environ
    world, local_world = int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_WORLD_SIZE", "1"))
    return {"rank": int(env.get("RANK", "0")), "node": int(env.get("GROUP_RANK", "0")),
            "local_rank": int(env.get("LOCAL_RANK", "0")), "nodes": max(1, world // max(1, local_world)),
            "restart": int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))}


def logs_dir(run: RunDir) -> Path:
    return run.path / "rank-logs"


def join(run: RunDir) -> dict[str, int]:
    """Record this process (rank-R.json) and link its node's log; returns `where()`."""
    me = where()
    folder = logs_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    record = {**me, "host": socket.gethostname(), "pid": os.getpid(), "launcher_pid": os.getppid()}
    write_atomic(folder / f"rank-{me['rank']}.json", json.dumps(record) + "\n")
    launcher_log = _launcher_output()
    if me["local_rank"] == 0 and launcher_log is not None:
        _link(folder / f"node-{me['node']}.log", launcher_log)
        if me["rank"] == 0:
            _link(run.log_path, launcher_log)
    return me


def _launcher_output() -> Path | None:
    """The file the launcher (torchrun's agent, this process's parent) writes its output to, where it is one."""
    try:
        target = Path(os.readlink(f"/proc/{os.getppid()}/fd/1"))
    except OSError:
        return None
    return target if target.is_absolute() and target.is_file() else None


def _link(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(target, link.parent))
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)


def records(run: RunDir, world: int) -> list[dict[str, Any]]:
    """Every rank's record of this attempt (ranks below the world size; a stale file from a bigger run is left)."""
    out = []
    for rank in range(world):
        try:
            out.append(json.loads((logs_dir(run) / f"rank-{rank}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def lost_nodes(run: RunDir, exc: BaseException, world: int) -> list[dict[str, Any]]:
    """The nodes this process can tell are gone, each {node, host, ranks}: empty when it cannot tell."""
    me = where()
    nodes: dict[int, dict[str, Any]] = {}
    for r in records(run, world):
        n = nodes.setdefault(r["node"], {"node": r["node"], "host": r.get("host"), "ranks": [], "dead": False})
        n["ranks"].append(r["rank"])
        if r.get("host") == socket.gethostname() and not (_alive(r.get("pid")) and _alive(r.get("launcher_pid"))):
            n["dead"] = True
    others = [n for k, n in sorted(nodes.items()) if k != me["node"]]
    dead = [n for n in others if n["dead"]]
    if dead:
        return dead
    text = f"{type(exc).__name__}: {exc}"
    if not PEER_LOST.search(text):
        return []
    by_address = [n for n in others if n["host"] and _address(n["host"]) and _address(n["host"]) in text
                  and _address(n["host"]) != _address(socket.gethostname())]
    if by_address:
        return by_address
    return others if len(others) == 1 else []


def _address(host: str) -> str | None:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def lost_node_error(run: RunDir, exc: BaseException, world: int, last_step: int | None) -> tuple[str, str] | None:
    """The error event's message and hint when a node was lost, naming it and the last step; None otherwise."""
    me = where()
    if me["nodes"] < 2 or run.read_status().get("state") == "failed":  # a rank that failed has said why already
        return None
    lost = lost_nodes(run, exc, world)
    if not lost:
        return None
    names = ", ".join(f"node {n['node']} ({n['host']}, rank{'s' if len(n['ranks']) > 1 else ''} "
                      f"{', '.join(map(str, sorted(n['ranks'])))})" for n in lost)
    at = f"after step {last_step}" if last_step else "before the first step"
    message = f"{names} stopped answering {at}; the run cannot go on without it"
    latest = run.latest_checkpoint()
    logs = ", ".join(f"rank-logs/node-{n['node']}.log" for n in lost)
    again = (f"continue from the checkpoint at step {latest[0]} with `ftune train {run.name} --resume` on every node"
             if latest else f"start it again with `ftune train {run.name}` on every node")
    hint = (f"See {logs} (on a shared disk) for why it stopped; {again}. resources.max_restarts lets torchrun "
            f"restart by itself, and resources.min_nodes go on with fewer nodes.")
    return message, hint
