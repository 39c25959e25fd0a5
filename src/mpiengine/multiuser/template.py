"""The admin's template and schema: user variables -> a user endpoint's engine config.

1. The submitter's variables are validated against ``user_config_schema.json`` (JSON Schema)
   first; a failure names the variable and the rule, and nothing is rendered or started.
2. ``user_config_template.yaml.j2`` is rendered in Jinja2's ``SandboxedEnvironment`` with
   ``StrictUndefined`` (a missing variable is an error; ``{{ ''.__class__ }}`` and friends are
   refused by the sandbox). Every value is emitted as JSON (``finalize``), so a string lands in
   the YAML as one quoted scalar: ``"x\\nrm -rf ~"`` stays one string and cannot open a new key.
   A ``shell_quote`` filter quotes a value for a shell line.
3. The rendered YAML must be a mapping with ``backend`` (``embedded`` or ``batch``) and
   ``backend_options`` (those of that backend: for ``batch``, a block config) and may not set a
   key the admin's policy fixes (``policy_keys``). The old names ``engine`` and
   ``engine_options`` still load, with a warning in the log naming the new key.

Reserved variables (not settable by users): ``user`` (``name``, ``uid``, ``gid``, ``home``)
and ``principal``.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import yaml
from jinja2.sandbox import SandboxedEnvironment

from mpiengine_sdk.errors import ConfigError

__all__ = ["RESERVED", "UserConfigTemplate"]

#: Variables the manager sets; a user variable of these names is refused.
RESERVED = frozenset({"user", "principal"})
#: The keys a rendered config may have.
log = logging.getLogger(__name__)

_KEYS = frozenset({"backend", "backend_options", "environment"})
#: Old key -> new key (still read; a warning names the new one).
_RENAMED = {"engine": "backend", "engine_options": "backend_options"}


def _finalize(value: Any) -> Any:
    # Strings (and everything else) leave the template as JSON, which is valid YAML flow
    # syntax: no value can end its scalar and start a new key or document.
    if isinstance(value, jinja2.runtime.Undefined):
        return value
    if isinstance(value, _Raw):
        return str(value)
    return json.dumps(value)


class _Raw(str):
    """A filter result that is already safe text (not re-encoded by finalize)."""


def _shell_quote(value: Any) -> _Raw:
    return _Raw(json.dumps(shlex.quote(str(value))))


class UserConfigTemplate:
    """A template + schema pair.

    Args:
        template: the Jinja2 text.
        schema: the JSON Schema of the user variables (an object schema).
        policy_keys: engine option keys the template's output may not set (the admin's
            policy, e.g. ``workdir``).

    Raises:
        ConfigError: the schema is not a valid JSON Schema, or the template does not parse.
    """

    def __init__(
        self,
        template: str,
        schema: Mapping[str, Any],
        policy_keys: Collection[str] = (),
    ) -> None:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(
                "user_config_schema", f"not a valid JSON Schema: {exc.message}"
            ) from exc
        self.schema = dict(schema)
        self.policy_keys = frozenset(policy_keys)
        self._env = SandboxedEnvironment(
            undefined=jinja2.StrictUndefined, finalize=_finalize, autoescape=False
        )
        self._env.filters["shell_quote"] = _shell_quote
        try:
            self._template = self._env.from_string(template)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError("user_config_template", f"line {exc.lineno}: {exc.message}") from exc

    @classmethod
    def from_files(
        cls, template: Path, schema: Path, policy_keys: Collection[str] = ()
    ) -> UserConfigTemplate:
        """Load ``user_config_template.yaml.j2`` and ``user_config_schema.json``.

        Raises:
            ConfigError: a file is missing or invalid.
        """
        try:
            text = template.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(template), f"cannot read the template: {exc}") from exc
        try:
            doc = json.loads(schema.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(str(schema), f"cannot read the schema: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(str(schema), "the schema must be a JSON object")
        return cls(text, doc, policy_keys)

    def validate(self, variables: Mapping[str, Any]) -> None:
        """Check user variables against the schema.

        Raises:
            ConfigError: ``key`` is ``user_config.<variable>`` and the problem names the rule.
        """
        if not isinstance(variables, Mapping):
            raise ConfigError("user_config", "must be a mapping of variable names to values")
        bad = sorted(RESERVED & set(variables))
        if bad:
            raise ConfigError(
                f"user_config.{bad[0]}", "is reserved (set by the endpoint)", "other names"
            )
        validator = jsonschema.Draft202012Validator(self.schema)
        errors = sorted(validator.iter_errors(dict(variables)), key=lambda e: list(e.path))
        if errors:
            err = errors[0]
            where = ".".join(str(p) for p in err.path)
            if not where and err.validator == "required":
                where = str(err.message).split("'")[1] if "'" in err.message else ""
            if not where and err.validator == "additionalProperties":
                where = ",".join(sorted(set(variables) - set(self.schema.get("properties", {}))))
            raise ConfigError(
                f"user_config.{where}" if where else "user_config",
                f"{err.message} (schema rule {err.validator!r})",
            )

    def render(self, variables: Mapping[str, Any], reserved: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, render and check: the user endpoint's config.

        Args:
            variables: the submitter's user variables.
            reserved: ``user`` and ``principal`` (set by the manager).

        Returns:
            ``{"backend": ..., "backend_options": {...}, "environment": {...}}``.

        Raises:
            ConfigError: a schema failure, a template error (missing variable, sandbox
                violation), or a rendered config that is invalid or breaks policy.
        """
        self.validate(variables)
        try:
            text = self._template.render({**variables, **reserved})
        except jinja2.UndefinedError as exc:
            raise ConfigError("user_config_template", f"undefined variable: {exc}") from exc
        except jinja2.exceptions.SecurityError as exc:
            raise ConfigError("user_config_template", f"refused by the sandbox: {exc}") from exc
        except jinja2.TemplateError as exc:
            raise ConfigError("user_config_template", f"cannot render: {exc}") from exc
        return self.check(text)

    def check(self, text: str) -> dict[str, Any]:
        """Parse and check a rendered config (see ``render``).

        Raises:
            ConfigError: not YAML, unknown keys, wrong types, or a policy key set.
        """
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("user_config_template", f"rendered YAML is invalid: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError("user_config_template", "must render to a mapping")
        for old, new in _RENAMED.items():
            if old in doc:
                if new in doc:
                    raise ConfigError(
                        "user_config_template", f"sets both {old!r} and its new name {new!r}"
                    )
                log.warning("user_config_template: %r is now %r; please rename it", old, new)
                doc[new] = doc.pop(old)
        unknown = sorted(set(doc) - _KEYS)
        if unknown:
            raise ConfigError(
                "user_config_template", f"unknown key(s) {unknown}", str(sorted(_KEYS))
            )
        backend = doc.get("backend", "embedded")
        if backend not in ("embedded", "batch"):
            raise ConfigError("backend", f"a user endpoint runs embedded or batch, not {backend!r}")
        options = doc.get("backend_options") or {}
        env = doc.get("environment") or {}
        if not isinstance(options, dict):
            raise ConfigError("backend_options", "must be a mapping")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ConfigError("environment", "must be a mapping of strings")
        locked = sorted(self.policy_keys & set(options))
        if locked:
            raise ConfigError(
                f"backend_options.{locked[0]}", "is fixed by the endpoint's admin policy"
            )
        return {"backend": backend, "backend_options": options, "environment": env}
