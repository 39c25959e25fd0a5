"""Multi-user endpoints: one admin-run manager serves many principals, each task as its own
POSIX user.

- ``mapping``: relay principal -> local account (Globus Connect Server mapping documents);
- ``privileges``: the safe, checked privilege drop of a user endpoint process;
- ``template``: the admin's Jinja2 template + JSON schema -> a user endpoint's engine config;
- ``allowlist``: which commands, scripts and functions may run;
- ``audit``: the append-only audit log;
- ``manager``: the manager backend (``backend: mpiengine.multiuser.manager:ManagerBackend``);
- ``userep``: the user endpoint process it forks per (principal, rendered config).
"""

from __future__ import annotations
