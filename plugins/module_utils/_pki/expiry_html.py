# Copyright (c) kubepki.certs contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# PRIVATE to the kubepki.certs collection.
"""The fleet expiry report as one self-contained HTML page: inline CSS, JavaScript and SVG, nothing fetched.

The page holds the counts per status, a summary per cluster and CA (issuer), a timeline of the notAfter dates (one
mark per certificate that has one) and a table of every certificate that sorts by a click on (or Enter/Space on) a
column header. Every value from the report goes through :func:`html.escape`; the script reads the table, never the
report, so no value is ever placed in JavaScript. Like the other report files it embeds no wall-clock time: the
"today" line of the timeline is drawn by the script when the page is opened.
"""

from __future__ import annotations

import datetime
import html

from ansible_collections.kubepki.certs.plugins.module_utils._pki.expiry_report import STATUSES

UNNAMED_CLUSTER = "(no cluster name)"
UNREADABLE_ISSUER = "(not readable)"
TIMELINE_WIDTH, TIMELINE_LEFT, TIMELINE_RIGHT, LANE_HEIGHT = 960, 130, 20, 28
# Lanes of the timeline, top to bottom: the statuses that have a notAfter.
TIMELINE_STATUSES = ("EXPIRED", "NOT_YET_VALID", "WARNING", "OK")

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#1b1f24;background:#fff}
h1{font-size:1.5rem;margin:0 0 .3rem}h2{font-size:1.15rem;margin:1.6rem 0 .5rem}
p.meta{margin:.2rem 0;color:#444}
table{border-collapse:collapse;font-size:.85rem;margin-bottom:.5rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
td.num,th.num{text-align:right}
thead th{background:#f3f5f7}
th button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer;color:inherit}
th button:focus-visible{outline:2px solid #0969da;outline-offset:2px}
th[aria-sort=ascending] button::after{content:" \\25B2"}
th[aria-sort=descending] button::after{content:" \\25BC"}
.status{font-weight:600;padding:.05rem .4rem;border-radius:.25rem;white-space:nowrap}
.status-OK{background:#dafbe1;color:#116329}
.status-WARNING{background:#fff8c5;color:#7d4e00}
.status-EXPIRED{background:#ffebe9;color:#a40e26}
.status-NOT_YET_VALID{background:#fbefff;color:#6e40c9}
.status-INVALID{background:#ffd8d3;color:#82071e}
.status-MISSING{background:#eaeef2;color:#424a53}
.counts span{margin-right:.6rem}
svg text{font-size:11px;fill:#424a53}
.mark-OK{fill:#1a7f37}.mark-WARNING{fill:#bf8700}.mark-EXPIRED{fill:#cf222e}.mark-NOT_YET_VALID{fill:#8250df}
code{font-size:.8rem;word-break:break-all}
"""

# Sorts the certificate table by the clicked column (data-sort values of the cells: numbers or text), toggling the
# direction on a second click, and draws today's line on the timeline. Reads only the DOM.
SCRIPT = """
(function(){
  var table=document.getElementById("certificates");
  var headers=table.tHead.rows[0].cells;
  function key(cell,numeric){var v=cell.getAttribute("data-sort");
    if(numeric){return v===""?Infinity:parseFloat(v);}return (v===null?cell.textContent:v).toLowerCase();}
  function sortBy(index){
    var th=headers[index],numeric=th.getAttribute("data-type")==="number";
    var dir=th.getAttribute("aria-sort")==="ascending"?-1:1;
    var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a.cells[index],numeric),y=key(b.cells[index],numeric);
      if(x<y){return -dir;}if(x>y){return dir;}return a.getAttribute("data-order")-b.getAttribute("data-order");});
    rows.forEach(function(row){body.appendChild(row);});
    for(var i=0;i<headers.length;i++){headers[i].removeAttribute("aria-sort");}
    th.setAttribute("aria-sort",dir===1?"ascending":"descending");
  }
  Array.prototype.forEach.call(headers,function(th,index){
    th.querySelector("button").addEventListener("click",function(){sortBy(index);});});
  var svg=document.getElementById("timeline");
  if(svg){var start=parseFloat(svg.getAttribute("data-start")),end=parseFloat(svg.getAttribute("data-end"));
    var left=parseFloat(svg.getAttribute("data-left")),width=parseFloat(svg.getAttribute("data-width"));
    var now=Date.now()/1000;
    if(now>=start&&now<=end){var x=left+(now-start)/(end-start)*width;
      var line=document.createElementNS("http://www.w3.org/2000/svg","line");
      line.setAttribute("id","today");line.setAttribute("x1",x);line.setAttribute("x2",x);line.setAttribute("y1",0);
      line.setAttribute("y2",svg.getAttribute("height"));line.setAttribute("stroke","#0969da");
      line.setAttribute("stroke-dasharray","4 3");svg.appendChild(line);}}
})();
"""

COLUMNS = (  # header, data type, numeric cell
    ("Host", "text"), ("Cluster", "text"), ("File", "text"), ("Subject", "text"), ("Issuer", "text"),
    ("Status", "number"), ("Days left", "number"), ("Not after", "text"), ("Signed by", "text"),
)


def _e(value) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _epoch(iso: str) -> float:
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def _cluster(report: dict, host: str) -> str:
    return (report.get("hosts", {}).get(host) or {}).get("cluster") or ""


def _badge(status: str) -> str:
    return '<span class="status status-%s">%s</span>' % (_e(status), _e(status))


def _counts(report: dict) -> str:
    return '<p class="counts">%s</p>' % "".join(
        "<span>%s %d</span>" % (_badge(status), count) for status, count in report["counts"].items())


def cluster_ca_groups(report: dict) -> list:
    """Per (cluster, issuer): hosts, counts per status and the soonest entry, sorted by cluster then issuer."""
    groups = {}
    for row in report["certificates"]:
        key = (_cluster(report, row["host"]), row.get("issuer") or "")
        group = groups.setdefault(key, {"hosts": set(), "counts": dict((s, 0) for s in STATUSES), "soonest": None})
        group["hosts"].add(row["host"])
        group["counts"][row["status"]] = group["counts"].get(row["status"], 0) + 1
        left = row.get("days_left")
        if left is not None and (group["soonest"] is None or left < group["soonest"]["days_left"]):
            group["soonest"] = row
    return [dict(group, cluster=key[0], issuer=key[1]) for key, group in sorted(groups.items())]


def _soonest_text(row: dict | None) -> str:
    if row is None:
        return "-"
    return "%s days (%s, %s)" % (_e(row["days_left"]), _e(row["host"]), _e(row["path"]))


def _summary_table(report: dict) -> str:
    head = "".join("<th>%s</th>" % _e(h) for h in ("Cluster", "CA (issuer)", "Hosts", "Certificates")) + "".join(
        '<th class="num">%s</th>' % _badge(status) for status in STATUSES) + "<th>Soonest expiry</th>"
    rows = []
    for group in cluster_ca_groups(report):
        soonest = group["soonest"]
        rows.append("<tr><td>%s</td><td>%s</td><td class=\"num\">%d</td><td class=\"num\">%d</td>%s<td>%s</td></tr>" % (
            _e(group["cluster"] or UNNAMED_CLUSTER), _e(group["issuer"] or UNREADABLE_ISSUER), len(group["hosts"]),
            sum(group["counts"].values()),
            "".join('<td class="num">%d</td>' % group["counts"].get(status, 0) for status in STATUSES),
            _soonest_text(soonest)))
    return '<table id="summary"><thead><tr>%s</tr></thead><tbody>%s</tbody></table>' % (head, "".join(rows))


def _year_ticks(start: float, end: float) -> list:
    first = datetime.datetime.fromtimestamp(start, datetime.timezone.utc).year + 1
    last = datetime.datetime.fromtimestamp(end, datetime.timezone.utc).year
    years = list(range(first, last + 1))
    step = max(1, -(-len(years) // 12))  # at most 12 labels
    return [(year, datetime.datetime(year, 1, 1, tzinfo=datetime.timezone.utc).timestamp()) for year in years[::step]]


def _timeline(report: dict) -> str:
    dated = [row for row in report["certificates"] if row.get("not_after")]
    if not dated:
        return "<p>No certificate with an expiry date.</p>"
    moments = [_epoch(row["not_after"]) for row in dated]
    pad = max(86400.0 * 15, (max(moments) - min(moments)) * 0.03)
    start, end = min(moments) - pad, max(moments) + pad
    width = TIMELINE_WIDTH - TIMELINE_LEFT - TIMELINE_RIGHT
    height = LANE_HEIGHT * len(TIMELINE_STATUSES) + 30

    def x_of(moment):
        return TIMELINE_LEFT + (moment - start) / (end - start) * width

    parts = []
    for lane, status in enumerate(TIMELINE_STATUSES):
        y = LANE_HEIGHT * lane + LANE_HEIGHT / 2
        parts.append('<text x="4" y="%.1f">%s</text><line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#d0d7de"/>'
                     % (y + 4, _e(status), TIMELINE_LEFT, TIMELINE_LEFT + width, y, y))
    for year, moment in _year_ticks(start, end):
        parts.append('<line x1="%.1f" x2="%.1f" y1="0" y2="%d" stroke="#eaeef2"/><text x="%.1f" y="%d">%d</text>'
                     % (x_of(moment), x_of(moment), height - 18, x_of(moment) - 12, height - 4, year))
    for row, moment in zip(dated, moments):
        lane = TIMELINE_STATUSES.index(row["status"]) if row["status"] in TIMELINE_STATUSES else 0
        label = "%s %s: %s, %s days left, not after %s" % (row["host"], row["path"] + (
            "#" + row["kubeconfig_entry"] if row.get("kubeconfig_entry") else ""), row["status"], row.get("days_left"),
            row["not_after"])
        parts.append('<circle class="mark mark-%s" cx="%.1f" cy="%.1f" r="5" fill-opacity="0.7" data-host="%s">'
                     "<title>%s</title></circle>"
                     % (_e(row["status"]), x_of(moment), LANE_HEIGHT * lane + LANE_HEIGHT / 2, _e(row["host"]),
                        _e(label)))
    return ('<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img" '
            'aria-label="Expiry dates, one mark per certificate" data-start="%.0f" data-end="%.0f" data-left="%d" '
            'data-width="%d">%s</svg>' % (TIMELINE_WIDTH, height, start, end, TIMELINE_LEFT, width, "".join(parts)))


def _certificate_rows(report: dict) -> str:
    rank = dict((status, index) for index, status in enumerate(STATUSES))
    rows = []
    for order, row in enumerate(report["certificates"]):
        where = row["path"] + ("#" + row["kubeconfig_entry"] if row.get("kubeconfig_entry") else "")
        left = row.get("days_left")
        cells = [
            "<td>%s</td>" % _e(row["host"]),
            "<td>%s</td>" % _e(_cluster(report, row["host"]) or "-"),
            "<td><code>%s</code></td>" % _e(where),
            "<td>%s</td>" % _e(row.get("subject")),
            "<td>%s</td>" % _e(row.get("issuer")),
            '<td data-sort="%d">%s</td>' % (rank.get(row["status"], len(STATUSES)), _badge(row["status"])),
            '<td class="num" data-sort="%s">%s</td>' % ("" if left is None else int(left), _e(left)),
            "<td>%s</td>" % _e(row.get("not_after")),
            "<td>%s</td>" % _e(row.get("signed_by")),
        ]
        rows.append('<tr data-order="%d">%s</tr>' % (order, "".join(cells)))
    return "".join(rows)


def render_html(report: dict, *, host_count: int) -> str:
    """The page, from a fleet report (:func:`expiry_report.fleet_report`)."""
    head = "".join('<th scope="col"%s data-type="%s"><button type="button">%s</button></th>'
                   % (' class="num"' if kind == "number" and name == "Days left" else "", kind, _e(name))
                   for name, kind in COLUMNS)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Certificate expiry report</title><style>%s</style></head><body>" % STYLE,
        "<h1>Certificate expiry report</h1>",
        '<p class="meta">Warning window: %d days. Failure threshold: %d days. Hosts: %d. Certificates: %d.</p>'
        % (report["warn_days"], report["fail_days"], host_count, report["total"]),
        _counts(report),
        "<h2>Per cluster and CA</h2>", _summary_table(report),
        "<h2>Expiry timeline</h2>", _timeline(report),
        "<h2>Certificates</h2>",
        '<p class="meta">Click a column header (or focus it and press Enter) to sort; again to reverse.</p>',
        '<table id="certificates"><thead><tr>%s</tr></thead><tbody>%s</tbody></table>'
        % (head, _certificate_rows(report)),
        "<script>%s</script>" % SCRIPT,
        "</body></html>",
        "",
    ])
