"""Commands about task records: tasks ls, tasks show, tasks why, tasks forget."""

from __future__ import annotations

import argparse
import json
import time

from ..runtime.provenance import (
    imported_dict,
    resolve_function,
    resolve_task_id,
    run_dict,
    show,
)
from . import command
from .args import arg, json_flag, whole_number


def _records():
    from ..runtime import cache

    return cache.current().records


def _t(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _dur(d: float | None) -> str:
    if d is None:
        return "-"
    return f"{d * 1000:.0f} ms" if d < 1 else f"{d:.2f} s"


def _ls(args: argparse.Namespace) -> int:
    records = _records()
    function = resolve_function(records, args.function) if args.function else None
    if args.imported:
        return _ls_imported(records, function, args)
    runs = records.latest_runs(function=function, limit=args.limit)
    if args.json:
        print(json.dumps([run_dict(r) for r in runs], indent=2))
        return 0
    if not runs:
        elsewhere = records.imported_count()
        print("no task runs recorded on this node" + (
            f"; {elsewhere} outcome(s) computed by other nodes are: 'kachery-tasks tasks ls "
            "--imported' lists them" if elsewhere else ""))
        return 0
    print(f"{'TASK ID':<23} {'KIND':<6} {'STATUS':<9} {'FINISHED':<19} {'TIME':>9}  FUNCTION")
    for r in runs:
        print(f"{r.task_id[:23]} {r.kind:<6} {r.effective_status():<9} {_t(r.finished):<19} "
              f"{_dur(r.duration):>9}  {r.function}")
    return 0


def _ls_imported(records, function: str | None, args: argparse.Namespace) -> int:
    """``tasks ls --imported``: the outcomes other nodes computed, recorded here."""
    from ..runtime import cache

    rows = records.imported(function=function, limit=args.limit)
    if args.json:
        print(json.dumps([imported_dict(r) for r in rows], indent=2))
        return 0
    if not rows:
        print("no outcome computed by another node is recorded on this node")
        return 0
    labels = _labels(cache.current().node, {r.node for r in rows})
    print(f"{'TASK ID':<23} {'KIND':<6} {'STATUS':<9} {'FINISHED':<19}  FUNCTION  (COMPUTED BY)")
    for r in rows:
        print(f"{r.task_id[:23]} {r.kind:<6} {r.status:<9} {_t(r.finished):<19}  "
              f"{r.function}  ({labels[r.node] or f'node {r.node[:12]}...'})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..runtime import cache

    records = _records()
    tid = resolve_task_id(records, args.task_id)
    info = show(records, tid)
    served = info.get("served")
    label = None
    if served is not None:
        signer = served["node"]
        label = info["signer_label"] = _labels(cache.current().node, [signer])[signer]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    runs = info["runs"]
    last = runs[0] if runs else None
    print(f"task:      {tid}")
    if last is not None:
        print(f"function:  {last['function']} ({last['kind']}"
              + (f", version {last['version']}" if last["version"] else
                 f", code {(last['code_hash'] or '')[:12]}") + ")")
        print("arguments:")
        for name, summary in last["args"].items():
            print(f"  {name} = {summary}")
        if last["inputs"]:
            print("inputs:")
            for uri in last["inputs"]:
                print(f"  {uri}")
    elif served is not None:  # computed elsewhere: no run here
        print(f"function:  {served['function']} ({served['kind']})")
        print("arguments: not recorded here ('kachery-tasks tasks show' on the node that "
              "computed it lists them)")
    if served is not None:
        what = info["served_result"] or f"outcome {served['status']}"
        print(f"result:    {what}" + (f" ({served['codec']})" if served["codec"] else ""))
        if served["node"] == cache.current().node_id:
            whose = "this node"
        else:
            whose = f"computed by {label or 'another node'}" + (
                "; signed record" if served["kind"] == "pure" else "; sent by the provider")
        print(f"signer:    node {served['node']} ({whose})")
    else:
        print("result:    none served (never succeeded, or forgotten)")
    if runs:
        print(f"runs:      {len(runs)}")
    else:
        print("runs:      none on this node" + (
            f" (computed by {label or 'another node'})"
            if served is not None and served["node"] != cache.current().node_id else ""))
    for r in runs:
        line = (f"  {_t(r['started'])}  {r['status']:<9} {_dur(r['duration']):>9}  "
                f"node {r['node'][:12]} pid {r['pid']} on {r['host']}")
        print(line + (f"  [{r['reason']}]" if r["reason"] not in ("miss",) else ""))
        if r["error"]:
            print(f"    error: {r['error']}")
    for asked in info["asked_by"]:
        print(f"asked by:  {asked['label'] or '?'} ({asked['requester'][:16]}...) on channel "
              f"{asked['channel']} at {_t(asked['received'])}: {asked['outcome']}")
    print("called:" if info["called"] else "called:    nothing")
    for c in info["called"]:
        print(f"  {c['task_id']}  {c['function'] or '?'}")
    print("called by:" if info["called_by"] else "called by: nothing")
    for p in info["called_by"]:
        print(f"  {p['task_id']}  {p['function'] or '?'}")
    return 0


def _labels(node, members) -> dict[str, str | None]:
    """Who each of ``members`` is in ``node``'s channels (ChannelStore.member_labels)."""
    from ..network.channels.store import ChannelStore

    return ChannelStore(node.dir).member_labels(members)


def _why(args: argparse.Namespace) -> int:
    from ..runtime.records import why

    records = _records()
    function = resolve_function(records, args.function)
    report = why(records, function)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    if report.last is not None:
        print(f"last run of {function}: {report.last.task_id} at {_t(report.last.started)}")
    if report.previous is not None:
        print(f"compared with:  {report.previous.task_id} at {_t(report.previous.started)}")
    for reason in report.reasons:
        print(f"  - {reason}")
    return 0


def _forget(args: argparse.Namespace) -> int:
    records = _records()
    tid = resolve_task_id(records, args.task_id)
    dropped = records.forget(tid)
    if dropped:
        from ..runtime import cache

        cache.current().invalidate(tid)  # processes that memoised it drop it
    print(f"forgot {tid}" if dropped else f"{tid} had no served result")
    return 0


COMMANDS = (
    command(
        "tasks", "List and explain the task runs recorded on this node.",
        "kachery-tasks tasks ls --function mylab.pipeline.bandpass",
        actions=[
            command(
                "ls", "List recorded tasks, newest first (the latest run of each task id).",
                "kachery-tasks tasks ls --function bandpass --limit 20",
                "Status is success, error, running or abandoned (its process died mid-run).",
                args=[
                    arg("--function",
                        help="only this function (module.qualname, or its last part)"),
                    arg("--limit", type=whole_number(1), default=50,
                        help="at most this many rows (default 50)"),
                    arg("--imported", action="store_true",
                        help="list the outcomes other nodes computed that are recorded here "
                             "(from a shared bucket, or sent by a channel's provider), with "
                             "who computed each"),
                    json_flag(),
                ],
                run=_ls,
            ),
            command(
                "show",
                "Show one task: inputs, result, timings, what it called and what called it.",
                "kachery-tasks tasks show sha256:3f2a9c",
                "ID may be a unique prefix of the task id, with or without 'sha256:'.",
                args=[arg("task_id", metavar="ID"), json_flag()],
                run=_show,
            ),
            command(
                "why", "Explain why the last call of a function missed the cache.",
                "kachery-tasks tasks why mylab.pipeline.bandpass",
                "Compares the parts of the task id of the last run with the run before it:\n"
                "version, code hash and each argument.",
                args=[
                    arg("function", metavar="FUNC", help="module.qualname, or its last part"),
                    json_flag(),
                ],
                run=_why,
            ),
            command(
                "forget",
                "Stop serving the recorded result of a task (it is recomputed next time).",
                "kachery-tasks tasks forget sha256:3f2a9c",
                args=[arg("task_id", metavar="ID")],
                run=_forget,
            ),
        ],
    ),
)
