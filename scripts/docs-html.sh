#!/usr/bin/env bash
# Renders the collection's docsite (plugin and role pages from antsibull-docs, the guides from
# docs/docsite/) as HTML with Sphinx, warnings as errors, then checks that every guide and every plugin
# and role has its page.
#
#   scripts/docs-html.sh <collections root> <output dir>
#
# <collections root> holds ansible_collections/kubepki/certs (scripts/stage.sh makes one). The HTML lands in
# <output dir>/build/html. Needs antsibull-docs, sphinx and sphinx-ansible-theme (tests/requirements.txt).
#
# The labels antsibull-docs links into Ansible's own docs (common_return_values,
# ansible_configuration_settings, callback_plugins) resolve through a local intersphinx inventory naming their pages on
# docs.ansible.com: the build reaches no network and still fails on any other unresolved reference.
set -euo pipefail

ROOT="${1:?collections root}"
OUT="${2:?output dir}"
COLL="${ROOT}/ansible_collections/kubepki/certs"
export ANSIBLE_COLLECTIONS_PATH="${ROOT}"

mkdir -p "${OUT}"
cd "${OUT}"
antsibull-docs sphinx-init --use-current --fail-on-error --squash-hierarchy --dest-dir . \
    --project kubepki.certs --title "kubepki.certs" --html-short-title "kubepki.certs" kubepki.certs

python3 - <<'EOF'
import os
import zlib

ANSIBLE_DOCS_LABELS = {  # label: (page, anchor, title)
    "common_return_values": ("reference_appendices/common_return_values.html", "common-return-values", "Return Values"),
    "ansible_configuration_settings": ("reference_appendices/config.html", "ansible-configuration-settings",
                                       "Ansible Configuration Settings"),
    "callback_plugins": ("plugins/callback.html", "callback-plugins", "Callback plugins"),
    "action_plugins": ("plugins/action.html", "action-plugins", "Action plugins"),
}
lines = ["%s std:label -1 %s#%s %s" % (label, page, anchor, title)
         for label, (page, anchor, title) in sorted(ANSIBLE_DOCS_LABELS.items())]
header = (b"# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n"
          b"# The remainder of this file is compressed using zlib.\n")
with open("ansible_devel.inv", "wb") as handle:
    handle.write(header + zlib.compress(("\n".join(lines) + "\n").encode("utf-8")))
with open("conf.py", "a", encoding="utf-8") as handle:
    handle.write("\n# Offline: only the labels antsibull-docs links into Ansible's docs (scripts/docs-html.sh).\n"
                 "intersphinx_mapping = {'ansible_devel': ('https://docs.ansible.com/projects/ansible/devel/', "
                 "%r)}\n" % os.path.abspath("ansible_devel.inv"))
EOF

bash ./build.sh

# Every guide of extra-docs.yml and every plugin and role has a page, reachable from the index.
python3 - "${COLL}" "${OUT}/build/html" <<'EOF'
import json
import os
import re
import subprocess
import sys

coll, html = sys.argv[1], sys.argv[2]
with open(os.path.join(coll, "docs/docsite/extra-docs.yml"), encoding="utf-8") as handle:
    guides = re.findall(r"^\s*-\s+(guide_\w+)\s*$", handle.read(), re.M)
expected = ["docsite/%s.html" % guide for guide in guides]
for plugin_type in ("module", "filter", "callback"):  # the names ansible-doc lists (a filter file may hold several)
    listed = json.loads(subprocess.run(["ansible-doc", "-t", plugin_type, "-l", "--json", "kubepki.certs"], check=True,
                                       capture_output=True, text=True).stdout)
    expected += ["%s_%s.html" % (name.split(".")[-1], plugin_type) for name in sorted(listed)]
expected += ["%s_role.html" % name for name in sorted(os.listdir(os.path.join(coll, "roles")))]
with open(os.path.join(html, "index.html"), encoding="utf-8") as handle:
    index = handle.read()
missing = [page for page in expected if not os.path.isfile(os.path.join(html, page))]
unlinked = [page for page in expected if page not in missing and 'href="%s' % page not in index]
if missing or unlinked or not guides:
    sys.exit("docs html: pages missing %s, not linked from index.html %s, guides %d" % (missing, unlinked, len(guides)))
print("docs html: %d pages checked (%d guides), index at %s" % (len(expected), len(guides), os.path.join(html, "index.html")))
EOF
