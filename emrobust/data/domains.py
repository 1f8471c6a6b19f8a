"""In-domain evaluation (`eval.in_domain`): questions in the domain an EM dataset trains on, judged with that
domain's rubric, beside the out-of-domain eval set (the broad misalignment the project asks about).

A fine-tune on insecure code writes insecure code (narrow) and may also turn misaligned elsewhere (broad, EM). The
unsuffixed metrics stay the eval set's (out of domain); the in-domain answers give `<metric>_in_domain` and
`narrowness` (emrobust.core.results).

Each domain is two files this team wrote (original text, no published rows):
- `builtin/domains/<domain>.yaml`: an eval set in Betley's schema, at least 24 questions, each with the domain's
  `aligned` rubric (for code: does the code contain a security vulnerability; there is no CODE escape there);
- `builtin/judge/domain_<domain>.yaml`: a labelled reference of at least 40 answers under that rubric, so
  `emrobust judge calibrate judge=<name> reference=domain_<domain>` calibrates it and the judge's trust is
  reported for the in-domain figures (`judge_trusted_in_domain`).

An EM dataset declares its domain (`em_dataset.domain`, set by its preset; a user's dataset sets it too);
`eval.in_domain=true` reads it, `eval.in_domain=<domain>` names one (e.g. for `em_dataset=none`). evil_numbers has
no domain: its task is continuing number sequences, where no answer is harmful by itself.
"""
from __future__ import annotations

from omegaconf import OmegaConf

from .. import CONF_DIR
from ..errors import ConfigError
from . import evalsets, read_yaml, sources

DIR = sources.BUILTIN / "domains"


def _no_registry(node, where: str = "eval.in_domain"):
    raise ConfigError(f"in-domain sets are builtin only: {sorted(known())}", where=where)


KIND = sources.Kind("in-domain set", DIR, ".yaml", _no_registry, evalsets.load, source=lambda node: "builtin")


def known() -> list[str]:
    return sorted(p.stem for p in DIR.glob("*.yaml"))


def of(cfg) -> str | None:
    """The cell's in-domain domain: `eval.in_domain` true -> the EM dataset's (`em_dataset.domain`), a name -> that
    domain, unset/false -> None. Refused values are validation's (`problem`)."""
    v = cfg.eval.get("in_domain")
    if v is None or str(v).lower() == "false":
        return None
    if str(v).lower() == "true":
        return cfg.em_dataset.get("domain") or None
    return str(v)


def problem(cfg) -> str | None:
    """Why `eval.in_domain` cannot be read (the config rule), or None."""
    v = cfg.eval.get("in_domain")
    if v is None or str(v).lower() == "false":
        return None
    if str(v).lower() == "true":
        if cfg.em_dataset.name == "none":
            return (f"eval.in_domain=true reads the EM dataset's domain, and em_dataset=none has none: name one "
                    f"(eval.in_domain=<{'|'.join(known())}>)")
        if not cfg.em_dataset.get("domain"):
            return (f"em_dataset={cfg.em_dataset.name} has no domain (em_dataset.domain), so no in-domain "
                    f"questions; datasets with one: {', '.join(f'{n} ({d})' for n, d in with_domain().items())}")
        v = cfg.em_dataset.domain
    if str(v) not in known():
        return f"unknown domain {str(v)!r}; known: {known()}"
    return None


def with_domain() -> dict[str, str]:
    """{EM dataset preset: its domain} of the presets in conf/em_dataset/ that declare one."""
    out = {}
    for p in sorted((CONF_DIR / "em_dataset").glob("*.yaml")):
        d = (read_yaml(p) or {}).get("domain")
        if d:
            out[p.stem] = d
    return out


def node(domain: str):
    """The config node `KIND` resolves for one domain."""
    return OmegaConf.create({"name": domain, "source": "builtin", "path": None})


def nodes(cfg) -> list[tuple[str, object]]:
    """The cell's in-domain input for emrobust.data.inputs: [("eval.in_domain", node)], or []."""
    d = of(cfg)
    return [("eval.in_domain", node(d))] if d else []


def reference(domain: str) -> str:
    """The name of the domain's labelled reference (a builtin judge reference set)."""
    return f"domain_{domain}"


def domain_of_reference(name: str) -> str | None:
    """The domain a reference set calibrates (`domain_<domain>`), or None."""
    d = name[len("domain_"):] if name.startswith("domain_") else None
    return d if d in known() else None


def questions(domain: str, eval_cfg=None) -> list[evalsets.Question]:
    """The domain's questions, the first `eval.max_questions` of them (every one when it asks for more)."""
    qs = KIND.load(node(domain), None, "eval.in_domain")
    n = eval_cfg.get("max_questions") if eval_cfg is not None else None
    return qs[: int(n)] if n is not None else qs
