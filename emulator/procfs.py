"""Memory of a runtime's process tree, read from /proc (Linux).

Lambda's REPORT line gives the sandbox's peak memory. The closest local figure is the sum of the
per-process peaks (`VmHWM`) over the runtime's process tree; the sum of current `VmRSS` is what a
leak check wants. Both are read without extra dependencies.
"""

from __future__ import annotations

from pathlib import Path

_PROC = Path("/proc")


def _parent_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may itself hold spaces or parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    children = _parent_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB summed over `pids`; processes that are gone count zero.

    Reading a few status files is cheap; finding the tree (`process_tree`) scans all of /proc,
    so callers refresh the pid list only now and then.
    """
    rss = sum(_status_kb(p, "VmRSS") for p in pids) / 1024
    peak = sum(_status_kb(p, "VmHWM") for p in pids) / 1024
    return rss, peak
