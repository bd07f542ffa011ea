"""Data sets and models on a hub: `hf://datasets/ORG/NAME` (the Hugging Face Hub) and `ms://ORG/NAME` (ModelScope)
as training data, which of their files a run reads, downloads that report their bytes, and every hub failure as
one sentence.

Files are downloaded with huggingface_hub into its standard cache (HF_HOME, HF_HUB_CACHE), then read by the same
line-checked readers as local files (data/formats.py), so a bad row names its file and line in the cache. Tokens
come from where huggingface_hub looks (HF_TOKEN, `hf auth login`); nothing here writes one anywhere.

Light at import time: huggingface_hub (and modelscope) are imported when called.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ftune.runtime.errors import UserError

PREFIXES = {"hf": "hf://datasets/", "ms": "ms://"}
DATA_SUFFIXES = (".jsonl", ".json", ".txt", ".csv", ".parquet")
SPLITS = ("train", "validation", "valid", "dev", "test", "eval")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a model download fetches: what from_pretrained reads, and no other weights format than the one it loads.
MODEL_FILES = ("*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py")
WEIGHTS = (("*.safetensors",), ("*.bin", "*.pt"))


class HubError(UserError):
    """A hub data set or model that cannot be had: one sentence, with what to do."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """huggingface_hub's cache, as the environment says now (HF_HUB_CACHE, else HF_HOME/hub): the library reads
    it once, when it is imported, and a process forked from one that imported it early would miss a change."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


# --------------------------------------------------------------------------- names
@dataclass(frozen=True)
class HubSet:
    """One data set on a hub, and which of its files a run reads."""

    hub: str  # hf or ms
    repo_id: str
    revision: str | None = None
    subset: str | None = None
    split: str = "train"
    files: str | None = None  # a glob inside the data set: instead of subset and split
    folder: str | None = None  # only files under this folder (LLaMA-Factory's `folder`)

    @property
    def url(self) -> str:
        return f"{PREFIXES[self.hub]}{self.repo_id}"

    @property
    def label(self) -> str:
        picked = self.files or "/".join(x for x in (self.folder, self.subset, self.split) if x)
        return f"{self.url}{'@' + self.revision if self.revision else ''} ({picked})"


def is_hub_data(name: str) -> bool:
    """`hf://…` or `ms://…`: a data set on a hub, not a file."""
    return isinstance(name, str) and name.startswith(("hf://", "ms://"))


def parse(name: str, subset: str | None = None, split: str = "train", revision: str | None = None,
          files: str | None = None, folder: str | None = None) -> HubSet:
    """`hf://datasets/ORG/NAME[@REVISION][/GLOB]` or `ms://ORG/NAME[@REVISION][/GLOB]` (the URL's revision and
    glob win over the run file's data.hub)."""
    hub = next((h for h, p in PREFIXES.items() if name.startswith(p)), None)
    if hub is None:
        if name.startswith("hf://"):
            raise HubError(f"{name!r}: a data set on the Hugging Face Hub is written hf://datasets/ORG/NAME "
                           f"(models are not training data)")
        raise HubError(f"{name!r} is not a hub data set: write hf://datasets/ORG/NAME or ms://ORG/NAME")
    rest = name[len(PREFIXES[hub]):].strip("/")
    parts = rest.split("/")
    repo, glob = "/".join(parts[:2]), "/".join(parts[2:]) or None
    if "@" in repo:
        repo, _, at = repo.partition("@")
        revision = at or revision
    if not REPO_ID.match(repo):
        raise HubError(f"{name!r}: the data set's name must be ORG/NAME, e.g. {PREFIXES[hub]}tatsu-lab/alpaca")
    return HubSet(hub, repo, revision, subset, split, glob or files, folder)


# --------------------------------------------------------------------------- which files
def readme_configs(readme: Path | None) -> dict[str, dict[str, list[str]]]:
    """A data set's README `configs:` as {subset: {split: [globs]}} (the Hub's own way to name subsets)."""
    if readme is None or not readme.is_file():
        return {}
    import yaml

    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return {}
    out: dict[str, dict[str, list[str]]] = {}
    for config in meta.get("configs") or [] if isinstance(meta, dict) else []:
        if not isinstance(config, dict) or "config_name" not in config:
            continue
        data_files = config.get("data_files")
        splits: dict[str, list[str]] = {}
        if isinstance(data_files, (str, list)) and not (isinstance(data_files, list) and data_files
                                                         and isinstance(data_files[0], dict)):
            splits["train"] = [data_files] if isinstance(data_files, str) else list(data_files)
        elif isinstance(data_files, list):
            for entry in data_files:
                path = entry.get("path")
                splits[str(entry.get("split", "train"))] = [path] if isinstance(path, str) else list(path or [])
        out[str(config["config_name"])] = splits
    return out


def _named_for(path: str, split: str) -> bool:
    """A file of the split: a folder of that name on its path, or a file name that starts with it
    (train.jsonl, train-00000-of-00002.parquet, train_part1.csv)."""
    parts = PurePosixPath(path).parts
    stem = parts[-1].split(".")[0]
    return split in parts[:-1] or re.match(rf"^{re.escape(split)}(?:$|[-_.])", stem) is not None


def select(paths: list[str], ref: HubSet, configs: dict[str, dict[str, list[str]]] | None = None) -> list[str]:
    """The data files of `paths` (inside the data set) that the run reads, sorted; [] when none fits."""
    data = sorted(p for p in paths if p.lower().endswith(DATA_SUFFIXES) and not PurePosixPath(p).name.startswith("."))
    if ref.files:
        return [p for p in data if fnmatch.fnmatch(p, ref.files)]
    if ref.folder:
        data = [p for p in data if p.startswith(ref.folder.rstrip("/") + "/")]
    configs = configs or {}
    if ref.subset and ref.subset in configs:
        globs = configs[ref.subset].get(ref.split, [])
        return [p for p in data if any(fnmatch.fnmatch(p, g) for g in globs)]
    if ref.subset:
        data = [p for p in data if ref.subset in PurePosixPath(p).parts[:-1]]
    elif "default" in configs:
        globs = configs["default"].get(ref.split, [])
        return [p for p in data if any(fnmatch.fnmatch(p, g) for g in globs)]
    named = [p for p in data if _named_for(p, ref.split)]
    if named or ref.split != "train":
        return named
    return [p for p in data if not any(_named_for(p, s) for s in SPLITS)]  # no split names: all of it is train


def _no_files(ref: HubSet, listed: list[str]) -> HubError:
    shown = ", ".join(p for p in listed if p.lower().endswith(DATA_SUFFIXES))[:300] or "none"
    return HubError(f"{ref.url}: no data files for {ref.label} (its data files: {shown})",
                    hint="Choose them with data.hub.split, data.hub.subset or data.hub.files (a glob), or append "
                         "the glob to the name: hf://datasets/ORG/NAME/data/*.jsonl.")


# --------------------------------------------------------------------------- failures as sentences
def problem(e: Exception, where: str, revision: str | None = None) -> HubError:
    """A huggingface_hub failure as one sentence: gated, not found or private, no such revision, no network."""
    from huggingface_hub import errors

    if isinstance(e, HubError):
        return e
    if isinstance(e, errors.GatedRepoError):
        return HubError(f"{where} is gated on the hub: accept its terms on its page, then log in (`hf auth login`, "
                        f"or set HF_TOKEN)")
    if isinstance(e, errors.RepositoryNotFoundError):
        return HubError(f"{where} is not on the hub (or is private: log in with `hf auth login`, or set HF_TOKEN)",
                        hint="Check the spelling: ORG/NAME, as on its page.")
    if isinstance(e, errors.RevisionNotFoundError):
        return HubError(f"{where} has no revision {revision!r} on the hub")
    if isinstance(e, errors.LocalEntryNotFoundError) or offline():
        return HubError(f"{where} is not in the local Hugging Face cache, and "
                        f"{'HF_HUB_OFFLINE is set' if offline() else 'the hub cannot be reached'}",
                        hint="Download it on a machine with network (`hf download NAME --repo-type dataset`) into "
                             "the same cache (HF_HOME), or unset HF_HUB_OFFLINE.")
    return HubError(f"{where}: the hub cannot be reached ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                    hint="Check the network (and HF_ENDPOINT, a proxy), then run the command again: files already "
                         "downloaded are kept.")


# --------------------------------------------------------------------------- the local cache
def cached_files(ref: HubSet) -> list[Path] | None:
    """The run's files of `ref` from the local cache, no network; None when they are not there. The snapshot is
    found by the cache's documented layout (refs/REVISION names the commit; snapshots/COMMIT holds the files): a
    snapshot may hold only the files an earlier run chose, which huggingface_hub 2.x's own local look-up refuses
    without the exact patterns."""
    if ref.hub == "ms":
        return _ms_cached(ref)
    root = cache_dir() / f"datasets--{ref.repo_id.replace('/', '--')}"
    revision = ref.revision or "main"
    try:
        commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else \
            (root / "refs" / revision).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    folder = root / "snapshots" / commit
    if not folder.is_dir():
        return None
    listed = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    chosen = select(listed, ref, readme_configs(folder / "README.md"))
    return [folder / p for p in chosen] or None


class NotCached(HubError):
    """A hub data set whose files are not in the local cache (yet): the worker downloads them."""


def cached_or_raise(ref: HubSet, uncached: str = "raise") -> list[Path]:
    """The run's files of `ref` from the cache; [] with uncached="skip" when they are not there, else NotCached."""
    files = cached_files(ref)
    if files is not None:
        return files
    if uncached == "skip":
        return []
    raise NotCached(f"data set {ref.label} is not in the local Hugging Face cache yet",
                    hint="`ftune train` downloads it (the phase 'downloading the data').")


# --------------------------------------------------------------------------- downloads
@dataclass
class Plan:
    """What a download fetches: the files (inside the repo), their sizes and their blobs' names in the cache."""

    repo_id: str
    repo_type: str
    revision: str | None
    commit: str | None
    files: list[str]
    sizes: dict[str, int]
    blobs: dict[str, str]

    @property
    def total(self) -> int:
        return sum(self.sizes.get(f, 0) for f in self.files)


def _info(repo_id: str, repo_type: str, revision: str | None, where: str):
    from huggingface_hub import HfApi

    try:
        if repo_type == "dataset":
            return HfApi().dataset_info(repo_id, revision=revision, files_metadata=True, timeout=10)
        return HfApi().model_info(repo_id, revision=revision, files_metadata=True, timeout=10)
    except Exception as e:  # noqa: BLE001 - the hub's errors and the network's, each as one sentence
        raise problem(e, where, revision) from None


def _plan(info, repo_id: str, repo_type: str, revision: str | None, files: list[str]) -> Plan:
    sizes, blobs = {}, {}
    for s in info.siblings or []:
        sizes[s.rfilename] = s.size or 0
        lfs = s.lfs.sha256 if s.lfs is not None else None
        if lfs or s.blob_id:
            blobs[s.rfilename] = lfs or s.blob_id
    return Plan(repo_id, repo_type, revision, info.sha, files, sizes, blobs)


def plan_dataset(ref: HubSet) -> Plan:
    """Ask the hub which files `ref` reads (one request, two with a subset): what is not there is a sentence."""
    if ref.hub == "ms":
        raise HubError(f"{ref.url}: ModelScope data sets are downloaded by the modelscope package, without a "
                       f"byte count here")
    info = _info(ref.repo_id, "dataset", ref.revision, f"data set {ref.url}")
    listed = [s.rfilename for s in info.siblings or []]
    configs = {}
    if ref.subset and "README.md" in listed:
        from huggingface_hub import hf_hub_download

        try:
            configs = readme_configs(Path(hf_hub_download(ref.repo_id, "README.md", repo_type="dataset",
                                                          revision=info.sha, cache_dir=cache_dir())))
        except Exception as e:  # noqa: BLE001 - as above
            raise problem(e, f"data set {ref.url}", ref.revision) from None
    chosen = select(listed, ref, configs)
    if not chosen:
        raise _no_files(ref, listed)
    return _plan(info, ref.repo_id, "dataset", ref.revision, chosen + (["README.md"] if "README.md" in listed else []))


def plan_model(name: str, revision: str | None = None, remote_code: bool = False) -> Plan:
    """The files from_pretrained reads: configs and tokenizer, and one weights format (safetensors when there)."""
    info = _info(name, "model", revision, f"model.name_or_path {name!r}")
    listed = [s.rfilename for s in info.siblings or []]
    top = [f for f in listed if "/" not in f]
    wanted = [f for f in top if any(fnmatch.fnmatch(f, g) for g in MODEL_FILES)
              and (remote_code or not f.endswith(".py"))]
    for globs in WEIGHTS:
        weights = [f for f in top if any(fnmatch.fnmatch(f, g) for g in globs)]
        if weights:
            wanted += weights
            break
    return _plan(info, name, "model", revision, sorted(set(wanted)))


def _cache_folder(plan: Plan) -> Path:
    return cache_dir() / f"{plan.repo_type}s--{plan.repo_id.replace('/', '--')}"


def bytes_done(plan: Plan) -> int:
    """Bytes of the plan's files in the cache now: whole blobs, and what `.incomplete` ones hold so far (a
    download that was cut off resumes from there)."""
    blobs = _cache_folder(plan) / "blobs"
    done = 0
    for f in plan.files:
        blob = plan.blobs.get(f)
        if blob is None:
            continue
        if (blobs / blob).is_file():
            done += plan.sizes.get(f, 0)
            continue
        # in progress: `<blob>.incomplete`, or huggingface_hub 1.x/2.x's per-process `<blob>.<id>.incomplete`
        partial = 0
        for p in blobs.glob(f"{blob}*.incomplete") if blobs.is_dir() else []:
            try:
                partial = max(partial, p.stat().st_size)
            except OSError:  # finished (moved into place) or given up meanwhile
                pass
        done += partial
    return done


class Reporter:
    """Polls the cache once a second while a download runs and calls `report(done, total, bytes_per_s, eta_s)`.
    A download that stalls is huggingface_hub's to end: a read that waits longer than HF_HUB_DOWNLOAD_TIMEOUT
    (10 s) is retried from where it stopped, a few times, then raised (and `fetch` says what to do)."""

    def __init__(self, plan: Plan, report: Callable[..., None], every: float = 1.0):
        self.plan, self.report, self.every = plan, report, every
        self.start_done = bytes_done(plan)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="ftune-download-progress")
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.send(bytes_done(self.plan))

    def send(self, done: int) -> None:
        elapsed, total = time.monotonic() - self.t0, self.plan.total
        rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 and total >= done else None
        self.report(done=done, total=total, bytes_per_s=round(rate, 1), eta_s=round(eta, 1) if eta else None)

    def __enter__(self) -> Reporter:
        self.t0 = time.monotonic()
        self.report(done=self.start_done, total=self.plan.total, bytes_per_s=0.0, eta_s=None)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def fetch(plan: Plan, where: str, report: Callable[..., None] | None = None) -> Path:
    """Download the plan's files into the standard cache (resuming cut-off ones), reporting bytes once a second;
    the snapshot folder. A failed or stalled download is a HubError saying what to do."""
    from huggingface_hub import snapshot_download

    reporter = Reporter(plan, report or (lambda **kw: None))
    try:
        with reporter:
            # by its branch or tag (not the commit the plan saw), so the cache's refs/ names it for the next look-up
            folder = snapshot_download(plan.repo_id, repo_type=plan.repo_type, revision=plan.revision,
                                       allow_patterns=plan.files, cache_dir=cache_dir())
        reporter.send(bytes_done(plan))  # the last word: all of it
    except Exception as e:  # noqa: BLE001 - a failed download, whatever failed: one sentence and what to do
        err = problem(e, where, plan.revision)
        raise HubError(f"the download of {where} failed: {err}",
                       hint="Run the same command again: the files already downloaded are kept. "
                            + (err.hint or "")) from None
    return Path(folder)


def download_dataset(ref: HubSet, report: Callable[..., None] | None = None) -> list[Path]:
    """The run's files of `ref`, downloaded when not cached."""
    cached = cached_files(ref)
    if cached is not None:
        return cached
    if offline():
        raise problem(Exception("offline"), f"data set {ref.url}")
    if ref.hub == "ms":
        return _ms_download(ref)
    plan = plan_dataset(ref)
    folder = fetch(plan, f"data set {ref.url}", report)
    return [folder / f for f in plan.files if f != "README.md"]


def check_dataset(ref: HubSet) -> bool:
    """Before anything detaches: True when the files are cached (their rows can be checked now); False when the
    hub has them (they are downloaded by the worker); otherwise a HubError."""
    if cached_files(ref) is not None:
        return True
    if offline():
        raise problem(Exception("offline"), f"data set {ref.url}")
    if ref.hub == "ms":
        _modelscope()
        return False
    plan_dataset(ref)
    return False


# --------------------------------------------------------------------------- ModelScope (the modelscope extra)
def _modelscope():
    try:
        import modelscope
    except ImportError:
        raise HubError("ms:// data sets are read with the modelscope package, which is not installed: pip install "
                       "'ftune[modelscope]' (or use the set's hf://datasets/ copy)") from None
    return modelscope


def _ms_download(ref: HubSet, local_only: bool = False) -> list[Path]:
    _modelscope()
    from modelscope.hub.snapshot_download import dataset_snapshot_download

    try:
        folder = Path(dataset_snapshot_download(ref.repo_id, revision=ref.revision,
                                                allow_file_pattern=ref.files, local_files_only=local_only))
    except Exception as e:  # noqa: BLE001 - modelscope's errors have no common base
        raise HubError(f"data set {ref.url} cannot be had from ModelScope ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200] if str(e) else ''})",
                       hint="Check the name on modelscope.cn and the network (MODELSCOPE_CACHE for the cache).") from None
    listed = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    chosen = select(listed, ref, readme_configs(folder / "README.md"))
    if not chosen:
        raise _no_files(ref, listed)
    return [folder / p for p in chosen]


def _ms_cached(ref: HubSet) -> list[Path] | None:
    try:
        import modelscope  # noqa: F401
    except ImportError:
        return None
    try:
        return _ms_download(ref, local_only=True)
    except HubError:
        return None
