"""`ftune export RUN --push ORG/NAME`: a checked export uploaded to the Hugging Face Hub.

Only a folder `ftune export` wrote and checked is pushed: its `ftune_export.json` must be there, and the check it
records must pass again here (the same `judge` the export used). The repository is created when missing
(`create_repo`, private with --private), then the folder goes up in one commit (`upload_folder`) with its model
card (README.md, whose metadata is huggingface_hub's ModelCardData: infer/modelcard.py). The token is the one
huggingface_hub finds (HF_TOKEN, `hf auth login`); nothing here reads or writes one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ftune.runtime.errors import UserError
from ftune.runtime.hub import REPO_ID, problem
from ftune.runtime.infer import formats


class PushError(UserError):
    """A push that cannot be made: one sentence, and nothing uploaded."""


@dataclass
class Pushed:
    repo_id: str
    url: str  # the repository's page
    commit: str  # the commit's URL
    files: int


def checked(folder: Path) -> dict:
    """The export's record, when it is a checked ftune export; otherwise a PushError saying why not."""
    from ftune.runtime.infer.export import MARKER, judge

    marker = folder / MARKER
    if not marker.is_file():
        raise PushError(f"{folder} is not a checked ftune export (it has no {MARKER}): nothing was pushed",
                        hint="Push what `ftune export RUN --format FORMAT --push ORG/NAME` writes: it checks the export "
                             "first.")
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PushError(f"{marker} cannot be read ({e}): nothing was pushed") from None
    check = record.get("check") or {}
    fmt = record.get("format")
    if not check:
        raise PushError(f"{folder}: its export recorded no check: nothing was pushed")
    f = formats.FORMATS.get(fmt)
    if f is not None and f.max_rel_diff is not None:  # a format judged by closeness (4 bits are only reported)
        failed = judge(fmt, check)
        if failed:
            raise PushError(f"{folder} failed its check ({failed}): nothing was pushed")
    elif f is not None and f.own_pipeline and check.get("generated_tokens", 0) < 1:
        raise PushError(f"{folder} failed its check (the {fmt.upper()} file generated nothing): nothing was pushed")
    return record


def push(folder: Path, repo_id: str, private: bool = False, say: Callable[[str], None] = lambda s: None) -> Pushed:
    """Upload a checked export to `repo_id` (created when missing)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not REPO_ID.match(repo_id):
        raise PushError(f"--push {repo_id!r}: a hub repository is ORG/NAME (your user name or an organisation, then "
                        f"the model's name)")
    folder = Path(folder)
    record = checked(folder)
    api = HfApi()
    where = f"repository {repo_id}"
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    try:
        say(f"Creating {repo_id} on {api.endpoint} if it is missing{' (private)' if private else ''}")
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        say(f"Uploading {files} files of {folder}")
        info = api.upload_folder(folder_path=folder, repo_id=repo_id,
                                 commit_message=f"ftune export of run {record.get('run')} ({record.get('format')})")
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise PushError(f"not allowed to write to {repo_id} on the hub (HTTP {status}): log in with a token that "
                            f"may write (`hf auth login`, or set HF_TOKEN), and check that you may write to "
                            f"{repo_id.split('/')[0]}: nothing was pushed") from None
        raise PushError(f"the push to {repo_id} failed: {str(e).splitlines()[0][:200]}") from None
    except Exception as e:  # noqa: BLE001 - the network's errors and the hub's others, as one sentence each
        raise PushError(f"the push to {repo_id} failed: {problem(e, where)}",
                        hint="Nothing is half-uploaded: a commit lands whole or not at all. Run it again.") from None
    return Pushed(repo_id, str(url), str(getattr(info, "commit_url", info)), files)
