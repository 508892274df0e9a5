"""The pull-request comment of a stack's preview: `python -m jsb_infra.ops.pr_comment` prints the
Markdown body the GitHub Actions example posts (and updates in place: the body starts with a marker
naming the stack, which the workflow looks for among the PR's comments).

    pulumi preview --diff --refresh --stack prod --color never > preview.log 2>&1; echo $? > preview.rc
    python -m jsb_infra.ops.pr_comment --stack prod --preview preview.log --exit-code "$(cat preview.rc)"

The body says in its heading what the preview found (the `Resources:` summary, "no changes", or that
it failed), then the whole output in a collapsed diff block: ANSI colours removed, fenced with more
backticks than the output holds, and cut in the middle (saying how many lines) when it would pass the
size GitHub accepts for a comment. Pure apart from reading the log file; no network.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

MARKER = "<!-- jsb-infra-preview stack={stack} -->"
MAX_BODY = 65_000  # GitHub refuses comments over 65,536 characters; leave room for the heading
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SUMMARY_LINE = re.compile(r"^\s*[+~-]*\s*(\d+) (to create|to update|to delete|to replace|unchanged)\b")


def marker(stack: str) -> str:
    """The first line of the comment of `stack`: what the workflow finds the comment to update by."""
    return MARKER.format(stack=stack)


def summary(output: str) -> str:
    """The counts of the `Resources:` section, e.g. "2 to create, 1 to update, 9 unchanged"."""
    lines = output.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if line.strip() == "Resources:")
    except ValueError:
        return ""
    counts = []
    for line in lines[start + 1 :]:
        match = SUMMARY_LINE.match(line)
        if match:
            counts.append(f"{match.group(1)} {match.group(2)}")
        elif line.strip():
            break
    return ", ".join(counts)


def _cut(lines: list[str], budget: int) -> list[str]:
    """Keep the head and the tail (the summary and any error are at the end) within `budget` chars."""
    if sum(len(line) + 1 for line in lines) <= budget:
        return lines
    head: list[str] = []
    tail: list[str] = []
    used = 200  # the note in the middle
    i, j = 0, len(lines) - 1
    while i <= j:
        take_tail = len(tail) <= len(head)
        line = lines[j] if take_tail else lines[i]
        if used + len(line) + 1 > budget:
            break
        used += len(line) + 1
        if take_tail:
            tail.insert(0, line)
            j -= 1
        else:
            head.append(line)
            i += 1
    cut = len(lines) - len(head) - len(tail)
    note = f"... {cut} lines cut here to fit a GitHub comment; the workflow run's log has them all ..."
    return [*head, note, *tail]


def comment_body(stack: str, output: str, exit_code: int, run_url: str = "", commit: str = "") -> str:
    """The whole comment: marker, heading, where it ran, the output in a diff block."""
    text = ANSI.sub("", output).replace("\r\n", "\n").rstrip("\n")
    counts = summary(text)
    if exit_code != 0:
        heading = f"### :x: jsb-infra preview of `{stack}` failed (exit {exit_code})"
    elif counts and all(part.endswith("unchanged") for part in counts.split(", ")):
        heading = f"### jsb-infra preview of `{stack}`: no changes ({counts})"
    else:
        heading = f"### jsb-infra preview of `{stack}`: {counts or 'see the output'}"
    where = " · ".join([f"commit `{commit[:12]}`"] * bool(commit) + [f"[run]({run_url})"] * bool(run_url))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    lines = _cut(text.split("\n"), MAX_BODY - len(heading) - len(where) - 300)
    parts = [
        marker(stack),
        heading,
        *([where] if where else []),
        "",
        "<details><summary>pulumi preview --diff --refresh</summary>",
        "",
        f"{fence}diff",
        *lines,
        fence,
        "</details>",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jsb_infra.ops.pr_comment", description="The PR comment of a stack's preview."
    )
    parser.add_argument("--stack", required=True)
    parser.add_argument("--preview", required=True, help="the file holding `pulumi preview`'s output")
    parser.add_argument("--exit-code", type=int, required=True, help="pulumi preview's exit status")
    parser.add_argument("--run-url", default="", help="the workflow run, linked from the comment")
    parser.add_argument("--commit", default="", help="the commit previewed")
    args = parser.parse_args(argv)
    try:
        output = Path(args.preview).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        output = f"(no preview output: cannot read {args.preview}: {err.strerror or err})"
    sys.stdout.write(comment_body(args.stack, output, args.exit_code, args.run_url, args.commit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
