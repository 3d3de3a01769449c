"""Turn a run's results into markdown tables, the docs page section and a chart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .fairness import DELAY

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
OURS = "distlock_async"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return [_row(*header), _row(*["---"] * len(header)), *(_row(*r) for r in rows)]


def _ok(met: bool) -> str:
    return "met" if met else "**missed**"


def _targets(backend: str, data: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    a, b, c, d, e = (data.get(k, {}) for k in "ABCDE")
    floor = 0.9 if backend == "redis" else 0.8
    for label, scenario in (("A", a), ("B", b)) if backend == "redis" else (("A", a),):
        if OURS in scenario:
            ratio = scenario[OURS]["ratio_to_raw"]
            rows.append([label, f">= {floor:.2f}x raw cycles/s", f"{ratio:.2f}x", _ok(ratio >= floor)])
    if OURS in c:
        ours = c[OURS]
        if backend == "redis":
            prl = c.get("python-redis-lock")
            if prl:
                ratio = ours["handoffs_per_s"] / max(prl["handoffs_per_s"], 1e-9)
                rows.append(["C", "hand-offs >= 0.9x python-redis-lock's", f"{ratio:.2f}x", _ok(ratio >= 0.9)])
            wait_bound, fairness = 50, 0.7
        else:
            raw = c.get("raw")
            if raw:
                ratio = ours["acquisitions_per_s"] / max(raw["acquisitions_per_s"], 1e-9)
                rows.append(["C", "acquisitions/s >= 0.8x raw's", f"{ratio:.2f}x", _ok(ratio >= 0.8)])
            wait_bound, fairness = 100, 0.9
        p99 = ours["wait_p99_ms"]
        rows.append(["C", f"wait p99 <= {wait_bound} ms", f"{p99:.1f} ms", _ok(p99 <= wait_bound)])
        fair = ours["min_over_max"]
        rows.append(["C", f"per-task min/max >= {fairness}", f"{fair:.2f}", _ok(fair >= fairness)])
        rows.append(["C", "0 violations", ours["violations"], _ok(ours["violations"] == 0)])
    f = data.get("F", {})
    if OURS in f and backend == "redis":
        # Issue 13's targets: fair across processes, one of them farther from the server.
        ours = f[OURS]
        fair, far = ours["min_over_max"], ours["far_share_vs_fair"]
        rows.append(["F", "per-process min/max share >= 0.8", f"{fair:.2f}", _ok(fair >= 0.8)])
        rows.append(["F", "far process's share 0.8-1.25x fair", f"{far:.2f}x", _ok(0.8 <= far <= 1.25)])
        bound = 3 * ours["ideal_wait_ms"]
        p99 = ours["wait_p99_ms"]
        rows.append(
            ["F", "wait p99 <= 3x the ideal queue wait", f"{p99:.0f} ms (3x ideal: {bound:.0f})", _ok(p99 <= bound)]
        )
        if OURS in c:
            c_rate = max(c[OURS]["handoffs_per_s"], 1e-9)
            ratio = ours["handoffs_per_s"] / c_rate
            rows.append(["F", "hand-offs/s >= 0.9x C's (one locker)", f"{ratio:.2f}x", _ok(ratio >= 0.9)])
            # What any lock can do while the far process has its measured share: each of its turns leaves
            # the lock unused for a trip to it and one back (see the notes below the tables).
            far_share = next(p["share"] for p in ours["per_process"] if p["far"])
            bound = 1 / (1 / c_rate + far_share * 2 * DELAY)
            rows.append(
                [
                    "F",
                    "(no target) any lock's bound: C's hand-off time + far share x 2 x delay",
                    f"{ours['handoffs_per_s']:.0f}/s of {bound:.0f}/s ({bound / c_rate:.2f}x C): "
                    f"{ours['handoffs_per_s'] / bound:.2f}",
                    "",
                ]
            )
        rows.append(["F", "0 overlaps", ours["violations"], _ok(ours["violations"] == 0)])
    if OURS in d:
        ours = d[OURS]
        if backend == "redis":
            per, idle = ours["commands_per_cycle"], ours["commands_while_idle"]
            rows.append(
                ["D", "2 commands per cycle, 0 while idle", f"{per:.2f}; {idle:.1f}/s", _ok(per == 2 and idle == 0)]
            )
        else:
            per, left = ours["rpcs_per_cycle"], ours["leases_left"]
            rows.append(["D", "<= 3 RPCs per cycle; 0 leases left", f"{per:.2f}; {left}", _ok(per <= 3 and left == 0)])
    if e:
        left = {k: v for k, v in e.items() if k.endswith("_left")}
        bound = 2 if backend == "redis" else 1_000_000  # pool size + 1 (Redis); watches are not connections
        ok = e["served"] == e["waiters"] and not any(left.values()) and e["peak"] <= bound
        rows.append(
            [
                "E",
                "every waiter served; " + ("connections <= pool + 1; " if backend == "redis" else "") + "nothing left",
                f"{e['served']:,}/{e['waiters']:,} served, peak {e['peak']} {e['peak_means']}, "
                + ", ".join(f"{v} {k.removesuffix('_left').replace('_', ' ')} left" for k, v in left.items()),
                _ok(ok),
            ]
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [
        f"Run of {m['date']} on {m['cpu']} ({m['cores']} cores), {m['os']}, Python {m['python']}; "
        f"Redis {m['redis']}; etcd {m.get('etcd', '?')} (fsync on, default raft timers); {pkgs}.",
        "",
    ]
    for backend in ("redis", "etcd"):
        data = results.get(backend)
        if not data:
            continue
        title = "Redis" if backend == "redis" else "etcd"
        lines += [f"### {title}", ""]
        if "cleaned_between_rounds" in data:
            lines += [
                f"Before each adapter's round of A, B and C, every lease that backed no key was revoked, as an "
                f"operator cleaning leaked leases would ({data['cleaned_between_rounds']} in this run): the "
                "peers' leaked leases and the lockers' kept ones, which their next obtains then find gone.",
                "",
            ]
        targets = _targets(backend, data)
        if targets:
            lines += ["Targets:", "", *_table(["scenario", "target", "measured", "verdict"], targets), ""]
        a, b = data.get("A", {}), data.get("B", {})
        lines += [
            "A (one task, uncontended) and B (64 tasks, distinct keys): obtain + release cycles per second, "
            "median over rounds of the ratio to raw in the same round.",
            "",
            *_table(
                ["lock", "A cycles/s", "A vs raw", "A client CPU µs/cycle", "B cycles/s", "B vs raw"],
                [
                    [
                        name,
                        f"{a[name]['cycles_per_s']:.0f}",
                        f"{a[name]['ratio_to_raw']:.2f}x",
                        f"{a[name]['cpu_us_per_cycle']:.0f}",
                        f"{b[name]['cycles_per_s']:.0f}" if name in b else "",
                        f"{b[name]['ratio_to_raw']:.2f}x" if name in b else "",
                    ]
                    for name in a
                ],
            ),
            "",
        ]
        c = data.get("C", {})
        if c:
            lines += [
                "C (8 tasks on one key, hold 1 ms, contend again): medians over rounds; violations summed.",
                "",
                *_table(
                    ["lock", "acq/s", "hand-offs/s", "gap p50/p99 ms", "wait p50/p99/max ms", "min/max", "violations"],
                    [
                        [
                            name,
                            f"{r['acquisitions_per_s']:.0f}",
                            f"{r['handoffs_per_s']:.0f}",
                            f"{r['gap_p50_ms']:.1f} / {r['gap_p99_ms']:.1f}",
                            f"{r['wait_p50_ms']:.1f} / {r['wait_p99_ms']:.1f} / {r['wait_max_ms']:.0f}",
                            f"{r['min_over_max']:.2f}",
                            r["violations"],
                        ]
                        for name, r in c.items()
                    ],
                ),
                "",
            ]
        d = data.get("D", {})
        if d:
            columns = list(next(iter(d.values())))
            lines += [
                "D: what the server counted per uncontended cycle (Redis: client commands seen by `MONITOR`; "
                "etcd: gRPC calls and raft proposals from `/metrics`), and while idle.",
                "",
                *_table(
                    ["lock", *[c.replace("_", " ") for c in columns]],
                    [[n, *(f"{r[c]:.2f}" if isinstance(r[c], float) else r[c] for c in columns)] for n, r in d.items()],
                ),
                "",
            ]
        f = data.get("F", {})
        if f:
            lines += [
                "F (4 processes x 2 tasks, each process with its own locker, on one key, hold 1 ms; the last "
                "process reaches the server through a proxy adding 2 ms each way): each process's share of the "
                "acquisitions (fair: 0.25; * the far one), the far one's share against fair, waits (a wait "
                "still going at the end counts), the ideal queue wait ((contenders - 1) x (hold + hand-off gap)), "
                "acquisitions that gave up, sections that overlapped.",
                "",
                *_table(
                    [
                        "lock",
                        "shares",
                        "far vs fair",
                        "wait p50 near / far ms",
                        "wait p99 / max ms",
                        "ideal ms",
                        "hand-offs/s",
                        "gave up",
                        "overlaps",
                    ],
                    [
                        [
                            name,
                            " ".join(f"{p['share']:.2f}{'*' if p['far'] else ''}" for p in r["per_process"]),
                            f"{r['far_share_vs_fair']:.2f}x",
                            f"{_near_p50(r):.0f} / {_far(r)['wait_p50_ms']:.0f}",
                            f"{r['wait_p99_ms']:.0f} / {r['wait_max_ms']:.0f}",
                            f"{r['ideal_wait_ms']:.0f}",
                            f"{r['handoffs_per_s']:.0f}",
                            r["gave_up"],
                            r["violations"],
                        ]
                        for name, r in f.items()
                    ],
                ),
                "",
            ]
        sem = data.get("S")
        if sem:
            lines += [
                "S (a semaphore of 4 permits; 4 processes x 4 tasks, each process with its own locker, hold 1 ms): "
                "permits per second against the server's raw bound (limit / (hold + 2 round trips), the round "
                "trip measured in the same run), the most permits held at one instant, the processes' min/max "
                "share, waits.",
                "",
                *_table(
                    ["permits/s", "raw bound/s", "of bound", "most held", "min/max share", "wait p50 / p99 / max ms"],
                    [
                        [
                            f"{sem['permits_per_s']:.0f}",
                            f"{sem['raw_bound_per_s']:.0f}",
                            f"{sem['of_bound']:.2f}",
                            f"{sem['most_held_at_once']} of {sem['limit']}",
                            f"{sem['min_over_max']:.2f}",
                            f"{sem['wait_p50_ms']:.1f} / {sem['wait_p99_ms']:.1f} / {sem['wait_max_ms']:.0f}",
                        ]
                    ],
                ),
                "",
            ]
        failover = data.get("L")
        if failover:
            lines += [
                f"L (election failover: the leader's process killed with SIGKILL, TTL {failover['ttl_s']:g} s, "
                f"{failover['runs']} runs): an observer in another process saw the next candidate lead after "
                f"{failover['failover_median_s']:.2f} s (median), {failover['failover_max_s']:.2f} s at most.",
                "",
            ]
        e = data.get("E")
        if e:
            left = ", ".join(
                f"{v} {k.removesuffix('_left').replace('_', ' ')}" for k, v in e.items() if k.endswith("_left")
            )
            lines += [
                f"E: {e['waiters']:,} waiting tasks over {e['keys']:,} keys on one locker: {e['served']:,} served in "
                f"{e['wall_s']:.1f} s; peak {e['peak']} {e['peak_means']} beyond those before; peak RSS "
                f"{e['peak_rss_mib']:.0f} MiB; left afterwards: {left}.",
                "",
            ]
        if data.get("skipped"):
            lines += [f"Not measured: {', '.join(f'{k} ({v})' for k, v in data['skipped'].items())}.", ""]
    return "\n".join(lines)


def _far(result: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in result["per_process"] if p["far"])


def _near_p50(result: dict[str, Any]) -> float:
    """The median of the near processes' median waits."""
    near = sorted(p["wait_p50_ms"] for p in result["per_process"] if not p["far"])
    return near[len(near) // 2] if near else 0.0


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = [b for b in ("redis", "etcd") if results.get(b)]
    fig, axes = plt.subplots(len(backends), 2, figsize=(11, 3.6 * len(backends)), squeeze=False)
    for row, backend in zip(axes, backends, strict=True):
        data = results[backend]
        names = list(data["A"])
        width = 0.4
        xs = range(len(names))
        row[0].bar([x - width / 2 for x in xs], [data["A"][n]["ratio_to_raw"] for n in names], width, label="A: 1 task")
        row[0].bar(
            [x + width / 2 for x in xs], [data["B"][n]["ratio_to_raw"] for n in names], width, label="B: 64 tasks"
        )
        row[0].axhline(1.0, color="grey", linewidth=0.8)
        row[0].set_xticks(list(xs), names, rotation=20, ha="right", fontsize=8)
        row[0].set_ylabel("cycles/s vs raw")
        row[0].set_title(f"{backend}: uncontended throughput")
        row[0].legend(fontsize=8)
        c = data.get("C", {})
        cn = list(c)
        xs2 = range(len(cn))
        row[1].bar([x - width / 2 for x in xs2], [max(c[n]["wait_p99_ms"], 0.01) for n in cn], width, label="p99")
        row[1].bar([x + width / 2 for x in xs2], [max(c[n]["wait_max_ms"], 0.01) for n in cn], width, label="max")
        row[1].set_xticks(list(xs2), cn)
        row[1].set_yscale("log")
        row[1].set_ylabel("wait, ms (log)")
        row[1].legend(fontsize=8)
        row[1].set_title(f"{backend}: C, 8 tasks on one key")
        row[1].tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(results: dict[str, Any], page: Path, image: Path) -> None:
    """Replace the generated section of the docs page and redraw the chart."""
    text = page.read_text()
    body = f"{START}\n{markdown(results)}\n{END}"
    text, n = re.subn(re.escape(START) + ".*?" + re.escape(END), lambda _: body, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{page}: expected one pair of {START} ... {END} markers")
    page.write_text(text)
    chart(results, image)
