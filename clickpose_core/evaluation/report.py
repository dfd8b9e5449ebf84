"""Plain-text table of evaluation results (one row per mode)."""
from __future__ import annotations

from typing import Sequence


def format_table(results: Sequence[dict]) -> str:
    """Keypoint AP after each k clicks, NoC per threshold and box AP/AP_M/AP_L per k, per mode."""
    if not results:
        return "(no results)"
    union = lambda key: sorted({k for r in results for k in r[key]}, key=lambda k: (len(k), k))
    ks, box_ks, nocs = union("keypoint_ap"), union("box_ap"), union("noc")
    def pct(d: dict, k: str, m: str) -> str:
        if k not in d:
            return "-"
        # COCOeval reports -1 for a size range with no ground truth: there is nothing to score.
        return f"{100 * d[k][m]:.1f}" if d[k][m] >= 0 else "n/a"

    head = ["mode"] + [f"AP@{k}clk" for k in ks] + nocs
    head += [f"box{m}@{k}" for k in box_ks for m in ("AP", "AP_M", "AP_L")]
    rows = []
    for r in results:
        row = [r["mode"]] + [pct(r["keypoint_ap"], k, "AP") for k in ks]
        row += [f"{r['noc'][n]['noc']:.2f}" if n in r["noc"] else "-" for n in nocs]
        row += [pct(r["box_ap"], k, m) for k in box_ks for m in ("AP", "AP_M", "AP_L")]
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd) in enumerate(zip(cells, widths)))
    out = [line(head), line(["-" * wd for wd in widths])] + [line(r) for r in rows]
    n = results[0]
    out.append(f"images: {n['images']}; NoC = feedback rounds (one click per matched person per round) "
               f"until the image's keypoint AP >= threshold, capped at {n['max_rounds']}")
    return "\n".join(out)
