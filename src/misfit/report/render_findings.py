"""The findings section, formatted from results.json alone (no computing here)."""
from __future__ import annotations

import math

from misfit.report.claims import FAILS, HOLDS

MARK = {HOLDS: "✔ holds", FAILS: "✘ does not hold"}


def effect_text(entry: dict, cell: str | None = None) -> str:
    """A comparison from `cell`'s side: the difference (accuracy points) or ratio (MSE), its
    simultaneous interval, the verdict, and the draws it pools."""
    if entry["kind"] == "modes":
        return (f"learned in {_share(entry['learned'][entry['cell']])} vs {_share(entry['learned'][entry['other']])} "
                f"(p_adj {_p(entry['p_adjusted'])}: {entry['verdict']})")
    flip = cell is not None and cell != entry["cell"]
    low, high = entry["interval"]
    estimate = entry["estimate"]
    if entry["metric"] == "accuracy":
        sign = -1 if flip else 1
        a, b = sorted((sign * low * 100, sign * high * 100))
        text = f"{sign * estimate * 100:+.2f} points [{a:+.2f}, {b:+.2f}]"
    else:
        if flip:
            estimate, low, high = 1 / estimate, 1 / high, 1 / low
        text = f"MSE ×{estimate:.3f} [{low:.3f}, {high:.3f}]"
    text += f", {entry['verdict']}"
    if entry.get("runs_to_decide"):
        text += f" (≈{entry['runs_to_decide']} runs per cell would decide it)"
    elif entry.get("why_no_runs"):
        text += f" ({entry['why_no_runs']})"
    return text


def _share(learned: dict) -> str:
    return f"{learned['learned']}/{learned['trials']} {learned['unit']}s"


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def claim_lines(claims: list[dict]) -> list[str]:
    lines = ["| claim (source) | verdict | the effect, over every draw | what it rests on |", "|---|---|---|---|"]
    for claim in claims:
        verdict = MARK.get(claim["verdict"], "? " + claim["verdict"])
        effects = []
        for entry in claim["deciding"][:3]:
            if entry:
                effects.append(f"`{entry['cell']}` vs `{entry['other']}`: {effect_text(entry)}")
        more = f" (+{len(claim['deciding']) - 3} more in results.json)" if len(claim["deciding"]) > 3 else ""
        decide = ""
        if claim["verdict"] not in MARK:
            decide = (f"; ≈{claim['runs_to_decide']} runs per cell would decide it" if claim.get("runs_to_decide")
                      else f"; {claim['why_no_runs']}" if claim.get("why_no_runs") else "")
        lines.append(f"| {claim['says']} ({claim['source']}) | **{verdict}** | "
                     f"{'<br>'.join(effects) or claim['reason']}{more} | {claim['reason']}{decide} |")
    return lines


GROUPED = ("never learns", "ceiling", "outputs outside [0, 1]", "poorly calibrated")


def grouped_lines(kind: str, found: list[dict]) -> list[str]:
    """The findings of one kind, one per cell, as one bullet (poor calibration: one per reference)."""
    if kind == "never learns":
        cells = "; ".join(f"`{f['cell']}`, 0/{f['learned']['trials']} {f['learned']['unit']}s ("
                          + "; ".join(f"{m}: {', '.join(d)}" for m, d in f["modes"].items()) + ")" for f in found)
        return [f"- **No run learned**: {cells}."]
    if kind == "ceiling":
        whys = " ".join(dict.fromkeys(f"{f['why'][0].upper()}{f['why'][1:]}." for f in found))
        cells = "; ".join(f"`{f['cell']}` cannot pass {f['ceiling'] * 100:.2f}%, its best run "
                          f"{f['best_run'] * 100:.2f}%" for f in found)
        return [f"- **A ceiling**: {cells}. {whys}"]
    if kind == "outputs outside [0, 1]":
        cells = "; ".join(f"`{f['cell']}` a median {f['share']['median']:.1%} (up to {f['share']['max']:.1%})"
                          for f in found)
        return [f"- **Not probabilities** (the share of outputs outside [0, 1]): {cells}."]
    lines = []
    for reference in dict.fromkeys(f["other"] for f in found):
        against = [f for f in found if f["other"] == reference]
        cells = "; ".join(f"`{f['cell']}` {f['ece']:.3f}" for f in against)
        lines.append(f"- **Poorly calibrated** (median ECE) against `{reference}` ({against[0]['other_ece']:.3f}): "
                     f"{cells}.")
    return lines


def own_lines(own: list[dict]) -> list[str]:
    lines = []
    shown: set[str] = set()
    for finding in own:
        kind = finding["kind"]
        if kind in GROUPED:
            if kind not in shown:  # the whole group, where its first finding stands
                shown.add(kind)
                lines += grouped_lines(kind, [f for f in own if f["kind"] == kind])
        elif kind == "unmarked cell better":
            lines.append(f"- **A ❌ cell beats the ✅ one** ({finding['study']}): `{finding['cell']}` against "
                         f"`{finding['other']}`: {effect_text(finding['comparison'], finding['cell'])}.")
        elif kind == "lottery":
            low, high = finding["learned"]["ci"]
            lines.append(f"- **A lottery**: `{finding['cell']}` learned in {_share(finding['learned'])} "
                         f"(95% CI {low:.0%}–{high:.0%}); the rest: "
                         + "; ".join(f"{m}" for m in finding["modes"] if m != "learned") + ".")
        elif kind == "published offset":
            which, metric = finding["which"].split("/")
            low, high = finding["ci"]
            size = (f"{finding['mean_offset'] * 100:+.2f} points [{low * 100:+.2f}, {high * 100:+.2f}]"
                    if metric == "accuracy" else
                    f"×{math.exp(finding['mean_offset']):.3f} [{math.exp(low):.3f}, {math.exp(high):.3f}]")
            lines.append(f"- **A source off as a group**: {finding['source']}'s {which} numbers sit {size} from "
                         f"our means over {len(finding['cells'])} cells (p {finding['p']:.3f}), more than single "
                         "runs scatter: one draw of its own for all its cells would do it.")
        elif kind == "test set too small":
            found = finding["comparisons"]
            pairs = ", ".join(f"`{a}` vs `{b}`" for a, b in found[:6]) + (", …" if len(found) > 6 else "")
            one = len(found) == 1
            lines.append(f"- **Beyond what more runs can decide**: {len(found)} comparison{'' if one else 's'} "
                         f"({pairs}) differ{'s' if one else ''} by less than the test set's own noise: a larger "
                         f"test set could decide {'it' if one else 'them'}, more runs cannot.")
    return lines


def findings_section(results: dict, alpha: float, margins: dict) -> list[str]:
    findings = results["findings"]
    held = sum(c["verdict"] == HOLDS for c in findings["claims"])
    failed = sum(c["verdict"] == FAILS for c in findings["claims"])
    return [
        "", "## Findings", "",
        f"Of the seeds' {len(findings['claims'])} claims, **{held} hold, {failed} do not**, and "
        f"{len(findings['claims']) - held - failed} are not decided at this n. Every comparison pools all "
        "data draws, paired by (draw, seed); its interval is simultaneous over the task's comparisons "
        f"(Bonferroni, family-wise α {alpha}) and includes the test set's own noise. *Equivalent* means "
        f"shown within ±{margins['accuracy'] * 100:g} accuracy points or ±{margins['mse_ratio']:.0%} MSE "
        "(two one-sided tests); *undecided* comes with the runs per cell that would decide it.",
        "", *claim_lines(findings["claims"]), "",
        "What the seeds did not expect:", "", *(own_lines(findings["own"]) or ["- nothing beyond the claims."]),
    ]
