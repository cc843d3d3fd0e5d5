# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection: no compatibility promise for code outside it.
"""The kubepki PKI engine: pure functions on keys, certificates, bundles, chains and layouts."""
