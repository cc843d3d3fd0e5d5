# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""systemctl stand-in and recorder for the lab hosts (no systemd runs there).

Installed as /usr/local/bin/systemctl (ahead of /usr/bin on root's PATH) by ``k3s_double.py install``. Inside a lab
host (its private /var/log/kubepki-lab is a mount point) it records every call as one JSON line
``{"time", "argv", "rc"}`` in /var/log/kubepki-lab/systemctl.jsonl, answers ``daemon-reload`` (exit 0; the double
reads its unit files at every start) and runs ``start|stop|restart|status|is-active <unit>`` of the four k3s/RKE2
units through their /etc/init.d scripts, as ``systemctl restart`` of a Type=notify unit waits until the service is
ready. Anything else, and any call outside a lab host, is handed to the real /usr/bin/systemctl unchanged.
Independent of the collection: nothing under plugins/ is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

LAB_LOG_DIR = "/var/log/kubepki-lab"
RECORD = os.path.join(LAB_LOG_DIR, "systemctl.jsonl")
REAL_SYSTEMCTL = "/usr/bin/systemctl"
UNITS = ("k3s", "k3s-agent", "rke2-server", "rke2-agent")
UNIT_VERBS = ("start", "stop", "restart", "status", "is-active")


def in_lab_host() -> bool:
    """The lab bind-mounts its private dirs (same filesystem, so os.path.ismount cannot tell): ask mountinfo."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            return any(line.split()[4] == LAB_LOG_DIR for line in handle if len(line.split()) > 4)
    except OSError:
        return False


def record(argv: list, rc: int) -> None:
    line = json.dumps({"time": time.time(), "argv": argv, "rc": rc}) + "\n"
    with open(RECORD, "a", encoding="utf-8") as handle:
        handle.write(line)


def handle(args: list) -> int | None:
    """The exit code of a call the stand-in answers, None for one it hands to the real systemctl."""
    words = [a for a in args if not a.startswith("-")]
    if words == ["daemon-reload"]:
        return 0
    if len(words) == 2 and words[0] in UNIT_VERBS:
        unit = words[1][:-len(".service")] if words[1].endswith(".service") else words[1]
        if unit in UNITS:
            verb = "status" if words[0] == "is-active" else words[0]
            return subprocess.run(["/etc/init.d/" + unit, verb], check=False).returncode
    return None


def main(args: list) -> int:
    if in_lab_host():
        rc = handle(args)
        record(args, rc)  # rc null: handed to the real systemctl
        if rc is not None:
            return rc
    os.execv(REAL_SYSTEMCTL, [REAL_SYSTEMCTL] + args)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
