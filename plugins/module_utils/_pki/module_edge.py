# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The only place where the engine meets Ansible: dependency check, error reporting, kubectl lookup and the HTTPS
fetch (ansible's open_url), so the engine itself imports nothing from ansible."""

from __future__ import annotations

import os
import ssl
from urllib.error import URLError

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.kubepki.certs.plugins.module_utils._pki.deps import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    MINIMUM_CRYPTOGRAPHY_VERSION,
    cryptography_problem,
)
from ansible_collections.kubepki.certs.plugins.module_utils._pki.errors import PKIError


def require_cryptography(module) -> None:
    problem = cryptography_problem()
    if problem == "missing":
        module.fail_json(msg=missing_required_lib("cryptography >= %s" % MINIMUM_CRYPTOGRAPHY_VERSION),
                         exception=CRYPTOGRAPHY_IMPORT_ERROR)
    elif problem:
        module.fail_json(msg=problem)


def run_engine(module, function, *args, **kwargs):
    """Call an engine function; a PKIError becomes a failed task naming the file and the problem."""
    try:
        return function(*args, **kwargs)
    except PKIError as exc:
        result = {"msg": exc.message}
        if exc.path:
            result["path"] = exc.path
        module.fail_json(**result)
    return None  # not reached: fail_json exits


def resolve_command(module, argv) -> list | None:
    """``argv`` with a bare program name resolved on the PATH (None when it is not there). A path is returned as is:
    RKE2 stages its kubectl at start, so it may appear a moment later."""
    argv = list(argv)
    if "/" not in argv[0]:
        found = module.get_bin_path(argv[0], required=False)
        if not found:
            return None
        argv[0] = found
    return argv


def kubectl_command(module, layout) -> list | None:
    """The node's admin kubectl argv from the layout table, resolved as :func:`resolve_command` does."""
    return resolve_command(module, layout.kubectl)


def fetch_cacerts(url: str, ca_file: str, timeout: float):
    """(body, None) or (None, why): verification failures are reported, never bypassed."""
    # Imported here: only the gate fetches, and ansible's urls costs every other module call ~0.1 s of import.
    from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
    from ansible.module_utils.urls import open_url

    if not os.path.isfile(ca_file):
        return None, "CA file %s: No such file or directory" % ca_file
    try:
        response = open_url(url, ca_path=ca_file, validate_certs=True, timeout=timeout, use_proxy=False,
                            follow_redirects="none")
        try:
            return response.read(), None
        finally:
            response.close()
    except (OSError, URLError, ssl.SSLError, ValueError, UrlsConnectionError) as exc:
        return None, str(getattr(exc, "reason", exc))[:300]


def probe_ok(url: str, timeout: float = 5.0) -> bool:
    """A static pod's httpGet probe, judged as the kubelet judges it: any 2xx; an HTTPS probe's certificate is not
    verified (the kubelet's is not either: the probe asks "is it up", not "is it trusted")."""
    from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
    from ansible.module_utils.urls import open_url

    try:
        response = open_url(url, validate_certs=False, timeout=timeout, use_proxy=False, follow_redirects="none")
        try:
            return 200 <= response.getcode() < 300
        finally:
            response.close()
    except (OSError, URLError, ssl.SSLError, ValueError, UrlsConnectionError):
        return False
