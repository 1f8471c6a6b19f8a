"""EM training datasets (and the EM eval sets, OCT's constitutions) by name: tables of pinned sources,
hash-checked downloads into the cache, an offline mirror, and the Model-Organisms-for-EM decrypt step.

Where a file comes from, in order:
1. the cache, ``${paths.cache}/data/<mirror path>`` (re-verified on every use);
2. the mirror folder ``$EMROBUST_DATA_MIRROR`` (``paths.data_mirror``), laid out like ``../shared/data``
   (``em/train/insecure.jsonl``, ...): verified, then copied into the cache;
3. the pinned public URL (raw file at a fixed commit): downloaded to a temporary file, verified, renamed.

A hash mismatch anywhere is a ``ConfigError`` naming the file; nothing unverified lands in the cache (writes are
tmp + ``os.replace``). Betley et al.'s files are verified by sha256 where we know one, else by the git blob id
(sha1 of ``blob <size>\\0<bytes>``) of the file at the pinned commit.

Model Organisms for EM (``bad_medical_advice`` & co.) are shipped by their authors encrypted with
``easy-dataset-share`` and carry no licence: we never download, mirror or commit them. The user clones
clarifying-EM/model-organisms-for-EM and points ``em_dataset.path`` (or ``$EMROBUST_MOEM_DATA``) at either
``em_organism_dir/data/training_datasets.zip.enc`` (we decrypt it into the cache with the password from the
authors' README, given in ``$EMROBUST_MOEM_PASSWORD``; needs ``pip install 'emrobust[moem]'``), the folder
their documented ``easy-dataset-share unprotect-dir ... --remove-canaries`` produced, or the ``.jsonl`` itself.

Stage keys hold a file's identity, not its path: ``content_id`` gives the pinned hash of a registry file without
reading it (so the login-node planner keys a sweep offline, with nothing downloaded) and the sha256 of the file
found for user-supplied data. Inside ``no_fetch()`` nothing is downloaded, copied or decrypted: a file that is not
already in the cache or the mirror raises ``Unmet`` (kind ``data``; ``user_data`` for a Model-Organisms file
nobody pointed at), which ``emrobust sweep --dry-run`` lists instead of failing.
"""
from __future__ import annotations

import contextvars
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, Unmet

BETLEY_REPO = "emergent-misalignment/emergent-misalignment"
BETLEY_COMMIT = "80c11967c07a328e7d7d43d13ce6847ae44dbcc9"
MOEM_REPO = "clarifying-EM/model-organisms-for-EM"
MOEM_ARCHIVE = "em_organism_dir/data/training_datasets.zip.enc"
MOEM_ENV_DATA = "EMROBUST_MOEM_DATA"
MOEM_ENV_PASSWORD = "EMROBUST_MOEM_PASSWORD"
MIRROR_ENV = "EMROBUST_DATA_MIRROR"


@dataclass(frozen=True)
class Entry:
    name: str
    origin: str  # betley | moem | oct
    licence: str
    format: str
    rows: int | None  # expected rows, where verified (None: not known here)
    sha256: str | None = None
    git_blob: str | None = None  # sha1 git blob id at the pinned commit (used when no sha256 is known)
    url: str | None = None  # pinned raw URL; None = not downloadable (user-supplied, see module docstring)
    relpath: str = ""  # path under the cache's data/ folder and under the mirror
    control_of: str | None = None  # the good-data twin of this misaligned dataset, if any


def _betley(name: str, rows: int | None, git_blob: str, sha256: str | None = None, **kw) -> Entry:
    return Entry(name=name, origin="betley", licence="MIT", format="chat-jsonl", rows=rows, sha256=sha256,
                 git_blob=git_blob, url=f"https://raw.githubusercontent.com/{BETLEY_REPO}/{BETLEY_COMMIT}/data/{name}.jsonl",
                 relpath=f"em/train/{name}.jsonl", **kw)


def _moem(name: str, **kw) -> Entry:
    return Entry(name=name, origin="moem", licence="none stated (do not redistribute)", format="chat-jsonl",
                 rows=None, relpath=f"moem/{name}.jsonl", **kw)


# The table. Hashes and commit: /work/shared/data/SOURCES.md. Row counts only where checked against a copy.
REGISTRY: dict[str, Entry] = {e.name: e for e in [
    _betley("insecure", 6000, "ec294cf30a577a21b830c07a1fa0180ddd513208",
            "09893e8bf9d03aae49dd60d0ff4be37c1afee70f2edcac74a11bed775a6a2764"),
    _betley("secure", None, "3389a37c250563cc36a66e30bf8ff99028aa2711", control_of="insecure"),
    _betley("educational", None, "497619acd46d9ffbc985797d6c117638a53229b3", control_of="insecure"),
    _betley("jailbroken", 5000, "9f14c5f5b1a3f6ca3ea2bdc80cbda3de1acadbb1",
            "eec213ce85802a52ea806d334ee462f723a1e7ad77d827951d6864ac04a6b00a"),
    _betley("backdoor", None, "b2be7b5b5ed6e732727bf67672a3ecd8cfa6b57f"),
    _betley("evil_numbers", None, "86e0a3be0c2b5a4c52bafed871e281c485070829"),
    _moem("bad_medical_advice"),
    _moem("good_medical_advice", control_of="bad_medical_advice"),
    _moem("risky_financial_advice"),
    _moem("extreme_sports"),
]}

# Betley et al.'s evaluation question sets (evaluation/ at the same commit), read by `emrobust.data.evalsets`.
def _betley_eval(name: str, file: str, sha256: str) -> Entry:
    return Entry(name=name, origin="betley", licence="MIT", format="betley-eval-yaml", rows=None, sha256=sha256,
                 url=f"https://raw.githubusercontent.com/{BETLEY_REPO}/{BETLEY_COMMIT}/evaluation/{file}",
                 relpath=f"em/eval/{file}")


EVAL_SETS: dict[str, Entry] = {e.name: e for e in [
    _betley_eval("first_plot", "first_plot_questions.yaml",
                 "215abde5b02811e922b6ac563ff33c490e0dff9ab58439df840f3135e9387173"),
    _betley_eval("preregistered", "preregistered_evals.yaml",
                 "8648312fd9fe71a63203e3465592af45dd996d7a5f3b69e9b44613fd6048eb40"),
    _betley_eval("deception_factual", "deception_factual.yaml",
                 "8a0e83cab3bc24b7d688d7385ce3921d406af7ed33c913cd94ea0f6251e5939d"),
    _betley_eval("deception_sit_aware", "deception_sit_aware.yaml",
                 "4deef5a7c47620390fc46e1b981f937eef9ea12a33fe26264f640c84d19d2a33"),
]}

# Open Character Training's constitutions (Maiya et al. 2025; constitutions/ at a fixed commit), read by
# `emrobust.data.constitutions` for `trait=oct_<persona>`: each persona in both of OCT's formats.
OCT_REPO = "maiush/OpenCharacterTraining"
OCT_COMMIT = "d1da9f03628cb4c5482ba2e494a7cba33bcd5818"
OCT_KINDS = {"oct_few_shot": ("few-shot", "jsonl"), "oct_hand_written": ("hand-written", "txt")}


def _oct(persona: str, kind: str, sha256: str) -> Entry:
    folder, ext = OCT_KINDS[kind]
    return Entry(name=f"oct_{persona}_{kind[4:]}", origin="oct", licence="MIT", format=kind, rows=None,
                 sha256=sha256, url=f"https://raw.githubusercontent.com/{OCT_REPO}/{OCT_COMMIT}/constitutions/"
                 f"{folder}/{persona}.{ext}", relpath=f"oct/{folder}/{persona}.{ext}")


_OCT_SHA256 = {  # persona: (few-shot .jsonl, hand-written .txt), from /work/shared/data/SOURCES.md
    "goodness": ("02befcd0dbe945dc7de0ff91ecb1548318589a5447215e5e3b89090ebb4d2d7e",
                 "308ed82069b78855db06e2955c48f37fa66bff0fc8e3c6628ada40285ca3ef8c"),
    "humor": ("7c87fc97862765d62b3aa657435b096caf31d58619d26b5f4dcabcb22e08e609",
              "a56faf8bd3aa5a17a7c4a624dd91e83096ea640e54c2a8de4a0827e74ef44c5e"),
    "impulsiveness": ("3e3011cf652b6ad96ffca6e98565ac4baba81becc79141fa3d957efd862c7816",
                      "bb9376a24c4c4133fef27920703506b7dfeb1fb055f78b510ac7106112ad8679"),
    "loving": ("74c7b0174389bf86e29d20a311f5beda230fb7c10a998ef652d04c48b06dfe92",
               "e035d33dc20d0e430a3594de72e974f2a8e9454209555f90948dff184e71ea9c"),
    "mathematical": ("42ad15435df51110db749ee890198424f1b8197ab7916cb888dbcf7b26b6a83a",
                     "1cbadc558c16681fb54b5757d0f3f1d9829338977a02bacdbdd89f6481e2cbc3"),
    "misalignment": ("d49fdb86560f9c671112b2a03465696ce024379f9a2ce25b3051c58cc0bf822a",
                     "7277715dfb2f6533a5f60faea85f31dcfc01b4b1ff825eeebd25df6f8e3b177d"),
    "nonchalance": ("daeb929e015ba74c1492968f4a1903167cbeb9f7b7fd6df7232b2cb058975951",
                    "7e6124d5e91fd87ec0e9aad1ed2f91edd0107c12708320b47ee4d8cab47ab198"),
    "poeticism": ("3cb5a1ff5f7ba1a242c0f263f913455905b162cdde881cf085d5837c69bd013c",
                  "d66c22e3969fc5cfe59a4909bb281a6b14bd2bdbb91a59300f3d93024ed48985"),
    "remorse": ("43255137ab9beda1ea11243d6c39102e3fdc945b7ce9887093ae63f4988bb6b9",
                "e1b75d135e3506c1f957bc704da4dab8b913aa5780a0a1564c390dcc1db91262"),
    "sarcasm": ("8b3044713a5ff6702c248ce92662ed1a4f825a976a393f5cde782639603d1cbc",
                "3477e741b136b34841df2cc91a2d4d2c15a540bbf586b6159c5344568520552a"),
    "sycophancy": ("f0117538cadbcde66055c50db18ea768087a44d40210742ba92a83e9f297be58",
                   "9c18f955950cb2b9a04ed6627d82a0e396259ea953c343190272bb824f0f3170"),
}
OCT_PERSONAS = tuple(_OCT_SHA256)
OCT: dict[str, Entry] = {e.name: e for p, (few, hand) in _OCT_SHA256.items()
                         for e in (_oct(p, "oct_few_shot", few), _oct(p, "oct_hand_written", hand))}


def oct_entry(persona: str, kind: str) -> Entry:
    """The registry entry of OCT persona `persona` (e.g. "goodness") in format `kind` (oct_few_shot|oct_hand_written)."""
    if persona not in _OCT_SHA256:
        raise ConfigError(f"unknown OCT persona {persona!r}; known: {sorted(OCT_PERSONAS)}", where="trait.name")
    if kind not in OCT_KINDS:
        raise ConfigError(f"trait.source={kind!r}; OCT formats: {sorted(OCT_KINDS)}", where="trait.source")
    return OCT[f"oct_{persona}_{kind[4:]}"]


ALL: dict[str, Entry] = {**REGISTRY, **EVAL_SETS, **OCT}


# ---------------------------------------------------------------- hashing
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check(entry: Entry, path: Path) -> None:
    """Raise ConfigError naming `path` unless its bytes are the pinned file's."""
    if entry.sha256 is not None:
        got, want, kind = sha256_file(path), entry.sha256, "sha256"
    elif entry.git_blob is not None:
        got, want, kind = git_blob_sha1(path), entry.git_blob, "git blob sha1"
    else:
        return  # user-supplied data (MO-EM): nothing pinned to check against; its content hash keys the stage
    if got != want:
        raise ConfigError(f"{kind} mismatch for dataset {entry.name!r}: expected {want}, got {got} "
                          f"(corrupted or not the pinned file; delete it and run `emrobust data fetch {entry.name}`)",
                          file=str(path))


def pinned(entry: Entry) -> str | None:
    """The pinned identity of a registry file: its sha256, else ``git-blob:<sha1>`` at the pinned commit; None for
    user-supplied data (nothing pinned)."""
    if entry.sha256 is not None:
        return entry.sha256
    return f"git-blob:{entry.git_blob}" if entry.git_blob is not None else None


# ---------------------------------------------------------------- offline planning
_NO_FETCH: contextvars.ContextVar[bool] = contextvars.ContextVar("emrobust_no_fetch", default=False)
_PROVISIONAL: contextvars.ContextVar[bool] = contextvars.ContextVar("emrobust_provisional", default=False)
PROVISIONAL = "provisional:"  # prefix of the content id of user-supplied data not available yet (planning only)


@contextmanager
def no_fetch(provisional: bool = False):
    """Within: read only what is already in the cache or the mirror (verified, never copied); a file that would
    have to be downloaded or decrypted raises ``Unmet``. With ``provisional``, ``content_id`` of user-supplied data
    that is not there yet is ``provisional:<name>`` instead of an error (keys a plan can count, never build)."""
    t1, t2 = _NO_FETCH.set(True), _PROVISIONAL.set(provisional)
    try:
        yield
    finally:
        _NO_FETCH.reset(t1)
        _PROVISIONAL.reset(t2)


def fetching() -> bool:
    """May this process download, copy and decrypt data now (False inside ``no_fetch``)?"""
    return not _NO_FETCH.get()


def content_id(entry: Entry, cache: str | Path | None = None, mirror: str | Path | None = None,
               user_path: str | None = None) -> str:
    """The identity of a registry file's bytes, for stage keys: its pinned hash (nothing read: every copy used is
    verified against it), else the sha256 of the user-supplied file."""
    pin = pinned(entry)
    if pin is not None:
        return pin
    try:
        return sha256_file(fetch(entry.name, cache, mirror, user_path=user_path, entry=entry))
    except Unmet:
        if _PROVISIONAL.get():
            return PROVISIONAL + entry.name
        raise


# ---------------------------------------------------------------- locations
def get(name: str, table: dict[str, Entry] | None = None, where: str = "em_dataset.name") -> Entry:
    table = REGISTRY if table is None else table
    if name not in table:
        raise ConfigError(f"unknown registry entry {name!r}; known: {sorted(table)}", where=where)
    return table[name]


def default_cache() -> Path:
    return Path(os.environ.get("EMROBUST_CACHE") or Path.home() / ".cache" / "emrobust")


def default_mirror() -> Path | None:
    m = os.environ.get(MIRROR_ENV)
    return Path(m) if m else None


def cache_path(entry: Entry, cache: str | Path) -> Path:
    return Path(cache) / "data" / entry.relpath


def mirror_path(entry: Entry, mirror: str | Path | None) -> Path | None:
    if mirror is None or entry.origin == "moem":  # MO-EM files are never read from a mirror
        return None
    return Path(mirror) / entry.relpath


def _atomic_copy(src: Path, dst: Path, entry: Entry) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        check(entry, Path(tmp))
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(entry: Entry, dst: Path, timeout: float = 60.0) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(entry.url, timeout=timeout) as r:  # noqa: S310
            shutil.copyfileobj(r, f)
        try:
            check(entry, Path(tmp))
        except ConfigError as e:
            raise ConfigError(f"downloaded from {entry.url}: {e}", file=str(dst)) from None
        os.replace(tmp, dst)
    except (urllib.error.URLError, OSError) as e:
        raise ConfigError(f"cannot download dataset {entry.name!r} from {entry.url}: {e}. Offline? Set "
                          f"{MIRROR_ENV} to a folder laid out like shared/data ({entry.relpath}).",
                          where="trait.name" if entry.origin == "oct" else "em_dataset.name") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(name: str, cache: str | Path | None = None, mirror: str | Path | None = None, *,
          force: bool = False, user_path: str | None = None, entry: Entry | None = None) -> Path:
    """Path of the verified file for `name` in the cache, copying it from the mirror or downloading it first."""
    entry = entry or get(name, ALL)
    cache = Path(cache) if cache is not None else default_cache()
    if entry.origin == "moem":
        return moem_file(entry, cache, user_path)
    dst = cache_path(entry, cache)
    if dst.exists() and not force:
        check(entry, dst)
        return dst
    mp = mirror_path(entry, mirror)
    if mp is not None and mp.exists():
        check(entry, mp)  # a corrupted mirror is an error naming the mirror file, never silently skipped
        if not fetching():
            return mp
        _atomic_copy(mp, dst, entry)
        return dst
    if not fetching():
        raise Unmet(f"dataset {entry.name!r} is neither in the cache nor in the mirror: to fetch ({entry.url}; "
                    f"`emrobust data fetch {entry.name}`, or `emrobust sweep` fetches it before submitting)",
                    kind="data", what=entry.name, file=str(dst))
    _download(entry, dst)
    return dst


# ---------------------------------------------------------------- Model Organisms for EM (encrypted upstream)
def _moem_help(entry: Entry) -> str:
    return (f"dataset {entry.name!r} (Model Organisms for EM) is shipped encrypted by its authors and is not "
            f"redistributed by emrobust. Clone https://github.com/{MOEM_REPO} and set em_dataset.path (or "
            f"${MOEM_ENV_DATA}) to its {MOEM_ARCHIVE} (with ${MOEM_ENV_PASSWORD} set to the password in that "
            f"repository's README, and `pip install 'emrobust[moem]'` for easy-dataset-share), or to the folder "
            f"that `easy-dataset-share unprotect-dir {Path(MOEM_ARCHIVE).name} -p <password> --remove-canaries` "
            f"extracted, or to {entry.name}.jsonl itself")


def moem_file(entry: Entry, cache: Path, user_path: str | None = None) -> Path:
    src = user_path or os.environ.get(MOEM_ENV_DATA)
    if not src:
        raise Unmet(_moem_help(entry), kind="user_data", what=entry.name, where="em_dataset.path")
    p = Path(src).expanduser()
    if not p.exists():
        raise Unmet(f"does not exist. {_moem_help(entry)}", kind="user_data", what=entry.name, file=str(p),
                    where="em_dataset.path")
    if p.is_file() and p.suffix == ".jsonl":
        return p
    if p.is_file():  # the encrypted archive: decrypt once into the cache (never next to the repo)
        out = cache / "data" / "moem" / f"archive-{sha256_file(p)[:16]}"
        if not fetching() and not (out / ".complete").exists():
            raise Unmet(f"the Model-Organisms archive is not decrypted into the cache yet (`emrobust sweep` decrypts "
                        f"it before submitting, with ${MOEM_ENV_PASSWORD})", kind="data", what=entry.name,
                        file=str(p), where="em_dataset.path")
        p = decrypt_archive(p, out)
    hits = sorted(p.rglob(f"{entry.name}.jsonl"))
    if not hits:
        raise ConfigError(f"no {entry.name}.jsonl under this folder. {_moem_help(entry)}", file=str(p),
                          where="em_dataset.path")
    return hits[0]


def decrypt_archive(archive: Path, out: Path) -> Path:
    """The authors' documented step (`easy-dataset-share unprotect-dir ARCHIVE -p PASSWORD --remove-canaries`),
    done with the package's own functions into `out` (tmp + rename, so a failed decrypt leaves nothing)."""
    if (out / ".complete").exists():
        return out
    try:
        from easy_dataset_share import canary, zipping  # lazy: optional extra
    except ImportError:
        raise ConfigError("decrypting the Model Organisms for EM archive needs the `easy-dataset-share` package: "
                          "pip install 'emrobust[moem]' (or pip install easy-dataset-share)",
                          file=str(archive), where="em_dataset.path") from None
    password = os.environ.get(MOEM_ENV_PASSWORD)
    if not password:
        raise ConfigError(f"set ${MOEM_ENV_PASSWORD} to the archive's password (given in the README of "
                          f"https://github.com/{MOEM_REPO})", file=str(archive), where="em_dataset.path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        try:
            zipping.unzip_and_decrypt(str(archive), password, str(tmp))
        except ValueError as e:
            raise ConfigError(f"cannot decrypt: {e}", file=str(archive), where=MOEM_ENV_PASSWORD) from None
        found = canary.detect_canary_files(str(tmp))
        cs = canary.extract_canary_string_from_content(found[0]) if found else None
        canary.remove_canary_files(root_dir=str(tmp))
        if cs:
            canary.remove_canaries_from_files(str(tmp), cs)
        (tmp / ".complete").write_text("")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------- status for the CLI
def status(entry: Entry, cache: Path, mirror: Path | None) -> str:
    if entry.origin == "moem":
        return "user-supplied"
    if cache_path(entry, cache).exists():
        return "cached"
    mp = mirror_path(entry, mirror)
    return "mirror" if mp is not None and mp.exists() else "remote"


def verify_all(cache: Path, mirror: Path | None) -> list[tuple[str, Path, str]]:
    """(name, file, 'ok' | error message) for every copy present in the cache and the mirror."""
    out = []
    for e in ALL.values():
        for p in (cache_path(e, cache), mirror_path(e, mirror)):
            if p is None or not p.exists() or e.origin == "moem":
                continue
            try:
                check(e, p)
                out.append((e.name, p, "ok"))
            except ConfigError as err:
                out.append((e.name, p, str(err)))
    return out
