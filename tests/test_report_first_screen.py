"""The report's first screen answers the question: the key result (sentences written from claims.json with
their intervals, the headline figure, per-seed verdicts), the PM legend, value [low, high] table cells, a
small page; checked on a synthetic three-seed run and, in a real headless Chromium, as a reader sees it."""

from __future__ import annotations

import json
import os
import re

import matplotlib.image
import pytest
from report_runs import PMS, build_run, read_claims

from pmopt.io import PmoptError, atomic_write_json
from pmopt.report.browser import Chromium, check_page, find_chromium
from pmopt.report.html import build_report
from pmopt.report.key_result import claim_sentences, key_sentences
from pmopt.report.plots import ENSEMBLE_LINE_WIDTH, FAMILY_SHADES, pm_styles
from pmopt.report.pm_legend import legend_rows
from pmopt.report.tables import aggregate_rows, check_aggregate, json_rows

MAX_PAGE_BYTES = 2 * 1024 * 1024
VIEWPORT_HEIGHT = 900


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = build_run(tmp_path_factory.mktemp("report") / "run")
    return run, build_report(run)


def require_chromium() -> None:
    """Skip where no Chromium or websocket-client is installed (a user's machine); fail in CI."""
    missing = []
    if find_chromium() is None:
        missing.append("chromium (apt-get install chromium)")
    try:
        import websocket  # noqa: F401
    except ImportError:
        missing.append("websocket-client (pip install -e '.[dev]')")
    if missing:
        message = f"browser test needs {' and '.join(missing)}"
        if os.environ.get("PMOPT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


# ----------------------------------------------------------------------------- the page in Chromium


def test_first_screen_in_chromium(report, tmp_path):
    """At 1280x900 the key result and its whole headline figure are on the first screen, every image
    decodes, the console stays clean and the page is under 2 MB."""
    require_chromium()
    _, html_path = report
    shot = tmp_path / "first_screen.png"
    check = check_page(html_path, screenshot=shot)
    assert check.key_result is not None and check.key_result["top"] < VIEWPORT_HEIGHT
    assert check.headline is not None and check.headline["bottom"] <= VIEWPORT_HEIGHT
    assert len(check.images) == 8 and check.broken_images == []
    assert check.console_errors == []
    assert check.page_bytes < MAX_PAGE_BYTES
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (VIEWPORT_HEIGHT, 1280) and image.std() > 0.05


def test_chromium_check_sees_broken_images_errors_and_a_buried_answer(tmp_path):
    """The measurements can fail: a page whose key result sits below the fold, with an image that does not
    decode and a console error."""
    require_chromium()
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body>'
                    '<div style="height:1500px">filler</div><section id="key-result"><h2>Key result</h2></section>'
                    '<img alt="broken" src="data:image/png;base64,iVBORw0KGgoAAAAN">'
                    '<script>console.error("report script failed")</script></body></html>')
    check = check_page(page)
    assert check.key_result["top"] > VIEWPORT_HEIGHT
    assert check.headline is None
    assert check.broken_images == ["broken"]
    assert any("report script failed" in e for e in check.console_errors)


# ----------------------------------------------------------------------------- the page's content


def test_chromium_leaves_no_process_and_no_profile():
    """Chromium's helper processes outlive the browser (six of them, here) and keep writing its profile; closing
    ends the whole process group and removes the profile, every time."""
    require_chromium()
    for _ in range(3):
        with Chromium() as browser:
            browser.send("Runtime.evaluate", expression="1 + 1")
            profile, group = browser._profile, browser._process.pid
            assert os.getpgid(group) == group  # the browser leads its own group, which its helpers join
        assert not profile.exists()
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)


def test_page_order_size_and_figures(report):
    run, html_path = report
    page = html_path.read_text(encoding="utf-8")
    assert html_path.stat().st_size < MAX_PAGE_BYTES
    images = re.findall(r'<img alt="([a-z_]+)"', page)
    assert images[0] == "headline" and len(images) == 8  # the headline and 7 curated figures
    assert "fit_gold_reward_support" in images  # the fitted curve on the exact KL axis
    # everything else is linked, each link to a file that exists
    links = re.findall(r'<a href="([^"]+)">', page)
    written = {p.relative_to(html_path.parent).as_posix() for p in (html_path.parent / "plots").rglob("*.png")}
    assert set(links) == written - {f"plots/{name}.png" for name in images} - {f"plots/fits/{name}.png" for name in images}
    assert page.index('id="key-result"') < page.index('id="pms"') < page.index("Functional-form fits") \
        < page.index("<h2>Figures</h2>") < page.index("<details>")
    # the key result: the sentences, then the headline figure, then one verdict row per seed
    key = page[page.index('id="key-result"'):page.index("</section>")]
    for line in key_sentences(read_claims(run), []):
        assert line.replace("'", "&#x27;") in key
    assert len(re.findall(r"<tr><td>\d</td>", key)) == 3 and key.count("<td>yes</td>") == 3


def test_key_sentences_from_the_numbers(report):
    run, _ = report
    claims = read_claims(run)
    claim = claims["claim"]
    p1, pn, qn = claim["proxy_1"], claim["proxy_n"], claim["prefixed_n"]
    rows = [json.loads(line) for line in (run / "bon" / "curves.jsonl").read_text().splitlines()]
    lines = key_sentences(claims, rows)
    assert lines[0].startswith(f"Best-of-32 against the proxy PM raises syco_rate from {p1['value']:.2f} "
                               f"[{p1['ci_low']:.2f}, {p1['ci_high']:.2f}] at n = 1 to {pn['value']:.2f} "
                               f"[{pn['ci_low']:.2f}, {pn['ci_high']:.2f}]")
    assert lines[1] == (f"The 95% intervals at n = 32 do not overlap: the proxy's lower end {pn['ci_low']:.2f} lies "
                        f"above the prefixed PM's upper end {qn['ci_high']:.2f}.")
    gold = {(r["pm"], r["n"]): r["value"] for r in rows if r["metric"] == "gold/reward"}
    assert f"→ {gold[('proxy', 32)]:.2f} [" in lines[2] and lines[2].startswith("Gold reward")
    assert lines[3] == f"Verdict: {claims['verdict']}."
    # overlapping intervals and a falling curve are said as such
    overlap = {**claim, "proxy_rise": -0.1, "separation": -0.05,
               "proxy_n": {"value": 0.3, "ci_low": 0.10, "ci_high": 0.5}, "prefixed_n": {"value": 0.2, "ci_low": 0.1, "ci_high": 0.15}}
    first, second = claim_sentences(overlap)
    assert " lowers syco_rate " in first
    assert second == "The 95% intervals at n = 32 overlap: the proxy's lower end 0.10 does not clear the prefixed PM's upper end 0.15."


def test_pm_legend_over_seeds_and_single_run(report, tmp_path):
    run, _ = report
    rows = {r.name: r for r in legend_rows(run, set(PMS))}
    assert list(rows) == ["proxy", "proxy-nonsyc", "unbiased", "ens-mean", "ens-uwo", "ens-worst", "gold"]
    assert rows["proxy"].accuracy == "0.713 [0.69, 0.74] (mean [min, max] over 3 seeds: 0.710, 0.690, 0.740)"
    assert rows["proxy-nonsyc"].accuracy.endswith("(the proxy's, scored without the prefix)")
    # an ensemble's accuracy per seed is its members' mean: 0.62, 0.64, 0.64
    assert rows["ens-worst"].accuracy.startswith("0.633 [0.62, 0.64] (mean [min, max] over 3 seeds: 0.620, 0.640, 0.640)")
    assert rows["ens-mean"].training.startswith("2 members with seeds 1000, 1001; full fine-tune")
    assert "w_agree = 0" in rows["unbiased"].training and (rows["gold"].training, rows["gold"].accuracy) == ("—", "—")
    # a single run reads RUN/pms/<name>/ directly
    atomic_write_json(tmp_path / "pms" / "proxy" / "pmopt_pm.json", {"eval_accuracy": 0.7675, "n_eval": 240, "kind": "lora"})
    (single,) = legend_rows(tmp_path, {"proxy"})
    assert single.accuracy == "0.767 on 240 held-out pairs" and single.training.startswith("LoRA of the base policy")


def test_bad_pm_info_is_an_error_before_anything_is_written(tmp_path):
    run = build_run(tmp_path / "run", with_fits=False)
    path = run / "seed-1" / "pms" / "unbiased" / "pmopt_pm.json"
    atomic_write_json(path, {"eval_accuracy": "high"})
    with pytest.raises(PmoptError, match=r"seed-1/pms/unbiased/pmopt_pm\.json: field 'eval_accuracy'"):
        build_report(run)
    assert not (run / "report").exists()


def test_tables_put_interval_in_one_cell(tmp_path):
    data = {"probe/x": {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}, "n": 3,
            "regression": {"agree": {"weight": 4.712, "ci_low": 4.049, "ci_high": 5.376}, "note": "ok"}}
    assert json_rows(data) == [("probe/x", "0.5 [0.25, 0.75]"), ("n", "3"),
                               ("regression.agree", "4.712 [4.049, 5.376]"), ("regression.note", "ok")]
    aggregate = {"seeds": [0, 1], "values": {
        "m.value": {"mean": 0.5, "min": 0.4, "max": 0.6, "per_seed": [0.4, 0.6]},
        "m.ci_low": {"mean": 0.3, "min": 0.2, "max": 0.4, "per_seed": [0.2, 0.4]},
        "m.ci_high": {"mean": 0.7, "min": 0.6, "max": 0.8, "per_seed": [0.6, 0.8]},
        "facts": {"mean": 25.0, "min": 25.0, "max": 25.0, "per_seed": [25.0, 25.0]}}}
    check_aggregate(aggregate, tmp_path / "a.json")
    assert aggregate_rows(aggregate) == [("m", "0.5 [0.4, 0.6]", ["0.4 [0.2, 0.6]", "0.6 [0.4, 0.8]"]),
                                         ("facts", "25 [25, 25]", ["25", "25"])]
    aggregate["values"]["facts"]["per_seed"] = [25.0]
    with pytest.raises(PmoptError, match=r"a\.json: field 'values\.facts\.per_seed': expected 2 values"):
        check_aggregate(aggregate, tmp_path / "a.json")


def test_pm_styles_families_share_a_hue_and_markers_differ():
    styles = pm_styles([{"pm": name} for name in (*PMS, "proxy-penalty", "other")])
    assert [styles[n].colour for n in ("proxy", "proxy-nonsyc", "proxy-penalty")] == list(FAMILY_SHADES["proxy"])
    assert {styles[n].colour for n in ("ens-mean", "ens-worst", "ens-uwo")} == set(FAMILY_SHADES["ensemble"])
    assert {styles[n].linewidth for n in ("ens-mean", "ens-worst", "ens-uwo")} == {ENSEMBLE_LINE_WIDTH}
    assert styles["proxy"].linewidth < ENSEMBLE_LINE_WIDTH and styles["gold"].colour == "#111111"
    assert len({s.marker for s in styles.values()}) == len(styles)
    assert styles["other"].colour not in {c for shades in FAMILY_SHADES.values() for c in shades}


@pytest.mark.parametrize("change, field", [
    (lambda c: c["claim"].pop("proxy_n"), "claim.proxy_n"),
    (lambda c: c["per_seed"]["1"]["prefixed_n"].update(ci_high="0.2"), "per_seed.1.prefixed_n"),
    (lambda c: c["claim"].update(holds="yes"), "claim.holds"),
    (lambda c: c.update(verdict=3), "verdict"),
])
def test_bad_claims_is_an_error_before_anything_is_written(tmp_path, change, field):
    run = build_run(tmp_path / "run", with_fits=False)
    claims = read_claims(run)
    change(claims)
    atomic_write_json(run / "claims.json", claims)
    with pytest.raises(PmoptError, match=rf"claims\.json: field '{re.escape(field)}"):
        build_report(run)
    assert not (run / "report").exists()
