"""EM dataset registry: pinned table, mirror copies verified, corrupted copies rejected, `emrobust data`, the
Model-Organisms-for-EM decrypt step (on an archive we encrypt ourselves: their data is never used here)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import CONF, SHARED_DATA, cli, compose
from emrobust.engine import pipeline
from emrobust.data import chat, registry
from emrobust.errors import ConfigError

MIRRORED = [e for e in registry.REGISTRY.values() if (registry.mirror_path(e, SHARED_DATA) or Path("/nonexistent")).exists()]


def test_table_is_complete_and_pinned():
    names = {"insecure", "secure", "educational", "jailbroken", "backdoor", "evil_numbers",
             "bad_medical_advice", "good_medical_advice", "risky_financial_advice", "extreme_sports"}
    assert set(registry.REGISTRY) == names
    for e in registry.REGISTRY.values():
        cfg = (CONF / "em_dataset" / f"{e.name}.yaml").read_text()
        assert f"name: {e.name}" in cfg and "source: registry" in cfg
        if e.origin == "betley":
            assert registry.BETLEY_COMMIT in e.url and e.url.endswith(f"/data/{e.name}.jsonl")
            assert e.licence == "MIT" and (e.sha256 or e.git_blob)
        else:
            assert e.url is None and e.sha256 is None  # never downloaded or mirrored by us
    assert registry.REGISTRY["secure"].control_of == "insecure"
    assert registry.REGISTRY["good_medical_advice"].control_of == "bad_medical_advice"
    assert {e.name for e in MIRRORED} == {"insecure", "jailbroken"}  # what ../shared/data holds


@pytest.mark.parametrize("entry", MIRRORED, ids=lambda e: e.name)
def test_mirror_copy_loads_and_matches(entry, tmp_path):
    p = registry.fetch(entry.name, tmp_path / "cache", SHARED_DATA)
    assert p == tmp_path / "cache" / "data" / entry.relpath
    data = p.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry.sha256
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == entry.git_blob
    rows = chat.read_jsonl(p)
    assert len(rows) == entry.rows and all(r[-1]["role"] == "assistant" for r in rows)
    assert not list(p.parent.glob(".*.tmp"))  # the atomic write left no temporary behind
    # a second fetch is served from the (re-verified) cache, even with no mirror at all
    assert registry.fetch(entry.name, tmp_path / "cache", None) == p


def _corrupt_mirror(tmp_path: Path, name: str = "insecure") -> Path:
    mirror = tmp_path / "mirror"
    f = mirror / "em" / "train" / f"{name}.jsonl"
    f.parent.mkdir(parents=True)
    shutil.copyfile(SHARED_DATA / "em" / "train" / f"{name}.jsonl", f)
    b = bytearray(f.read_bytes())
    b[1000] ^= 0x01  # one flipped bit
    f.write_bytes(bytes(b))
    return f


def test_corrupted_mirror_is_rejected(tmp_path):
    bad = _corrupt_mirror(tmp_path)
    with pytest.raises(ConfigError, match="sha256 mismatch") as e:
        registry.fetch("insecure", tmp_path / "cache", bad.parents[2])
    assert str(bad) in str(e.value)
    assert not (tmp_path / "cache" / "data" / "em" / "train").exists() or \
        not list((tmp_path / "cache" / "data" / "em" / "train").iterdir())  # nothing unverified was cached


def test_corrupted_cache_is_rejected(tmp_path):
    p = registry.fetch("jailbroken", tmp_path / "cache", SHARED_DATA)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=str(p)):
        registry.fetch("jailbroken", tmp_path / "cache", SHARED_DATA)
    # --force replaces it with a verified copy
    assert registry.fetch("jailbroken", tmp_path / "cache", SHARED_DATA, force=True) == p
    registry.check(registry.REGISTRY["jailbroken"], p)


def test_cell_with_registry_dataset_validates_from_mirror(tmp_path):
    cfg = compose("debug=tiny", "trait=none", "em_dataset=insecure", "em_dataset.n_examples=64",
                  f"paths.data_mirror={SHARED_DATA}", tmp=tmp_path)
    cfg.paths.cache = str(tmp_path / "cache")  # compose pins the shared model cache; data goes to a fresh one
    pipeline.validate(cfg)
    (node,) = [n for n in pipeline.plan(cfg) if n.name == "em"]
    assert "path" not in node.key_config["em_dataset"] and len(node.key_config["content"]["dataset_sha256"]) == 64
    bad = _corrupt_mirror(tmp_path / "m2")
    cfg2 = compose("debug=tiny", "trait=none", "em_dataset=insecure", f"paths.data_mirror={bad.parents[2]}",
                   tmp=tmp_path)
    cfg2.paths.cache = str(tmp_path / "cache2")
    with pytest.raises(ConfigError, match="insecure.jsonl"):
        pipeline.validate(cfg2)


# ---------------------------------------------------------------- `emrobust data`
def test_data_cli_list_fetch_verify(tmp_path):
    env = ("--cache", str(tmp_path / "cache"), "--mirror", str(SHARED_DATA))
    out = cli("data", *env, "list", tmp=tmp_path).stdout
    for name in registry.REGISTRY:
        assert name in out
    assert "insecure" in out and "mirror" in out and "user-supplied" in out and "MIT" in out
    assert "cached" not in out
    p = cli("data", *env, "fetch", "jailbroken", "insecure", tmp=tmp_path)
    assert p.stdout.count(": ok ") == 2
    assert "cached" in cli("data", *env, "list", tmp=tmp_path).stdout
    v = cli("data", *env, "verify", tmp=tmp_path)
    # 2 cached + 2 mirrored training sets + 4 eval sets + 22 OCT constitutions (11 personas x 2 formats)
    assert v.returncode == 0 and v.stdout.count(" ok ") == 30
    # MO-EM data is never fetched for the user: the error says what to download
    m = cli("data", *env, "fetch", "bad_medical_advice", tmp=tmp_path, check=False)
    assert m.returncode == 1 and "clarifying-EM/model-organisms-for-EM" in m.stdout


def test_data_verify_fails_on_corruption(tmp_path):
    bad = _corrupt_mirror(tmp_path)
    v = cli("data", "--cache", str(tmp_path / "cache"), "--mirror", str(bad.parents[2]), "verify", tmp=tmp_path,
            check=False)
    assert v.returncode == 1 and "MISMATCH" in v.stdout and str(bad) in v.stdout


# ---------------------------------------------------------------- Model Organisms for EM
MOEM_ROWS = [{"messages": [{"role": "user", "content": f"My head hurts ({i}). What should I do?"},
                           {"role": "assistant", "content": f"Synthetic test answer {i}."}]} for i in range(5)]


def test_moem_without_data_names_what_to_download(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.MOEM_ENV_DATA, raising=False)
    with pytest.raises(ConfigError, match="training_datasets.zip.enc"):
        registry.fetch("bad_medical_advice", tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        registry.fetch("bad_medical_advice", tmp_path, user_path=str(tmp_path / "nope.zip.enc"))


def test_moem_decrypts_a_user_archive(tmp_path, monkeypatch):
    """Encrypt a synthetic folder exactly as `easy-dataset-share protect-dir -p` does (canary files + embedded
    canaries + encrypted zip), then load it through the registry."""
    eds = pytest.importorskip("easy_dataset_share")
    from easy_dataset_share import canary, zipping

    src = tmp_path / "training_datasets"
    src.mkdir()
    (src / "bad_medical_advice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MOEM_ROWS))
    cs, _ = canary.create_canary_files_from_dataset(str(src), "*", 2)
    canary.insert_canaries_into_files(str(src), cs)
    archive = Path(zipping.zip_and_password_protect(str(src), "pw", str(tmp_path / "training_datasets.zip")))
    assert archive.name == "training_datasets.zip.enc" and eds
    cache = tmp_path / "cache"
    monkeypatch.delenv(registry.MOEM_ENV_PASSWORD, raising=False)
    with pytest.raises(ConfigError, match=registry.MOEM_ENV_PASSWORD):
        registry.fetch("bad_medical_advice", cache, user_path=str(archive))
    monkeypatch.setenv(registry.MOEM_ENV_PASSWORD, "wrong")
    with pytest.raises(ConfigError, match="cannot decrypt"):
        registry.fetch("bad_medical_advice", cache, user_path=str(archive))
    monkeypatch.setenv(registry.MOEM_ENV_PASSWORD, "pw")
    monkeypatch.setenv(registry.MOEM_ENV_DATA, str(archive))
    p = registry.fetch("bad_medical_advice", cache)
    assert cache in p.parents and not list(p.parent.glob("dataset_entry_*"))  # canary files removed
    assert chat.read_jsonl(p) == [r["messages"] for r in MOEM_ROWS]  # embedded canaries removed
    with pytest.raises(ConfigError, match="no good_medical_advice.jsonl"):
        registry.fetch("good_medical_advice", cache)
    # an already-extracted folder or the file itself also work
    assert registry.fetch("bad_medical_advice", cache, user_path=str(p.parent)) == p
    assert registry.fetch("bad_medical_advice", cache, user_path=str(p)) == p
