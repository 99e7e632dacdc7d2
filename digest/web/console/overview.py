"""The console's overview and its live part."""

from __future__ import annotations

from typing import Any

from flask import jsonify, render_template, request

from digest.config import SLOTS
from digest.operations import overview
from digest.web.auth import console
from digest.web.base import DIGITS, db, runtime
from digest.web.console.common import checked_id

# --- overview --------------------------------------------------------------------------------


@console.get("/")
def overview_page() -> Any:
    rt = runtime()
    data = overview.overview(db(), rt.settings, rt.clock())
    peak = max([max(s, u) for _, s, u in data.chart] + [1])
    return render_template("admin/overview.html", data=data, peak=peak, slots=SLOTS)


# The endpoint name the gate redirects to after sign-in.
console.add_url_rule("/", "overview", overview_page)


@console.get("/live.json")
def live() -> Any:
    """The overview's live part: editions being sent (or the ones asked for)."""
    rt = runtime()
    now = rt.clock()
    asked = request.args.getlist("edition")[:50]
    wanted = [checked_id(int(i)) for i in asked if DIGITS.fullmatch(i)]
    rows = {p.edition_id: p for p in overview.progress(db(), now)}
    rows.update((p.edition_id, p) for p in overview.progress(db(), now, wanted))
    return jsonify(editions=[p.as_json() for p in rows.values()])
