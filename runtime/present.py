"""How runs read to a person, for every face (`ftune` commands, the wizard, the monitor, the agents): number
formats, the sentences that say how a run ended, data-check summaries, and fitting run tables to the screen.

Light on purpose (PyYAML, no torch, no rich, no Textual): the runtime's own messages use the same formats, and
`ftune --help`, `ftune new` and `ftune watch` import it. Sentences come back as text (rich markup where a face
prints with rich), so each face keeps its own way of printing them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

NONE = "–"  # a figure that is not there


# --------------------------------------------------------------------------- paths
def here(path: str | Path | None) -> str:
    """A path as one would type it from the working folder: relative where it lies below it (`runs/demo/export`
    fits an 80-column line where the absolute path wrapped), absolute elsewhere; '–' for none."""
    if not path:
        return NONE
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


# --------------------------------------------------------------------------- numbers
def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def duration(seconds: float | None) -> str:
    """A clock: 1:05, 2:03:04, 1d 2h03m; '–' for none."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return NONE
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h{m:02d}m"
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def wall_time(seconds: float | None) -> str:
    """A run's wall time in a table cell: 4.2 s, 3m05s, 1h02m; '–' for none."""
    if seconds is None:
        return NONE
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{seconds:.1f} s"


def span(seconds: float) -> str:
    """A wait in words, for a sentence: '1.5 s', '21 s', '14 min', '2 h 5 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def size(n: Any) -> str:
    """Bytes: 512 B, 1.5 KB, 2.3 GB; '–' for none."""
    if not isinstance(n, (int, float)) or not math.isfinite(n):
        return NONE
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return NONE


def gb(value: float) -> str:
    """An estimate in GB: 5.2 GB, 41 GB (one decimal below 10)."""
    return f"{value:.1f} GB" if value < 9.95 else f"{value:.0f} GB"


def gib_figure(n: Any) -> str:
    """Bytes as a GiB figure without its unit, for 'used/total GB': 5.2, 41; '–' for none."""
    if not finite(n):
        return NONE
    g = n / 1024**3
    return f"{g:.0f}" if g >= 10 else f"{g:.1f}"


def num(x: Any, spec: str = ".4g") -> str:
    """A figure in `spec` ('.4g', '.2e'); '–' for none."""
    return format(x, spec) if finite(x) else NONE


def cell(value: Any) -> str:
    """A table cell: 4 significant digits, true/false, lists joined; '–' for none."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "[]"
    return str(value)


def value_text(value: Any) -> str:
    """A setting as a person writes it in a run file: 1e-4, 0.05, 3, true, {mode: layer, switch_every: 20}."""
    if isinstance(value, float):
        if value and abs(value) < 1e-3:
            mantissa, exponent = f"{value:.3e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return str(value)


# --------------------------------------------------------------------------- how a run ended
def resume_hint(name: str) -> str:
    return f"Continue with: ftune train {name} --resume"


def no_final_event(name: str, see: str, when: str = "") -> str:
    """A worker that ended without a final event; `see`: where this face's reader finds why."""
    return f"{name} ended without a final event{when}; {see}"


def stop_outcome(name: str, final: dict[str, Any] | None, see: str, cancelled_job: Any = None) -> list[str]:
    """What `ftune stop` (or the monitor's s) came to, as lines: stopped with its checkpoint and how to go on, or
    how the run ended instead. `cancelled_job`: the Slurm job that was cancelled before it started."""
    if final is None and cancelled_job:
        return [f"Cancelled Slurm job {cancelled_job} before it started; nothing was trained."]
    if final is None:
        return [no_final_event(name, see)]
    if final["type"] == "stopped":
        ckpt = (final.get("artifacts") or {}).get("checkpoint")
        return [f"Stopped at step {final.get('step')}." + (f" Checkpoint: {ckpt}" if ckpt else ""), resume_hint(name)]
    return [f"{name} ended with '{final['type']}' before it could stop: {final.get('message', '')}".rstrip()]


def checkpoint_outcome(name: str, event: dict[str, Any] | None, see: str) -> str:
    """What `ftune checkpoint` came to: the saved step, or how the run ended before it saved."""
    if event is None:
        return no_final_event(name, see, when=" before it saved")
    if event["type"] == "checkpoint":
        return f"Saved step {event.get('step')}: {event.get('path')}. Training goes on."
    return f"{name} ended with '{event['type']}' before it saved: {event.get('message', '')}".rstrip()


def started_in_background(name: str, pid: int) -> list[str]:
    """A run started detached: where to follow it and how to stop it."""
    return [f"Started {name} in the background (pid {pid}); it keeps going if you log out.",
            f"  watch:   ftune watch {name}       ·  log: ftune logs {name} -f  ·  all runs: ftune ls",
            f"  stop:    ftune stop {name}       (saves a checkpoint; continue with --resume)"]


def submitted(name: str, job_id: Any, script: Path) -> list[str]:
    """A run submitted to Slurm."""
    return [f"Submitted {name} to Slurm: job {job_id} (script: {script}).",
            f"  watch:   ftune watch {name}       ·  all runs: ftune ls  ·  stop: ftune stop {name}"]


def left_monitor(name: str, state: str) -> str:
    """Leaving `ftune watch` while the run goes on."""
    return (f"Left the monitor; {name} goes on ({state}). Back with `ftune watch {name}`; "
            f"stop it with `ftune stop {name}`.")


def export_outcome(result: Any) -> list[tuple[str, str | None]]:
    """`ftune export`'s check and result as (line, colour) pairs: what the written model was checked against, then
    where it is."""
    c = result.check
    if result.gguf:
        g = result.gguf
        return [(f"Checked: {g['quant']} logits within {c['rel_diff']:.2%} of their range of the merged model's "
                 f"(largest difference {c['max_abs_diff']:.2g}), {c['same_answers']} of {len(c['answers'])} greedy "
                 f"answers the same{' (the others part at a near tie)' if c['near_ties'] else ''}; tokenizer, chat "
                 f"template and stop tokens match.", None),
                (f"Done: {result.path / g['file']} ({g['bytes'] / 1e6:.1f} MB, sha256 {g['sha256'][:16]}...)", "green"),
                (f"Ollama:  {g['ollama']}", None)]
    if c["generated_tokens"]:
        checked = (f"Checked: it loads and generates ({c['generated_tokens']} tokens); next-token agreement with "
                   f"the run's model {c['agreement']:.0%}, largest logit difference {c['max_abs_diff']:.2g}.")
    else:  # a reward model scores instead of generating
        checked = f"Checked: it loads and scores like the run's model (largest difference {c['max_abs_diff']:.2g})."
    return [(checked, None), (f"Done: {result.path} ({result.format}, {result.dtype}, from {result.source})", "green")]


def eval_summary(m: dict[str, Any]) -> list[str]:
    """`ftune eval`'s scores, rich markup."""
    lines = [f"[bold]{m['num_samples']} answers[/] ({m['model']}, greedy, up to {m['max_new_tokens']} new "
             f"tokens, {m['predict_runtime']:.1f} s)",
             f"  BLEU     {m['predict_bleu']:.2f}   (sacrebleu, tokenize={m['bleu_tokenize']})",
             f"  ROUGE-1  {m['predict_rouge1']:.2f}   ROUGE-2 {m['predict_rouge2']:.2f}   "
             f"ROUGE-L {m['predict_rougeL']:.2f}"]
    if m.get("skipped_rows"):
        lines.append(f"  [yellow]{m['skipped_rows']} invalid test rows skipped[/]")
    return lines


def preset_value(value: Any) -> str:
    """A cell of `ftune presets`: floats in %g."""
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- data summaries
def rows_valid(s: Any) -> str:
    """'all 40 valid' or '38 valid, 2 invalid'."""
    return f"all {s.total} valid" if s.valid == s.total else f"{s.valid} valid, {s.invalid} invalid"


def images_line(s: Any) -> str | None:
    """A data summary's images, for the wizard: how many, their sizes, what they are for."""
    if not s.images:
        return None
    res = s.resolutions
    return (f"  images: {s.images} in {s.image_rows} rows, sizes {res['smallest']} to {res['largest']}: image data, "
            f"for a vision-language model (Qwen2-VL, Qwen2.5-VL)")


def data_summary(s: Any, name: str) -> list[tuple[str, str]]:
    """A checked data file in the wizard, as (level, line) pairs: level 'warn' or 'note'."""
    if s.fatal:
        return [("warn", f"{name}: cannot be read"), *(("note", line) for line in str(s.fatal).splitlines())]
    if not s.valid:  # e.g. every line of a JSON-lines file is broken: each is a row error
        return [("warn", f"{name}: cannot be read: none of its {s.total} rows is valid"),
                *(("note", f"  {e}") for e in s.errors)]
    if s.format is None:
        return [("warn", f"{name}: format not recognised ({s.reason})")]
    suits = f"; suits {', '.join(s.stages)}" if s.stages else ""
    lines = [("note", f"{name}: {s.format} ({s.reason}); {s.total} rows, {rows_valid(s)}{suits}")]
    if images_line(s):
        lines.append(("note", images_line(s)))
    if s.placeholder_note():
        lines.append(("warn", f"{name}: {s.placeholder_note()}"))
    return lines + [("note", f"  {e}") for e in s.errors]


def data_report(report: Any, plain: bool) -> list[Any]:
    """`ftune data check FILE`: rich-markup lines, and a tokenised sample as (learnt, kind, text) segments in a
    list. `plain`: no colours to tell learnt tokens apart (a pipe or a log), so they are bracketed instead."""
    r = report.summary
    lines: list[Any] = [f"[bold]{r.path}"]
    if r.fatal:
        return lines
    if not r.format:
        lines.append(f"  format   [red]not recognised[/]: {r.reason}")
    else:
        lines.append(f"  format   {r.format}, {r.kind} data ({r.reason}); suits: {', '.join(r.stages)}")
    colour = "red" if r.invalid else "green"
    lines.append(f"  rows     {r.total}: [green]{r.valid} valid[/], [{colour}]{r.invalid} invalid[/]")
    if r.turns:
        turns = "; ".join(f"{v} {'row' if v == 1 else 'rows'} with {k} {'answer' if k == 1 else 'answers'}"
                          for k, v in sorted(r.turns.items()))
        lines.append(f"  answers  {turns}")
        lines.append(f"  roles    {', '.join(f'{k} {v}' for k, v in r.roles.items())}")
    if r.images:
        res = r.resolutions
        lines.append(f"  images   {r.images} in {r.image_rows} rows, every one found and opening; sizes "
                     f"{res['smallest']} (smallest), {res['median']} (median), {res['largest']} (largest)")
    if r.placeholder_note():
        lines.append(f"  [yellow]warning[/]  {r.placeholder_note()}")
    tokens = report.tokens
    if tokens:
        t = tokens.tokens
        lines.append(f"  tokens   min {t['min']}, p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']} "
                     f"({tokens.tokenizer})")
        lines.append(f"  cutoff   {tokens.over_max_length} rows longer than {tokens.max_length} tokens; "
                     f"{tokens.answer_cut_away} would lose their whole answer")
        for i, sample in enumerate(tokens.samples, 1):
            lines.append(f"  sample {i} " + ("(learnt tokens between [[ and ]]; thinking [[think: ]], tool calls "
                                             "[[call: ]]):" if plain else "([green]learnt[/], [magenta]thinking[/], "
                                             "[cyan]tool calls[/], [dim]not learnt[/]):"))
            lines.append([sample_segment(seg, plain) for seg in sample])
    lines += [f"  [red]error[/]    {e}" for e in r.errors]
    if r.invalid > len(r.errors):
        lines.append(f"  ... and {r.invalid - len(r.errors)} more invalid rows")
    return lines


def sample_segment(seg: dict[str, Any], plain: bool) -> tuple[str, str | None]:
    """A tokenised sample's segment as (text, style): learnt text coloured by kind, or bracketed where `plain`."""
    kind = seg.get("kind", "text")
    if plain:
        mark = {"thinking": "think: ", "tool_call": "call: "}.get(kind, "")
        return (f"[[{mark}{seg['text']}]]" if seg["learnt"] else seg["text"]), None
    style = {"thinking": "magenta", "tool_call": "cyan"}.get(kind, "green")
    return seg["text"], style if seg["learnt"] else "dim"


def registry_report(info_path: Path, entries: list[tuple[str, Any, str]]) -> list[str]:
    """`ftune data check dataset_info.json`: rich-markup lines, one per data set it names."""
    lines = [f"[bold]{info_path}[/]: {len(entries)} data sets (dataset_info.json)"]
    width = max((len(n) for n, r, _ in entries if r is not None), default=0)
    elsewhere = [name for name, r, _ in entries if r is None]  # LLaMA-Factory's file lists ~90 hub data sets
    for name, r, _ in entries:
        if r is None:
            continue
        s = r.summary
        if s.fatal:
            lines.append(f"  {name:<{width}}  [red]{s.fatal.splitlines()[0]}[/]")
            continue
        valid = f"all {s.total} valid" if not s.invalid else f"[red]{s.invalid} of {s.total} invalid[/]"
        lines.append(f"  {name:<{width}}  {s.format}, {s.kind} data; {valid}; suits {', '.join(s.stages)}")
        lines += [f"  {'':<{width}}    [red]error[/] {e}" for e in s.errors]
    if elsewhere:
        shown = ", ".join(elsewhere[:4]) + (", ..." if len(elsewhere) > 4 else "")
        lines.append(f"  [dim]{len(elsewhere)} more are on a hub or made by a script ({shown}): not checked "
                     f"offline (--json lists them)[/]")
    lines.append(f"Check one with its tokens: ftune data check NAME --dataset-dir {info_path.parent} --model MODEL")
    return lines


# --------------------------------------------------------------------------- fitting run tables
LS_COLUMNS = (("run", "name"), ("status", "status"), ("stage/method", "stage_method"), ("model", "model"),
              ("step", "progress"), ("ckpt", "ckpt"), ("loss", "loss"), ("eval", "best_eval"), ("started", "started"))
MIN_MODEL = 8  # the model column's narrowest


def fit_runs(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], width: int, spare: int = -2
             ) -> tuple[list[tuple[str, str]], list[dict[str, Any]], dict[str, int], int]:
    """A table of runs (`ftune ls`, the monitor's runs list) in `width` screen columns, one line per run: the kept
    (header, row key) columns, the rows, each column's width and the model column's room. The model column gives
    way first (its last parts kept whole); a starting run's phase shows where it fits ('starting: tokenising
    40%'); then the start time goes, then the names' middles. `spare`: the table's own columns beyond two between
    cells (a table without edges: -2)."""
    cols = list(columns)

    def widths_of(rows) -> dict[str, int]:
        return {h: max([len(h)] + [len(str(r[k])) for r in rows]) for h, k in cols}

    def room_for_model(rows) -> int:
        widths = widths_of(rows)
        return width - sum(widths[h] for h, k in cols if k != "model") - 2 * len(cols) - spare

    phased = [{**r, "status": f"{r['status']}: {r['phase']}"} if r.get("phase") else r for r in rows]
    if room_for_model(phased) >= MIN_MODEL:
        rows = phased
    if room_for_model(rows) < MIN_MODEL:
        cols = [(h, k) for h, k in cols if k != "started"]
    names = fit_names([r["name"] for r in rows], MIN_MODEL - room_for_model(rows))
    rows = [{**r, "name": n} for r, n in zip(rows, names)]
    room = max(MIN_MODEL, room_for_model(rows))
    rows = [{**r, "model": fit_model(str(r["model"]), room)} for r in rows]
    return cols, rows, widths_of(rows), room


def fit_names(names: list[str], short: int) -> list[str]:
    """Run names `short` columns narrower (the longest sets the width, 12 at least), each cut by fit_name.
    `ftune ls` and the monitor's runs list."""
    if short <= 0 or not names:
        return names
    keep = max(12, max(map(len, names)) - short)
    return [fit_name(n, keep) for n in names]


def fit_name(name: str, room: int) -> str:
    """A run's name in `room` columns, its middle cut where a long name would push the table past the screen: names
    often differ at their ends (run-01, run-02)."""
    if len(name) <= room:
        return name
    head = (room - 1) // 2
    return name[:head] + "…" + name[len(name) - (room - 1 - head):]


def fit_model(name: str, room: int) -> str:
    """A model path or hub id in `room` columns: its last parts whole ('…/models/tiny-qwen2', 'Qwen2.5-7B'),
    never a cut name ('…y-model') while the last part fits. `ftune ls` and the monitor's runs list."""
    if len(name) <= room:
        return name
    parts = [x for x in name.split("/") if x]
    for keep in range(len(parts) - 1, 0, -1):
        tail = "…/" + "/".join(parts[-keep:])
        if len(tail) <= room:
            return tail
    last = parts[-1] if parts else name
    return last if len(last) <= room else last[: room - 1] + "…"
