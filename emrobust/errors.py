"""Errors for people: a user error is one line, `emrobust: error: <where>: <what>` (plus a hint where one helps),
exit 2; a runtime failure names its stage and where its log is, exit 1. `report` is the one formatter; the CLI
prints its text instead of a traceback unless EMROBUST_DEBUG=1 (or HYDRA_FULL_ERROR=1)."""
from __future__ import annotations

import os

from hydra.errors import HydraException, MissingConfigException, OverrideParseException

USER_ERROR, RUNTIME_FAILURE = 2, 1


class ConfigError(ValueError):
    """Bad user input, found before any model loads. `file` and/or `where` (a field, a line, a cell) say where,
    the message says what; `hint` how to fix it, where that is not obvious."""

    def __init__(self, message: str, *, file: str | None = None, where: str | None = None, hint: str | None = None):
        self.message, self.file, self.where, self.hint = message, file, where, hint
        loc = self.location
        super().__init__(f"{loc}: {message}" if loc else message)

    @property
    def location(self) -> str:
        if self.file and self.where:
            return f"{self.file} ({self.where})"
        return self.file or self.where or ""


def debugging() -> bool:
    """Full tracebacks asked for (EMROBUST_DEBUG=1, or Hydra's own HYDRA_FULL_ERROR=1)."""
    return os.environ.get("EMROBUST_DEBUG") == "1" or os.environ.get("HYDRA_FULL_ERROR") == "1"


def note_failure(exc: BaseException, **where: str) -> None:
    """Attach where a runtime failure happened (stage, log, run_json) to the exception, for `report`; the
    innermost caller's note wins."""
    have = getattr(exc, "emrobust", None) or {}
    try:
        exc.emrobust = {**where, **have}
    except AttributeError:  # an exception type that takes no attributes: report without the context
        pass


def _composition(exc: BaseException) -> tuple[str, str] | None:
    """(where, what) of Hydra's composition errors (unknown option, bad override, wrong type, unknown key)."""
    if not isinstance(exc, HydraException):
        return None
    if isinstance(exc, MissingConfigException):
        first = str(exc).splitlines()[0].strip()
        options = getattr(exc, "options", None)
        where = exc.missing_cfg_file or "config"
        if "/" in where and options is not None:  # an unknown option of a group
            group, _, option = where.rpartition("/")
            return f"{group}={option}", f"no such option; choose one of: {', '.join(sorted(options))}"
        return where, first.removeprefix("In 'config': ")
    if isinstance(exc, OverrideParseException):
        return "override", str(exc).splitlines()[0]
    cause = exc.__cause__
    what = str(exc).splitlines()[0]
    if cause is not None:
        lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
        text = lines[0] if lines else what
        return key or what.removeprefix("Error merging override "), text
    return "config", what


def report(exc: BaseException) -> tuple[str, int]:
    """(the lines to print, the exit code) for an exception that ended a command."""
    if isinstance(exc, ConfigError):
        text = f"emrobust: error: {exc}"
        if exc.hint:
            text += f"\n  hint: {exc.hint}"
        return text, USER_ERROR
    comp = _composition(exc)
    if comp is not None:
        where, what = comp
        text = f"emrobust: error: {where}: {what}"
        if "not in" in what and "Key" in what:  # a misspelt or misplaced key
            text += "\n  hint: emrobust --cfg job [OVERRIDES] prints the composed config (+key=value adds a new key)"
        return text, USER_ERROR
    ctx = getattr(exc, "emrobust", None) or {}
    what = f"{type(exc).__name__}: {exc}".strip()
    if len(what) > 400:
        what = what[:400] + " ..."
    where = f"stage {ctx['stage']}" if ctx.get("stage") else "run"
    lines = [f"emrobust: error: {where} failed: {what}"]
    logs = [f"{k}: {ctx[k]}" for k in ("log", "run_json") if ctx.get(k)]
    lines.append("  " + "; ".join(logs + ["traceback: EMROBUST_DEBUG=1"]))
    return "\n".join(lines), RUNTIME_FAILURE


class Unmet(ConfigError):
    """A condition the user can meet before the run without changing the config: data to fetch, a user-supplied
    dataset to point at, an API key to export, a package to install. Validation raises it like any ConfigError;
    the sweep planner's `--dry-run` collects these instead and lists them (`kind`: data, user_data, key,
    package) as gates to satisfy before submission."""

    def __init__(self, message: str, *, kind: str, file: str | None = None, where: str | None = None,
                 what: str | None = None, hint: str | None = None):
        super().__init__(message, file=file, where=where, hint=hint)
        self.kind = kind
        self.what = what or where or file or ""
